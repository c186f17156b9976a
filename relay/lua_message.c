/* The Message userdata. It runs once per record (~100k/s), so pushing one allocates nothing
 * but the userdata itself: the record line is borrowed, the meta table is created only when
 * a policy sets meta or asks for log_record, and the id is computed only when asked. The
 * line becomes a Lua string once, when first needed (get_data, log_record, or a hold), and
 * that one copy serves all three. */
#include "lua_message.h"

#include "jscan.h"
#include "lua_kumo.h"
#include "lua_record.h"
#include "msgid.h"

#include <lauxlib.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MESSAGE_METATABLE "kumo.Message"
#define ADDRESS_METATABLE "kumo.Address"

/* The userdata's user values: the meta table, the data a policy set with set_data, the
 * record line as a Lua string, (once pinned) the default queue's name, and the two meta a
 * policy reads and sets on every record, 'log_record' and 'queue', kept out of the meta
 * table so that most records need none. They live inside the userdata, so they cost no
 * allocation until used. A nil one is unset, as a nil member of the meta table is. */
enum {
    UV_META = 1,
    UV_DATA = 2,
    UV_RECORD = 3,
    UV_DEFAULT_QUEUE = 4,
    UV_LOG_RECORD = 5,
    UV_QUEUE = 6,
    UV_COUNT = 6
};

/* Segment names the message copies when pinned (kumod's are 25 bytes); a longer one has
 * the id computed at the pin instead. */
enum { SEGMENT_COPY = 48 };

struct message {
    const char *record; /* the line with its '\n': borrowed, or UV_RECORD's once pinned */
    size_t record_len;
    const char *segment; /* the segment's own name, or segment_copy once pinned */
    /* The configuration's: it outlives the Lua state (relay_reload.c frees the old
     * configuration after the old policy). */
    const char *relay_id;
    const char *default_queue; /* borrowed, or UV_DEFAULT_QUEUE's once pinned */
    uint64_t end;
    uint64_t id[2];
    int attempts;
    bool has_id, pinned, dead;
    bool log_record_done; /* log_record parsed (or set) once; never parse again */
    char segment_copy[SEGMENT_COPY];
};

/* The metatable, by address: luaL_checkudata finds it by name, which cost a string lookup
 * on every method call. The methods have it as their upvalue, which costs no lookup. */
static char message_meta_key;

/* The message at idx, which the C caller knows is one (it pushed it, or holds it). */
static struct message *message_get(lua_State *L, int idx)
{
    return lua_touserdata(L, idx);
}

/* Argument 1 of the running method if it is a Message, else NULL. */
static struct message *self_message(lua_State *L)
{
    struct message *m = lua_touserdata(L, 1);
    if (!m || !lua_getmetatable(L, 1))
        return NULL;
    bool same = lua_rawequal(L, -1, lua_upvalueindex(1));
    lua_pop(L, 1);
    return same ? m : NULL;
}

/* Every method starts here: a detached message's record buffer may already be reused. */
static struct message *message_live(lua_State *L)
{
    struct message *m = self_message(L);
    if (!m)
        m = luaL_checkudata(L, 1, MESSAGE_METATABLE); /* raises its usual error */
    if (m->dead)
        luaL_error(L, "message used after its hook returned");
    return m;
}

/* ---- id ----------------------------------------------------------------------------- */

/* Deterministic per (relay_id, segment, end offset): a replayed record gets the same id. */
static void message_id(struct message *m)
{
    if (m->has_id)
        return;
    msgid_hash128(m->relay_id ? m->relay_id : "", m->segment ? m->segment : "", m->end, m->id);
    m->has_id = true;
}

/* Push the record line as a Lua string, made once. The string is anchored in the
 * userdata, so its bytes can stand for the borrowed ones once the message is pinned. */
static const char *push_record(lua_State *L, int idx, const struct message *m)
{
    if (lua_getiuservalue(L, idx, UV_RECORD) != LUA_TSTRING) {
        lua_pop(L, 1);
        lua_pushlstring(L, m->record, m->record_len);
        lua_pushvalue(L, -1);
        lua_setiuservalue(L, idx, UV_RECORD);
    }
    return lua_tostring(L, -1);
}

/* ---- meta --------------------------------------------------------------------------- */

/* Push the meta table, creating it on first use. */
static void meta_table(lua_State *L, int idx)
{
    if (lua_getiuservalue(L, idx, UV_META) == LUA_TTABLE)
        return;
    lua_pop(L, 1);
    lua_createtable(L, 0, 4);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, idx, UV_META);
}

/* The user value that holds the meta `key` (of key_len bytes), or UV_META for the meta
 * table. */
static int meta_slot(const char *key, size_t key_len)
{
    if (key_len == 10 && memcmp(key, "log_record", 10) == 0)
        return UV_LOG_RECORD;
    if (key_len == 5 && memcmp(key, "queue", 5) == 0)
        return UV_QUEUE;
    return UV_META;
}

/* Push the meta `key` (a string at index key) if set; returns false (nothing pushed) if
 * not. */
static bool meta_get(lua_State *L, int idx, int key, int slot)
{
    if (slot != UV_META) {
        if (lua_getiuservalue(L, idx, slot) != LUA_TNIL)
            return true;
    } else if (lua_getiuservalue(L, idx, UV_META) == LUA_TTABLE) {
        lua_pushvalue(L, key);
        if (lua_rawget(L, -2) != LUA_TNIL) {
            lua_remove(L, -2);
            return true;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return false;
}

/* The record parsed once and kept in meta; nil when the line is not JSON (a per-record
 * template can write anything). A record nested deeper than the parsers go is JSON that
 * cannot be read: asking for it dead-letters the record with the reason the built-in
 * policy gives when its subject needs a field (policy_builtin.c), so both policies agree. */
static int push_log_record(lua_State *L, struct message *m)
{
    m->log_record_done = true;
    push_record(L, 1, m);
    lua_record_push(L, -1);
    lua_remove(L, -2);
    if (lua_isnil(L, -1))
        return 1;
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, 1, UV_LOG_RECORD);
    return 1;
}

static struct jscan_value envelope_field(const struct message *m, const char *name);

/* kumod builds a log hook's message from the record's own `meta` object (tenant,
 * campaign, whatever configure_local_logs' `meta` captured), so get_meta reads through
 * to it. Scanned per call rather than parsed into the meta table: most policies ask for
 * one or two keys, and most records are never asked. */
static void push_record_meta(lua_State *L, const struct message *m, const char *key)
{
    struct jscan_value meta = envelope_field(m, "meta");
    const char *const keys[] = {key};
    struct jscan_value value = {NULL, 0};
    char *err = NULL;
    if (!meta.raw || meta.raw[0] != '{' || !jscan_object(meta.raw, meta.len, keys, 1, &value) ||
        !value.raw || lua_kumo_push_json(L, value.raw, value.len, &err) != 0) {
        free(err);
        lua_pushnil(L);
    }
}

static int message_get_meta(lua_State *L)
{
    struct message *m = message_live(L);
    size_t key_len;
    const char *key = luaL_checklstring(L, 2, &key_len);
    int slot = meta_slot(key, key_len);
    if (meta_get(L, 1, 2, slot))
        return 1;
    if (!m->log_record_done && slot == UV_LOG_RECORD)
        return push_log_record(L, m);
    if (strcmp(key, "reception_protocol") == 0)
        lua_pushliteral(L, "LogRecord");
    else
        push_record_meta(L, m, key);
    return 1;
}

static int message_set_meta(lua_State *L)
{
    struct message *m = message_live(L);
    size_t key_len;
    const char *key = luaL_checklstring(L, 2, &key_len);
    luaL_checkany(L, 3);
    int slot = meta_slot(key, key_len);
    if (slot != UV_META) {
        lua_settop(L, 3);
        lua_setiuservalue(L, 1, slot);
    } else {
        meta_table(L, 1);
        lua_pushvalue(L, 2);
        lua_pushvalue(L, 3);
        lua_rawset(L, -3);
    }
    /* A policy's own log_record replaces the parsed one, even when it sets nil. */
    if (slot == UV_LOG_RECORD)
        m->log_record_done = true;
    return 0;
}

/* ---- data --------------------------------------------------------------------------- */

static int message_get_data(lua_State *L)
{
    struct message *m = message_live(L);
    if (lua_getiuservalue(L, 1, UV_DATA) == LUA_TSTRING)
        return 1;
    lua_pop(L, 1);
    push_record(L, 1, m);
    return 1;
}

static int message_set_data(lua_State *L)
{
    message_live(L);
    luaL_checkstring(L, 2);
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, 1, UV_DATA);
    return 0;
}

/* ---- envelope addresses ------------------------------------------------------------- */

/* An address object: { user, domain, email } whose tostring is the email. The domain is
 * after the last '@' (a quoted local part may hold one); no '@' leaves domain "". */
static void push_address(lua_State *L, const char *email, size_t len)
{
    const char *at = memrchr(email, '@', len);
    lua_createtable(L, 0, 3);
    lua_pushlstring(L, email, at ? (size_t)(at - email) : len);
    lua_setfield(L, -2, "user");
    if (at)
        lua_pushlstring(L, at + 1, len - (size_t)(at - email) - 1);
    else
        lua_pushliteral(L, "");
    lua_setfield(L, -2, "domain");
    lua_pushlstring(L, email, len);
    lua_setfield(L, -2, "email");
    luaL_setmetatable(L, ADDRESS_METATABLE);
}

static int address_tostring(lua_State *L)
{
    lua_getfield(L, 1, "email");
    return 1;
}

/* The raw JSON of a top-level field; a scan, not a parse: sender() must not cost a full
 * jansson parse of the record. */
static struct jscan_value envelope_field(const struct message *m, const char *name)
{
    const char *const keys[] = {name};
    struct jscan_value value = {NULL, 0};
    if (!jscan_object(m->record, m->record_len, keys, 1, &value))
        value.raw = NULL;
    return value;
}

/* Push the address of a raw JSON string; returns false (nothing pushed) if not a string. */
static bool push_raw_address(lua_State *L, const struct jscan_value *raw)
{
    if (!raw->raw || raw->raw[0] != '"')
        return false;
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, raw->len);
    long n = jscan_string(raw, out, raw->len);
    luaL_pushresultsize(&b, n > 0 ? (size_t)n : 0);
    size_t len;
    const char *email = lua_tolstring(L, -1, &len);
    push_address(L, email, len);
    lua_remove(L, -2);
    return true;
}

/* Push the sequence of addresses of a raw JSON array of strings (other elements skipped). */
static void push_raw_address_list(lua_State *L, const struct jscan_value *raw)
{
    char *err;
    if (lua_kumo_push_json(L, raw->raw, raw->len, &err) != 0) {
        free(err);
        lua_newtable(L);
        return;
    }
    lua_Integer count = (lua_Integer)luaL_len(L, -1), n = 0;
    lua_createtable(L, (int)count, 0);
    for (lua_Integer i = 1; i <= count; i++) {
        size_t len;
        if (lua_rawgeti(L, -2, i) == LUA_TSTRING) {
            const char *email = lua_tolstring(L, -1, &len);
            push_address(L, email, len);
            lua_rawseti(L, -3, ++n);
        }
        lua_pop(L, 1);
    }
    lua_remove(L, -2);
}

static int message_sender(lua_State *L)
{
    struct jscan_value raw = envelope_field(message_live(L), "sender");
    if (!push_raw_address(L, &raw))
        lua_pushnil(L);
    return 1;
}

/* `recipient` is a string for one recipient and an array for several. */
static int message_recipient_list(lua_State *L)
{
    struct jscan_value raw = envelope_field(message_live(L), "recipient");
    if (raw.raw && raw.raw[0] == '[') {
        push_raw_address_list(L, &raw);
        return 1;
    }
    lua_createtable(L, 1, 0);
    if (push_raw_address(L, &raw))
        lua_rawseti(L, -2, 1);
    return 1;
}

/* As kumod's Message:recipient(): one address for one recipient, the list for several
 * (message.rs), nil for none. */
static int message_recipient(lua_State *L)
{
    struct jscan_value raw = envelope_field(message_live(L), "recipient");
    if (push_raw_address(L, &raw))
        return 1;
    if (raw.raw && raw.raw[0] == '[') {
        push_raw_address_list(L, &raw);
        lua_Unsigned n = lua_rawlen(L, -1);
        if (n == 1)
            lua_rawgeti(L, -1, 1);
        else if (n == 0)
            lua_pushnil(L);
        return 1;
    }
    lua_pushnil(L);
    return 1;
}

/* ---- the rest of the methods -------------------------------------------------------- */

static int message_id_method(lua_State *L)
{
    struct message *m = message_live(L);
    char hex[33];
    message_id(m);
    snprintf(hex, sizeof(hex), "%016" PRIx64 "%016" PRIx64, m->id[0], m->id[1]);
    lua_pushstring(L, hex);
    return 1;
}

static int message_queue_name(lua_State *L)
{
    struct message *m = message_live(L);
    if (lua_getiuservalue(L, 1, UV_QUEUE) != LUA_TNIL)
        return 1;
    if (m->default_queue)
        lua_pushstring(L, m->default_queue);
    else
        lua_pushnil(L);
    return 1;
}

static int message_num_attempts(lua_State *L)
{
    lua_pushinteger(L, message_live(L)->attempts);
    return 1;
}

/* ---- C API -------------------------------------------------------------------------- */

void lua_message_register(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"get_data", message_get_data},
        {"set_data", message_set_data},
        {"get_meta", message_get_meta},
        {"set_meta", message_set_meta},
        {"id", message_id_method},
        {"sender", message_sender},
        {"recipient", message_recipient},
        {"recipient_list", message_recipient_list},
        {"queue_name", message_queue_name},
        {"num_attempts", message_num_attempts},
        {NULL, NULL},
    };
    if (luaL_newmetatable(L, MESSAGE_METATABLE)) {
        luaL_newlibtable(L, methods);
        lua_pushvalue(L, -2);
        luaL_setfuncs(L, methods, 1);
        lua_setfield(L, -2, "__index");
        /* One metatable serves every message: keep policies from editing it. */
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
    }
    lua_rawsetp(L, LUA_REGISTRYINDEX, &message_meta_key);
    if (luaL_newmetatable(L, ADDRESS_METATABLE)) {
        lua_pushcfunction(L, address_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    lua_record_register(L);
}

void lua_message_push(lua_State *L, const struct message_source *src)
{
    struct message *m = lua_newuserdatauv(L, sizeof(*m), UV_COUNT);
    *m = (struct message){
        .record = src->data,
        .record_len = src->len,
        .segment = src->segment,
        .relay_id = src->relay_id,
        .default_queue = src->default_queue,
        .end = src->end,
    };
    lua_rawgetp(L, LUA_REGISTRYINDEX, &message_meta_key);
    lua_setmetatable(L, -2);
}

/* A held message may outlive its segment (the policy may keep it after the record is
 * done): the segment's name is copied, or the id, which is all that reads it, computed
 * now. The record's bytes are the Lua string get_data or log_record made already, when
 * one did: a held record is not copied again. */
void lua_message_pin(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    struct message *m = message_get(L, idx);
    if (m->pinned || m->dead)
        return;
    size_t segment_len = m->segment ? strlen(m->segment) : 0;
    if (segment_len < SEGMENT_COPY) {
        if (m->segment)
            m->segment = memcpy(m->segment_copy, m->segment, segment_len + 1);
    } else {
        message_id(m);
        m->segment = NULL;
    }
    m->record = push_record(L, idx, m);
    lua_pop(L, 1);
    if (m->default_queue) {
        lua_pushstring(L, m->default_queue);
        m->default_queue = lua_tostring(L, -1);
        lua_setiuservalue(L, idx, UV_DEFAULT_QUEUE);
    }
    m->pinned = true;
}

void lua_message_detach(lua_State *L, int idx)
{
    struct message *m = message_get(L, idx);
    if (!m->pinned)
        m->dead = true;
}

/* The pointer stays valid while the message holds the same data (a Lua string anchored in
 * its user value, or the record). */
const char *lua_message_data(lua_State *L, int idx, size_t *len)
{
    struct message *m = message_get(L, idx);
    *len = 0;
    if (m->dead)
        return NULL;
    if (lua_getiuservalue(L, idx, UV_DATA) == LUA_TSTRING) {
        const char *data = lua_tolstring(L, -1, len);
        lua_pop(L, 1);
        return data;
    }
    lua_pop(L, 1);
    *len = m->record_len;
    return m->record;
}

/* Valid until the policy sets 'queue' again: the user value anchors the string. */
const char *lua_message_queue(lua_State *L, int idx)
{
    const char *queue = NULL;
    if (lua_getiuservalue(L, idx, UV_QUEUE) == LUA_TSTRING)
        queue = lua_tostring(L, -1);
    lua_pop(L, 1);
    return queue;
}

void lua_message_set_attempts(lua_State *L, int idx, int attempts)
{
    message_get(L, idx)->attempts = attempts;
}

int lua_message_check(lua_State *L, int idx)
{
    return luaL_testudata(L, idx, MESSAGE_METATABLE) != NULL;
}
