/* Lua values -> JSON text for kumo.serde, written straight from the Lua value instead of
 * building a jansson tree first: it is cheaper, and jansson would print 0.1 as
 * 0.10000000000000001. Keys are sorted (serde_json's BTreeMap order), so the output of
 * a Lua table is deterministic; tables that came from JSON arrays stay arrays. */
#include "lua_json.h"
#include "lua_nats.h"
#include "lua_record.h"

#include "utf8.h"
#include "xalloc.h"

#include <lauxlib.h>

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* serde_json's recursion limit; deeper tables are almost surely a mistake. */
#define JSON_MAX_DEPTH 128

/* ---- Lua -> JSON text --------------------------------------------------------------- */

struct json_out {
    char *buf;
    size_t len, cap;
    int depth;
    bool pretty; /* serde_json's to_string_pretty: two-space indents, "key": value */
    const void *path[JSON_MAX_DEPTH]; /* the tables being encoded, outermost first */
    char err[96];
};

static int fail(struct json_out *o, const char *message)
{
    snprintf(o->err, sizeof(o->err), "%s", message);
    return -1;
}

static void out_write(struct json_out *o, const void *s, size_t n)
{
    if (n == 0)
        return;
    if (o->len + n > o->cap) {
        o->cap = (o->len + n) * 2 + 64;
        o->buf = xrealloc(o->buf, o->cap);
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
}

static void out_text(struct json_out *o, const char *s)
{
    out_write(o, s, strlen(s));
}

/* Before an element or a closing bracket in pretty mode: a new line at the depth. */
static void out_newline(struct json_out *o, int depth)
{
    if (!o->pretty)
        return;
    out_text(o, "\n");
    for (int i = 0; i < depth; i++)
        out_text(o, "  ");
}

/* Non-ASCII text is written as is, like serde_json; only '"', '\\' and controls escape. */
static int encode_string(struct json_out *o, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + len, *run = p;
    out_text(o, "\"");
    while (p < end) {
        if (*p >= 0x80) {
            size_t n = utf8_sequence(p, (size_t)(end - p));
            if (n == 0)
                return fail(o, "string is not valid UTF-8");
            p += n;
        } else if (*p < 0x20 || *p == '"' || *p == '\\') {
            out_write(o, run, (size_t)(p - run));
            char esc[6];
            out_write(o, esc, json_escape_ascii(*p++, esc));
            run = p;
        } else {
            p++;
        }
    }
    out_write(o, run, (size_t)(p - run));
    out_text(o, "\"");
    return 0;
}

/* The shortest of %.14g (Lua's own format) and %.17g that reads back as the same double;
 * a float with an integral value keeps a ".0" so that it parses back as a float. */
static void format_float(lua_Number x, char *buf, size_t cap)
{
    snprintf(buf, cap, "%.14g", x);
    if (strtod(buf, NULL) != x)
        snprintf(buf, cap, "%.17g", x);
    if (!strpbrk(buf, ".e"))
        strncat(buf, ".0", cap - strlen(buf) - 1);
}

static int encode_number(lua_State *L, int idx, struct json_out *o)
{
    char tmp[48];
    if (lua_isinteger(L, idx)) {
        snprintf(tmp, sizeof(tmp), LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, idx));
    } else {
        lua_Number x = lua_tonumber(L, idx);
        if (!isfinite(x))
            return fail(o, "cannot encode NaN or infinity");
        format_float(x, tmp, sizeof(tmp));
    }
    out_text(o, tmp);
    return 0;
}

/* One key of a table. String keys point into the table's own strings, which stay alive
 * because the table is not modified while it is encoded. */
struct json_key {
    const char *s;
    size_t len;
    int type; /* LUA_TSTRING or LUA_TNUMBER */
    bool is_int;
    lua_Integer i;
    lua_Number n;
    char text[48]; /* a number key as text */
};

struct json_keys {
    struct json_key *items;
    size_t count, cap;
    lua_Integer max; /* the largest positive integer key */
    bool all_positive_int;
};

static const char *key_text(const struct json_key *k, size_t *len)
{
    *len = k->type == LUA_TSTRING ? k->len : strlen(k->text);
    return k->type == LUA_TSTRING ? k->s : k->text;
}

/* Byte order, as serde_json's BTreeMap would give: deterministic output for a Lua table. */
static int key_compare(const void *a, const void *b)
{
    size_t alen, blen;
    const char *as = key_text(a, &alen), *bs = key_text(b, &blen);
    int c = memcmp(as, bs, alen < blen ? alen : blen);
    return c ? c : (alen > blen) - (alen < blen);
}

/* Note the key on top of the stack (the value already popped). */
static int note_key(lua_State *L, struct json_keys *keys, struct json_out *o)
{
    if (keys->count == keys->cap) {
        keys->cap = keys->cap ? keys->cap * 2 : 8;
        keys->items = xrealloc(keys->items, keys->cap * sizeof(*keys->items));
    }
    struct json_key *k = &keys->items[keys->count++];
    k->type = lua_type(L, -1);
    k->is_int = k->type == LUA_TNUMBER && lua_isinteger(L, -1);
    if (k->type == LUA_TSTRING) {
        k->s = lua_tolstring(L, -1, &k->len);
        keys->all_positive_int = false;
    } else if (k->is_int) {
        k->i = lua_tointeger(L, -1);
        snprintf(k->text, sizeof(k->text), LUA_INTEGER_FMT, (LUAI_UACINT)k->i);
        keys->all_positive_int = keys->all_positive_int && k->i >= 1;
        keys->max = k->i > keys->max ? k->i : keys->max;
    } else if (k->type == LUA_TNUMBER) {
        k->n = lua_tonumber(L, -1);
        format_float(k->n, k->text, sizeof(k->text));
        keys->all_positive_int = false;
    } else {
        snprintf(o->err, sizeof(o->err), "cannot use a %s as an object key", luaL_typename(L, -1));
        return -1;
    }
    return 0;
}

static int collect_keys(lua_State *L, int idx, struct json_keys *keys, struct json_out *o)
{
    keys->all_positive_int = true;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (note_key(L, keys, o) != 0) {
            lua_pop(L, 1);
            return -1;
        }
    }
    return 0;
}

static int encode_value(lua_State *L, int idx, struct json_out *o);

/* Elements 1..n; a hole (a JSON null that was parsed) is written back as null. */
static int encode_array(lua_State *L, int idx, lua_Integer n, struct json_out *o)
{
    out_text(o, "[");
    for (lua_Integer i = 1; i <= n; i++) {
        if (i > 1)
            out_text(o, ",");
        out_newline(o, o->depth);
        lua_rawgeti(L, idx, i);
        int rc = encode_value(L, lua_gettop(L), o);
        lua_pop(L, 1);
        if (rc != 0)
            return rc;
    }
    if (n > 0)
        out_newline(o, o->depth - 1);
    out_text(o, "]");
    return 0;
}

static void push_key(lua_State *L, const struct json_key *k)
{
    if (k->type == LUA_TSTRING)
        lua_pushlstring(L, k->s, k->len);
    else if (k->is_int)
        lua_pushinteger(L, k->i);
    else
        lua_pushnumber(L, k->n);
}

static int encode_object(lua_State *L, int idx, struct json_keys *keys, struct json_out *o)
{
    if (keys->count > 1)
        qsort(keys->items, keys->count, sizeof(*keys->items), key_compare);
    out_text(o, "{");
    for (size_t i = 0; i < keys->count; i++) {
        size_t len;
        const char *text = key_text(&keys->items[i], &len);
        if (i > 0)
            out_text(o, ",");
        out_newline(o, o->depth);
        if (encode_string(o, text, len) != 0)
            return -1;
        out_text(o, o->pretty ? ": " : ":");
        push_key(L, &keys->items[i]);
        lua_rawget(L, idx);
        int rc = encode_value(L, lua_gettop(L), o);
        lua_pop(L, 1);
        if (rc != 0)
            return rc;
    }
    if (keys->count > 0)
        out_newline(o, o->depth - 1);
    out_text(o, "}");
    return 0;
}

/* A table whose keys are exactly 1..n is an array; so is a table that came from a JSON
 * array (it carries the array metatable, as mlua marks it) whose keys are all positive
 * integers, empty or with holes where nulls were. Any other table, the empty one
 * included, is an object, as mlua's serializer gives without the marker. */
static int encode_table(lua_State *L, int idx, struct json_out *o)
{
    const void *self = lua_topointer(L, idx);
    for (int i = 0; i < o->depth; i++)
        if (o->path[i] == self)
            return fail(o, "cycle in table");
    if (o->depth == JSON_MAX_DEPTH)
        return fail(o, "tables nested deeper than 128");
    if (!lua_checkstack(L, 4))
        return fail(o, "Lua stack exhausted");
    o->path[o->depth++] = self;
    lua_nats_resolve(L, idx); /* a publish's result: kumod's fields, not the pending ones */
    lua_record_fill(L, idx);  /* a log_record read a member at a time so far */
    struct json_keys keys = {0};
    int rc = collect_keys(L, idx, &keys, o);
    bool array = keys.all_positive_int &&
                 (lua_json_is_array(L, idx) || (keys.count > 0 && (size_t)keys.max == keys.count));
    if (rc == 0 && array)
        rc = encode_array(L, idx, keys.count > 0 ? keys.max : 0, o);
    else if (rc == 0)
        rc = encode_object(L, idx, &keys, o);
    free(keys.items);
    o->depth--;
    return rc;
}

static int encode_value(lua_State *L, int idx, struct json_out *o)
{
    size_t len;
    const char *s;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        out_text(o, "null");
        return 0;
    case LUA_TBOOLEAN:
        out_text(o, lua_toboolean(L, idx) ? "true" : "false");
        return 0;
    case LUA_TNUMBER:
        return encode_number(L, idx, o);
    case LUA_TSTRING:
        s = lua_tolstring(L, idx, &len);
        return encode_string(o, s, len);
    case LUA_TTABLE:
        return encode_table(L, idx, o);
    default:
        snprintf(o->err, sizeof(o->err), "cannot encode a %s", luaL_typename(L, idx));
        return -1;
    }
}

static int json_encode(lua_State *L, bool pretty)
{
    luaL_checkany(L, 1);
    struct json_out o = {.pretty = pretty};
    int rc = encode_value(L, 1, &o);
    if (rc == 0)
        lua_pushlstring(L, o.buf, o.len);
    free(o.buf);
    if (rc != 0)
        return luaL_error(L, "%s: %s", pretty ? "json_encode_pretty" : "json_encode", o.err);
    return 1;
}

int lua_json_encode(lua_State *L)
{
    return json_encode(L, false);
}

int lua_json_encode_pretty(lua_State *L)
{
    return json_encode(L, true);
}
