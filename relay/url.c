#include "url.h"

#include <ctype.h>
#include <stdbool.h>
#include <string.h>

/* A bounded string builder: what does not fit is dropped, the NUL always fits. */
struct out {
    char *buf;
    size_t size, len;
};

static void put(struct out *o, const char *s, size_t n)
{
    size_t room = o->size - 1 - o->len;
    if (n > room)
        n = room;
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
}

static void puts_(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

/* Where the authority starts: after "scheme://", or at the start (nats.c reads a URL
 * without a scheme as nats://). */
static const char *after_scheme(const char *url)
{
    const char *sep = strstr(url, "://");
    return sep ? sep + 3 : url;
}

/* The userinfo of [start, end): up to the last '@', as nats.c splits it. */
static const char *userinfo_end(const char *start, const char *end)
{
    for (const char *c = end; c > start; c--)
        if (c[-1] == '@')
            return c - 1;
    return NULL;
}

static enum url_auth classify(const char *start, const char *at, const char **colon)
{
    *colon = memchr(start, ':', (size_t)(at - start));
    if (start == at)
        return URL_AUTH_NONE;
    if (!*colon || *colon + 1 == at)
        return *colon == start ? URL_AUTH_NONE : URL_AUTH_TOKEN;
    return *colon == start ? URL_AUTH_PASSWORD_ONLY : URL_AUTH_USER;
}

/* Copy [start, end), an authority and what follows it, with the secret starred. */
static void redact_authority(struct out *o, const char *start, const char *end)
{
    const char *at = userinfo_end(start, end), *colon;
    if (!at) {
        put(o, start, (size_t)(end - start));
        return;
    }
    switch (classify(start, at, &colon)) {
    case URL_AUTH_NONE:
        put(o, start, (size_t)(at - start));
        break;
    case URL_AUTH_TOKEN:
        puts_(o, "***");
        break;
    case URL_AUTH_USER:
    case URL_AUTH_PASSWORD_ONLY:
        put(o, start, (size_t)(colon - start));
        puts_(o, ":***");
        break;
    }
    put(o, at, (size_t)(end - at));
}

void url_redact(const char *url, char *buf, size_t size)
{
    struct out o = {buf, size, 0};
    buf[0] = '\0';
    const char *start = after_scheme(url);
    put(&o, url, (size_t)(start - url));
    redact_authority(&o, start, start + strlen(start));
}

void url_redact_list(const char *const *urls, size_t count, char *buf, size_t size)
{
    struct out o = {buf, size, 0};
    buf[0] = '\0';
    for (size_t i = 0; i < count; i++) {
        if (i)
            puts_(&o, ",");
        url_redact(urls[i], o.buf + o.len, o.size - o.len);
        o.len += strlen(o.buf + o.len);
    }
}

static bool ends_url(char c)
{
    return c == '\0' || isspace((unsigned char)c) || c == '"' || c == '\'' || c == '(' ||
           c == ')' || c == '<' || c == '>';
}

void url_redact_text(const char *text, char *buf, size_t size)
{
    struct out o = {buf, size, 0};
    buf[0] = '\0';
    const char *p = text, *sep;
    while ((sep = strstr(p, "://"))) {
        const char *start = sep + 3, *end = start;
        while (!ends_url(*end))
            end++;
        put(&o, p, (size_t)(start - p));
        redact_authority(&o, start, end);
        p = end;
    }
    puts_(&o, p);
}

enum url_auth url_auth(const char *url, char *user, size_t size)
{
    const char *start = after_scheme(url), *end = start + strlen(start);
    const char *at = userinfo_end(start, end), *colon;
    enum url_auth kind = at ? classify(start, at, &colon) : URL_AUTH_NONE;
    user[0] = '\0';
    if (kind == URL_AUTH_USER) {
        struct out o = {user, size, 0};
        put(&o, start, (size_t)(colon - start));
    }
    return kind;
}
