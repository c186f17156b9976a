/* kumo.serde: kumod's mod-serde (crates/mod-serde/src/lib.rs). JSON is lua_json.c and
 * lua_json_encode.c; YAML is libyaml, with serde_yaml's conventions where a policy can
 * see them: plain scalars resolve as YAML 1.2's core schema (null, true/false, integers,
 * floats; "yes" stays a string), sequences are arrays, mapping keys are strings, and the
 * encoder quotes a string that would read back as something else. TOML has no C library
 * in Debian, so toml_* are not provided. */
#include "lua_helpers.h"

#include "lua_json.h"
#include "lua_kumo.h"
#include "lua_nats.h"
#include "lua_record.h"
#include "xalloc.h"

#include <lauxlib.h>
#include <yaml.h>

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define YAML_MAX_DEPTH 128

/* Read a whole file into a Lua string on the stack, or raise "<fn>: reading file ...". */
static void push_file(lua_State *L, const char *fn, const char *path)
{
    const char *failed_to;
    if (lua_kumo_push_file(L, path, &failed_to) != 0)
        luaL_error(L, "%s: reading file %s: %s", fn, path, strerror(errno));
}

int lua_serde_json_load(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    push_file(L, "json_load", path);
    lua_pushcfunction(L, lua_json_parse);
    lua_insert(L, -2);
    lua_call(L, 1, 1);
    return 1;
}

/* ---- YAML -> Lua ---------------------------------------------------------------------- */

static bool all_digits(const char *s, const char *digits)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!strchr(digits, *s))
            return false;
    return true;
}

/* Push the value of a plain scalar as the YAML 1.2 core schema resolves it. */
static void push_plain_scalar(lua_State *L, const char *s, size_t len)
{
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};
    for (size_t i = 0; i < sizeof(nulls) / sizeof(nulls[0]); i++)
        if (strcmp(s, nulls[i]) == 0) {
            lua_pushnil(L);
            return;
        }
    if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")) {
        lua_pushboolean(L, 1);
        return;
    }
    if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE")) {
        lua_pushboolean(L, 0);
        return;
    }
    const char *body = s + (*s == '-' || *s == '+');
    char *end;
    errno = 0;
    if (all_digits(body, "0123456789")) {
        long long v = strtoll(s, &end, 10);
        if (errno == 0 && *end == '\0') {
            lua_pushinteger(L, v);
            return;
        }
    } else if ((!strncmp(s, "0x", 2) && all_digits(s + 2, "0123456789abcdefABCDEF")) ||
               (!strncmp(s, "0o", 2) && all_digits(s + 2, "01234567"))) {
        long long v = strtoll(s + 2, &end, s[1] == 'x' ? 16 : 8);
        if (errno == 0 && *end == '\0') {
            lua_pushinteger(L, v);
            return;
        }
    }
    if (!strcmp(body, ".inf") || !strcmp(body, ".Inf") || !strcmp(body, ".INF")) {
        lua_pushnumber(L, *s == '-' ? -HUGE_VAL : HUGE_VAL);
        return;
    }
    if (!strcmp(s, ".nan") || !strcmp(s, ".NaN") || !strcmp(s, ".NAN")) {
        lua_pushnumber(L, NAN);
        return;
    }
    if (strpbrk(body, "0123456789") && !strpbrk(body, "xXoO") &&
        strspn(body, "0123456789.eE+-") == strlen(body)) {
        double d = strtod(s, &end);
        if (*end == '\0') {
            lua_pushnumber(L, d);
            return;
        }
    }
    lua_pushlstring(L, s, len);
}

static int push_node(lua_State *L, yaml_document_t *doc, yaml_node_t *node, int depth)
{
    if (depth > YAML_MAX_DEPTH || !lua_checkstack(L, 4))
        return -1;
    switch (node->type) {
    case YAML_SCALAR_NODE: {
        const char *s = (const char *)node->data.scalar.value;
        if (node->data.scalar.style == YAML_PLAIN_SCALAR_STYLE)
            push_plain_scalar(L, s, node->data.scalar.length);
        else
            lua_pushlstring(L, s, node->data.scalar.length);
        return 0;
    }
    case YAML_SEQUENCE_NODE: {
        lua_newtable(L);
        lua_json_mark_array(L, -1);
        lua_Integer i = 0;
        for (yaml_node_item_t *it = node->data.sequence.items.start;
             it < node->data.sequence.items.top; it++) {
            i++;
            if (push_node(L, doc, yaml_document_get_node(doc, *it), depth + 1) != 0)
                return -1;
            lua_rawseti(L, -2, i);
        }
        return 0;
    }
    case YAML_MAPPING_NODE:
        lua_newtable(L);
        for (yaml_node_pair_t *p = node->data.mapping.pairs.start; p < node->data.mapping.pairs.top;
             p++) {
            yaml_node_t *key = yaml_document_get_node(doc, p->key);
            if (key->type != YAML_SCALAR_NODE)
                return -1;
            lua_pushlstring(L, (const char *)key->data.scalar.value, key->data.scalar.length);
            if (push_node(L, doc, yaml_document_get_node(doc, p->value), depth + 1) != 0)
                return -1;
            lua_rawset(L, -3);
        }
        return 0;
    default:
        lua_pushnil(L);
        return 0;
    }
}

static int push_yaml(lua_State *L, const char *fn, const char *text, size_t len)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        lua_pushfstring(L, "%s: %s at line %d column %d", fn,
                        parser.problem ? parser.problem : "invalid YAML",
                        (int)parser.problem_mark.line + 1, (int)parser.problem_mark.column + 1);
        yaml_parser_delete(&parser);
        return lua_error(L);
    }
    int top = lua_gettop(L);
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    int rc = root ? push_node(L, &doc, root, 0) : (lua_pushnil(L), 0);
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    if (rc != 0) {
        lua_settop(L, top);
        return luaL_error(L, "%s: nested too deeply, or a key that is not a scalar", fn);
    }
    return 1;
}

static int serde_yaml_parse(lua_State *L)
{
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    return push_yaml(L, "yaml_parse", text, len);
}

static int serde_yaml_load(lua_State *L)
{
    push_file(L, "yaml_load", luaL_checkstring(L, 1));
    size_t len;
    const char *text = lua_tolstring(L, -1, &len);
    return push_yaml(L, "yaml_load", text, len);
}

/* ---- Lua -> YAML ---------------------------------------------------------------------- */

/* The text goes to a C buffer: the emitter writes while values sit on the Lua stack,
 * which a luaL_Buffer does not allow. */
struct yaml_out {
    yaml_emitter_t emitter;
    char *buf;
    size_t len, cap;
    int depth;
    const char *err;
};

static int write_handler(void *data, unsigned char *buffer, size_t size)
{
    struct yaml_out *o = data;
    if (o->len + size > o->cap) {
        o->cap = (o->len + size) * 2;
        o->buf = xrealloc(o->buf, o->cap);
    }
    memcpy(o->buf + o->len, buffer, size);
    o->len += size;
    return 1;
}

static int emit(struct yaml_out *o, yaml_event_t *event)
{
    if (!yaml_emitter_emit(&o->emitter, event)) {
        o->err = o->emitter.problem ? o->emitter.problem : "cannot emit";
        return -1;
    }
    return 0;
}

static int emit_scalar(struct yaml_out *o, const char *s, size_t len, yaml_scalar_style_t style)
{
    yaml_event_t event;
    yaml_scalar_event_initialize(&event, NULL, (yaml_char_t *)YAML_STR_TAG, (yaml_char_t *)s,
                                 (int)len, 1, 1, style);
    return emit(o, &event);
}

/* A string whose plain form would read back as null, a boolean or a number is quoted. */
static int emit_string(lua_State *L, struct yaml_out *o, const char *s, size_t len)
{
    int top = lua_gettop(L);
    push_plain_scalar(L, s, len);
    bool ambiguous = lua_type(L, -1) != LUA_TSTRING;
    lua_settop(L, top);
    return emit_scalar(o, s, len,
                       ambiguous ? YAML_SINGLE_QUOTED_SCALAR_STYLE : YAML_ANY_SCALAR_STYLE);
}

static int emit_value(lua_State *L, int idx, struct yaml_out *o);

/* Sorted keys, as serde_json's map that kumod encodes from; a table of keys 1..n, or
 * marked as an array, is a sequence (as json_encode decides). */
static int emit_table(lua_State *L, int idx, struct yaml_out *o)
{
    yaml_event_t event;
    if (++o->depth > YAML_MAX_DEPTH) {
        o->err = "tables nested deeper than 128 (or a cycle)";
        return -1;
    }
    lua_nats_resolve(L, idx); /* a publish's result: kumod's fields, not the pending ones */
    lua_record_fill(L, idx);  /* a log_record read a member at a time so far */
    lua_pushnil(L);
    lua_Integer count = 0, max = 0;
    bool positive = true;
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        count++;
        if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1)
            max = lua_tointeger(L, -1) > max ? lua_tointeger(L, -1) : max;
        else
            positive = false;
    }
    bool array = positive && (lua_json_is_array(L, idx) || (count > 0 && max == count));
    int rc = 0;
    if (array) {
        yaml_sequence_start_event_initialize(&event, NULL, NULL, 1, YAML_ANY_SEQUENCE_STYLE);
        rc = emit(o, &event);
        for (lua_Integer i = 1; rc == 0 && i <= max; i++) {
            lua_rawgeti(L, idx, i);
            rc = emit_value(L, lua_gettop(L), o);
            lua_pop(L, 1);
        }
        yaml_sequence_end_event_initialize(&event);
    } else {
        /* keys in byte order of their text, as json_encode writes them */
        lua_newtable(L);
        int keys = lua_gettop(L);
        lua_Integer n = 0;
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            lua_pop(L, 1);
            lua_pushvalue(L, -1);
            lua_rawseti(L, keys, ++n);
        }
        lua_getglobal(L, "table");
        lua_getfield(L, -1, "sort");
        lua_remove(L, -2);
        lua_pushvalue(L, keys);
        luaL_loadstring(L, "local a, b = ... return tostring(a) < tostring(b)");
        if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
            o->err = "cannot sort the keys";
            return -1;
        }
        yaml_mapping_start_event_initialize(&event, NULL, NULL, 1, YAML_ANY_MAPPING_STYLE);
        rc = emit(o, &event);
        for (lua_Integer i = 1; rc == 0 && i <= n; i++) {
            lua_rawgeti(L, keys, i);
            size_t len;
            const char *k = luaL_tolstring(L, -1, &len);
            rc = emit_string(L, o, k, len);
            lua_pop(L, 1);
            if (rc == 0) {
                lua_rawget(L, idx);
                rc = emit_value(L, lua_gettop(L), o);
            }
            lua_pop(L, 1);
        }
        lua_settop(L, keys - 1);
        yaml_mapping_end_event_initialize(&event);
    }
    o->depth--;
    return rc == 0 ? emit(o, &event) : (yaml_event_delete(&event), rc);
}

static int emit_value(lua_State *L, int idx, struct yaml_out *o)
{
    char num[48];
    size_t len;
    const char *s;
    luaL_checkstack(L, 8, "yaml_encode");
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return emit_scalar(o, "null", 4, YAML_PLAIN_SCALAR_STYLE);
    case LUA_TBOOLEAN:
        s = lua_toboolean(L, idx) ? "true" : "false";
        return emit_scalar(o, s, strlen(s), YAML_PLAIN_SCALAR_STYLE);
    case LUA_TNUMBER:
        lua_pushcfunction(L, lua_json_encode);
        lua_pushvalue(L, idx);
        if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
            lua_pop(L, 1);
            lua_Number x = lua_tonumber(L, idx);
            snprintf(num, sizeof(num), "%s", isnan(x) ? ".nan" : x > 0 ? ".inf" : "-.inf");
            return emit_scalar(o, num, strlen(num), YAML_PLAIN_SCALAR_STYLE);
        }
        s = lua_tolstring(L, -1, &len);
        snprintf(num, sizeof(num), "%s", s);
        lua_pop(L, 1);
        return emit_scalar(o, num, len, YAML_PLAIN_SCALAR_STYLE);
    case LUA_TSTRING:
        s = lua_tolstring(L, idx, &len);
        return emit_string(L, o, s, len);
    case LUA_TTABLE:
        return emit_table(L, idx, o);
    default:
        o->err = "cannot encode this type";
        return -1;
    }
}

static int serde_yaml_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    lua_settop(L, 1);
    struct yaml_out o = {0};
    yaml_emitter_initialize(&o.emitter);
    yaml_emitter_set_output(&o.emitter, write_handler, &o);
    yaml_emitter_set_unicode(&o.emitter, 1);
    yaml_event_t event;
    yaml_stream_start_event_initialize(&event, YAML_UTF8_ENCODING);
    int rc = emit(&o, &event);
    yaml_document_start_event_initialize(&event, NULL, NULL, NULL, 1);
    rc = rc ? rc : emit(&o, &event);
    rc = rc ? rc : emit_value(L, 1, &o);
    yaml_document_end_event_initialize(&event, 1);
    rc = rc ? rc : emit(&o, &event);
    yaml_stream_end_event_initialize(&event);
    rc = rc ? rc : emit(&o, &event);
    yaml_emitter_delete(&o.emitter);
    if (rc == 0)
        lua_pushlstring(L, o.buf ? o.buf : "", o.len);
    free(o.buf);
    if (rc != 0)
        return luaL_error(L, "yaml_encode: %s", o.err);
    return 1;
}

void lua_serde_open(lua_State *L)
{
    static const luaL_Reg functions[] = {
        {"json_encode", lua_json_encode},   {"json_encode_pretty", lua_json_encode_pretty},
        {"json_parse", lua_json_parse},     {"json_load", lua_serde_json_load},
        {"yaml_parse", serde_yaml_parse},   {"yaml_load", serde_yaml_load},
        {"yaml_encode", serde_yaml_encode}, {NULL, NULL},
    };
    luaL_newlib(L, functions);
    lua_setfield(L, -2, "serde");
}
