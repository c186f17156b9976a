/* The lazy log_record (see lua_record.h). A record table not yet filled has the shared
 * metatable below and one private key (a light userdata no policy can forge) holding its
 * state: a userdata with where each top-level member is, and the record line as its user
 * value. A scalar member read is also set in the table itself (made raw), so that reading
 * it again (record.type in every branch of a policy) is a plain table read, with no call.
 * The table holds nothing else: a write to any other key reaches __newindex and fills the
 * table first; a write to a member made raw changes the table in place, and the member
 * made raw is then the table's, not the text's (a read after the policy removed it gives
 * nil, and the fill keeps what the policy left). Everything else that sees the table
 * whole fills it first, so the members made raw are seen only as the filled table has
 * them. */
#include "lua_record.h"

#include "jscan.h"
#include "lua_json.h"
#include "lua_kumo.h"

#include <lauxlib.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static char meta_key, state_key;

/* Members a table holds raw before it is filled: a policy reads a few. Any more are read
 * from the text each time. */
enum { RAW_MAX = 6 };

struct record_state {
    size_t count;
    /* The member the last read found, + 1 (0: none yet). A policy reads the same key again
     * and again (record.type in every branch), and the search for the last duplicate
     * walks every member from the end. */
    size_t hint;
    bool cached; /* UV_KEY and UV_VALUE hold the last nil (or absent) member read */
    unsigned raw_count;
    uint32_t raw[RAW_MAX]; /* the members made raw in the table (see above) */
    struct lua_json_member members[];
};

/* The state userdata's user values: the record line, and the last key read with its
 * value (that read again costs no search and no new string). */
enum { UV_TEXT = 1, UV_KEY = 2, UV_VALUE = 3, UV_COUNT = 3 };

/* lua_json_scan_object's member array, kept between records: the policy runs on the loop
 * thread only. */
static struct {
    struct lua_json_member *members;
    size_t cap;
} scan;

static bool is_unfilled(lua_State *L, int idx)
{
    if (!lua_getmetatable(L, idx))
        return false;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &meta_key);
    bool unfilled = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return unfilled;
}

/* Pushes the state userdata and the record line of the unfilled table at idx. */
static struct record_state *push_state(lua_State *L, int idx, const char **text, size_t *len)
{
    lua_rawgetp(L, idx, &state_key);
    struct record_state *s = lua_touserdata(L, -1);
    lua_getiuservalue(L, -1, UV_TEXT);
    *text = lua_tolstring(L, -1, len);
    return s;
}

static void push_key(lua_State *L, const char *text, size_t len, const struct lua_json_member *m)
{
    if (!m->escaped)
        lua_pushlstring(L, text + m->key + 1, m->key_len);
    else if (!lua_json_push_at(L, text, len, m->key)) /* the scan read it: cannot fail */
        luaL_error(L, "log_record: cannot read a key");
}

/* As fast_object fills a table: in text order, a later duplicate (or null) replacing;
 * then the members made raw get back what the policy left in them. */
static void fill(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    luaL_checkstack(L, 8 + 2 * RAW_MAX, "log_record");
    const char *text;
    size_t len;
    struct record_state *s = push_state(L, idx, &text, &len);
    for (unsigned r = 0; r < s->raw_count; r++) {
        push_key(L, text, len, &s->members[s->raw[r]]);
        lua_pushvalue(L, -1);
        lua_rawget(L, idx);
    }
    lua_pushnil(L);
    lua_rawsetp(L, idx, &state_key);
    lua_pushnil(L);
    lua_setmetatable(L, idx);
    for (size_t i = 0; i < s->count; i++) {
        push_key(L, text, len, &s->members[i]);
        if (!lua_json_push_at(L, text, len, s->members[i].value))
            luaL_error(L, "log_record: cannot read a member");
        lua_rawset(L, idx);
    }
    for (unsigned r = s->raw_count; r-- > 0;)
        lua_rawset(L, idx);
    lua_pop(L, 2);
}

void lua_record_fill(lua_State *L, int idx)
{
    if (lua_type(L, idx) == LUA_TTABLE && is_unfilled(L, idx))
        fill(L, idx);
}

/* Is member m's key the string at key_idx? */
__attribute__((noinline)) static bool escaped_key_is(lua_State *L, const char *text, size_t len,
                                                     const struct lua_json_member *m, int key_idx,
                                                     size_t key_len)
{
    if (key_len > m->key_len) /* decoding never lengthens */
        return false;
    push_key(L, text, len, m);
    bool same = lua_rawequal(L, -1, key_idx);
    lua_pop(L, 1);
    return same;
}

/* Inlined: a search compares ~25 keys, most of them ruled out by their length. */
static inline bool key_is(lua_State *L, const char *text, size_t len,
                          const struct lua_json_member *m, int key_idx, const char *key,
                          size_t key_len)
{
    if (!m->escaped)
        return m->key_len == key_len && memcmp(text + m->key + 1, key, key_len) == 0;
    return escaped_key_is(L, text, len, m, key_idx, key_len);
}

/* Keep key 2 and the value on top for the next read, in the state userdata at ud. */
static void remember(lua_State *L, struct record_state *s, int ud)
{
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, ud, UV_KEY);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, ud, UV_VALUE);
    s->cached = true;
}

/* Was key 2 made raw? __index runs for it only once the policy removed it. */
static bool was_made_raw(lua_State *L, const struct record_state *s, const char *text, size_t len,
                         const char *key, size_t key_len)
{
    for (unsigned r = 0; r < s->raw_count; r++)
        if (key_is(L, text, len, &s->members[s->raw[r]], 2, key, key_len))
            return true;
    return false;
}

/* The value on top, of member i, becomes the table's own (see the top of this file); a
 * null (nil) is remembered instead, as an absent member is. */
static void make_raw(lua_State *L, struct record_state *s, size_t i)
{
    if (lua_isnil(L, -1) || s->raw_count == RAW_MAX) {
        remember(L, s, 3);
        return;
    }
    s->raw[s->raw_count++] = (uint32_t)i;
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -2);
    lua_rawset(L, 1);
}

/* __index: one member, scanned from the text. The last of duplicate keys wins, as in the
 * table. An object or array is a table the policy may change or compare: the record is
 * filled, so that it is the same table every time. */
static int record_index(lua_State *L)
{
    lua_settop(L, 2);
    if (lua_type(L, 2) != LUA_TSTRING) { /* JSON keys are strings */
        lua_pushnil(L);
        return 1;
    }
    lua_rawgetp(L, 1, &state_key);
    struct record_state *s = lua_touserdata(L, 3);
    if (s->cached) {
        lua_getiuservalue(L, 3, UV_KEY);
        if (lua_rawequal(L, -1, 2)) {
            lua_getiuservalue(L, 3, UV_VALUE);
            return 1;
        }
    }
    lua_settop(L, 3);
    size_t key_len, len;
    const char *key = lua_tolstring(L, 2, &key_len), *text;
    lua_getiuservalue(L, 3, UV_TEXT);
    text = lua_tolstring(L, 4, &len);
    if (was_made_raw(L, s, text, len, key, key_len)) {
        lua_pushnil(L);
        return 1;
    }
    size_t i = s->count;
    if (s->hint && key_is(L, text, len, &s->members[s->hint - 1], 2, key, key_len))
        i = s->hint; /* the last member with this key: the search starts on it */
    while (i-- > 0) {
        const struct lua_json_member *m = &s->members[i];
        if (!key_is(L, text, len, m, 2, key, key_len))
            continue;
        s->hint = i + 1;
        if (text[m->value] == '{' || text[m->value] == '[') {
            fill(L, 1);
            lua_pushvalue(L, 2);
            lua_rawget(L, 1);
        } else if (!lua_json_push_at(L, text, len, m->value)) {
            return luaL_error(L, "log_record: cannot read a member");
        } else {
            make_raw(L, s, i);
        }
        return 1;
    }
    lua_pushnil(L);
    remember(L, s, 3);
    return 1;
}

static int record_newindex(lua_State *L)
{
    lua_settop(L, 3);
    fill(L, 1);
    lua_rawset(L, 1);
    return 0;
}

static int record_len(lua_State *L)
{
    fill(L, 1);
    lua_pushinteger(L, (lua_Integer)lua_rawlen(L, 1));
    return 1;
}

/* The base library's functions, as lbaselib.c has them, but a record table is filled
 * before anything sees it raw. */
static int base_next(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_record_fill(L, 1);
    lua_settop(L, 2);
    if (lua_next(L, 1))
        return 2;
    lua_pushnil(L);
    return 1;
}

static int record_pairs(lua_State *L)
{
    fill(L, 1);
    lua_pushcfunction(L, base_next);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

static int base_rawget(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checkany(L, 2);
    lua_settop(L, 2);
    lua_record_fill(L, 1);
    lua_rawget(L, 1);
    return 1;
}

static int base_rawset(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checkany(L, 2);
    luaL_checkany(L, 3);
    lua_settop(L, 3);
    lua_record_fill(L, 1);
    lua_rawset(L, 1);
    return 1;
}

static int base_rawlen(lua_State *L)
{
    int t = lua_type(L, 1);
    luaL_argexpected(L, t == LUA_TTABLE || t == LUA_TSTRING, 1, "table or string");
    lua_record_fill(L, 1);
    lua_pushinteger(L, (lua_Integer)lua_rawlen(L, 1));
    return 1;
}

static int base_getmetatable(lua_State *L)
{
    luaL_checkany(L, 1);
    lua_record_fill(L, 1);
    if (!lua_getmetatable(L, 1)) {
        lua_pushnil(L);
        return 1;
    }
    luaL_getmetafield(L, 1, "__metatable");
    return 1;
}

static int base_setmetatable(lua_State *L)
{
    int t = lua_type(L, 2);
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
    lua_record_fill(L, 1);
    if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
        return luaL_error(L, "cannot change a protected metatable");
    lua_settop(L, 2);
    lua_setmetatable(L, 1);
    return 1;
}

void lua_record_register(lua_State *L)
{
    static const luaL_Reg meta[] = {
        {"__index", record_index},
        {"__newindex", record_newindex},
        {"__len", record_len},
        {"__pairs", record_pairs},
        {NULL, NULL},
    };
    static const luaL_Reg base[] = {
        {"next", base_next},
        {"rawget", base_rawget},
        {"rawset", base_rawset},
        {"rawlen", base_rawlen},
        {"getmetatable", base_getmetatable},
        {"setmetatable", base_setmetatable},
        {NULL, NULL},
    };
    luaL_newlib(L, meta);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &meta_key);
    lua_pushglobaltable(L);
    luaL_setfuncs(L, base, 0);
    lua_pop(L, 1);
}

static void push_eager(lua_State *L, const char *text, size_t len)
{
    char *err;
    if (lua_kumo_push_json(L, text, len, &err) == 0)
        return;
    bool too_deep = strncmp(err, JSCAN_TOO_DEEP, strlen(JSCAN_TOO_DEEP)) == 0;
    free(err);
    if (too_deep)
        lua_kumo_record_unusable(L, JSCAN_TOO_DEEP);
    lua_pushnil(L);
}

void lua_record_push(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    size_t len, count;
    const char *text = lua_tolstring(L, idx, &len);
    if (!lua_json_scan_object(text, len, &scan.members, &scan.cap, &count)) {
        push_eager(L, text, len);
        return;
    }
    size_t size = sizeof(struct record_state) + count * sizeof(scan.members[0]);
    lua_createtable(L, 0, 4); /* the state, and room for the members a policy reads */
    struct record_state *s = lua_newuserdatauv(L, size, UV_COUNT);
    s->count = count;
    s->hint = 0;
    s->cached = false;
    s->raw_count = 0;
    if (count > 0)
        memcpy(s->members, scan.members, count * sizeof(scan.members[0]));
    lua_pushvalue(L, idx);
    lua_setiuservalue(L, -2, UV_TEXT);
    lua_rawsetp(L, -2, &state_key);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &meta_key);
    lua_setmetatable(L, -2);
}
