#include "jscan.h"

#include "hex.h"
#include "json_walk.h"
#include "utf8.h"

#include <stdint.h>
#include <string.h>

/* What the scan reads strings with: the line's end, and (when it could be made) a map of
 * where its quotes and backslashes are. */
struct scan {
    const char *line;      /* bit i of stops is line[i] */
    const char *end;       /* the scan's end: a record's newline is not part of it */
    const uint64_t *stops; /* NULL: no map, strings are read byte by byte */
    size_t words;          /* of stops, not counting the zero word after them */
};

/* The bytes that end a plain stretch of a string: the quote, the backslash, and the
 * control bytes JSON forbids raw. */
static const bool string_stop[256] = {[0 ... 0x1f] = true, ['"'] = true, ['\\'] = true};

/* Without a map (a line with a control byte, or a long one), strings are read 8 bytes at a
 * time, and the first stop byte of a word is found from its mask (on a little-endian
 * machine the lowest flag is always a real one: a false flag can only sit above a real
 * one, where the subtraction borrowed). */
static const char *find_stop(const char *p, const char *end)
{
    for (; end - p >= 8; p += 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        uint64_t stops = jscan_word_has_stop(word);
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

/* The end of the string that opens at p (past its closing quote), or NULL if it is not
 * one. With the map the line has no control byte, so the next stop is the next quote or
 * escape, as find_stop would find. */
static inline const char *string_end(const struct scan *s, const char *p, bool mapped)
{
    p++;
    for (;;) {
        p = mapped ? json_next_bit(s->line, s->end, s->stops, s->words, p) : find_stop(p, s->end);
        if (p >= s->end)
            return NULL;
        if (*p == '"')
            return p + 1;
        if (*p != '\\')
            return NULL; /* a control byte */
        size_t n = json_escape_length(p, s->end, false, false);
        if (n == 0)
            return NULL;
        p += n;
    }
}

/* The end of the number at p, or NULL if it is not one. */
static const char *number_end(const char *p, const char *end)
{
    if (p < end && *p == '-')
        p++;
    const char *q = json_digits_end(p, end);
    if (q == p)
        return NULL;
    p = q;
    if (p < end && *p == '.') {
        q = json_digits_end(p + 1, end);
        if (q == p + 1)
            return NULL;
        p = q;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        q = json_digits_end(p, end);
        if (q == p)
            return NULL;
        p = q;
    }
    return p;
}

const char *jscan_number_end(const char *p, const char *end)
{
    return number_end(p, end);
}

const char *jscan_literal_end(const char *p, const char *end, const char *word, size_t n)
{
    return json_literal_end(p, end, word, n);
}

/* The keys the caller wants, and which of them are still to be found. */
struct wanted {
    const char *const *keys;
    size_t count, left;
};

/* The bit of a key of n bytes (with its quotes) in a set of wanted lengths: n modulo 64,
 * a filter that lets through a few keys note_key then compares in full. */
static uint64_t length_bit(size_t n)
{
    return 1ULL << (n % 64);
}

static uint64_t wanted_init(struct wanted *w, const char *const *keys, size_t count,
                            struct jscan_value *values)
{
    *w = (struct wanted){keys, count, count};
    uint64_t lengths = 0;
    for (size_t i = 0; i < count; i++) {
        lengths |= length_bit(strlen(keys[i]) + 2);
        values[i] = (struct jscan_value){NULL, 0};
    }
    return lengths;
}

/* Match a raw key (with quotes, escapes undecoded) against the wanted names; the first of
 * duplicate members counts. Keys with escapes never match: KumoMTA writes its field names
 * plainly. Returns false once every key is found. */
static bool note_key(struct wanted *w, const char *key, size_t key_len, const char *value,
                     size_t value_len, struct jscan_value *values)
{
    for (size_t i = 0; i < w->count; i++) {
        if (w->keys[i][0] != key[1] || values[i].raw)
            continue;
        size_t n = strlen(w->keys[i]);
        if (n + 2 == key_len && memcmp(key + 1, w->keys[i], n) == 0) {
            values[i].raw = value;
            values[i].len = value_len;
            return --w->left > 0;
        }
    }
    return true;
}

/* The walk's state (json_walk.h): depth 1 is the top-level object, whose members' values
 * are noted when their key's length is one of lengths (see length_bit): most members'
 * length says they are not wanted. */
struct json_walk {
    const struct scan *s;
    struct wanted *want;
    uint64_t lengths; /* 0 once every key is found */
    struct jscan_value *values;
    bool *too_deep;
    const char *key, *value; /* of the top-level member being read */
    size_t key_len;
};

JSON_INLINE const char *walk_string(struct json_walk *w, const char *p, bool key, bool *escaped,
                                    bool mapped)
{
    (void)key;
    (void)escaped; /* keys with escapes never match: they are compared raw */
    return string_end(w->s, p, mapped);
}

JSON_INLINE const char *walk_number(const char *p, const char *end)
{
    return number_end(p, end);
}

JSON_INLINE void walk_key(struct json_walk *w, int depth, const char *key, const char *key_end,
                          bool escaped, const char *value)
{
    (void)escaped;
    if (depth == 1) {
        w->key = key;
        w->key_len = (size_t)(key_end - key);
        w->value = value;
    }
}

JSON_INLINE void walk_value_end(struct json_walk *w, int depth, const char *p)
{
    if (depth == 1 && w->lengths & length_bit(w->key_len) &&
        !note_key(w->want, w->key, w->key_len, w->value, (size_t)(p - w->value), w->values))
        w->lengths = 0;
}

JSON_INLINE void walk_too_deep(struct json_walk *w)
{
    *w->too_deep = true;
}

/* The walk, compiled twice: with and without the map, so that the per-string work
 * inlines. */
static bool scan_mapped(const struct scan *s, struct wanted *want, uint64_t lengths,
                        struct jscan_value *values, bool *too_deep)
{
    struct json_walk w = {
        .s = s, .want = want, .lengths = lengths, .values = values, .too_deep = too_deep};
    *too_deep = false;
    return json_walk(&w, s->line, s->end, true);
}

static bool scan_bytes(const struct scan *s, struct wanted *want, uint64_t lengths,
                       struct jscan_value *values, bool *too_deep)
{
    struct json_walk w = {
        .s = s, .want = want, .lengths = lengths, .values = values, .too_deep = too_deep};
    *too_deep = false;
    return json_walk(&w, s->line, s->end, false);
}

bool jscan_object(const char *line, size_t len, const char *const *keys, size_t key_count,
                  struct jscan_value *values)
{
    bool too_deep;
    return jscan_object_depth(line, len, keys, key_count, values, &too_deep);
}

/* Lines up to this long get a map of their stops (json_text.h; on the stack); longer ones
 * are read byte by byte. */
enum { STOP_MAP_WORDS = 16384 / 64 };

static bool avx2_allowed = true;

void jscan_allow_avx2(bool allowed)
{
    avx2_allowed = allowed;
}

#ifdef JSON_TEXT_AVX2
__attribute__((target("avx2"))) static bool map_stops_avx2(const char *line, size_t len,
                                                           uint64_t *stops)
{
    return json_draw_map_avx2(line, len, stops, NULL);
}
#endif

/* Fills stops[] for line[0..len) (len at most STOP_MAP_WORDS * 64) and a zero word after
 * them. Returns false when the line holds a control byte: a string may not, so only the
 * byte-by-byte read tells where such a line goes wrong (or that it is whitespace). */
static bool map_stops(const char *line, size_t len, uint64_t *stops)
{
#ifdef JSON_TEXT_AVX2
    if (avx2_allowed && __builtin_cpu_supports("avx2"))
        return map_stops_avx2(line, len, stops);
#endif
    return json_draw_map(line, len, stops, NULL);
}

bool jscan_object_depth(const char *line, size_t len, const char *const *keys, size_t key_count,
                        struct jscan_value *values, bool *too_deep)
{
    struct wanted want;
    uint64_t lengths = wanted_init(&want, keys, key_count, values);
    /* Records end in a newline, a control byte that only the last whitespace skip would
     * read. */
    size_t body = len > 0 && line[len - 1] == '\n' ? len - 1 : len;
    uint64_t stops[STOP_MAP_WORDS + 1];
    if (body <= STOP_MAP_WORDS * 64 && map_stops(line, body, stops)) {
        struct scan s = {line, line + body, stops, (body + 63) / 64};
        return scan_mapped(&s, &want, lengths, values, too_deep);
    }
    struct scan s = {line, line + len, NULL, 0};
    return scan_bytes(&s, &want, lengths, values, too_deep);
}

bool jscan_object_bytewise(const char *line, size_t len, const char *const *keys, size_t key_count,
                           struct jscan_value *values, bool *too_deep)
{
    struct wanted want;
    uint64_t lengths = wanted_init(&want, keys, key_count, values);
    struct scan s = {line, line + len, NULL, 0};
    return scan_bytes(&s, &want, lengths, values, too_deep);
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
        /* The plain stretch up to the next escape in one copy: most values have none. */
        const char *stop = memchr(p, '\\', (size_t)(end - p));
        size_t run = (size_t)((stop ? stop : end) - p);
        size_t room = cap - 1 - n;
        memcpy(out + n, p, run < room ? run : room);
        n += run < room ? run : room;
        p += run;
        if (p == end)
            break;
        char tmp[4]; /* p is at a backslash */
        size_t tmp_len = 1;
        p += 1 + decode_escape(p + 1, end, tmp, &tmp_len);
        for (size_t i = 0; i < tmp_len && n + 1 < cap; i++)
            out[n++] = tmp[i];
    }
    out[n] = '\0';
    return (long)n;
}
