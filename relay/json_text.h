/* The byte-level pieces of reading JSON that jscan.c (the built-in policy's scan),
 * lua_json_check.c (the Lua policy's log_record check) and lua_json.c (the direct parser)
 * share: whitespace, digits, literals, \u escapes, a string's plain stretches, and the map
 * of a text's quotes and backslashes. Internal to those files: everything is static
 * inline, so each hot path gets its own copy, specialised by the constants it passes. */
#ifndef RELAY_JSON_TEXT_H
#define RELAY_JSON_TEXT_H

#include "hex.h"
#include "jscan.h"

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define JSON_TEXT_AVX2 1
#endif

#define JSON_INLINE static inline __attribute__((always_inline))

JSON_INLINE bool json_is_space(char ch)
{
    return ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t';
}

/* Past whitespace at p. Records are compact: the first test (a byte above ' ') ends most
 * calls. */
JSON_INLINE const char *json_skip_ws(const char *p, const char *end)
{
    while (p < end && (unsigned char)*p <= ' ' && json_is_space(*p))
        p++;
    return p;
}

/* A record's numbers are mostly 10-digit timestamps: 16 bytes are tested at once while
 * that many are left. */
JSON_INLINE const char *json_digits_end(const char *p, const char *end)
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

/* The end of the literal word[0..n) at p, or NULL. */
JSON_INLINE const char *json_literal_end(const char *p, const char *end, const char *word, size_t n)
{
    return (size_t)(end - p) >= n && memcmp(p, word, n) == 0 ? p + n : NULL;
}

/* The code unit of "\uXXXX" at p (which has 6 bytes), or -1. */
static inline long json_escape_u16(const char *p)
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

/* The \u escape at p (a backslash): its length (6, or 12 for a surrogate pair) with its
 * code point in *cp, or 0 where the direct parser (lua_json.c) refuses it: not \u and 4
 * hex digits, a lone surrogate, \u0000 in a key. */
static inline size_t json_unicode_escape(const char *p, const char *end, bool key, unsigned *cp)
{
    long high = end - p >= 6 ? json_escape_u16(p) : -1;
    if (high < 0 || (high >= 0xDC00 && high <= 0xDFFF) || (high == 0 && key))
        return 0;
    if (high < 0xD800 || high > 0xDBFF) {
        *cp = (unsigned)high;
        return 6;
    }
    long low = end - p >= 12 ? json_escape_u16(p + 6) : -1;
    if (low < 0xDC00 || low > 0xDFFF)
        return 0;
    *cp = 0x10000 + ((unsigned)(high - 0xD800) << 10) + (unsigned)(low - 0xDC00);
    return 12;
}

/* The length of the escape at p (a backslash), or 0 if it is malformed. strict (the Lua
 * check) also refuses what the direct parser refuses (json_unicode_escape); jscan reads
 * only the grammar. */
JSON_INLINE size_t json_escape_length(const char *p, const char *end, bool strict, bool key)
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
    case 'u':
        break;
    default:
        return 0;
    }
    if (!strict)
        return end - p >= 6 && hex_value(p[2]) >= 0 && hex_value(p[3]) >= 0 &&
                       hex_value(p[4]) >= 0 && hex_value(p[5]) >= 0
                   ? 6
                   : 0;
    unsigned cp;
    return json_unicode_escape(p, end, key, &cp);
}

/* A number as the direct parser reads it. */
struct json_number {
    bool real;
    int64_t integer;
    double value; /* of a real */
};

/* The end of the number at p and its value, or NULL where the direct parser (lua_json.c)
 * refuses it: bad grammar (a leading zero ends the integer part), an integer that does
 * not fit an int64, a real of 64 bytes or more or one that overflows (jansson tells why
 * such a text is refused, or reads it). */
static inline const char *json_strict_number(const char *p, const char *end, struct json_number *n)
{
    const char *s = p;
    bool negative = p < end && *p == '-';
    p += negative;
    if (p >= end || *p < '0' || *p > '9')
        return NULL;
    const char *digits = p;
    p = *p == '0' ? p + 1 : json_digits_end(p, end);
    const char *int_end = p;
    n->real = false;
    if (p < end && *p == '.') {
        n->real = true;
        const char *frac = ++p;
        p = json_digits_end(p, end);
        if (p == frac)
            return NULL;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        n->real = true;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        const char *exp = p;
        p = json_digits_end(p, end);
        if (p == exp)
            return NULL;
    }
    if (!n->real) {
        uint64_t v = 0;
        for (const char *d = digits; d < int_end; d++) {
            if (v > (UINT64_MAX - 9) / 10)
                return NULL; /* too many digits for any int64 */
            v = v * 10 + (uint64_t)(*d - '0');
        }
        if (v > (uint64_t)INT64_MAX + negative)
            return NULL;
        n->integer = negative ? (int64_t)(0 - v) : (int64_t)v;
        return p;
    }
    char buf[64];
    size_t len = (size_t)(p - s);
    if (len >= sizeof(buf))
        return NULL;
    memcpy(buf, s, len);
    buf[len] = '\0';
    n->value = strtod(buf, NULL);
    return isinf(n->value) ? NULL : p;
}

/* ---- a string's plain stretches ------------------------------------------------------ */

/* Nonzero when one of the 8 bytes in x is one a strict string reader must look at:
 * jscan's stops, and any byte of a multi-byte UTF-8 sequence (which must be checked). */
JSON_INLINE uint64_t json_word_needs_look(uint64_t x)
{
    return jscan_word_has_stop(x) | (x & 0x8080808080808080ULL);
}

#ifdef __SSE2__
/* One bit for each of the 16 bytes at p that json_word_needs_look flags: a signed compare
 * below 0x20 catches the control bytes and every byte of 0x80 and above at once. */
JSON_INLINE unsigned json_block_needs_look(const unsigned char *p)
{
    __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
    __m128i quote = _mm_cmpeq_epi8(v, _mm_set1_epi8('"'));
    __m128i backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'));
    __m128i low = _mm_cmplt_epi8(v, _mm_set1_epi8(0x20));
    return (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), low));
}
#endif

/* The first byte at or after p that a strict string reader must look at (a quote, a
 * backslash, a control byte or one of 0x80 and above), or a byte before it when fewer
 * than 8 bytes are left. Most of a record's bytes are in strings: 16 at a time with SSE2,
 * else 8. */
JSON_INLINE const unsigned char *json_string_skip(const unsigned char *p, const unsigned char *end)
{
#ifdef __SSE2__
    while (end - p >= 16) {
        unsigned look = json_block_needs_look(p);
        if (look)
            return p + __builtin_ctz(look);
        p += 16;
    }
#endif
    while (end - p >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        uint64_t look = json_word_needs_look(word);
        if (!look)
            p += 8;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        /* The lowest flag is always a real one (a false one only sits above it). */
        else
            return p + __builtin_ctzll(look) / 8;
#else
        else
            return p;
#endif
    }
    return p;
}

/* ---- the map ---------------------------------------------------------------------------
 *
 * A map of where a text's quotes and backslashes are, 64 bytes to a word, lets a scan jump
 * from one to the next with a count of trailing zeros: a record's ~60 strings then cost a
 * few instructions each instead of a loop over their bytes. Drawing it is most of a
 * record's scan when done 16 bytes at a time: with AVX2 (when the CPU has it; the build
 * targets plain x86-64) it is drawn 32 at a time.
 *
 * With odd (the Lua check) a second map marks the bytes a strict string must have checked:
 * those below 0x20 and those of 0x80 and above. Without it (jscan, odd NULL) only whether
 * the text has a control byte at all is gathered, in the lanes of a vector tested once. */

#ifdef __SSE2__
typedef __m128i json_lanes;
#define JSON_LANES_ZERO     _mm_setzero_si128()
#define JSON_LANES_CLEAR(v) (_mm_movemask_epi8(v) == 0)

JSON_INLINE json_lanes json_block(const char *p, uint64_t *stops, uint64_t *odd, json_lanes control)
{
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
    const __m128i below = _mm_set1_epi8(0x1f), space = _mm_set1_epi8(0x20);
    uint64_t s = 0, o = 0;
    for (int k = 0; k < 4; k++) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + 16 * k));
        __m128i stop = _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash));
        s |= (uint64_t)(unsigned)_mm_movemask_epi8(stop) << (16 * k);
        if (odd) /* signed: below 0x20 and 0x80 and above in one compare */
            o |= (uint64_t)(unsigned)_mm_movemask_epi8(_mm_cmplt_epi8(v, space)) << (16 * k);
        else
            control = _mm_or_si128(control, _mm_cmpeq_epi8(_mm_min_epu8(v, below), v));
    }
    *stops = s;
    if (odd)
        *odd = o;
    return control;
}
#else
typedef uint64_t json_lanes;
#define JSON_LANES_ZERO     0
#define JSON_LANES_CLEAR(v) ((v) == 0)

JSON_INLINE json_lanes json_block(const char *p, uint64_t *stops, uint64_t *odd, json_lanes control)
{
    uint64_t s = 0, o = 0;
    for (int k = 0; k < 64; k++) {
        unsigned char ch = (unsigned char)p[k];
        s |= (uint64_t)(ch == '"' || ch == '\\') << k;
        o |= (uint64_t)(ch < 0x20 || ch >= 0x80) << k;
        control |= ch < 0x20;
    }
    *stops = s;
    if (odd)
        *odd = o;
    return control;
}
#endif

#ifdef JSON_TEXT_AVX2
/* json_block, 32 bytes at a time. */
__attribute__((target("avx2"))) JSON_INLINE __m256i json_block_avx2(const char *p, uint64_t *stops,
                                                                    uint64_t *odd, __m256i control)
{
    const __m256i quote = _mm256_set1_epi8('"'), backslash = _mm256_set1_epi8('\\');
    const __m256i below = _mm256_set1_epi8(0x1f), space = _mm256_set1_epi8(0x20);
    __m256i lo = _mm256_loadu_si256((const __m256i *)(const void *)p);
    __m256i hi = _mm256_loadu_si256((const __m256i *)(const void *)(p + 32));
    __m256i stop_lo =
        _mm256_or_si256(_mm256_cmpeq_epi8(lo, quote), _mm256_cmpeq_epi8(lo, backslash));
    __m256i stop_hi =
        _mm256_or_si256(_mm256_cmpeq_epi8(hi, quote), _mm256_cmpeq_epi8(hi, backslash));
    *stops = (uint64_t)(uint32_t)_mm256_movemask_epi8(stop_lo) |
             (uint64_t)(uint32_t)_mm256_movemask_epi8(stop_hi) << 32;
    if (odd) {
        *odd = (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpgt_epi8(space, lo)) |
               (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_cmpgt_epi8(space, hi)) << 32;
        return control;
    }
    __m256i ctl = _mm256_or_si256(_mm256_cmpeq_epi8(_mm256_min_epu8(lo, below), lo),
                                  _mm256_cmpeq_epi8(_mm256_min_epu8(hi, below), hi));
    return _mm256_or_si256(control, ctl);
}
#endif

/* The map(s) of text[0..len) (len at most the maps' words * 64), and a zero word after
 * each; control gathers json_block's lanes. The last 64 bytes of a text longer than one
 * block are read again and the word shifted: no copy, and every byte read is the text's. */
#define JSON_DRAW_MAP(block, text, len, stops, odd, control)                                       \
    do {                                                                                           \
        size_t w_ = 0;                                                                             \
        for (; (len)-w_ * 64 >= 64; w_++)                                                          \
            (control) = block((text) + w_ * 64, &(stops)[w_], (odd) ? &(odd)[w_] : NULL, control); \
        size_t rest_ = (len)-w_ * 64;                                                              \
        if (rest_ > 0 && w_ > 0) {                                                                 \
            (control) =                                                                            \
                block((text) + (len)-64, &(stops)[w_], (odd) ? &(odd)[w_] : NULL, control);        \
            (stops)[w_] >>= 64 - rest_;                                                            \
            if (odd)                                                                               \
                (odd)[w_] >>= 64 - rest_;                                                          \
            w_++;                                                                                  \
        } else if (rest_ > 0) {                                                                    \
            char tail_[64];                                                                        \
            memset(tail_, ' ', sizeof(tail_)); /* neither a stop, odd, nor a control byte */       \
            memcpy(tail_, text, rest_);                                                            \
            (control) = block(tail_, &(stops)[w_], (odd) ? &(odd)[w_] : NULL, control);            \
            w_++;                                                                                  \
        }                                                                                          \
        (stops)[w_] = 0;                                                                           \
        if (odd)                                                                                   \
            (odd)[w_] = 0;                                                                         \
    } while (0)

/* Draws the map(s) of text[0..len) 16 bytes at a time. Returns false when the text has a
 * control byte (only told without odd). */
JSON_INLINE bool json_draw_map(const char *text, size_t len, uint64_t *stops, uint64_t *odd)
{
    json_lanes control = JSON_LANES_ZERO;
    JSON_DRAW_MAP(json_block, text, len, stops, odd, control);
    return JSON_LANES_CLEAR(control);
}

#ifdef JSON_TEXT_AVX2
/* json_draw_map, 32 bytes at a time. */
__attribute__((target("avx2"))) JSON_INLINE bool json_draw_map_avx2(const char *text, size_t len,
                                                                    uint64_t *stops, uint64_t *odd)
{
    __m256i control = _mm256_setzero_si256();
    JSON_DRAW_MAP(json_block_avx2, text, len, stops, odd, control);
    return _mm256_testz_si256(control, control);
}
#endif

/* The first byte at or after p (in text, p <= end) whose bit is set in map (of words
 * words and a zero word after them), or end. */
JSON_INLINE const char *json_next_bit(const char *text, const char *end, const uint64_t *map,
                                      size_t words, const char *p)
{
    size_t i = (size_t)(p - text), w = i / 64;
    uint64_t bits = map[w] >> (i % 64);
    if (bits)
        return p + __builtin_ctzll(bits);
    while (++w < words)
        if (map[w])
            return text + w * 64 + __builtin_ctzll(map[w]);
    return end;
}

#endif
