/* JSON text -> Lua values with the conventions of KumoMTA's kumo.serde (mlua + serde_json),
 * where a policy can observe them: null is nil, integers stay integers, and a JSON array
 * becomes a table carrying the array metatable, as mlua's deserializer marks it, so that
 * encoding it again gives an array even when it is empty. The encoder is
 * lua_json_encode.c. */
#include "lua_json.h"

#include "json_text.h"
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

/* ---- the array marker --------------------------------------------------------------- */

/* The registry key of the array metatable: its address. */
static const char array_key;

void lua_json_mark_array(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &array_key) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 1);
        lua_pushliteral(L, "array");
        lua_setfield(L, -2, "__name");
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &array_key);
    }
    lua_setmetatable(L, idx);
}

bool lua_json_is_array(lua_State *L, int idx)
{
    if (!lua_getmetatable(L, idx))
        return false;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &array_key);
    bool is_array = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return is_array;
}

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
    lua_json_mark_array(L, -1);
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
    luaL_checkstack(L, 4, "JSON nested too deeply");
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
    const char *text, *p, *end;
    int depth;
    char *scratch; /* unescaped strings */
    size_t scratch_cap;
};

static bool fast_value(struct fast_parser *f);

/* Records are compact: one compare sees that there is no space to skip, most times. */
static inline void fast_skip_space(struct fast_parser *f)
{
    while (f->p < f->end && (unsigned char)*f->p <= ' ' && json_is_space(*f->p))
        f->p++;
}

/* Decodes the escapes of a string whose body starts at s into f->scratch; f->p is at the
 * first backslash. Pushes the string and leaves f->p past the closing quote. Kept out of
 * line (escapes are rare), so that fast_string is small enough to be inlined. */
__attribute__((noinline)) static bool fast_string_escaped(struct fast_parser *f, const char *s,
                                                          bool key)
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
        unsigned cp = 0;
        size_t len = json_unicode_escape(p, f->end, key, &cp);
        if (len == 0)
            return false;
        p += len;
        n += utf8_encode(cp, f->scratch + n);
    }
    return false;
}

/* f->p is at the opening quote. A string without escapes is pushed from the text itself. */
static inline bool fast_string(struct fast_parser *f, bool key)
{
    const char *s = ++f->p;
    const unsigned char *p = (const unsigned char *)s, *end = (const unsigned char *)f->end;
    while (p < end) {
        p = json_string_skip(p, end);
        if (p >= end)
            break;
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

static bool fast_number(struct fast_parser *f)
{
    struct json_number n;
    const char *p = json_strict_number(f->p, f->end, &n);
    if (!p)
        return false;
    if (n.real)
        lua_pushnumber(f->L, n.value);
    else
        lua_pushinteger(f->L, (lua_Integer)n.integer);
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

/* Past a container's opening bracket (f->p is at it): true if `close` follows at once,
 * an empty container, read past its end. */
static inline bool fast_open(struct fast_parser *f, char close)
{
    f->p++;
    fast_skip_space(f);
    if (f->p < f->end && *f->p == close) {
        f->p++;
        return true;
    }
    return false;
}

/* After a member or an element: 1 past a ',' (another follows), 0 past the container's
 * `close`, -1 when neither comes (not JSON). */
static inline int fast_after(struct fast_parser *f, char close)
{
    fast_skip_space(f);
    if (f->p < f->end && *f->p == ',') {
        f->p++;
        fast_skip_space(f);
        return 1;
    }
    if (f->p < f->end && *f->p == close) {
        f->p++;
        return 0;
    }
    return -1;
}

static bool fast_object(struct fast_parser *f)
{
    lua_createtable(f->L, 0, 4);
    if (fast_open(f, '}'))
        return true;
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
        lua_rawset(f->L, -3); /* a null value (nil) removes an earlier duplicate, as jansson */
        int more = fast_after(f, '}');
        if (more > 0)
            continue;
        return more == 0;
    }
}

static bool fast_array(struct fast_parser *f)
{
    lua_createtable(f->L, 4, 0);
    lua_json_mark_array(f->L, -1);
    if (fast_open(f, ']'))
        return true;
    for (lua_Integer i = 1;; i++) {
        if (!fast_value(f))
            return false;
        if (lua_isnil(f->L, -1))
            lua_pop(f->L, 1);
        else
            lua_rawseti(f->L, -2, i);
        int more = fast_after(f, ']');
        if (more > 0)
            continue;
        return more == 0;
    }
}

/* Pushes one value (nil for null); f->p is at its first byte. */
static bool fast_value(struct fast_parser *f)
{
    if (f->p >= f->end || !lua_checkstack(f->L, 4))
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
    struct fast_parser f = {.L = L, .text = text, .p = text, .end = text + len};
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

bool lua_json_push_at(lua_State *L, const char *text, size_t len, size_t offset)
{
    int top = lua_gettop(L);
    struct fast_parser f = {.L = L, .text = text, .p = text + offset, .end = text + len};
    bool ok = fast_value(&f);
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

/* Blank out the comments json_comments' StripComments removes (`//` and `#` to the end
 * of the line, and block comments), outside strings, keeping every newline so that an error's
 * line and column still point into the text as written. An unterminated block comment
 * is left as is, for the parser to refuse. */
void lua_json_strip_comments(char *s, size_t len)
{
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        if (in_string) {
            if (s[i] == '\\')
                i++;
            else if (s[i] == '"')
                in_string = false;
        } else if (s[i] == '"') {
            in_string = true;
        } else if (s[i] == '#' || (s[i] == '/' && i + 1 < len && s[i + 1] == '/')) {
            for (; i < len && s[i] != '\n'; i++)
                s[i] = ' ';
        } else if (s[i] == '/' && i + 1 < len && s[i + 1] == '*') {
            const char *end = memmem(s + i + 2, len - i - 2, "*/", 2);
            if (!end)
                return;
            for (size_t stop = (size_t)(end - s) + 2; i < stop; i++)
                if (s[i] != '\n')
                    s[i] = ' ';
            i--;
        }
    }
}

int lua_json_parse(lua_State *L)
{
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    char *err, *copy = NULL;
    if (memchr(text, '/', len) || memchr(text, '#', len)) {
        copy = xmalloc(len + 1);
        memcpy(copy, text, len);
        lua_json_strip_comments(copy, len);
        text = copy;
    }
    int rc = lua_json_push(L, text, len, &err);
    free(copy);
    if (rc == 0)
        return 1;
    luaL_where(L, 1);
    lua_pushstring(L, "json_parse: ");
    lua_pushstring(L, err);
    free(err);
    lua_concat(L, 3);
    return lua_error(L);
}
