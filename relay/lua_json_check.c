/* lua_json_scan_object: is a record one JSON object that lua_json_push_direct parses, and
 * where are its top-level members? It runs for every record a Lua policy reads
 * log_record of, so it reads a record the way jscan does: a map of the quotes and
 * backslashes (and of the bytes a string must have checked: control bytes and those of
 * 0x80 and above) drawn 32 or 16 bytes at a time, one loop with no recursion, and a plain
 * string is skipped from one stop to the next. Only a string with an escape, a control
 * byte or a multi-byte character is read byte by byte. Its verdicts must be the direct
 * parser's (lua_json.c), refusals included: the fuzz target compares them. */
#include "lua_json.h"

#include "hex.h"
#include "jscan.h"
#include "utf8.h"
#include "xalloc.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* Records up to this long get a map (on the stack); longer ones are read a string at a
 * time without one. */
enum { MAP_WORDS = 16384 / 64 };

/* The text and its map. check_text copies it into locals, and the members it notes, so
 * that they stay in registers. */
struct map {
    const char *text, *end;
    const uint64_t *stops; /* bit i: text[i] is '"' or '\\'; NULL: no map */
    const uint64_t *odd;   /* bit i: text[i] is below 0x20 or 0x80 and above */
    size_t words;          /* of each map, not counting the zero word after it */
};

struct members {
    struct lua_json_member *at;
    size_t count, cap;
};

/* ---- the map ------------------------------------------------------------------------- */

static bool avx2_allowed = true;

void lua_json_check_allow_avx2(bool allowed)
{
    avx2_allowed = allowed;
}

#ifdef __SSE2__
static inline void block_maps(const char *p, uint64_t *stops, uint64_t *odd)
{
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
    const __m128i space = _mm_set1_epi8(0x20);
    uint64_t s = 0, o = 0;
    for (int k = 0; k < 4; k++) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + 16 * k));
        __m128i stop = _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash));
        s |= (uint64_t)(unsigned)_mm_movemask_epi8(stop) << (16 * k);
        /* Signed: below 0x20 and 0x80 and above in one compare. */
        o |= (uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmplt_epi8(v, space)) << (16 * k);
    }
    *stops = s;
    *odd = o;
}
#else
static inline void block_maps(const char *p, uint64_t *stops, uint64_t *odd)
{
    uint64_t s = 0, o = 0;
    for (int k = 0; k < 64; k++) {
        unsigned char ch = (unsigned char)p[k];
        s |= (uint64_t)(ch == '"' || ch == '\\') << k;
        o |= (uint64_t)(ch < 0x20 || ch >= 0x80) << k;
    }
    *stops = s;
    *odd = o;
}
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CHECK_AVX2 1

__attribute__((target("avx2"))) static inline void block_maps_avx2(const char *p, uint64_t *stops,
                                                                   uint64_t *odd)
{
    const __m256i quote = _mm256_set1_epi8('"'), backslash = _mm256_set1_epi8('\\');
    const __m256i space = _mm256_set1_epi8(0x20);
    __m256i lo = _mm256_loadu_si256((const __m256i *)(const void *)p);
    __m256i hi = _mm256_loadu_si256((const __m256i *)(const void *)(p + 32));
    __m256i stop_lo =
        _mm256_or_si256(_mm256_cmpeq_epi8(lo, quote), _mm256_cmpeq_epi8(lo, backslash));
    __m256i stop_hi =
        _mm256_or_si256(_mm256_cmpeq_epi8(hi, quote), _mm256_cmpeq_epi8(hi, backslash));
    *stops = (uint64_t)(uint32_t)_mm256_movemask_epi8(stop_lo) |
             (uint64_t)(uint32_t)_mm256_movemask_epi8(stop_hi) << 32;
    *odd = (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpgt_epi8(space, lo)) |
           (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpgt_epi8(space, hi)) << 32;
}
#endif

/* The maps of text[0..len) (0 < len <= MAP_WORDS * 64), and a zero word after each. */
#define DRAW_MAPS(block)                                                                           \
    do {                                                                                           \
        size_t w = 0;                                                                              \
        for (; len - w * 64 >= 64; w++)                                                            \
            block(text + w * 64, &stops[w], &odd[w]);                                              \
        size_t rest = len - w * 64;                                                                \
        if (rest > 0 && w > 0) {                                                                   \
            /* The last 64 bytes, shifted: no copy, the bytes read twice are the text's. */        \
            block(text + len - 64, &stops[w], &odd[w]);                                            \
            stops[w] >>= 64 - rest;                                                                \
            odd[w++] >>= 64 - rest;                                                                \
        } else if (rest > 0) {                                                                     \
            char tail[64];                                                                         \
            memset(tail, ' ', sizeof(tail)); /* neither a stop nor odd */                          \
            memcpy(tail, text, rest);                                                              \
            block(tail, &stops[w], &odd[w]);                                                       \
            w++;                                                                                   \
        }                                                                                          \
        stops[w] = odd[w] = 0;                                                                     \
    } while (0)

#ifdef CHECK_AVX2
__attribute__((target("avx2"))) static void draw_maps_avx2(const char *text, size_t len,
                                                           uint64_t *stops, uint64_t *odd)
{
    DRAW_MAPS(block_maps_avx2);
}
#endif

static void draw_maps(const char *text, size_t len, uint64_t *stops, uint64_t *odd)
{
#ifdef CHECK_AVX2
    if (avx2_allowed && __builtin_cpu_supports("avx2")) {
        draw_maps_avx2(text, len, stops, odd);
        return;
    }
#endif
    DRAW_MAPS(block_maps);
}

/* The first byte at or after p whose bit is set in map, or the end. */
static inline const char *next_bit(const struct map *m, const uint64_t *map, const char *p)
{
    size_t i = (size_t)(p - m->text), w = i / 64;
    uint64_t bits = map[w] >> (i % 64);
    if (bits)
        return p + __builtin_ctzll(bits);
    while (++w < m->words)
        if (map[w])
            return m->text + w * 64 + __builtin_ctzll(map[w]);
    return m->end;
}

/* ---- strings ------------------------------------------------------------------------- */

/* The code unit of "\uXXXX" at p (which has 6 bytes), or -1. */
static long escape_u16(const char *p)
{
    if (p[0] != '\\' || p[1] != 'u')
        return -1;
    long v = 0;
    for (int i = 2; i < 6; i++) {
        int d = hex_value(p[i]);
        if (d < 0)
            return -1;
        v = v << 4 | d;
    }
    return v;
}

/* The length of the escape at p (a backslash), or 0 where the direct parser's
 * fast_string_escaped refuses it: a lone surrogate, and \u0000 in a key. */
static size_t escape_length(const char *p, const char *end, bool key)
{
    if (end - p < 2)
        return 0;
    switch (p[1]) {
    case '"':
    case '\\':
    case '/':
    case 'b':
    case 'f':
    case 'n':
    case 'r':
    case 't':
        return 2;
    }
    long cp = end - p >= 6 ? escape_u16(p) : -1;
    if (cp < 0 || (cp >= 0xDC00 && cp <= 0xDFFF) || (cp == 0 && key))
        return 0;
    if (cp < 0xD800 || cp > 0xDBFF)
        return 6;
    long low = end - p >= 12 ? escape_u16(p + 6) : -1;
    return low >= 0xDC00 && low <= 0xDFFF ? 12 : 0;
}

#ifdef __SSE2__
/* One bit for each of the 16 bytes at p that string_rest must look at. */
static inline unsigned block_needs_look(const unsigned char *p)
{
    __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
    __m128i quote = _mm_cmpeq_epi8(v, _mm_set1_epi8('"'));
    __m128i backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'));
    __m128i low = _mm_cmplt_epi8(v, _mm_set1_epi8(0x20));
    return (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), low));
}
#endif

/* The first byte at or after p that is a quote, a backslash or odd (p itself when fewer
 * than 16 bytes are left, or without SSE2). */
static inline const unsigned char *skip_plain(const unsigned char *p, const unsigned char *end)
{
#ifdef __SSE2__
    while (end - p >= 16) {
        unsigned look = block_needs_look(p);
        if (look)
            return p + __builtin_ctz(look);
        p += 16;
    }
#endif
    return p;
}

/* The rest of a string from p (in its body, past the bytes already checked): the end past
 * its closing quote, or NULL where the direct parser refuses it. */
static const char *string_rest(const char *s, const char *end, bool key)
{
    const unsigned char *p = (const unsigned char *)s, *e = (const unsigned char *)end;
    for (;;) {
        p = skip_plain(p, e);
        if (p >= e)
            return NULL;
        unsigned char c = *p;
        if (c == '"')
            return (const char *)p + 1;
        size_t n = 1;
        if (c == '\\') {
            n = escape_length((const char *)p, end, key);
        } else if (c < 0x20) {
            n = 0;
        } else if (c >= 0x80) {
            n = utf8_sequence(p, (size_t)(e - p));
        }
        if (n == 0)
            return NULL;
        p += n;
    }
}

/* Where check_text is in the map. Every quote or backslash before a string is in an earlier
 * string (outside one, a quote opens one and a backslash is an error), so the lowest bit
 * left in bits (of stops[w]) is the quote that opens the next string, and the one after
 * it its closing quote or first escape: no search from a position, most of the time. */
struct cursor {
    uint64_t bits; /* stops[w], less the bits before the next string */
    size_t w;
    const char *odd_at; /* the first odd byte at or after some byte before the string */
};

/* The cursor past e (the end of a string read byte by byte). */
static inline void cursor_at(const struct map *m, struct cursor *c, const char *e)
{
    size_t i = (size_t)(e - m->text);
    c->w = i / 64;
    c->bits = m->stops[c->w] & ~0ULL << (i % 64);
}

/* The rest of a string read byte by byte from p, and the cursor after it. */
static const char *string_rest_mapped(const struct map *m, struct cursor *c, const char *p,
                                      bool key)
{
    const char *e = string_rest(p, m->end, key);
    if (e)
        cursor_at(m, c, e);
    return e;
}

/* The end of the string that opens at p (past its closing quote), or NULL; *escaped tells
 * whether it has an escape. With the map, a string with neither escapes nor odd bytes is
 * one step of the cursor to its closing quote; a string that ends before c->odd_at has no
 * odd byte. */
static inline const char *string_end(const struct map *m, struct cursor *c, const char *p, bool key,
                                     bool *escaped, bool mapped)
{
    const char *body = p + 1;
    if (!mapped) {
        const char *e = string_rest(body, m->end, key);
        *escaped = e && memchr(body, '\\', (size_t)(e - body));
        return e;
    }
    uint64_t bits = c->bits;
    size_t w = c->w;
    while (!bits) /* to the opening quote, which is p: there is one */
        bits = m->stops[++w];
    bits &= bits - 1;
    while (!bits) {
        if (++w >= m->words)
            return NULL; /* no closing quote */
        bits = m->stops[w];
    }
    const char *stop = m->text + w * 64 + __builtin_ctzll(bits);
    *escaped = *stop == '\\';
    if (c->odd_at < body)
        c->odd_at = next_bit(m, m->odd, body);
    if (c->odd_at < stop)
        return string_rest_mapped(m, c, body, key);
    if (*escaped)
        return string_rest_mapped(m, c, stop, key);
    c->bits = bits & (bits - 1);
    c->w = w;
    return stop + 1;
}

/* ---- numbers and the rest ------------------------------------------------------------ */

/* Does the integer of digits [d, e) fit an int64 (negated when negative)? */
static bool integer_fits(const char *d, const char *e, bool negative)
{
    uint64_t v = 0;
    for (; d < e; d++) {
        if (v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(*d - '0');
    }
    return v <= (uint64_t)INT64_MAX + negative;
}

/* Is the real [s, e) one that fast_number takes: shorter than 64 bytes, not overflowing? */
static bool real_fits(const char *s, const char *e)
{
    char buf[64];
    size_t n = (size_t)(e - s);
    if (n >= sizeof(buf))
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return !isinf(strtod(buf, NULL));
}

/* A record's numbers are mostly 10-digit timestamps: 16 bytes are tested at once while
 * that many are left (as jscan's digits_end). */
static inline const char *digits_end(const char *p, const char *end)
{
#ifdef __SSE2__
    const __m128i zero = _mm_set1_epi8('0'), nine = _mm_set1_epi8('9');
    for (; end - p >= 16; p += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i digit = _mm_and_si128(_mm_cmpeq_epi8(_mm_max_epu8(v, zero), v),
                                      _mm_cmpeq_epi8(_mm_min_epu8(v, nine), v));
        unsigned other = ~(unsigned)_mm_movemask_epi8(digit) & 0xffff;
        if (other)
            return p + __builtin_ctz(other);
    }
#endif
    while (p < end && *p >= '0' && *p <= '9')
        p++;
    return p;
}

/* number_end past the integer part (which ends at p, its digits at digits): the fraction
 * and exponent, and whether fast_number takes the number that started at s. */
static const char *number_rest(const char *s, const char *digits, const char *p, const char *end)
{
    const char *int_end = p;
    bool real = false;
    if (p < end && *p == '.') {
        real = true;
        const char *frac = ++p;
        p = digits_end(p, end);
        if (p == frac)
            return NULL;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        real = true;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        const char *exp = p;
        p = digits_end(p, end);
        if (p == exp)
            return NULL;
    }
    if (!real)
        return integer_fits(digits, int_end, *s == '-') ? p : NULL;
    return real_fits(s, p) ? p : NULL;
}

/* The end of the number at p, or NULL where fast_number refuses it: bad grammar (a leading
 * zero ends the integer part), an integer that does not fit an int64, a real that
 * real_fits does not take. An integer of at most 18 digits (any fits) is read inline. */
static inline const char *number_end(const char *p, const char *end)
{
    const char *s = p;
    p += p < end && *p == '-';
    if (p >= end || *p < '0' || *p > '9')
        return NULL;
    const char *digits = p;
    p = *p == '0' ? p + 1 : digits_end(p, end);
    if (p - digits <= 18 && (p >= end || (*p != '.' && *p != 'e' && *p != 'E')))
        return p;
    return number_rest(s, digits, p, end);
}

static const char *literal_end(const char *p, const char *end, const char *word, size_t n)
{
    return (size_t)(end - p) >= n && memcmp(p, word, n) == 0 ? p + n : NULL;
}

static inline bool is_space(char ch)
{
    return ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t';
}

/* Past whitespace at p (most often there is none: one test says so). */
#define SKIP_WS(p, end)                                                                            \
    do {                                                                                           \
        while ((p) < (end) && (unsigned char)*(p) <= ' ' && is_space(*(p)))                        \
            (p)++;                                                                                 \
    } while (0)

/* The whole text, one loop over its values as jscan's scan_line (kinds has a bit per open
 * container, set for an object), compiled with and without the map. */
static inline __attribute__((always_inline)) bool check_text(const struct map *in,
                                                             struct members *out, bool mapped)
{
    const struct map m = *in;
    const char *p = m.text, *end = m.end;
    struct cursor cur = {.bits = mapped ? m.stops[0] : 0, .odd_at = m.text};
    struct lua_json_member *members = out->at;
    size_t count = 0, cap = out->cap;
    bool ok = false;
    uint64_t kinds[JSCAN_MAX_DEPTH / 64 + 1];
    int depth = 1;
    bool object = true; /* the container at depth */
    const char *key, *key_end;
    bool escaped;
    SKIP_WS(p, end);
    if (p >= end || *p != '{')
        goto out;
    kinds[0] = 2; /* depth 1: an object */
    p++;
    SKIP_WS(p, end);
    if (p < end && *p == '}') {
        p++;
        goto done;
    }
member: /* in an object, before a key */
    if (p >= end || *p != '"')
        goto out;
    key = p;
    escaped = false;
    if (!(p = string_end(&m, &cur, p, true, &escaped, mapped)))
        goto out;
    key_end = p;
    if (p >= end || *p != ':') { /* most often the colon follows at once */
        SKIP_WS(p, end);
        if (p >= end || *p != ':')
            goto out;
    }
    p++;
    SKIP_WS(p, end);
    if (p < end && depth == 1) {
        if (count == cap) {
            cap = cap ? cap * 2 : 32;
            members = xrealloc(members, cap * sizeof(*members));
        }
        members[count++] = (struct lua_json_member){
            .key = (uint32_t)(key - m.text),
            .key_len = (uint32_t)(key_end - key) - 2,
            .value = (uint32_t)(p - m.text),
            .escaped = escaped,
        };
    }
value: /* before a value, in the container at depth */
    if (p >= end)
        goto out;
    switch (*p) {
    case '"':
        p = string_end(&m, &cur, p, false, &escaped, mapped);
        break;
    case '{':
    case '[':
        object = *p == '{';
        if (++depth > JSCAN_MAX_DEPTH)
            goto out;
        kinds[depth / 64] = object ? kinds[depth / 64] | 1ULL << (depth % 64)
                                   : kinds[depth / 64] & ~(1ULL << (depth % 64));
        p++;
        SKIP_WS(p, end);
        if (p < end && *p == (object ? '}' : ']')) {
            p++;
            depth--;
            object = kinds[depth / 64] >> (depth % 64) & 1;
            break;
        }
        if (object)
            goto member;
        goto value;
    case 't':
        p = literal_end(p, end, "true", 4);
        break;
    case 'f':
        p = literal_end(p, end, "false", 5);
        break;
    case 'n':
        p = literal_end(p, end, "null", 4);
        break;
    default:
        p = number_end(p, end);
        break;
    }
    if (!p)
        goto out;
after: /* a value ended at p, in the container at depth */
    if (p >= end)
        goto out;
    if ((unsigned char)*p <= ' ') {
        SKIP_WS(p, end);
        if (p >= end)
            goto out;
    }
    if (*p == ',') {
        p++;
        if (p < end && (unsigned char)*p <= ' ')
            SKIP_WS(p, end);
        if (object)
            goto member;
        goto value;
    }
    if (*p != (object ? '}' : ']'))
        goto out;
    p++;
    if (--depth > 0) {
        object = kinds[depth / 64] >> (depth % 64) & 1;
        goto after;
    }
done:
    SKIP_WS(p, end);
    ok = p == end;
out:
    out->at = members;
    out->cap = cap;
    out->count = ok ? count : 0;
    return ok;
}

static bool check_mapped(const struct map *m, struct members *out)
{
    return check_text(m, out, true);
}

static bool check_unmapped(const struct map *m, struct members *out)
{
    return check_text(m, out, false);
}

bool lua_json_scan_object(const char *text, size_t len, struct lua_json_member **members,
                          size_t *cap, size_t *count)
{
    struct map m = {.text = text, .end = text + len};
    struct members out = {.at = *members, .cap = *cap};
    bool ok = false;
    if (len > MAP_WORDS * 64) {
        ok = len <= UINT32_MAX && check_unmapped(&m, &out);
    } else if (len > 0) {
        uint64_t stops[MAP_WORDS + 1], odd[MAP_WORDS + 1];
        draw_maps(text, len, stops, odd);
        m.stops = stops;
        m.odd = odd;
        m.words = (len + 63) / 64;
        ok = check_mapped(&m, &out);
    }
    *members = out.at;
    *cap = out.cap;
    *count = ok ? out.count : 0;
    return ok;
}
