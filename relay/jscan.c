#include "jscan.h"

#include "utf8.h"

#include <stdint.h>
#include <string.h>

/* A cursor over the line; every scan_* function advances it past one JSON element and
 * returns false on malformed input. Depth is bounded so hostile nesting cannot recurse
 * the stack away (2048 levels take ~200 KB of the loop thread's stack). */
struct cursor {
    const char *p;
    const char *end;
    int depth;
    bool too_deep; /* stopped at JSCAN_MAX_DEPTH, not at a syntax error */
};

static void skip_ws(struct cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static bool is_hex(char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
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

/* The bytes that end a plain stretch of a string: the quote, the backslash, and the
 * control bytes JSON forbids raw. */
static const bool string_stop[256] = {[0 ... 0x1f] = true, ['"'] = true, ['\\'] = true};

#define BYTES(b) (0x0101010101010101ULL * (b))

/* Nonzero when one of the 8 bytes in x is a string_stop byte (exactly: the classic
 * "has a byte below n" and "has a zero byte" word tricks, which never miss and never
 * report a word without one). */
static uint64_t word_has_stop(uint64_t x)
{
    uint64_t quote = x ^ BYTES('"'), backslash = x ^ BYTES('\\');
    uint64_t control = (x - BYTES(0x20)) & ~x;
    quote = (quote - BYTES(1)) & ~quote;
    backslash = (backslash - BYTES(1)) & ~backslash;
    return (control | quote | backslash) & BYTES(0x80);
}

/* Strings are most of a log record's bytes: they are read 8 bytes at a time, and the
 * first stop byte of a word is found from its mask (on a little-endian machine the lowest
 * flag is always a real one: a false flag can only sit above a real one, where the
 * subtraction borrowed). A memchr for the quote, another for a backslash and a byte loop
 * for control bytes cost 2.5 times the instructions (callgrind, the benchmark's records). */
static const char *find_stop(const char *p, const char *end)
{
    for (; end - p >= 8; p += 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        uint64_t stops = word_has_stop(word);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        if (stops)
            return p + __builtin_ctzll(stops) / 8;
#else
        if (stops)
            break;
#endif
    }
    while (p < end && !string_stop[(unsigned char)*p])
        p++;
    return p;
}

static bool scan_string(struct cursor *c)
{
    if (c->p >= c->end || *c->p != '"')
        return false;
    const char *p = c->p + 1;
    for (;;) {
        p = find_stop(p, c->end);
        if (p >= c->end)
            return false;
        if (*p == '"') {
            c->p = p + 1;
            return true;
        }
        if (*p != '\\')
            return false; /* a control byte */
        size_t n = escape_length(p, c->end);
        if (n == 0)
            return false;
        p += n;
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
    if (++c->depth > JSCAN_MAX_DEPTH) {
        c->too_deep = true;
        return false;
    }
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
    bool too_deep;
    return jscan_object_depth(line, len, keys, key_count, values, &too_deep);
}

static bool scan_object(struct cursor *c, const char *const *keys, size_t key_count,
                        struct jscan_value *values);

bool jscan_object_depth(const char *line, size_t len, const char *const *keys, size_t key_count,
                        struct jscan_value *values, bool *too_deep)
{
    struct cursor c = {line, line + len, 1, false};
    bool ok = scan_object(&c, keys, key_count, values);
    *too_deep = !ok && c.too_deep;
    return ok;
}

static bool scan_object(struct cursor *c, const char *const *keys, size_t key_count,
                        struct jscan_value *values)
{
    for (size_t i = 0; i < key_count; i++)
        values[i] = (struct jscan_value){NULL, 0};
    skip_ws(c);
    if (c->p >= c->end || *c->p != '{')
        return false;
    c->p++;
    skip_ws(c);
    if (c->p < c->end && *c->p == '}') {
        c->p++;
    } else {
        for (;;) {
            skip_ws(c);
            const char *key = c->p;
            if (!scan_string(c))
                return false;
            size_t key_len = (size_t)(c->p - key);
            skip_ws(c);
            if (c->p >= c->end || *c->p != ':')
                return false;
            c->p++;
            skip_ws(c);
            const char *value = c->p;
            if (!scan_value(c))
                return false;
            note_key(key, key_len, value, (size_t)(c->p - value), keys, key_count, values);
            skip_ws(c);
            if (c->p < c->end && *c->p == ',') {
                c->p++;
                continue;
            }
            if (c->p < c->end && *c->p == '}') {
                c->p++;
                break;
            }
            return false;
        }
    }
    skip_ws(c);
    return c->p == c->end;
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
