/* The client object kumo.nats.connect returns: publish through the relay's publisher, and
 * the tables its acks fill (at once, parked, or lazily when read). */
#include "lua_nats_internal.h"

#include "loop.h"
#include "lua_record.h"
#include "policy.h"
#include "publish.h"
#include "xalloc.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

enum { AWAIT_LIMIT_MS = 30000 };

/* client_publish's upvalues: what it would otherwise look up in the registry per call. */
enum { PUBLISH_CLIENT_META = 1, PUBLISH_AWAITS, PUBLISH_UPVALUES = 2 };

/* ---- client:publish ---- */

struct publish_args {
    const char *subject;
    const char *payload;
    size_t payload_len;
    const char *msg_id;
    const char **headers; /* name, value pairs (Lua strings, alive while on the stack) */
    size_t header_count;
    bool await_ack;
};

static void read_headers(lua_State *L, int idx, struct publish_args *a)
{
    size_t cap = 0;
    lua_record_fill(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "publish: headers must map strings to strings");
        const char *name = lua_tostring(L, -2), *value = lua_tostring(L, -1);
        if (strcasecmp(name, "Nats-Msg-Id") == 0) {
            a->msg_id = value;
        } else {
            if (a->header_count == cap) {
                cap = cap ? cap * 2 : 4;
                a->headers = xrealloc(a->headers, 2 * cap * sizeof(*a->headers));
            }
            a->headers[2 * a->header_count] = name;
            a->headers[2 * a->header_count + 1] = value;
            a->header_count++;
        }
        lua_pop(L, 1); /* the strings stay referenced by the headers table */
    }
}

enum { ARG_SUBJECT, ARG_PAYLOAD, ARG_HEADERS, ARG_AWAIT_ACK, ARG_COUNT };

/* Which of publish's keys the string key at idx is; -1 for any other. */
static int arg_slot(lua_State *L, int idx)
{
    size_t len;
    const char *key = lua_tolstring(L, idx, &len);
    if (len == 7 && memcmp(key, "subject", 7) == 0)
        return ARG_SUBJECT;
    if (len == 7 && memcmp(key, "payload", 7) == 0)
        return ARG_PAYLOAD;
    if (len == 7 && memcmp(key, "headers", 7) == 0)
        return ARG_HEADERS;
    if (len == 9 && memcmp(key, "await_ack", 9) == 0)
        return ARG_AWAIT_ACK;
    return -1;
}

/* Pushes the values of publish's keys in the table at 2, in ARG_ order, raising for an
 * unknown key first. A plain table is walked once: its values are the ones lua_getfield
 * would give, and the first unknown key in lua_next's order is the one
 * lua_nats_check_keys would name. A table with a metatable may have its fields behind
 * __index: checked and read field by field. */
static void push_publish_fields(lua_State *L, int base)
{
    static const char *const keys[] = {"subject", "payload", "headers", "await_ack", NULL};
    if (lua_getmetatable(L, 2)) {
        lua_pop(L, 1);
        lua_nats_check_keys(L, 2, keys, "publish");
        for (int i = 0; i < ARG_COUNT; i++)
            lua_getfield(L, 2, keys[i]);
        return;
    }
    for (int i = 0; i < ARG_COUNT; i++)
        lua_pushnil(L);
    lua_pushnil(L);
    while (lua_next(L, 2) != 0) {
        int slot = lua_type(L, -2) == LUA_TSTRING ? arg_slot(L, -2) : -1;
        if (slot < 0)
            luaL_error(L, "publish: unknown key \"%s\"", luaL_tolstring(L, -2, NULL));
        lua_replace(L, base + slot);
    }
}

static void read_publish_args(lua_State *L, struct publish_args *a)
{
    luaL_checktype(L, 2, LUA_TTABLE);
    int base = lua_gettop(L) + 1;
    push_publish_fields(L, base);
    a->subject = lua_tostring(L, base + ARG_SUBJECT);
    if (!a->subject || !*a->subject)
        luaL_error(L, "publish: subject must be a non-empty string");
    a->payload = lua_tolstring(L, base + ARG_PAYLOAD, &a->payload_len);
    if (!a->payload)
        luaL_error(L, "publish: payload must be a string");
    if (lua_istable(L, base + ARG_HEADERS))
        read_headers(L, base + ARG_HEADERS, a);
    else if (!lua_isnil(L, base + ARG_HEADERS))
        luaL_error(L, "publish: headers must be a table");
    /* kumod's Message: await_ack defaults to true. */
    a->await_ack = lua_isnil(L, base + ARG_AWAIT_ACK) || lua_toboolean(L, base + ARG_AWAIT_ACK);
}

/* kumod's PublishAck as a table: every field present, strings "" when empty. ack NULL:
 * nothing was sent because the stream has it already (read back at start) or --check. */
static void push_ack_fields(lua_State *L, const struct publish_ack *ack)
{
    lua_createtable(L, 0, 5);
    lua_pushstring(L, ack ? ack->stream : "");
    lua_setfield(L, -2, "stream");
    lua_pushinteger(L, ack ? (lua_Integer)ack->sequence : 0);
    lua_setfield(L, -2, "sequence");
    lua_pushboolean(L, ack ? ack->duplicate : true);
    lua_setfield(L, -2, "duplicate");
    lua_pushstring(L, ack ? ack->domain : "");
    lua_setfield(L, -2, "domain");
    lua_pushstring(L, "");
    lua_setfield(L, -2, "value");
}

void lua_nats_push_resume(lua_State *L, const struct publish_ack *ack)
{
    if (ack->error[0]) {
        lua_pushboolean(L, 0);
        lua_pushfstring(L, "publish: %s", ack->error);
    } else {
        lua_pushboolean(L, 1);
        push_ack_fields(L, ack);
    }
}

/* Where a publish that yielded for its ack goes on: the loop resumed the coroutine with
 * (true, ack table) or (false, error). The error is raised here, inside the policy, so a
 * pcall around publish sees it as in kumod. */
static int publish_resumed(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    if (!lua_toboolean(L, -2))
        return lua_error(L);
    return 1;
}

/* Polls the publisher until the ack of id has come (or failed), for a reader that
 * cannot yield: the loop stops meanwhile, for AWAIT_LIMIT_MS at most. */
static void poll_for_ack(lua_State *L, struct lua_nats_client *client, lua_Integer id)
{
    uint64_t deadline = loop_now_ms() + AWAIT_LIMIT_MS;
    for (;;) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, client->nats->awaits_ref);
        int pending = lua_geti(L, -1, id) != LUA_TNIL;
        lua_pop(L, 2);
        if (!pending)
            return;
        if (loop_now_ms() >= deadline)
            luaL_error(L, "publish: no acknowledgement within %d s", AWAIT_LIMIT_MS / 1000);
        publisher_poll(client->pub, 100);
        publisher_tick(client->pub);
    }
}

/* __index of an ack table whose ack has not come yet: wait for this one ack. */
static int await_index(lua_State *L)
{
    poll_for_ack(L, lua_touserdata(L, lua_upvalueindex(1)), lua_tointeger(L, lua_upvalueindex(2)));
    lua_settop(L, 2);
    lua_rawget(L, 1);
    return 1;
}

/* A lazy table holds its publish's id under a private key until the ack fills it; its
 * metatable, one per client, holds the client: no closure per publish. */
static char lazy_client_key, lazy_id_key;

/* The client of the table at idx when it is a lazy publish's table, else NULL. */
static struct lua_nats_client *lazy_client(lua_State *L, int idx)
{
    if (!lua_getmetatable(L, idx))
        return NULL;
    lua_rawgetp(L, -1, &lazy_client_key);
    struct lua_nats_client *client =
        lua_type(L, -1) == LUA_TLIGHTUSERDATA ? lua_touserdata(L, -1) : NULL;
    lua_pop(L, 2);
    return client;
}

/* The lazy table at 1: its client and id; true when the running hook may park for it. */
static bool lazy_parkable(lua_State *L, struct lua_nats_client **client, lua_Integer *id)
{
    *client = lazy_client(L, 1);
    lua_rawgetp(L, 1, &lazy_id_key);
    *id = lua_tointeger(L, -1);
    lua_pop(L, 1);
    struct lua_nats *nats = (*client)->nats;
    /* Only the attempt that published waits for the ack in the table's record. */
    if (L == nats->runner && lua_isyieldable(L) && nats->owns(nats->owner, (uint64_t)*id)) {
        nats->parked_await_id = (uint64_t)*id;
        return true;
    }
    return false;
}

static int push_next(lua_State *L)
{
    lua_settop(L, 1);
    lua_getglobal(L, "next");
    lua_insert(L, 1);
    lua_pushnil(L);
    return 3;
}

enum lazy_read { LAZY_INDEX, LAZY_PAIRS };

/* Where a lazy table read goes on once the ack came: the ack filled the table
 * (lua_nats_acked), or the publish failed and the read raises its error, as publish itself
 * would have. */
static int lazy_resumed(lua_State *L, int status, lua_KContext read)
{
    (void)status;
    if (!lua_toboolean(L, -2))
        return lua_error(L);
    if (read == LAZY_PAIRS)
        return push_next(L);
    lua_settop(L, 2);
    lua_rawget(L, 1);
    return 1;
}

/* Waits for the ack of the lazy table at 1: parked, as a publish under pcall is, where the
 * hook may yield; else polling, as await_index does, and going on as if resumed. */
static int lazy_wait(lua_State *L, enum lazy_read read)
{
    struct lua_nats_client *client;
    lua_Integer id;
    if (lazy_parkable(L, &client, &id))
        return lua_yieldk(L, 0, read, lazy_resumed);
    poll_for_ack(L, client, id);
    lua_pushboolean(L, 1);
    lua_pushnil(L);
    return lazy_resumed(L, LUA_OK, read);
}

/* __index of a lazy publish's table: the field, once the ack has filled the table. */
static int lazy_index(lua_State *L)
{
    lua_settop(L, 2);
    return lazy_wait(L, LAZY_INDEX);
}

/* __pairs: iterating waits for the ack as a field read does, then sees kumod's fields. */
static int lazy_pairs(lua_State *L)
{
    lua_settop(L, 1);
    return lazy_wait(L, LAZY_PAIRS);
}

void lua_nats_resolve(lua_State *L, int idx)
{
    struct lua_nats_client *client = lazy_client(L, idx);
    if (!client)
        return;
    lua_rawgetp(L, idx, &lazy_id_key);
    lua_Integer id = lua_tointeger(L, -1);
    lua_pop(L, 1);
    poll_for_ack(L, client, id);
}

/* Pushes the metatable of client's lazy tables, made at its first lazy publish. */
static void push_lazy_meta(lua_State *L, struct lua_nats_client *client)
{
    if (client->lazy_meta_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, client->lazy_meta_ref);
        return;
    }
    lua_createtable(L, 0, 3);
    lua_pushcfunction(L, lazy_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, lazy_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pushlightuserdata(L, client);
    lua_rawsetp(L, -2, &lazy_client_key);
    lua_pushvalue(L, -1);
    client->lazy_meta_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Room for the private key and kumod's five fields: filling the table at the ack then
 * needs no rehash (a cleared key keeps its node until one). */
enum { LAZY_NODES = 8 };

static void push_lazy_table(lua_State *L, struct lua_nats_client *client, uint64_t await_id)
{
    lua_createtable(L, 0, LAZY_NODES);
    lua_pushinteger(L, (lua_Integer)await_id);
    lua_rawsetp(L, -2, &lazy_id_key);
    lua_pushvalue(L, -1);
    lua_rawseti(L, lua_upvalueindex(PUBLISH_AWAITS), (lua_Integer)await_id);
    push_lazy_meta(L, client);
    lua_setmetatable(L, -2);
}

/* The table publish returns with await_ack outside a coroutine the relay runs: kumod's
 * fields once the ack has come; until then reading it waits. */
static void push_ack_table(lua_State *L, struct lua_nats_client *client, bool await_ack,
                           uint64_t await_id)
{
    lua_createtable(L, 0, 5);
    if (!await_ack || !client->pub)
        return;
    lua_pushvalue(L, -1);
    lua_rawseti(L, lua_upvalueindex(PUBLISH_AWAITS), (lua_Integer)await_id);
    lua_createtable(L, 0, 1);
    lua_pushlightuserdata(L, client);
    lua_pushinteger(L, (lua_Integer)await_id);
    lua_pushcclosure(L, await_index, 2);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
}

/* kumod raises a publish error in publish: under pcall/xpcall the policy may catch it
 * there, so such a publish waits for its ack at once. */
static bool in_protected_call(lua_State *L, const struct lua_nats *nats)
{
    lua_Debug ar;
    for (int level = 1; lua_getstack(L, level, &ar); level++) {
        lua_getinfo(L, "f", &ar);
        lua_CFunction fn = lua_tocfunction(L, -1);
        lua_pop(L, 1);
        if (fn && (fn == nats->pcall || fn == nats->xpcall))
            return true;
    }
    return false;
}

static void lazy_add(struct lua_nats *nats, uint64_t await_id)
{
    if (nats->lazy_count == nats->lazy_cap) {
        nats->lazy_cap = nats->lazy_cap ? nats->lazy_cap * 2 : 8;
        nats->lazy_ids = xrealloc(nats->lazy_ids, nats->lazy_cap * sizeof(*nats->lazy_ids));
    }
    nats->lazy_ids[nats->lazy_count++] = await_id;
}

/* The client at 1: luaL_checkudata's test against the client metatable in upvalue 1, so
 * that it costs no registry lookup; luaL_checkudata raises its error for anything else. */
static struct client_handle *check_client(lua_State *L)
{
    struct client_handle *h = lua_touserdata(L, 1);
    if (h && lua_getmetatable(L, 1)) {
        bool client = lua_rawequal(L, -1, lua_upvalueindex(PUBLISH_CLIENT_META));
        lua_pop(L, 1);
        if (client)
            return h;
    }
    return luaL_checkudata(L, 1, CLIENT_META);
}

/* client:publish; its upvalues are the PUBLISH_ ones. */
static int client_publish(lua_State *L)
{
    struct client_handle *h = check_client(L);
    struct lua_nats *nats = h->client->nats;
    if (h->closed)
        return luaL_error(L, "publish: the client is closed");
    struct publish_args a = {0};
    read_publish_args(L, &a);
    /* --check runs init as the start does: a publish there fails in both. */
    if (nats->record_count == 0) {
        free(a.headers);
        return luaL_error(L, "publish: only possible while a record is being handled");
    }
    uint64_t await_id = a.await_ack ? ++nats->next_await_id : 0;
    int rc = 0;
    if (!nats->env->check_only) {
        struct policy_publish msg = {
            .via = h->client->pub,
            .subject = a.subject,
            .data = a.payload,
            .len = a.payload_len,
            .msg_id = a.msg_id,
            .index = a.msg_id ? 0 : nats->publish_index++,
            .headers = a.headers,
            .header_count = a.header_count,
            .await_id = await_id,
        };
        char *err = NULL;
        rc = nats->env->publish(nats->env->ctx, nats->records, nats->record_count, &msg, &err);
        free(a.headers);
        if (rc < 0) {
            lua_pushfstring(L, "publish: %s", err);
            free(err);
            return lua_error(L);
        }
    } else {
        free(a.headers);
    }
    if (!a.await_ack) {
        lua_newtable(L);
        return 1;
    }
    if (nats->env->check_only || rc == 1) {
        push_ack_fields(L, NULL); /* nothing sent, no ack to wait for */
        return 1;
    }
    if (L == nats->runner && !in_protected_call(L, nats)) {
        /* Lazy: the hook goes on, and its record stays held until this ack (policy_await.c);
         * reading the table before then parks the hook. Most hooks never read it. */
        push_lazy_table(L, h->client, await_id);
        lazy_add(nats, await_id);
        return 1;
    }
    if (L == nats->runner && lua_isyieldable(L)) {
        /* Park this hook until the ack comes: the loop relays other records meanwhile
         * (policy_lua.c resumes it). */
        nats->parked_await_id = await_id;
        return lua_yieldk(L, 0, 0, publish_resumed);
    }
    /* Not in a coroutine the relay runs (a batch's per-message constructor...): the
     * table waits for the ack when it is read. */
    push_ack_table(L, h->client, true, await_id);
    return 1;
}

static int client_close(lua_State *L)
{
    struct client_handle *h = luaL_checkudata(L, 1, CLIENT_META);
    /* The connection may be shared with other queues; it closes at shutdown. */
    h->closed = true;
    return 0;
}

bool lua_nats_acked(lua_State *L, struct lua_nats *nats, const struct publish_ack *ack)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, nats->awaits_ref);
    bool found = lua_geti(L, -1, (lua_Integer)ack->await_id) == LUA_TTABLE;
    if (found) {
        lua_pushnil(L);
        lua_setmetatable(L, -2);
        lua_pushnil(L);
        lua_rawsetp(L, -2, &lazy_id_key);
        if (!ack->error[0]) {
            /* kumod's fields, into the table the policy already holds. */
            lua_pushstring(L, ack->stream);
            lua_setfield(L, -2, "stream");
            lua_pushinteger(L, (lua_Integer)ack->sequence);
            lua_setfield(L, -2, "sequence");
            lua_pushboolean(L, ack->duplicate);
            lua_setfield(L, -2, "duplicate");
            lua_pushstring(L, ack->domain);
            lua_setfield(L, -2, "domain");
            lua_pushliteral(L, "");
            lua_setfield(L, -2, "value");
        }
        lua_pushnil(L);
        lua_rawseti(L, -3, (lua_Integer)ack->await_id);
    }
    lua_pop(L, 2);
    return found;
}

void lua_nats_open(lua_State *L, struct lua_nats *nats)
{
    /* Weak values: a table the policy dropped is not kept for an ack that may never
     * come (a failed attempt's). */
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "v");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    nats->awaits_ref = luaL_ref(L, LUA_REGISTRYINDEX);

    luaL_newmetatable(L, CLIENT_META);
    lua_newtable(L);
    lua_pushvalue(L, -2);
    lua_rawgeti(L, LUA_REGISTRYINDEX, nats->awaits_ref);
    lua_pushcclosure(L, client_publish, PUBLISH_UPVALUES);
    lua_setfield(L, -2, "publish");
    lua_pushcfunction(L, client_close);
    lua_setfield(L, -2, "close");
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_getglobal(L, "pcall");
    nats->pcall = lua_tocfunction(L, -1);
    lua_getglobal(L, "xpcall");
    nats->xpcall = lua_tocfunction(L, -1);
    lua_pop(L, 2);

    lua_newtable(L); /* kumo.nats */
    lua_pushlightuserdata(L, nats);
    lua_pushcclosure(L, lua_nats_connect, 1);
    lua_setfield(L, -2, "connect");
    lua_setfield(L, -2, "nats");
}
