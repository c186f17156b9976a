#include "lua_nats.h"

#include "config.h"
#include "log.h"
#include "lua_kumo.h"
#include "lua_record.h"
#include "loop.h"
#include "nkey.h"
#include "policy.h"
#include "publish.h"
#include "secret.h"
#include "xalloc.h"

#include <errno.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    "client_capacity",
    "inbox_prefix",
    "request_timeout",
    "retry_on_initial_connect",
    "ignore_discovered_servers",
    "retain_servers_order",
    "creds",
    "nkey_seed",
    NULL,
};

/* The type kumod's Config (crates/mod-nats/src/lib.rs) deserializes each key into: a
 * policy kumod would refuse is refused here too, with the key named. The values of the
 * tuning keys (max_reconnects, ping_interval, client_capacity, timeouts, ...) are checked
 * and not applied: the relay's connection reconnects for ever and keeps its own timing. */
enum key_type { KEY_BOOL, KEY_COUNT, KEY_STRING, KEY_HUMANTIME, KEY_RUST_DURATION };

static const struct {
    const char *key;
    enum key_type type;
} typed_keys[] = {
    {"name", KEY_STRING},
    {"no_echo", KEY_BOOL},
    {"max_reconnects", KEY_COUNT},         /* Option<usize> */
    {"connection_timeout", KEY_HUMANTIME}, /* duration_serde */
    {"tls_required", KEY_BOOL},
    {"tls_first", KEY_BOOL},
    {"ping_interval", KEY_RUST_DURATION}, /* a plain Duration: { secs, nanos } */
    {"client_capacity", KEY_COUNT},       /* Option<usize> */
    {"inbox_prefix", KEY_STRING},
    {"request_timeout", KEY_HUMANTIME}, /* duration_serde */
    {"retry_on_initial_connect", KEY_BOOL},
    {"ignore_discovered_servers", KEY_BOOL},
    {"retain_servers_order", KEY_BOOL},
};

static bool is_count(lua_State *L, int idx)
{
    return lua_isinteger(L, idx) && lua_tointeger(L, idx) >= 0;
}

/* serde's Duration: a table { secs = N, nanos = N } (or the sequence { N, N }). */
static bool is_rust_duration(lua_State *L, int idx)
{
    if (!lua_istable(L, idx))
        return false;
    bool ok = true;
    const char *fields[] = {"secs", "nanos"};
    for (int i = 0; i < 2 && ok; i++) {
        if (lua_getfield(L, idx, fields[i]) == LUA_TNIL) {
            lua_pop(L, 1);
            lua_rawgeti(L, idx, i + 1);
        }
        ok = is_count(L, -1);
        lua_pop(L, 1);
    }
    return ok;
}

static void check_types(lua_State *L, int idx)
{
    static const char *const expected[] = {
        [KEY_BOOL] = "a boolean",
        [KEY_COUNT] = "a whole number >= 0",
        [KEY_STRING] = "a string",
        [KEY_HUMANTIME] = "a duration (\"30s\" or seconds)",
        [KEY_RUST_DURATION] = "a duration as kumod reads this key: { secs = N, nanos = N }",
    };
    for (size_t i = 0; i < sizeof(typed_keys) / sizeof(typed_keys[0]); i++) {
        int t = lua_getfield(L, idx, typed_keys[i].key);
        int64_t ms;
        bool ok = t == LUA_TNIL;
        switch (typed_keys[i].type) {
        case KEY_BOOL:
            ok = ok || t == LUA_TBOOLEAN;
            break;
        case KEY_COUNT:
            ok = ok || is_count(L, -1);
            break;
        case KEY_STRING:
            ok = ok || t == LUA_TSTRING;
            break;
        case KEY_HUMANTIME:
            ok = ok || lua_kumo_duration(L, -1, &ms) == 0;
            break;
        case KEY_RUST_DURATION:
            ok = ok || is_rust_duration(L, -1);
            break;
        }
        if (!ok)
            luaL_error(L, "kumo.nats.connect: %s: %s expected, got %s", typed_keys[i].key,
                       expected[typed_keys[i].type], luaL_typename(L, -1));
        lua_pop(L, 1);
    }
    /* nats.c 3.4 has no TLS-first handshake: refusing is better than connecting another
     * way than the policy asked. tls_first = false is kumod's default, and fine. */
    if (lua_getfield(L, idx, "tls_first") == LUA_TBOOLEAN && lua_toboolean(L, -1))
        luaL_error(L, "kumo.nats.connect: tls_first = true is not supported by this build");
    lua_pop(L, 1);
}

static bool in_list(const char *const *list, const char *key)
{
    for (size_t i = 0; list[i]; i++)
        if (strcmp(list[i], key) == 0)
            return true;
    return false;
}

static void check_keys(lua_State *L, int idx, const char *const *allowed, const char *what)
{
    lua_record_fill(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING || !in_list(allowed, lua_tostring(L, -1)))
            luaL_error(L, "%s: unknown key \"%s\"", what, luaL_tolstring(L, -1, NULL));
    }
}

/* What one connect call asked for. It lives in a userdata whose __gc frees (and wipes)
 * it, so that a Lua error half way leaks nothing. */
struct connect_spec {
    char **servers;
    size_t server_count;
    char *name;
    char *user, *password, *token; /* secrets: wiped when freed */
    char *nkey_seed, *creds;       /* paths */
    char *tls_ca, *tls_cert, *tls_key;
    bool tls_required;
};

#define SPEC_META "kumo-nats-relay.connect_spec"

static void spec_free(struct connect_spec *spec)
{
    for (size_t i = 0; i < spec->server_count; i++)
        free(spec->servers[i]);
    free(spec->servers);
    free(spec->name);
    secret_free(spec->user);
    secret_free(spec->password);
    secret_free(spec->token);
    free(spec->nkey_seed);
    free(spec->creds);
    free(spec->tls_ca);
    free(spec->tls_cert);
    free(spec->tls_key);
    memset(spec, 0, sizeof(*spec));
}

static int spec_gc(lua_State *L)
{
    spec_free(luaL_checkudata(L, 1, SPEC_META));
    return 0;
}

static struct connect_spec *push_spec(lua_State *L)
{
    struct connect_spec *spec = lua_newuserdatauv(L, sizeof(*spec), 0);
    memset(spec, 0, sizeof(*spec));
    if (luaL_newmetatable(L, SPEC_META)) {
        lua_pushcfunction(L, spec_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    return spec;
}

/* A secret as KumoMTA's KeySource gives it: a string is the path of a file holding it,
 * { key_data = '...' } the value itself. (Vault and event sources are not supported.)
 * The file's trailing newline is dropped. Returns a malloc'd copy. */
static char *key_source(lua_State *L, int idx, const char *what)
{
    char *secret, *err = NULL;
    if (lua_type(L, idx) == LUA_TSTRING) {
        /* Not named in the message: a policy written for the old reading of a string (the
         * value itself) would put the password in the log. */
        const char *path = lua_tostring(L, idx);
        if (access(path, R_OK) != 0)
            luaL_error(L,
                       "kumo.nats.connect: %s: a string names a file holding the value, and "
                       "that file cannot be read (%s); give the value itself as "
                       "{ key_data = '...' }",
                       what, strerror(errno));
        if (!(secret = secret_read_file(path, &err))) {
            lua_pushfstring(L, "kumo.nats.connect: %s: %s", what, err);
            free(err);
            lua_error(L);
        }
        return secret;
    }
    if (lua_type(L, idx) != LUA_TTABLE)
        luaL_error(L, "kumo.nats.connect: %s must be a file path or { key_data = '...' }", what);
    if (lua_getfield(L, idx, "key_data") == LUA_TSTRING) {
        size_t len;
        const char *data = lua_tolstring(L, -1, &len);
        if (len == 0 || strlen(data) != len)
            luaL_error(L, "kumo.nats.connect: %s: key_data is empty or holds a NUL byte", what);
        secret = xstrdup(data);
        lua_pop(L, 1);
        return secret;
    }
    lua_pop(L, 1);
    if (lua_getfield(L, idx, "path") != LUA_TNIL)
        luaL_error(L,
                   "kumo.nats.connect: %s: write a file path as a plain string, as KumoMTA "
                   "does, not { path = ... }",
                   what);
    luaL_error(L,
               "kumo.nats.connect: %s: only a file path or { key_data = '...' } is supported "
               "(not vault or event sources)",
               what);
    return NULL;
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
    if (!spec->user != !spec->password)
        luaL_error(L, "kumo.nats.connect: auth.username and auth.password go together");
    if (spec->user && spec->token)
        luaL_error(L, "kumo.nats.connect: auth takes username and password, or token, not both");
}

/* A path key (certificate, client_key, creds, nkey_seed): a string naming a file the
 * relay can read, checked now so that --check reports it. */
static char *read_path(lua_State *L, int idx, const char *key)
{
    int type = lua_getfield(L, idx, key);
    if (type == LUA_TNIL) {
        lua_pop(L, 1);
        return NULL;
    }
    if (type != LUA_TSTRING)
        luaL_error(L, "kumo.nats.connect: %s must be a file path", key);
    const char *path = lua_tostring(L, -1);
    if (access(path, R_OK) != 0)
        luaL_error(L, "kumo.nats.connect: %s: cannot read %s: %s", key, path, strerror(errno));
    char *copy = xstrdup(path);
    lua_pop(L, 1);
    return copy;
}

static void read_tls_and_keys(lua_State *L, int idx, struct connect_spec *spec)
{
    if (lua_getfield(L, idx, "tls_required") != LUA_TNIL) {
        luaL_checktype(L, -1, LUA_TBOOLEAN);
        spec->tls_required = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    spec->tls_ca = read_path(L, idx, "certificate");
    spec->tls_cert = read_path(L, idx, "client_cert");
    spec->tls_key = read_path(L, idx, "client_key");
    spec->creds = read_path(L, idx, "creds");
    spec->nkey_seed = read_path(L, idx, "nkey_seed");
    if (!spec->tls_cert != !spec->tls_key)
        luaL_error(L, "kumo.nats.connect: client_cert and client_key go together");
    int ways = !!spec->user + !!spec->token + !!spec->creds + !!spec->nkey_seed;
    if (ways > 1)
        luaL_error(L, "kumo.nats.connect: authenticate one way only: auth, creds or nkey_seed");
    char pub[NKEY_PUBLIC_LEN + 1], *err = NULL;
    if (spec->nkey_seed && nkey_public_from_file(spec->nkey_seed, pub, &err) != 0) {
        lua_pushfstring(L, "kumo.nats.connect: nkey_seed: %s", err);
        free(err);
        lua_error(L);
    }
}

static struct nats_auth spec_auth(const struct connect_spec *spec)
{
    return (struct nats_auth){
        .user = spec->user,
        .password = spec->password,
        .token = spec->token,
        .nkey_seed = spec->nkey_seed,
        .creds = spec->creds,
        .tls_ca = spec->tls_ca,
        .tls_cert = spec->tls_cert,
        .tls_key = spec->tls_key,
        .tls_required = spec->tls_required,
    };
}

static const char *or_empty(const char *s)
{
    return s ? s : "";
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
    char *full = xasprintf("%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%d", key, or_empty(spec->name),
                           or_empty(spec->user), or_empty(spec->password), or_empty(spec->token),
                           or_empty(spec->nkey_seed), or_empty(spec->creds), or_empty(spec->tls_ca),
                           or_empty(spec->tls_cert), or_empty(spec->tls_key), spec->tls_required);
    free(key);
    return full;
}

static struct lua_nats_client *find_or_open(lua_State *L, struct lua_nats *nats,
                                            struct connect_spec *spec)
{
    char *key = spec_key(spec);
    for (size_t i = 0; i < nats->client_count; i++) {
        if (strcmp(nats->clients[i]->key, key) == 0) {
            secret_free(key);
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
            .auth = spec_auth(spec),
            .streams = nats->env->streams,
        };
        char *err = NULL;
        client->pub =
            publisher_create(&po, nats->env->loop, nats->env->publish_done, nats->env->ctx, &err);
        if (!client->pub) {
            secret_free(client->key);
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
    lua_settop(L, 1);
    check_keys(L, 1, connect_keys, "kumo.nats.connect");
    check_types(L, 1);
    struct connect_spec *spec = push_spec(L);
    read_servers(L, 1, spec);
    if (lua_getfield(L, 1, "name") == LUA_TSTRING)
        spec->name = xstrdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    read_auth(L, 1, spec);
    read_tls_and_keys(L, 1, spec);
    struct lua_nats_client *client = find_or_open(L, nats, spec);
    spec_free(spec);
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
    /* kumod's Message: await_ack defaults to true. */
    a->await_ack = lua_isnil(L, -1) || lua_toboolean(L, -1);
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

/* __index of an ack table whose ack has not come yet: wait for this one ack. */
/* Polls the publisher until the ack of id has come (or failed), for a reader that
 * cannot yield: the loop stops meanwhile, for AWAIT_LIMIT_MS at most. */
static void poll_for_ack(lua_State *L, struct lua_nats_client *client, lua_Integer id)
{
    uint64_t deadline = loop_now_ms() + AWAIT_LIMIT_MS;
    for (;;) {
        lua_getfield(L, LUA_REGISTRYINDEX, AWAITS_KEY);
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

static int wait_ack(lua_State *L, struct lua_nats_client *client, lua_Integer id)
{
    poll_for_ack(L, client, id);
    lua_settop(L, 2);
    lua_rawget(L, 1);
    return 1;
}

static int await_index(lua_State *L)
{
    return wait_ack(L, lua_touserdata(L, lua_upvalueindex(1)),
                    lua_tointeger(L, lua_upvalueindex(2)));
}

/* Where a lazy table read that yielded goes on: the ack filled the table (lua_nats_acked),
 * or the publish failed and the read raises its error, as publish itself would have. */
static int lazy_resumed(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    if (!lua_toboolean(L, -2))
        return lua_error(L);
    lua_settop(L, 2);
    lua_rawget(L, 1);
    return 1;
}

/* A lazy table holds its publish under private keys until the ack fills it: one shared
 * metatable, no closure per publish. */
static char lazy_client_key, lazy_id_key, lazy_attempt_key, lazy_meta_key;

/* The lazy table at 1: its client and id; true when the running hook may park for it. */
static bool lazy_parkable(lua_State *L, struct lua_nats_client **client, lua_Integer *id)
{
    lua_rawgetp(L, 1, &lazy_client_key);
    lua_rawgetp(L, 1, &lazy_id_key);
    lua_rawgetp(L, 1, &lazy_attempt_key);
    *client = lua_touserdata(L, -3);
    *id = lua_tointeger(L, -2);
    uint64_t attempt = (uint64_t)lua_tointeger(L, -1);
    lua_pop(L, 3);
    struct lua_nats *nats = (*client)->nats;
    /* Only the attempt that published waits for the ack in the table's record. */
    if (L == nats->runner && lua_isyieldable(L) && attempt == nats->attempt) {
        nats->parked_await_id = (uint64_t)*id;
        return true;
    }
    return false;
}

/* __index of a lazy publish's table: the hook waits for this ack now, parked as a publish
 * under pcall is; where it cannot yield, it waits as await_index does. */
static int lazy_index(lua_State *L)
{
    struct lua_nats_client *client;
    lua_Integer id;
    lua_settop(L, 2);
    if (lazy_parkable(L, &client, &id))
        return lua_yieldk(L, 0, 0, lazy_resumed);
    return wait_ack(L, client, id);
}

static int push_next(lua_State *L)
{
    lua_settop(L, 1);
    lua_getglobal(L, "next");
    lua_insert(L, 1);
    lua_pushnil(L);
    return 3;
}

static int lazy_pairs_resumed(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    if (!lua_toboolean(L, -2))
        return lua_error(L);
    return push_next(L);
}

/* __pairs: iterating waits for the ack as a field read does, then sees kumod's fields. */
static int lazy_pairs(lua_State *L)
{
    struct lua_nats_client *client;
    lua_Integer id;
    lua_settop(L, 1);
    if (lazy_parkable(L, &client, &id))
        return lua_yieldk(L, 0, 0, lazy_pairs_resumed);
    poll_for_ack(L, client, id);
    return push_next(L);
}

void lua_nats_resolve(lua_State *L, int idx)
{
    if (!lua_getmetatable(L, idx))
        return;
    lua_rawgetp(L, LUA_REGISTRYINDEX, &lazy_meta_key);
    bool lazy = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (!lazy)
        return;
    lua_rawgetp(L, idx, &lazy_client_key);
    lua_rawgetp(L, idx, &lazy_id_key);
    struct lua_nats_client *client = lua_touserdata(L, -2);
    lua_Integer id = lua_tointeger(L, -1);
    lua_pop(L, 2);
    poll_for_ack(L, client, id);
}

static void push_lazy_table(lua_State *L, struct lua_nats_client *client, uint64_t await_id)
{
    lua_createtable(L, 0, 3);
    lua_pushlightuserdata(L, client);
    lua_rawsetp(L, -2, &lazy_client_key);
    lua_pushinteger(L, (lua_Integer)await_id);
    lua_rawsetp(L, -2, &lazy_id_key);
    lua_pushinteger(L, (lua_Integer)client->nats->attempt);
    lua_rawsetp(L, -2, &lazy_attempt_key);
    lua_getfield(L, LUA_REGISTRYINDEX, AWAITS_KEY);
    lua_pushvalue(L, -2);
    lua_rawseti(L, -2, (lua_Integer)await_id);
    lua_pop(L, 1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &lazy_meta_key);
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

static int client_publish(lua_State *L)
{
    struct client_handle *h = luaL_checkudata(L, 1, CLIENT_META);
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
    (void)nats;
    lua_getfield(L, LUA_REGISTRYINDEX, AWAITS_KEY);
    bool found = lua_geti(L, -1, (lua_Integer)ack->await_id) == LUA_TTABLE;
    if (found) {
        lua_pushnil(L);
        lua_setmetatable(L, -2);
        const void *keys[] = {&lazy_client_key, &lazy_id_key, &lazy_attempt_key};
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
            lua_pushnil(L);
            lua_rawsetp(L, -2, keys[i]);
        }
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
    luaL_newmetatable(L, CLIENT_META);
    lua_newtable(L);
    lua_pushcfunction(L, client_publish);
    lua_setfield(L, -2, "publish");
    lua_pushcfunction(L, client_close);
    lua_setfield(L, -2, "close");
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    /* Weak values: a table the policy dropped is not kept for an ack that may never
     * come (a failed attempt's). */
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "v");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, AWAITS_KEY);
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, lazy_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, lazy_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &lazy_meta_key);
    lua_getglobal(L, "pcall");
    nats->pcall = lua_tocfunction(L, -1);
    lua_getglobal(L, "xpcall");
    nats->xpcall = lua_tocfunction(L, -1);
    lua_pop(L, 2);

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
        secret_free(nats->clients[i]->key);
        free(nats->clients[i]);
    }
    free(nats->clients);
    nats->clients = NULL;
    nats->client_count = 0;
    free(nats->lazy_ids);
    nats->lazy_ids = NULL;
    nats->lazy_count = nats->lazy_cap = 0;
    free(nats->lazy_error);
    nats->lazy_error = NULL;
}
