#include "lua_nats.h"

#include "config.h"
#include "log.h"
#include "loop.h"
#include "policy.h"
#include "publish.h"
#include "xalloc.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CLIENT_META "kumo.nats.client"
#define AWAITS_KEY  "kumo-nats-relay.awaits"

enum { AWAIT_LIMIT_MS = 30000 };

struct lua_nats_client {
    char *key; /* the canonical connect configuration: equal keys share the connection */
    struct publisher *pub; /* NULL under --check */
    struct lua_nats *nats;
};

/* The userdata a policy holds; several may point at one shared client. */
struct client_handle {
    struct lua_nats_client *client;
    bool closed;
};

/* kumo.nats.connect accepts exactly KumoMTA's keys, plus creds and nkey_seed. */
static const char *const connect_keys[] = {
    "servers",
    "name",
    "auth",
    "no_echo",
    "max_reconnects",
    "connection_timeout",
    "tls_required",
    "tls_first",
    "certificate",
    "client_cert",
    "client_key",
    "ping_interval",
    "inbox_prefix",
    "request_timeout",
    "retry_on_initial_connect",
    "ignore_discovered_servers",
    "retain_servers_order",
    "creds",
    "nkey_seed",
    NULL,
};

/* Keys this build cannot honour yet: refusing is better than connecting without TLS. */
static const char *const unsupported_keys[] = {
    "tls_required", "tls_first", "certificate", "client_cert",
    "client_key",   "creds",     "nkey_seed",   NULL,
};

static bool in_list(const char *const *list, const char *key)
{
    for (size_t i = 0; list[i]; i++)
        if (strcmp(list[i], key) == 0)
            return true;
    return false;
}

static void check_keys(lua_State *L, int idx, const char *const *allowed, const char *what)
{
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING || !in_list(allowed, lua_tostring(L, -1)))
            luaL_error(L, "%s: unknown key \"%s\"", what, luaL_tolstring(L, -1, NULL));
    }
}

/* A secret given as a string, { key_data = '...' } or { path = '...' } (read from a file). */
static char *key_source(lua_State *L, int idx, const char *what)
{
    if (lua_type(L, idx) == LUA_TSTRING)
        return xstrdup(lua_tostring(L, idx));
    if (lua_type(L, idx) != LUA_TTABLE)
        luaL_error(L, "kumo.nats.connect: %s must be a string or { key_data = ... }", what);
    if (lua_getfield(L, idx, "key_data") == LUA_TSTRING) {
        char *v = xstrdup(lua_tostring(L, -1));
        lua_pop(L, 1);
        return v;
    }
    lua_pop(L, 1);
    if (lua_getfield(L, idx, "path") != LUA_TSTRING)
        luaL_error(L, "kumo.nats.connect: %s must have key_data or path", what);
    const char *path = lua_tostring(L, -1);
    FILE *f = fopen(path, "re");
    if (!f)
        luaL_error(L, "kumo.nats.connect: cannot read %s from %s", what, path);
    char buf[4096];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    buf[n] = '\0';
    lua_pop(L, 1);
    return xstrdup(buf);
}

struct connect_spec {
    char **servers;
    size_t server_count;
    char *name, *user, *password, *token;
};

static void spec_free(struct connect_spec *spec)
{
    for (size_t i = 0; i < spec->server_count; i++)
        free(spec->servers[i]);
    free(spec->servers);
    free(spec->name);
    free(spec->user);
    free(spec->password);
    free(spec->token);
}

/* nats.c wants URLs; KumoMTA policies write '127.0.0.1:4222'. */
static char *server_url(const char *s)
{
    return strstr(s, "://") ? xstrdup(s) : xasprintf("nats://%s", s);
}

static void read_servers(lua_State *L, int idx, struct connect_spec *spec)
{
    if (lua_getfield(L, idx, "servers") != LUA_TTABLE)
        luaL_error(L, "kumo.nats.connect: servers must be a list of addresses");
    size_t n = (size_t)luaL_len(L, -1);
    if (n == 0)
        luaL_error(L, "kumo.nats.connect: servers is empty");
    spec->servers = xcalloc(n, sizeof(*spec->servers));
    for (size_t i = 1; i <= n; i++) {
        if (lua_geti(L, -1, (lua_Integer)i) != LUA_TSTRING)
            luaL_error(L, "kumo.nats.connect: servers[%d] must be a string", (int)i);
        spec->servers[spec->server_count++] = server_url(lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static void read_auth(lua_State *L, int idx, struct connect_spec *spec)
{
    if (lua_getfield(L, idx, "auth") == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    int auth = lua_gettop(L);
    luaL_checktype(L, auth, LUA_TTABLE);
    static const char *const auth_keys[] = {"username", "password", "token", NULL};
    check_keys(L, auth, auth_keys, "kumo.nats.connect auth");
    if (lua_getfield(L, auth, "username") != LUA_TNIL)
        spec->user = key_source(L, lua_gettop(L), "auth.username");
    if (lua_getfield(L, auth, "password") != LUA_TNIL)
        spec->password = key_source(L, lua_gettop(L), "auth.password");
    if (lua_getfield(L, auth, "token") != LUA_TNIL)
        spec->token = key_source(L, lua_gettop(L), "auth.token");
    lua_pop(L, 4);
}

/* Everything that makes two connections different, secrets included: they never leave
 * the process (this key is not logged). */
static char *spec_key(const struct connect_spec *spec)
{
    char *key = xstrdup("");
    for (size_t i = 0; i < spec->server_count; i++) {
        char *next = xasprintf("%s%s,", key, spec->servers[i]);
        free(key);
        key = next;
    }
    char *full =
        xasprintf("%s|%s|%s|%s|%s", key, spec->name ? spec->name : "", spec->user ? spec->user : "",
                  spec->password ? spec->password : "", spec->token ? spec->token : "");
    free(key);
    return full;
}

static struct lua_nats_client *find_or_open(lua_State *L, struct lua_nats *nats,
                                            struct connect_spec *spec)
{
    char *key = spec_key(spec);
    for (size_t i = 0; i < nats->client_count; i++) {
        if (strcmp(nats->clients[i]->key, key) == 0) {
            free(key);
            return nats->clients[i];
        }
    }
    struct lua_nats_client *client = xcalloc(1, sizeof(*client));
    client->key = key;
    client->nats = nats;
    if (!nats->env->check_only) {
        struct publisher_options po = {
            .servers = (const char *const *)spec->servers,
            .server_count = spec->server_count,
            .name = spec->name ? spec->name : "kumo-nats-relay",
            .ack_timeout_ms = nats->cfg->ack_timeout_ms,
            .user = spec->user,
            .password = spec->password,
            .token = spec->token,
        };
        char *err = NULL;
        client->pub =
            publisher_create(&po, nats->env->loop, nats->env->publish_done, nats->env->ctx, &err);
        if (!client->pub) {
            free(client->key);
            free(client);
            lua_pushfstring(L, "kumo.nats.connect: %s", err);
            free(err);
            lua_error(L);
        }
    }
    nats->clients = xrealloc(nats->clients, (nats->client_count + 1) * sizeof(*nats->clients));
    nats->clients[nats->client_count++] = client;
    return client;
}

static int nats_connect(lua_State *L)
{
    struct lua_nats *nats = lua_touserdata(L, lua_upvalueindex(1));
    luaL_checktype(L, 1, LUA_TTABLE);
    check_keys(L, 1, connect_keys, "kumo.nats.connect");
    for (size_t i = 0; unsupported_keys[i]; i++) {
        if (lua_getfield(L, 1, unsupported_keys[i]) != LUA_TNIL)
            luaL_error(L, "kumo.nats.connect: %s is not supported by this build yet",
                       unsupported_keys[i]);
        lua_pop(L, 1);
    }
    struct connect_spec spec = {0};
    read_servers(L, 1, &spec);
    if (lua_getfield(L, 1, "name") == LUA_TSTRING)
        spec.name = xstrdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    read_auth(L, 1, &spec);
    struct lua_nats_client *client = find_or_open(L, nats, &spec);
    spec_free(&spec);
    struct client_handle *h = lua_newuserdatauv(L, sizeof(*h), 0);
    h->client = client;
    h->closed = false;
    luaL_setmetatable(L, CLIENT_META);
    return 1;
}

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

static void read_publish_args(lua_State *L, struct publish_args *a)
{
    static const char *const keys[] = {"subject", "payload", "headers", "await_ack", NULL};
    luaL_checktype(L, 2, LUA_TTABLE);
    check_keys(L, 2, keys, "publish");
    lua_getfield(L, 2, "subject");
    lua_getfield(L, 2, "payload");
    lua_getfield(L, 2, "headers");
    lua_getfield(L, 2, "await_ack");
    a->subject = lua_tostring(L, -4);
    if (!a->subject || !*a->subject)
        luaL_error(L, "publish: subject must be a non-empty string");
    a->payload = lua_tolstring(L, -3, &a->payload_len);
    if (!a->payload)
        luaL_error(L, "publish: payload must be a string");
    if (lua_istable(L, -2))
        read_headers(L, lua_absindex(L, -2), a);
    else if (!lua_isnil(L, -2))
        luaL_error(L, "publish: headers must be a table");
    a->await_ack = lua_toboolean(L, -1);
}

/* __index of an ack table whose ack has not come yet: wait for this one ack. */
static int await_index(lua_State *L)
{
    struct lua_nats_client *client = lua_touserdata(L, lua_upvalueindex(1));
    lua_Integer id = lua_tointeger(L, lua_upvalueindex(2));
    uint64_t deadline = loop_now_ms() + AWAIT_LIMIT_MS;
    for (;;) {
        lua_getfield(L, LUA_REGISTRYINDEX, AWAITS_KEY);
        int pending = lua_geti(L, -1, id) != LUA_TNIL;
        lua_pop(L, 2);
        if (!pending)
            break;
        if (loop_now_ms() >= deadline)
            return luaL_error(L, "publish: no acknowledgement within %d s", AWAIT_LIMIT_MS / 1000);
        publisher_poll(client->pub, 100);
        publisher_tick(client->pub);
    }
    lua_rawget(L, 1);
    return 1;
}

static void push_ack_table(lua_State *L, struct lua_nats_client *client, bool await_ack,
                           uint64_t await_id)
{
    lua_newtable(L);
    if (!await_ack || !client->pub)
        return;
    lua_getfield(L, LUA_REGISTRYINDEX, AWAITS_KEY);
    lua_pushvalue(L, -2);
    lua_rawseti(L, -2, (lua_Integer)await_id);
    lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushlightuserdata(L, client);
    lua_pushinteger(L, (lua_Integer)await_id);
    lua_pushcclosure(L, await_index, 2);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
}

static int client_publish(lua_State *L)
{
    struct client_handle *h = luaL_checkudata(L, 1, CLIENT_META);
    struct lua_nats *nats = h->client->nats;
    if (h->closed)
        return luaL_error(L, "publish: the client is closed");
    struct publish_args a = {0};
    read_publish_args(L, &a);
    if (nats->record_count == 0 && !nats->env->check_only) {
        free(a.headers);
        return luaL_error(L, "publish: only possible while a record is being handled");
    }
    uint64_t await_id = a.await_ack ? ++nats->next_await_id : 0;
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
        int rc = nats->env->publish(nats->env->ctx, nats->records, nats->record_count, &msg, &err);
        free(a.headers);
        if (rc != 0) {
            lua_pushfstring(L, "publish: %s", err);
            free(err);
            return lua_error(L);
        }
    } else {
        free(a.headers);
    }
    push_ack_table(L, h->client, a.await_ack, await_id);
    return 1;
}

static int client_close(lua_State *L)
{
    struct client_handle *h = luaL_checkudata(L, 1, CLIENT_META);
    /* The connection may be shared with other queues; it closes at shutdown. */
    h->closed = true;
    return 0;
}

void lua_nats_acked(lua_State *L, struct lua_nats *nats, const struct publish_ack *ack)
{
    lua_getfield(L, LUA_REGISTRYINDEX, AWAITS_KEY);
    if (lua_geti(L, -1, (lua_Integer)ack->await_id) == LUA_TTABLE) {
        lua_pushnil(L);
        lua_setmetatable(L, -2);
        lua_pushstring(L, ack->stream);
        lua_setfield(L, -2, "stream");
        lua_pushinteger(L, (lua_Integer)ack->sequence);
        lua_setfield(L, -2, "sequence");
        lua_pushboolean(L, ack->duplicate);
        lua_setfield(L, -2, "duplicate");
        if (ack->domain[0]) {
            lua_pushstring(L, ack->domain);
            lua_setfield(L, -2, "domain");
        }
        lua_pushnil(L);
        lua_rawseti(L, -3, (lua_Integer)ack->await_id);
    }
    lua_pop(L, 2);
}

void lua_nats_open(lua_State *L, struct lua_nats *nats)
{
    luaL_newmetatable(L, CLIENT_META);
    lua_newtable(L);
    lua_pushcfunction(L, client_publish);
    lua_setfield(L, -2, "publish");
    lua_pushcfunction(L, client_close);
    lua_setfield(L, -2, "close");
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, AWAITS_KEY);

    lua_newtable(L); /* kumo.nats */
    lua_pushlightuserdata(L, nats);
    lua_pushcclosure(L, nats_connect, 1);
    lua_setfield(L, -2, "connect");
    lua_setfield(L, -2, "nats");
}

void lua_nats_tick(struct lua_nats *nats)
{
    for (size_t i = 0; i < nats->client_count; i++)
        if (nats->clients[i]->pub)
            publisher_tick(nats->clients[i]->pub);
}

size_t lua_nats_in_flight(const struct lua_nats *nats)
{
    size_t n = 0;
    for (size_t i = 0; i < nats->client_count; i++)
        if (nats->clients[i]->pub)
            n += publisher_in_flight(nats->clients[i]->pub);
    return n;
}

void lua_nats_close_all(struct lua_nats *nats)
{
    for (size_t i = 0; i < nats->client_count; i++) {
        publisher_destroy(nats->clients[i]->pub);
        free(nats->clients[i]->key);
        free(nats->clients[i]);
    }
    free(nats->clients);
    nats->clients = NULL;
    nats->client_count = 0;
}
