#include "jscan.h"

#include "utf8.h"

#include <string.h>

/* A cursor over the line; every scan_* function advances it past one JSON element and
 * returns false on malformed input. Depth is bounded so hostile nesting cannot recurse
 * the stack away. */
struct cursor {
    const char *p;
    const char *end;
    int depth;
};

enum { MAX_DEPTH = 128 };

static void skip_ws(struct cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static bool is_hex(char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

/* True when [p, end) holds a control byte, which JSON forbids raw inside strings. Written
 * as a reduction without an early exit so the compiler can vectorise it. */
static bool has_control(const char *p, const char *end)
{
    unsigned char seen = 0;
    for (; p < end; p++)
        seen |= (unsigned char)*p < 0x20;
    return seen != 0;
}

/* Validates one escape at p (the backslash); returns its length, or 0 if malformed. */
static size_t escape_length(const char *p, const char *end)
{
    if (p + 1 >= end)
        return 0;
    if (p[1] == 'u')
        return end - p >= 6 && is_hex(p[2]) && is_hex(p[3]) && is_hex(p[4]) && is_hex(p[5]) ? 6 : 0;
    return strchr("\"\\/bfnrt", p[1]) && p[1] ? 2 : 0;
}

/* Strings are most of a log record's bytes: find the closing quote with memchr (libc's
 * vectorised search) and check the stretch before it at once, instead of a branchy loop
 * over every byte. */
static bool scan_string(struct cursor *c)
{
    if (c->p >= c->end || *c->p != '"')
        return false;
    c->p++;
    for (;;) {
        const char *quote = memchr(c->p, '"', (size_t)(c->end - c->p));
        if (!quote)
            return false;
        const char *backslash = memchr(c->p, '\\', (size_t)(quote - c->p));
        const char *stop = backslash ? backslash : quote;
        if (has_control(c->p, stop))
            return false;
        if (!backslash) {
            c->p = quote + 1;
            return true;
        }
        size_t n = escape_length(backslash, c->end);
        if (n == 0)
            return false;
        c->p = backslash + n;
    }
}

static bool scan_number(struct cursor *c)
{
    const char *start = c->p;
    if (c->p < c->end && *c->p == '-')
        c->p++;
    const char *digits = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9')
        c->p++;
    if (c->p == digits)
        return false;
    if (c->p < c->end && *c->p == '.') {
        c->p++;
        const char *frac = c->p;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9')
            c->p++;
        if (c->p == frac)
            return false;
    }
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        c->p++;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-'))
            c->p++;
        const char *exp = c->p;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9')
            c->p++;
        if (c->p == exp)
            return false;
    }
    return c->p > start;
}

static bool scan_literal(struct cursor *c, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0)
        return false;
    c->p += n;
    return true;
}

static bool scan_value(struct cursor *c);

/* Scans the members of an object or the elements of an array after its opening bracket. */
static bool scan_container(struct cursor *c, char close, bool is_object)
{
    if (++c->depth > MAX_DEPTH)
        return false;
    skip_ws(c);
    if (c->p < c->end && *c->p == close) {
        c->p++;
        c->depth--;
        return true;
    }
    for (;;) {
        skip_ws(c);
        if (is_object) {
            if (!scan_string(c))
                return false;
            skip_ws(c);
            if (c->p >= c->end || *c->p != ':')
                return false;
            c->p++;
            skip_ws(c);
        }
        if (!scan_value(c))
            return false;
        skip_ws(c);
        if (c->p >= c->end)
            return false;
        if (*c->p == ',') {
            c->p++;
            continue;
        }
        if (*c->p != close)
            return false;
        c->p++;
        c->depth--;
        return true;
    }
}

static bool scan_value(struct cursor *c)
{
    if (c->p >= c->end)
        return false;
    switch (*c->p) {
    case '"':
        return scan_string(c);
    case '{':
        c->p++;
        return scan_container(c, '}', true);
    case '[':
        c->p++;
        return scan_container(c, ']', false);
    case 't':
        return scan_literal(c, "true");
    case 'f':
        return scan_literal(c, "false");
    case 'n':
        return scan_literal(c, "null");
    default:
        return scan_number(c);
    }
}

/* Match a raw key (with quotes, escapes undecoded) against the wanted names. Keys with
 * escapes never match: KumoMTA writes its field names plainly. */
static void note_key(const char *key, size_t key_len, const char *value, size_t value_len,
                     const char *const *keys, size_t key_count, struct jscan_value *values)
{
    for (size_t i = 0; i < key_count; i++) {
        if (keys[i][0] != key[1] || values[i].raw)
            continue; /* most members: first letter differs */
        size_t n = strlen(keys[i]);
        if (n + 2 == key_len && memcmp(key + 1, keys[i], n) == 0) {
            values[i].raw = value;
            values[i].len = value_len;
            return;
        }
    }
}

bool jscan_object(const char *line, size_t len, const char *const *keys, size_t key_count,
                  struct jscan_value *values)
{
    struct cursor c = {line, line + len, 1};
    for (size_t i = 0; i < key_count; i++)
        values[i] = (struct jscan_value){NULL, 0};
    skip_ws(&c);
    if (c.p >= c.end || *c.p != '{')
        return false;
    c.p++;
    skip_ws(&c);
    if (c.p < c.end && *c.p == '}') {
        c.p++;
    } else {
        for (;;) {
            skip_ws(&c);
            const char *key = c.p;
            if (!scan_string(&c))
                return false;
            size_t key_len = (size_t)(c.p - key);
            skip_ws(&c);
            if (c.p >= c.end || *c.p != ':')
                return false;
            c.p++;
            skip_ws(&c);
            const char *value = c.p;
            if (!scan_value(&c))
                return false;
            note_key(key, key_len, value, (size_t)(c.p - value), keys, key_count, values);
            skip_ws(&c);
            if (c.p < c.end && *c.p == ',') {
                c.p++;
                continue;
            }
            if (c.p < c.end && *c.p == '}') {
                c.p++;
                break;
            }
            return false;
        }
    }
    skip_ws(&c);
    return c.p == c.end;
}

static int hex_value(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return ch - 'A' + 10;
}

static unsigned read_u16(const char *p)
{
    return (unsigned)(hex_value(p[0]) << 12 | hex_value(p[1]) << 8 | hex_value(p[2]) << 4 |
                      hex_value(p[3]));
}

/* Decodes one escape at p (just after the backslash) into tmp; returns bytes consumed. */
static size_t decode_escape(const char *p, const char *end, char *tmp, size_t *tmp_len)
{
    static const char from[] = "\"\\/bfnrt";
    static const char to[] = "\"\\/\b\f\n\r\t";
    if (*p != 'u') {
        tmp[0] = to[strchr(from, *p) - from];
        *tmp_len = 1;
        return 1;
    }
    unsigned cp = read_u16(p + 1);
    size_t used = 5;
    if (cp >= 0xD800 && cp < 0xDC00 && end - p >= 11 && p[5] == '\\' && p[6] == 'u') {
        unsigned low = read_u16(p + 7);
        if (low >= 0xDC00 && low < 0xE000) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            used = 11;
        }
    }
    if (cp >= 0xD800 && cp < 0xE000)
        cp = 0xFFFD; /* a surrogate without its partner: not a character, not UTF-8 */
    *tmp_len = utf8_encode(cp, tmp);
    return used;
}

long jscan_string(const struct jscan_value *value, char *out, size_t cap)
{
    if (!value->raw || value->len < 2 || value->raw[0] != '"' || cap == 0)
        return -1;
    const char *p = value->raw + 1;
    const char *end = value->raw + value->len - 1;
    size_t n = 0;
    while (p < end) {
        char tmp[4];
        size_t tmp_len = 1;
        if (*p == '\\') {
            p += 1 + decode_escape(p + 1, end, tmp, &tmp_len);
        } else {
            tmp[0] = *p++;
        }
        for (size_t i = 0; i < tmp_len && n + 1 < cap; i++)
            out[n++] = tmp[i];
    }
    out[n] = '\0';
    return (long)n;
}
