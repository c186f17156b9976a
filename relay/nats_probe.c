#include "nats_probe.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Where "[scheme://][userinfo@]host[:port][/...]" starts its host, and where the
 * authority ends. */
static const char *authority(const char *url, const char **end)
{
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    *end = p + strcspn(p, "/?#");
    const char *at = memrchr(p, '@', (size_t)(*end - p));
    return at ? at + 1 : p;
}

/* host and port of a server URL; nats.c's default port is 4222. */
static bool split_host_port(const char *url, char *host, size_t hsize, char *port, size_t psize)
{
    const char *end, *p = authority(url, &end), *host_end, *colon = NULL;
    if (*p == '[') {
        host_end = memchr(p, ']', (size_t)(end - p));
        if (!host_end)
            return false;
        p++;
        colon = host_end + 1 < end && host_end[1] == ':' ? host_end + 1 : NULL;
    } else {
        colon = memrchr(p, ':', (size_t)(end - p));
        host_end = colon ? colon : end;
    }
    if (host_end == p || (size_t)(host_end - p) >= hsize)
        return false;
    snprintf(host, hsize, "%.*s", (int)(host_end - p), p);
    snprintf(port, psize, "%.*s", colon ? (int)(end - colon - 1) : 4, colon ? colon + 1 : "4222");
    return true;
}

/* errno of a TCP connect to ai, 0 on success, ETIMEDOUT past the probe's time. */
static int try_connect(const struct addrinfo *ai)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    int err = 0;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        err = errno;
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        if (err == EINPROGRESS) {
            int n = poll(&pfd, 1, NATS_PROBE_TIMEOUT_MS);
            socklen_t len = sizeof(err);
            if (n == 0)
                err = ETIMEDOUT;
            else if (n < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
                err = errno;
        }
    }
    close(fd);
    return err;
}

/* NULL when the server accepts a TCP connection, else why not (in buf). */
static const char *probe_one(const char *url, char *buf, size_t size)
{
    char host[256], port[16];
    if (!split_host_port(url, host, sizeof(host), port, sizeof(port))) {
        snprintf(buf, size, "cannot tell host and port from the URL");
        return buf;
    }
    bool v6 = strchr(host, ':') != NULL;
    int n = snprintf(buf, size, "%s%s%s:%s: ", v6 ? "[" : "", host, v6 ? "]" : "", port);
    size_t used = n < 0 ? 0 : (size_t)n < size ? (size_t)n : size - 1;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        snprintf(buf + used, size - used, "%s",
                 rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
        return buf;
    }
    int err = try_connect(ai); /* the first address only: the probe must stay short */
    freeaddrinfo(ai);
    if (err == 0)
        return NULL;
    snprintf(buf + used, size - used, "%s",
             err == ETIMEDOUT ? "no answer (timed out)" : strerror(err));
    return buf;
}

bool nats_probe_tcp(const char *const *servers, size_t count, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < count; i++) {
        char one[384];
        if (!probe_one(servers[i], one, sizeof(one)))
            return true;
        int n = snprintf(buf + used, size - used, "%s%s", used ? "; " : "", one);
        if (n < 0 || (size_t)n >= size - used)
            break;
        used += (size_t)n;
    }
    return false;
}
