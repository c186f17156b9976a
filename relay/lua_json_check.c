/* lua_json_scan_object: is a record one JSON object that lua_json_push_direct parses, and
 * where are its top-level members? It runs for every record a Lua policy reads
 * log_record of, so it reads a record the way jscan does: a map of the quotes and
 * backslashes (and of the bytes a string must have checked: control bytes and those of
 * 0x80 and above) drawn 32 or 16 bytes at a time, one loop with no recursion, and a plain
 * string is skipped from one stop to the next. Only a string with an escape, a control
 * byte or a multi-byte character is read byte by byte. The walk and the map are jscan's
 * (json_walk.h, json_text.h); the strings and numbers are this file's, because its
 * verdicts must be the direct parser's (lua_json.c), refusals included: the fuzz target
 * compares them. */
#include "lua_json.h"

#include "json_walk.h"
#include "utf8.h"
#include "xalloc.h"

#include <string.h>

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

#ifdef JSON_TEXT_AVX2
__attribute__((target("avx2"))) static void draw_maps_avx2(const char *text, size_t len,
                                                           uint64_t *stops, uint64_t *odd)
{
    json_draw_map_avx2(text, len, stops, odd);
}
#endif

/* The maps of text[0..len) (0 < len <= MAP_WORDS * 64), and a zero word after each. */
static void draw_maps(const char *text, size_t len, uint64_t *stops, uint64_t *odd)
{
#ifdef JSON_TEXT_AVX2
    if (avx2_allowed && __builtin_cpu_supports("avx2")) {
        draw_maps_avx2(text, len, stops, odd);
        return;
    }
#endif
    json_draw_map(text, len, stops, odd);
}

/* ---- strings ------------------------------------------------------------------------- */

/* The rest of a string from p (in its body, past the bytes already checked): the end past
 * its closing quote, or NULL where the direct parser refuses it. */
static const char *string_rest(const char *s, const char *end, bool key)
{
    const unsigned char *p = (const unsigned char *)s, *e = (const unsigned char *)end;
    for (;;) {
        p = json_string_skip(p, e);
        if (p >= e)
            return NULL;
        unsigned char c = *p;
        if (c == '"')
            return (const char *)p + 1;
        size_t n = 1;
        if (c == '\\') {
            n = json_escape_length((const char *)p, end, true, key);
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
    if (c->odd_at < stop) { /* most often the next odd byte is past the string: one test */
        if (c->odd_at < body)
            c->odd_at = json_next_bit(m->text, m->end, m->odd, m->words, body);
        if (c->odd_at < stop)
            return string_rest_mapped(m, c, body, key);
    }
    if (*escaped)
        return string_rest_mapped(m, c, stop, key);
    c->bits = bits & (bits - 1);
    c->w = w;
    return stop + 1;
}

/* ---- numbers and the rest ------------------------------------------------------------ */

/* The number that starts at s, read whole as the direct parser reads it. Kept out of line
 * (long integers and reals are rare), so that number_end inlines. */
__attribute__((noinline)) static const char *number_rest(const char *s, const char *end)
{
    struct json_number n;
    return json_strict_number(s, end, &n);
}

/* The end of the number at p, or NULL where the direct parser refuses it
 * (json_strict_number). An integer of at most 18 digits (any fits) is read inline. */
JSON_INLINE const char *number_end(const char *p, const char *end)
{
    const char *s = p;
    p += p < end && *p == '-';
    if (p >= end || *p < '0' || *p > '9')
        return NULL;
    const char *digits = p;
    p = *p == '0' ? p + 1 : json_digits_end(p, end);
    if (p - digits <= 18 && (p >= end || (*p != '.' && *p != 'e' && *p != 'E')))
        return p;
    return number_rest(s, end);
}

/* ---- the walk (json_walk.h) ---------------------------------------------------------- */

/* The text and its map, the cursor, and the members: the map and cursor are kept apart,
 * and the members in their own fields, so that they stay in registers. */
struct json_walk {
    const struct map *m;
    struct cursor *cur;
    struct lua_json_member *members;
    size_t count, cap;
};

JSON_INLINE const char *walk_string(struct json_walk *w, const char *p, bool key, bool *escaped,
                                    bool mapped)
{
    return string_end(w->m, w->cur, p, key, escaped, mapped);
}

JSON_INLINE const char *walk_number(const char *p, const char *end)
{
    return number_end(p, end);
}

/* A top-level member, listed before its value is read (the list counts only if the whole
 * text is taken). */
JSON_INLINE void walk_key(struct json_walk *w, int depth, const char *key, const char *key_end,
                          bool escaped, const char *value)
{
    if (depth != 1)
        return;
    if (w->count == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 32;
        w->members = xrealloc(w->members, w->cap * sizeof(*w->members));
    }
    w->members[w->count++] = (struct lua_json_member){
        .key = (uint32_t)(key - w->m->text),
        .key_len = (uint32_t)(key_end - key) - 2,
        .value = (uint32_t)(value - w->m->text),
        .escaped = escaped,
    };
}

JSON_INLINE void walk_value_end(struct json_walk *w, int depth, const char *p)
{
    (void)w;
    (void)depth;
    (void)p;
}

JSON_INLINE void walk_too_deep(struct json_walk *w)
{
    (void)w; /* the direct parser gives up; jansson tells the caller why */
}

/* The walk, compiled with and without the map. */
static inline __attribute__((always_inline)) bool check_text(const struct map *in,
                                                             struct members *out, bool mapped)
{
    const struct map m = *in;
    struct cursor cur = {.bits = mapped ? m.stops[0] : 0, .odd_at = m.text};
    struct json_walk w = {.m = &m, .cur = &cur, .members = out->at, .cap = out->cap};
    bool ok = json_walk(&w, m.text, m.end, mapped);
    out->at = w.members;
    out->cap = w.cap;
    out->count = ok ? w.count : 0;
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
