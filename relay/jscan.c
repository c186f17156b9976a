#include "jscan.h"

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

static bool is_ws(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r';
}

/* Whitespace is rare in kumod's records: the first test (a byte above ' ') ends most calls. */
static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (unsigned char)*p <= ' ' && is_ws(*p))
        p++;
    return p;
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
        return end - p >= 6 && is_hex(p[2]) && is_hex(p[3]) && is_hex(p[4]) && is_hex(p[5]) ? 6 : 0;
    default:
        return 0;
    }
}

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

/* The first '"' or '\\' at or after p (p <= end), from the map; the end when there is
 * none (the map has no bits past the end, and a zero word after its last). */
static inline const char *next_stop(const struct scan *s, const char *p)
{
    size_t i = (size_t)(p - s->line), w = i / 64;
    uint64_t bits = s->stops[w] >> (i % 64);
    if (bits)
        return p + __builtin_ctzll(bits);
    while (++w < s->words)
        if (s->stops[w])
            return s->line + w * 64 + __builtin_ctzll(s->stops[w]);
    return s->end;
}

/* The end of the string that opens at p (past its closing quote), or NULL if it is not
 * one. With the map the line has no control byte, so the next stop is the next quote or
 * escape, as find_stop would find. */
static inline const char *string_end(const struct scan *s, const char *p, bool mapped)
{
    p++;
    for (;;) {
        p = mapped ? next_stop(s, p) : find_stop(p, s->end);
        if (p >= s->end)
            return NULL;
        if (*p == '"')
            return p + 1;
        if (*p != '\\')
            return NULL; /* a control byte */
        size_t n = escape_length(p, s->end);
        if (n == 0)
            return NULL;
        p += n;
    }
}

#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* A record's numbers are mostly 10-digit timestamps: 16 bytes are tested at once while
 * that many are left. */
static const char *digits_end(const char *p, const char *end)
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

/* The end of the number at p, or NULL if it is not one. */
static const char *number_end(const char *p, const char *end)
{
    if (p < end && *p == '-')
        p++;
    const char *q = digits_end(p, end);
    if (q == p)
        return NULL;
    p = q;
    if (p < end && *p == '.') {
        q = digits_end(p + 1, end);
        if (q == p + 1)
            return NULL;
        p = q;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        q = digits_end(p, end);
        if (q == p)
            return NULL;
        p = q;
    }
    return p;
}

static const char *literal_end(const char *p, const char *end, const char *word, size_t n)
{
    return (size_t)(end - p) >= n && memcmp(p, word, n) == 0 ? p + n : NULL;
}

const char *jscan_number_end(const char *p, const char *end)
{
    return number_end(p, end);
}

const char *jscan_literal_end(const char *p, const char *end, const char *word, size_t n)
{
    return literal_end(p, end, word, n);
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

/* Past whitespace at p (most often there is none: one test says so). */
#define SKIP_WS(p, end)                                                                            \
    do {                                                                                           \
        if ((p) < (end) && (unsigned char)*(p) <= ' ')                                             \
            (p) = skip_ws((p), (end));                                                             \
    } while (0)

/* The whole line, one loop over its elements (no recursion: a hostile line's nesting
 * costs a bit per level, not a stack frame). kinds has a bit per open container: set for
 * an object. Depth 1 is the top-level object, whose members' values are noted when their
 * key's length is one of lengths (see length_bit): most members' length says they are not
 * wanted. Compiled twice, with and without the map (mapped is a constant in each), so
 * that the per-string work inlines. */
static inline __attribute__((always_inline)) bool scan_line(const struct scan *s,
                                                            struct wanted *want, uint64_t lengths,
                                                            struct jscan_value *values,
                                                            bool *too_deep, bool mapped)
{
    const char *p = s->line, *end = s->end;
    uint64_t kinds[JSCAN_MAX_DEPTH / 64 + 1];
    int depth = 1;
    bool object = true; /* the container at depth */
    const char *key = NULL, *value = NULL;
    size_t key_len = 0;
    *too_deep = false;
    SKIP_WS(p, end);
    if (p >= end || *p != '{')
        return false;
    kinds[0] = 2; /* depth 1: an object */
    p++;
    SKIP_WS(p, end);
    if (p < end && *p == '}') {
        p++;
        goto done;
    }
member: /* in an object, before a key */
    SKIP_WS(p, end);
    if (p >= end || *p != '"')
        return false;
    if (depth == 1)
        key = p;
    if (!(p = string_end(s, p, mapped)))
        return false;
    if (depth == 1)
        key_len = (size_t)(p - key);
    SKIP_WS(p, end);
    if (p >= end || *p != ':')
        return false;
    p++;
value: /* before a value, in the container at depth */
    SKIP_WS(p, end);
    if (p >= end)
        return false;
    if (depth == 1)
        value = p;
    switch (*p) {
    case '"':
        p = string_end(s, p, mapped);
        break;
    case '{':
    case '[':
        object = *p == '{';
        if (++depth > JSCAN_MAX_DEPTH) {
            *too_deep = true;
            return false;
        }
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
        return false;
after: /* a value ended at p, in the container at depth */
    if (depth == 1 && lengths & length_bit(key_len) &&
        !note_key(want, key, key_len, value, (size_t)(p - value), values))
        lengths = 0; /* every key found */
    SKIP_WS(p, end);
    if (p >= end)
        return false;
    if (*p == ',') {
        p++;
        if (object)
            goto member;
        goto value;
    }
    if (*p != (object ? '}' : ']'))
        return false;
    p++;
    if (--depth > 0) {
        object = kinds[depth / 64] >> (depth % 64) & 1;
        goto after;
    }
done:
    SKIP_WS(p, end);
    return p == end;
}

static bool scan_mapped(const struct scan *s, struct wanted *want, uint64_t lengths,
                        struct jscan_value *values, bool *too_deep)
{
    return scan_line(s, want, lengths, values, too_deep, true);
}

static bool scan_bytes(const struct scan *s, struct wanted *want, uint64_t lengths,
                       struct jscan_value *values, bool *too_deep)
{
    return scan_line(s, want, lengths, values, too_deep, false);
}

bool jscan_object(const char *line, size_t len, const char *const *keys, size_t key_count,
                  struct jscan_value *values)
{
    bool too_deep;
    return jscan_object_depth(line, len, keys, key_count, values, &too_deep);
}

/* Lines up to this long get a map of their stops (on the stack); longer ones are read byte
 * by byte. */
enum { STOP_MAP_WORDS = 16384 / 64 };

/* A map of where the quotes and backslashes of a line are, 64 bytes at a time, lets
 * string_end jump from one to the next with a count of trailing zeros: a record's ~60
 * strings then cost a few instructions each instead of a loop over their bytes. The map
 * is most of a record's scan when drawn 16 bytes at a time: with AVX2 (when the CPU has
 * it; the build targets plain x86-64) it is drawn 32 at a time. */
#ifdef __SSE2__
/* Bit i of *stops: p[i] is '"' or '\\'. Returns control with the lanes of p's control
 * bytes set: the caller tests it once per line, not once per block. */
static inline __m128i block_masks(const char *p, uint64_t *stops, __m128i control)
{
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
    const __m128i below = _mm_set1_epi8(0x1f);
    uint64_t bits = 0;
    for (int k = 0; k < 4; k++) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + 16 * k));
        __m128i stop = _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash));
        bits |= (uint64_t)(unsigned)_mm_movemask_epi8(stop) << (16 * k);
        control = _mm_or_si128(control, _mm_cmpeq_epi8(_mm_min_epu8(v, below), v));
    }
    *stops = bits;
    return control;
}

static bool map_stops_sse2(const char *line, size_t len, uint64_t *stops)
{
    __m128i control = _mm_setzero_si128();
    size_t w = 0;
    for (; len - w * 64 >= 64; w++)
        control = block_masks(line + w * 64, &stops[w], control);
    size_t rest = len - w * 64;
    if (rest > 0 && w > 0) {
        /* The last 64 bytes, shifted: no copy, and the bytes read twice are the line's. */
        control = block_masks(line + len - 64, &stops[w], control);
        stops[w++] >>= 64 - rest;
    } else if (rest > 0) {
        char tail[64];
        memset(tail, ' ', sizeof(tail)); /* neither a stop nor a control byte */
        memcpy(tail, line, rest);
        control = block_masks(tail, &stops[w++], control);
    }
    stops[w] = 0;
    return _mm_movemask_epi8(control) == 0;
}
#else
static bool map_stops_sse2(const char *line, size_t len, uint64_t *stops)
{
    size_t w = 0;
    for (; w * 64 < len; w++) {
        uint64_t bits = 0;
        for (size_t k = 0; k < 64 && w * 64 + k < len; k++) {
            unsigned char ch = (unsigned char)line[w * 64 + k];
            if (ch < 0x20)
                return false;
            bits |= (uint64_t)(ch == '"' || ch == '\\') << k;
        }
        stops[w] = bits;
    }
    stops[w] = 0;
    return true;
}
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define JSCAN_AVX2 1

__attribute__((target("avx2"))) static inline __m256i
block_masks_avx2(const char *p, uint64_t *stops, __m256i control)
{
    const __m256i quote = _mm256_set1_epi8('"'), backslash = _mm256_set1_epi8('\\');
    const __m256i below = _mm256_set1_epi8(0x1f);
    __m256i lo = _mm256_loadu_si256((const __m256i *)(const void *)p);
    __m256i hi = _mm256_loadu_si256((const __m256i *)(const void *)(p + 32));
    __m256i stop_lo =
        _mm256_or_si256(_mm256_cmpeq_epi8(lo, quote), _mm256_cmpeq_epi8(lo, backslash));
    __m256i stop_hi =
        _mm256_or_si256(_mm256_cmpeq_epi8(hi, quote), _mm256_cmpeq_epi8(hi, backslash));
    *stops = (uint64_t)(uint32_t)_mm256_movemask_epi8(stop_lo) |
             (uint64_t)(uint32_t)_mm256_movemask_epi8(stop_hi) << 32;
    __m256i ctl = _mm256_or_si256(_mm256_cmpeq_epi8(_mm256_min_epu8(lo, below), lo),
                                  _mm256_cmpeq_epi8(_mm256_min_epu8(hi, below), hi));
    return _mm256_or_si256(control, ctl);
}

/* map_stops_sse2, 32 bytes at a time. */
__attribute__((target("avx2"))) static bool map_stops_avx2(const char *line, size_t len,
                                                           uint64_t *stops)
{
    __m256i control = _mm256_setzero_si256();
    size_t w = 0;
    for (; len - w * 64 >= 64; w++)
        control = block_masks_avx2(line + w * 64, &stops[w], control);
    size_t rest = len - w * 64;
    if (rest > 0 && w > 0) {
        /* The last 64 bytes, shifted: no copy, and the bytes read twice are the line's. */
        control = block_masks_avx2(line + len - 64, &stops[w], control);
        stops[w++] >>= 64 - rest;
    } else if (rest > 0) {
        char tail[64];
        memset(tail, ' ', sizeof(tail)); /* neither a stop nor a control byte */
        memcpy(tail, line, rest);
        control = block_masks_avx2(tail, &stops[w++], control);
    }
    stops[w] = 0;
    return _mm256_testz_si256(control, control);
}
#endif

static bool avx2_allowed = true;

void jscan_allow_avx2(bool allowed)
{
    avx2_allowed = allowed;
}

/* Fills stops[] for line[0..len) (len at most STOP_MAP_WORDS * 64) and a zero word after
 * them. Returns false when the line holds a control byte: a string may not, so only the
 * byte-by-byte read tells where such a line goes wrong (or that it is whitespace). */
static bool map_stops(const char *line, size_t len, uint64_t *stops)
{
#ifdef JSCAN_AVX2
    if (avx2_allowed && __builtin_cpu_supports("avx2"))
        return map_stops_avx2(line, len, stops);
#endif
    return map_stops_sse2(line, len, stops);
}

bool jscan_object_depth(const char *line, size_t len, const char *const *keys, size_t key_count,
                        struct jscan_value *values, bool *too_deep)
{
    struct wanted want;
    uint64_t lengths = wanted_init(&want, keys, key_count, values);
    /* Records end in a newline, a control byte that only the last skip_ws would read. */
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
