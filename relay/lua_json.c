/* JSON <-> Lua values with the conventions of KumoMTA's kumo.serde (mlua + serde_json), where
 * a policy can observe them: null is nil, integers stay integers, a table with keys 1..n is
 * an array. Encoding writes text straight from the Lua value instead of building a jansson
 * tree first: it is cheaper, and jansson would print 0.1 as 0.10000000000000001. */
#include "lua_json.h"

#include "jscan.h"
#include "utf8.h"
#include "xalloc.h"

#include <jansson.h>
#include <lauxlib.h>

#include <limits.h>
#include <stdint.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* serde_json's recursion limit; deeper tables are almost surely a mistake. */
#define JSON_MAX_DEPTH 128

/* ---- JSON text -> Lua --------------------------------------------------------------- */

static void push_value(lua_State *L, json_t *value);

/* A null member is left out: in Lua a nil field and a missing field are the same thing. */
static void push_object(lua_State *L, json_t *object)
{
    int members = 0;
    for (void *it = json_object_iter(object); it; it = json_object_iter_next(object, it))
        members += !json_is_null(json_object_iter_value(it));
    lua_createtable(L, 0, members);
    for (void *it = json_object_iter(object); it; it = json_object_iter_next(object, it)) {
        json_t *value = json_object_iter_value(it);
        if (json_is_null(value))
            continue;
        lua_pushlstring(L, json_object_iter_key(it), json_object_iter_key_len(it));
        push_value(L, value);
        lua_rawset(L, -3);
    }
}

/* A null element leaves a hole, so later elements keep their index. */
static void push_array(lua_State *L, json_t *array)
{
    size_t size = json_array_size(array);
    lua_createtable(L, size > INT_MAX ? INT_MAX : (int)size, 0);
    for (size_t i = 0; i < size; i++) {
        json_t *value = json_array_get(array, i);
        if (json_is_null(value))
            continue;
        push_value(L, value);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
}

static void push_value(lua_State *L, json_t *value)
{
    /* jansson caps nesting at 2048, so this cannot run away; it can only fail on OOM. */
    luaL_checkstack(L, 3, "JSON nested too deeply");
    switch (json_typeof(value)) {
    case JSON_OBJECT:
        push_object(L, value);
        break;
    case JSON_ARRAY:
        push_array(L, value);
        break;
    case JSON_STRING:
        lua_pushlstring(L, json_string_value(value), json_string_length(value));
        break;
    case JSON_INTEGER:
        lua_pushinteger(L, (lua_Integer)json_integer_value(value));
        break;
    case JSON_REAL:
        lua_pushnumber(L, json_real_value(value));
        break;
    case JSON_TRUE:
    case JSON_FALSE:
        lua_pushboolean(L, json_is_true(value));
        break;
    case JSON_NULL:
        lua_pushnil(L);
        break;
    }
}

int lua_json_push_reference(lua_State *L, const char *text, size_t len, char **err)
{
    json_error_t error;
    json_t *root = json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &error);
    if (!root) {
        /* The built-in policy's dead letter says the same of such a record (jscan.h). */
        const char *why =
            json_error_code(&error) == json_error_stack_overflow ? JSCAN_TOO_DEEP : error.text;
        *err = xasprintf("%s at line %d column %d", why, error.line, error.column);
        return -1;
    }
    push_value(L, root);
    json_decref(root);
    return 0;
}

/* ---- JSON text -> Lua, directly ------------------------------------------------------
 *
 * A record is parsed straight into Lua values: building jansson's tree first (a malloc per
 * node, a hash table per object) cost more than half of the CPU of a policy that reads
 * log_record. This parser is strict on purpose: whatever it is not sure of (a syntax
 * error, invalid UTF-8, a lone surrogate escape, NUL in a key, an integer that does not
 * fit, a float that overflows, deep nesting) makes it give up, and the text goes to
 * jansson, which yields the same values or the error text it always gave. The values are
 * push_value's: null members left out, null elements left as holes. */

enum { FAST_MAX_DEPTH = JSCAN_MAX_DEPTH };
_Static_assert(JSCAN_MAX_DEPTH == JSON_PARSER_MAX_DEPTH,
               "jscan, this parser and jansson must refuse the same nesting");

struct fast_parser {
    lua_State *L;
    const char *p, *end;
    int depth;
    char *scratch; /* unescaped strings */
    size_t scratch_cap;
};

static bool fast_value(struct fast_parser *f);

static void fast_skip_space(struct fast_parser *f)
{
    while (f->p < f->end && (*f->p == ' ' || *f->p == '\n' || *f->p == '\r' || *f->p == '\t'))
        f->p++;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The code unit of "\uXXXX" at p (which has 6 bytes), or -1. */
static long escape_u16(const char *p)
{
    if (p[0] != '\\' || p[1] != 'u')
        return -1;
    long v = 0;
    for (int i = 2; i < 6; i++) {
        int d = hex_digit(p[i]);
        if (d < 0)
            return -1;
        v = v << 4 | d;
    }
    return v;
}

/* Decodes the escapes of a string whose body starts at s into f->scratch; f->p is at the
 * first backslash. Pushes the string and leaves f->p past the closing quote. */
static bool fast_string_escaped(struct fast_parser *f, const char *s, bool key)
{
    /* Decoding never lengthens: the body so far, then at most as many bytes as remain. */
    size_t need = (size_t)(f->end - s);
    if (need > f->scratch_cap) {
        f->scratch = xrealloc(f->scratch, need);
        f->scratch_cap = need;
    }
    size_t n = (size_t)(f->p - s);
    memcpy(f->scratch, s, n);
    const char *p = f->p;
    while (p < f->end) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') {
            lua_pushlstring(f->L, f->scratch, n);
            f->p = p + 1;
            return true;
        }
        if (c < 0x20)
            return false;
        if (c >= 0x80) {
            size_t len = utf8_sequence((const unsigned char *)p, (size_t)(f->end - p));
            if (len == 0)
                return false;
            memcpy(f->scratch + n, p, len);
            n += len;
            p += len;
            continue;
        }
        if (c != '\\') {
            f->scratch[n++] = (char)c;
            p++;
            continue;
        }
        if (f->end - p < 2)
            return false;
        static const char plain[] = "\"\\/bfnrt", decoded[] = "\"\\/\b\f\n\r\t";
        const char *e = p[1] ? strchr(plain, p[1]) : NULL;
        if (e) {
            f->scratch[n++] = decoded[e - plain];
            p += 2;
            continue;
        }
        long cp = f->end - p >= 6 ? escape_u16(p) : -1;
        if (cp < 0 || (cp >= 0xDC00 && cp <= 0xDFFF) || (cp == 0 && key))
            return false;
        p += 6;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            long low = f->end - p >= 6 ? escape_u16(p) : -1;
            if (low < 0xDC00 || low > 0xDFFF)
                return false;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            p += 6;
        }
        n += utf8_encode((unsigned)cp, f->scratch + n);
    }
    return false;
}

/* f->p is at the opening quote. A string without escapes is pushed from the text itself. */
static bool fast_string(struct fast_parser *f, bool key)
{
    const char *s = ++f->p;
    const unsigned char *p = (const unsigned char *)s, *end = (const unsigned char *)f->end;
    while (p < end) {
        if (*p == '"') {
            lua_pushlstring(f->L, s, (size_t)((const char *)p - s));
            f->p = (const char *)p + 1;
            return true;
        }
        if (*p == '\\') {
            f->p = (const char *)p;
            return fast_string_escaped(f, s, key);
        }
        if (*p < 0x20)
            return false;
        if (*p >= 0x80) {
            size_t n = utf8_sequence(p, (size_t)(end - p));
            if (n == 0)
                return false;
            p += n;
        } else {
            p++;
        }
    }
    return false;
}

static const char *skip_digits(const char *p, const char *end)
{
    while (p < end && *p >= '0' && *p <= '9')
        p++;
    return p;
}

static bool fast_number(struct fast_parser *f)
{
    const char *s = f->p, *p = s, *end = f->end;
    bool negative = p < end && *p == '-';
    p += negative;
    if (p >= end || *p < '0' || *p > '9')
        return false;
    const char *digits = p;
    p = *p == '0' ? p + 1 : skip_digits(p, end);
    const char *int_end = p;
    bool real = false;
    if (p < end && *p == '.') {
        real = true;
        const char *frac = ++p;
        p = skip_digits(p, end);
        if (p == frac)
            return false;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        real = true;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        const char *exp = p;
        p = skip_digits(p, end);
        if (p == exp)
            return false;
    }
    if (!real) {
        uint64_t v = 0;
        for (const char *d = digits; d < int_end; d++) {
            if (v > (UINT64_MAX - 9) / 10)
                return false; /* too many digits for any int64 */
            v = v * 10 + (uint64_t)(*d - '0');
        }
        if (v > (uint64_t)INT64_MAX + negative)
            return false;
        lua_pushinteger(f->L, negative ? (lua_Integer)(0 - v) : (lua_Integer)v);
    } else {
        char buf[64];
        size_t n = (size_t)(p - s);
        if (n >= sizeof(buf))
            return false;
        memcpy(buf, s, n);
        buf[n] = '\0';
        double d = strtod(buf, NULL);
        if (isinf(d))
            return false;
        lua_pushnumber(f->L, d);
    }
    f->p = p;
    return true;
}

static bool fast_literal(struct fast_parser *f, const char *word, size_t len)
{
    if ((size_t)(f->end - f->p) < len || memcmp(f->p, word, len) != 0)
        return false;
    f->p += len;
    return true;
}

static bool fast_object(struct fast_parser *f)
{
    lua_createtable(f->L, 0, 4);
    f->p++;
    fast_skip_space(f);
    if (f->p < f->end && *f->p == '}') {
        f->p++;
        return true;
    }
    for (;;) {
        if (f->p >= f->end || *f->p != '"' || !fast_string(f, true))
            return false;
        fast_skip_space(f);
        if (f->p >= f->end || *f->p != ':')
            return false;
        f->p++;
        fast_skip_space(f);
        if (!fast_value(f))
            return false;
        lua_rawset(f->L, -3); /* a null value (nil) removes an earlier duplicate, as in jansson */
        fast_skip_space(f);
        if (f->p < f->end && *f->p == ',') {
            f->p++;
            fast_skip_space(f);
            continue;
        }
        if (f->p < f->end && *f->p == '}') {
            f->p++;
            return true;
        }
        return false;
    }
}

static bool fast_array(struct fast_parser *f)
{
    lua_createtable(f->L, 4, 0);
    f->p++;
    fast_skip_space(f);
    if (f->p < f->end && *f->p == ']') {
        f->p++;
        return true;
    }
    for (lua_Integer i = 1;; i++) {
        if (!fast_value(f))
            return false;
        if (lua_isnil(f->L, -1))
            lua_pop(f->L, 1);
        else
            lua_rawseti(f->L, -2, i);
        fast_skip_space(f);
        if (f->p < f->end && *f->p == ',') {
            f->p++;
            fast_skip_space(f);
            continue;
        }
        if (f->p < f->end && *f->p == ']') {
            f->p++;
            return true;
        }
        return false;
    }
}

/* Pushes one value (nil for null); f->p is at its first byte. */
static bool fast_value(struct fast_parser *f)
{
    if (f->p >= f->end || !lua_checkstack(f->L, 3))
        return false;
    bool ok;
    switch (*f->p) {
    case '{':
    case '[':
        if (++f->depth > FAST_MAX_DEPTH)
            return false;
        ok = *f->p == '{' ? fast_object(f) : fast_array(f);
        f->depth--;
        return ok;
    case '"':
        return fast_string(f, false);
    case 't':
        ok = fast_literal(f, "true", 4);
        if (ok)
            lua_pushboolean(f->L, 1);
        return ok;
    case 'f':
        ok = fast_literal(f, "false", 5);
        if (ok)
            lua_pushboolean(f->L, 0);
        return ok;
    case 'n':
        ok = fast_literal(f, "null", 4);
        if (ok)
            lua_pushnil(f->L);
        return ok;
    default:
        return fast_number(f);
    }
}

bool lua_json_push_direct(lua_State *L, const char *text, size_t len)
{
    int top = lua_gettop(L);
    struct fast_parser f = {.L = L, .p = text, .end = text + len};
    fast_skip_space(&f);
    bool ok = fast_value(&f);
    if (ok) {
        fast_skip_space(&f);
        ok = f.p == f.end;
    }
    free(f.scratch);
    if (!ok)
        lua_settop(L, top);
    return ok;
}

int lua_json_push(lua_State *L, const char *text, size_t len, char **err)
{
    if (lua_json_push_direct(L, text, len))
        return 0;
    return lua_json_push_reference(L, text, len, err);
}

int lua_json_parse(lua_State *L)
{
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    char *err;
    if (lua_json_push(L, text, len, &err) == 0)
        return 1;
    luaL_where(L, 1);
    lua_pushstring(L, "json_parse: ");
    lua_pushstring(L, err);
    free(err);
    lua_concat(L, 3);
    return lua_error(L);
}

/* ---- Lua -> JSON text --------------------------------------------------------------- */

struct json_out {
    char *buf;
    size_t len, cap;
    int depth;
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

static void escape_char(struct json_out *o, unsigned char c)
{
    char tmp[8];
    switch (c) {
    case '"':
        out_text(o, "\\\"");
        break;
    case '\\':
        out_text(o, "\\\\");
        break;
    case '\n':
        out_text(o, "\\n");
        break;
    case '\r':
        out_text(o, "\\r");
        break;
    case '\t':
        out_text(o, "\\t");
        break;
    case '\b':
        out_text(o, "\\b");
        break;
    case '\f':
        out_text(o, "\\f");
        break;
    default:
        snprintf(tmp, sizeof(tmp), "\\u%04x", c);
        out_text(o, tmp);
    }
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
            escape_char(o, *p++);
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

static int encode_array(lua_State *L, int idx, lua_Integer n, struct json_out *o)
{
    out_text(o, "[");
    for (lua_Integer i = 1; i <= n; i++) {
        if (i > 1)
            out_text(o, ",");
        lua_rawgeti(L, idx, i);
        int rc = encode_value(L, lua_gettop(L), o);
        lua_pop(L, 1);
        if (rc != 0)
            return rc;
    }
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
        if (encode_string(o, text, len) != 0)
            return -1;
        out_text(o, ":");
        push_key(L, &keys->items[i]);
        lua_rawget(L, idx);
        int rc = encode_value(L, lua_gettop(L), o);
        lua_pop(L, 1);
        if (rc != 0)
            return rc;
    }
    out_text(o, "}");
    return 0;
}

/* A table whose keys are exactly 1..n is an array; any other table, the empty one
 * included, is an object. (serde gives [] for an empty table; we choose {} because a
 * policy's empty table is far more often a map, e.g. headers = {}.) */
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
    struct json_keys keys = {0};
    int rc = collect_keys(L, idx, &keys, o);
    if (rc == 0 && keys.count > 0 && keys.all_positive_int && (size_t)keys.max == keys.count)
        rc = encode_array(L, idx, keys.max, o);
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

int lua_json_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    struct json_out o = {0};
    int rc = encode_value(L, 1, &o);
    if (rc == 0)
        lua_pushlstring(L, o.buf, o.len);
    free(o.buf);
    if (rc != 0)
        return luaL_error(L, "json_encode: %s", o.err);
    return 1;
}
