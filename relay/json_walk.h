/* The walk of one JSON object, the state machine that jscan.c (the built-in policy's scan)
 * and lua_json_check.c (the Lua policy's log_record check) share. One loop over the
 * values, no recursion: a hostile text's nesting costs a bit per level, not a stack frame.
 *
 * Where the two differ, the includer says how: it defines struct json_walk and the hooks
 * declared below, all inlined, so that each file compiles its own copy of the walk (two
 * each: with and without its map, mapped a constant in each).
 * - walk_string: the end of the string at p (past its closing quote), or NULL. jscan reads
 *   JSON's grammar; the Lua check also refuses what the direct parser refuses (invalid
 *   UTF-8, control bytes, lone surrogates, \u0000 in a key) and tells whether it has an
 *   escape.
 * - walk_number: the end of the number at p, or NULL. The Lua check also refuses leading
 *   zeros, integers beyond int64 and reals of 64 bytes or more.
 * - walk_key: a member's key and where its value starts, at every depth (1 is the
 *   top-level object); the Lua check lists the top level's members here.
 * - walk_value_end: a value ended at p; jscan notes the wanted keys' values here.
 * - walk_too_deep: the text nests deeper than JSCAN_MAX_DEPTH (jscan reports it). */
#ifndef RELAY_JSON_WALK_H
#define RELAY_JSON_WALK_H

#include "json_text.h"

struct json_walk;

JSON_INLINE const char *walk_string(struct json_walk *w, const char *p, bool key, bool *escaped,
                                    bool mapped);
JSON_INLINE const char *walk_number(const char *p, const char *end);
JSON_INLINE void walk_key(struct json_walk *w, int depth, const char *key, const char *key_end,
                          bool escaped, const char *value);
JSON_INLINE void walk_value_end(struct json_walk *w, int depth, const char *p);
JSON_INLINE void walk_too_deep(struct json_walk *w);

/* Is text[0..end) one JSON object followed only by whitespace? kinds has a bit per open
 * container, set for an object. */
JSON_INLINE bool json_walk(struct json_walk *w, const char *text, const char *end, bool mapped)
{
    const char *p = text, *key, *key_end;
    uint64_t kinds[JSCAN_MAX_DEPTH / 64 + 1];
    int depth = 1;
    bool object = true; /* the container at depth */
    bool escaped;
    p = json_skip_ws(p, end);
    if (p >= end || *p != '{')
        return false;
    kinds[0] = 2; /* depth 1: an object */
    p = json_skip_ws(p + 1, end);
    if (p < end && *p == '}') {
        p++;
        goto done;
    }
member: /* in an object, past whitespace, before a key */
    if (p >= end || *p != '"')
        return false;
    key = p;
    escaped = false;
    if (!(p = walk_string(w, p, true, &escaped, mapped)))
        return false;
    key_end = p;
    if (p >= end || *p != ':') { /* most often the colon follows at once */
        p = json_skip_ws(p, end);
        if (p >= end || *p != ':')
            return false;
    }
    p = json_skip_ws(p + 1, end);
    if (p >= end)
        return false;
    walk_key(w, depth, key, key_end, escaped, p);
value: /* past whitespace, before a value in the container at depth */
    if (p >= end)
        return false;
    switch (*p) {
    case '"':
        p = walk_string(w, p, false, &escaped, mapped);
        break;
    case '{':
    case '[':
        object = *p == '{';
        if (++depth > JSCAN_MAX_DEPTH) {
            walk_too_deep(w);
            return false;
        }
        kinds[depth / 64] = object ? kinds[depth / 64] | 1ULL << (depth % 64)
                                   : kinds[depth / 64] & ~(1ULL << (depth % 64));
        p = json_skip_ws(p + 1, end);
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
        p = json_literal_end(p, end, "true", 4);
        break;
    case 'f':
        p = json_literal_end(p, end, "false", 5);
        break;
    case 'n':
        p = json_literal_end(p, end, "null", 4);
        break;
    default:
        p = walk_number(p, end);
        break;
    }
    if (!p)
        return false;
after: /* a value ended at p, in the container at depth */
    walk_value_end(w, depth, p);
    if (p >= end)
        return false;
    if ((unsigned char)*p <= ' ') {
        p = json_skip_ws(p, end);
        if (p >= end)
            return false;
    }
    if (*p == ',') {
        p = json_skip_ws(p + 1, end);
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
    p = json_skip_ws(p, end);
    return p == end;
}

#endif
