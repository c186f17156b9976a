#include "listen.h"

#include "xalloc.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FORMS "127.0.0.1:9477, [::1]:9477, localhost:9477 or :9477 (every interface)"

static bool parse_port(const char *text, in_port_t *port)
{
    char *end = NULL;
    long n = *text >= '0' && *text <= '9' ? strtol(text, &end, 10) : -1;
    if (!end || *end || n <= 0 || n > 65535)
        return false;
    *port = htons((uint16_t)n);
    return true;
}

static void set_v4(struct listen_addr *out, in_addr_t addr, in_port_t port)
{
    struct sockaddr_in *in = (struct sockaddr_in *)&out->addr;
    in->sin_family = AF_INET;
    in->sin_addr.s_addr = addr;
    in->sin_port = port;
    out->len = sizeof(*in);
}

static bool set_v6(struct listen_addr *out, const char *host, in_port_t port)
{
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&out->addr;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = port;
    out->len = sizeof(*in6);
    return inet_pton(AF_INET6, host, &in6->sin6_addr) == 1;
}

char *listen_parse(const char *text, struct listen_addr *out)
{
    memset(out, 0, sizeof(*out));
    const char *colon = strrchr(text, ':');
    const char *port_text = colon ? colon + 1 : text;
    in_port_t port;
    if (!parse_port(port_text, &port))
        return xasprintf("expected %s, got \"%.80s\": no port from 1 to 65535", FORMS, text);
    char host[64];
    snprintf(host, sizeof(host), "%.*s", colon ? (int)(colon - text) : 0, text);
    if (host[0] == '\0' || strcmp(host, "*") == 0) {
        set_v6(out, "::", port);
        out->every_interface = true;
    } else if (strcmp(host, "localhost") == 0) {
        set_v4(out, htonl(INADDR_LOOPBACK), port);
    } else if (host[0] == '[') {
        size_t n = strlen(host);
        bool closed = n > 2 && host[n - 1] == ']';
        if (closed)
            host[n - 1] = '\0';
        if (!closed || !set_v6(out, host + 1, port))
            return xasprintf("expected %s, got \"%.80s\": %s is not an IPv6 address in brackets",
                             FORMS, text, host);
    } else {
        struct in_addr a;
        if (inet_pton(AF_INET, host, &a) != 1)
            return xasprintf("expected %s, got \"%.80s\": %s is not an IP address (write an "
                             "IPv6 one in brackets)",
                             FORMS, text, host);
        set_v4(out, a.s_addr, port);
    }
    return NULL;
}
