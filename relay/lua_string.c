/* kumo.string: kumod's mod-string (crates/mod-string/src/lib.rs), Rust's str methods
 * over Lua strings. Whitespace is ASCII whitespace: Rust's trim and split_whitespace also
 * take Unicode spaces such as U+00A0. psl_domain, psl_suffix, eval_template and wrap are
 * not provided (README: where the relay differs). */
#include "lua_helpers.h"

#include <lauxlib.h>

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/* Rust's split_ascii_whitespace leaves out \v, which is not ASCII whitespace to it. */
static bool is_ascii_whitespace(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\f' || c == '\r';
}

static const char *check_pattern(lua_State *L, int arg, size_t *len)
{
    const char *p = luaL_checklstring(L, arg, len);
    luaL_argcheck(L, *len > 0, arg, "pattern must not be empty");
    return p;
}

/* A Lua integer >= 0, as Rust's usize. */
static size_t check_count(lua_State *L, int arg)
{
    lua_Integer n = luaL_checkinteger(L, arg);
    luaL_argcheck(L, n >= 0, arg, "a non-negative count expected");
    return (size_t)n;
}

/* The last occurrence of sep in s[0..len), or NULL. */
static const char *memrmem(const char *s, size_t len, const char *sep, size_t sep_len)
{
    if (sep_len > len)
        return NULL;
    for (const char *p = s + len - sep_len;; p--) {
        if (memcmp(p, sep, sep_len) == 0)
            return p;
        if (p == s)
            return NULL;
    }
}

/* str::splitn(limit, sep) (at most `limit` pieces, the last the remainder); SIZE_MAX is
 * str::split. Every occurrence of the literal separator, empty pieces kept. */
static int split_forward(lua_State *L, const char *s, size_t len, const char *sep, size_t sep_len,
                         size_t limit)
{
    const char *end = s + len;
    lua_newtable(L);
    for (lua_Integer i = 1; (size_t)i <= limit; i++) {
        const char *hit = (size_t)i < limit ? memmem(s, (size_t)(end - s), sep, sep_len) : NULL;
        lua_pushlstring(L, s, (size_t)((hit ? hit : end) - s));
        lua_rawseti(L, -2, i);
        if (!hit)
            break;
        s = hit + sep_len;
    }
    return 1;
}

/* str::rsplitn / str::rsplit: the same from the end, pieces in the order found. */
static int split_backward(lua_State *L, const char *s, size_t len, const char *sep, size_t sep_len,
                          size_t limit)
{
    lua_newtable(L);
    for (lua_Integer i = 1; (size_t)i <= limit; i++) {
        const char *hit = (size_t)i < limit ? memrmem(s, len, sep, sep_len) : NULL;
        size_t start = hit ? (size_t)(hit - s) + sep_len : 0;
        lua_pushlstring(L, s + start, len - start);
        lua_rawseti(L, -2, i);
        if (!hit)
            break;
        len = (size_t)(hit - s);
    }
    return 1;
}

static int string_split(lua_State *L)
{
    size_t len, sep_len;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *sep = check_pattern(L, 2, &sep_len);
    return split_forward(L, s, len, sep, sep_len, SIZE_MAX);
}

static int string_splitn(lua_State *L)
{
    size_t len, sep_len;
    const char *s = luaL_checklstring(L, 1, &len);
    size_t limit = check_count(L, 2);
    const char *sep = check_pattern(L, 3, &sep_len);
    return split_forward(L, s, len, sep, sep_len, limit);
}

static int string_rsplit(lua_State *L)
{
    size_t len, sep_len;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *sep = check_pattern(L, 2, &sep_len);
    return split_backward(L, s, len, sep, sep_len, SIZE_MAX);
}

static int string_rsplitn(lua_State *L)
{
    size_t len, sep_len;
    const char *s = luaL_checklstring(L, 1, &len);
    size_t limit = check_count(L, 2);
    const char *sep = check_pattern(L, 3, &sep_len);
    return split_backward(L, s, len, sep, sep_len, limit);
}

static int split_spaces(lua_State *L, bool (*space)(char))
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len), *end = s + len;
    lua_newtable(L);
    lua_Integer n = 0;
    while (s < end) {
        while (s < end && space(*s))
            s++;
        const char *word = s;
        while (s < end && !space(*s))
            s++;
        if (s > word) {
            lua_pushlstring(L, word, (size_t)(s - word));
            lua_rawseti(L, -2, ++n);
        }
    }
    return 1;
}

static int string_split_whitespace(lua_State *L)
{
    return split_spaces(L, is_space);
}

static int string_split_ascii_whitespace(lua_State *L)
{
    return split_spaces(L, is_ascii_whitespace);
}

static int trim(lua_State *L, bool start, bool end_too)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *end = s + len;
    while (start && s < end && is_space(*s))
        s++;
    while (end_too && end > s && is_space(end[-1]))
        end--;
    lua_pushlstring(L, s, (size_t)(end - s));
    return 1;
}

static int string_trim(lua_State *L)
{
    return trim(L, true, true);
}

static int string_trim_start(lua_State *L)
{
    return trim(L, true, false);
}

static int string_trim_end(lua_State *L)
{
    return trim(L, false, true);
}

static int string_starts_with(lua_State *L)
{
    size_t len, prefix_len;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *prefix = luaL_checklstring(L, 2, &prefix_len);
    lua_pushboolean(L, prefix_len <= len && memcmp(s, prefix, prefix_len) == 0);
    return 1;
}

static int string_ends_with(lua_State *L)
{
    size_t len, suffix_len;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *suffix = luaL_checklstring(L, 2, &suffix_len);
    lua_pushboolean(L, suffix_len <= len && memcmp(s + len - suffix_len, suffix, suffix_len) == 0);
    return 1;
}

/* str::replacen / str::replace: literal, left to right without overlap. An empty pattern
 * is an error (Rust would insert `to` between every character, which no policy means). */
static int replace(lua_State *L, size_t count)
{
    size_t len, from_len, to_len;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *from = check_pattern(L, 2, &from_len);
    const char *to = luaL_checklstring(L, 3, &to_len);
    const char *end = s + len;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    const char *hit;
    for (size_t n = 0; n < count && (hit = memmem(s, (size_t)(end - s), from, from_len)); n++) {
        luaL_addlstring(&b, s, (size_t)(hit - s));
        luaL_addlstring(&b, to, to_len);
        s = hit + from_len;
    }
    luaL_addlstring(&b, s, (size_t)(end - s));
    luaL_pushresult(&b);
    return 1;
}

static int string_replace(lua_State *L)
{
    return replace(L, SIZE_MAX);
}

static int string_replacen(lua_State *L)
{
    return replace(L, check_count(L, 4));
}

void lua_string_open(lua_State *L)
{
    static const luaL_Reg functions[] = {
        {"split", string_split},
        {"splitn", string_splitn},
        {"rsplit", string_rsplit},
        {"rsplitn", string_rsplitn},
        {"split_whitespace", string_split_whitespace},
        {"split_ascii_whitespace", string_split_ascii_whitespace},
        {"trim", string_trim},
        {"trim_start", string_trim_start},
        {"trim_end", string_trim_end},
        {"starts_with", string_starts_with},
        {"ends_with", string_ends_with},
        {"replace", string_replace},
        {"replacen", string_replacen},
        {NULL, NULL},
    };
    luaL_newlib(L, functions);
    lua_setfield(L, -2, "string");
}
