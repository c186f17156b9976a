/* kumo.nats.connect: the configuration checked as kumod reads it, and the connections
 * the relay opens for it, one per distinct configuration. */
#include "lua_nats_internal.h"

#include "config.h"
#include "lua_kumo.h"
#include "lua_record.h"
#include "nats_auth.h"
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

void lua_nats_check_keys(lua_State *L, int idx, const char *const *allowed, const char *what)
{
    lua_record_fill(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING || !in_list(allowed, lua_tostring(L, -1)))
            luaL_error(L, "%s: unknown key \"%s\"", what, luaL_tolstring(L, -1, NULL));
    }
}

#define SPEC_META "kumo-nats-relay.connect_spec"

/* The messages of the rules shared with the nats: section, in this API's words. */
static const struct nats_auth_names connect_auth_names = {
    .section = "kumo.nats.connect",
    .user = "auth.username",
    .password = "auth.password",
    .ways = "auth.username and auth.password, auth.token, nkey_seed or creds",
    .tls_section = "kumo.nats.connect",
    .cert = "client_cert",
    .key = "client_key",
};

static void spec_free(struct connect_spec *spec)
{
    for (size_t i = 0; i < spec->server_count; i++)
        free(spec->servers[i]);
    free(spec->servers);
    free(spec->name);
    nats_auth_free(&spec->auth);
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

static void read_auth(lua_State *L, int idx, struct nats_auth *auth)
{
    if (lua_getfield(L, idx, "auth") == LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    int at = lua_gettop(L);
    luaL_checktype(L, at, LUA_TTABLE);
    static const char *const auth_keys[] = {"username", "password", "token", NULL};
    lua_nats_check_keys(L, at, auth_keys, "kumo.nats.connect auth");
    if (lua_getfield(L, at, "username") != LUA_TNIL)
        auth->user = key_source(L, lua_gettop(L), "auth.username");
    if (lua_getfield(L, at, "password") != LUA_TNIL)
        auth->password = key_source(L, lua_gettop(L), "auth.password");
    if (lua_getfield(L, at, "token") != LUA_TNIL)
        auth->token = key_source(L, lua_gettop(L), "auth.token");
    lua_pop(L, 4);
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
    char *err = nats_auth_check_file(key, path, strcmp(key, "nkey_seed") == 0);
    if (err) {
        lua_pushfstring(L, "kumo.nats.connect: %s", err);
        free(err);
        lua_error(L);
    }
    char *copy = xstrdup(path);
    lua_pop(L, 1);
    return copy;
}

static void read_tls_and_keys(lua_State *L, int idx, struct nats_auth *auth)
{
    if (lua_getfield(L, idx, "tls_required") != LUA_TNIL) {
        luaL_checktype(L, -1, LUA_TBOOLEAN);
        auth->tls_required = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    auth->tls_ca = read_path(L, idx, "certificate");
    auth->tls_cert = read_path(L, idx, "client_cert");
    auth->tls_key = read_path(L, idx, "client_key");
    auth->creds = read_path(L, idx, "creds");
    auth->nkey_seed = read_path(L, idx, "nkey_seed");
}

/* The first of the shared rules' errors, raised. */
static void check_auth(lua_State *L, const struct nats_auth *auth)
{
    char *errors[NATS_AUTH_MAX_ERRORS];
    size_t n = nats_auth_check(auth, &connect_auth_names, errors);
    if (n == 0)
        return;
    lua_pushstring(L, errors[0]);
    for (size_t i = 0; i < n; i++)
        free(errors[i]);
    lua_error(L);
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
    const struct nats_auth *a = &spec->auth;
    char *full = xasprintf("%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%d", key, or_empty(spec->name),
                           or_empty(a->user), or_empty(a->password), or_empty(a->token),
                           or_empty(a->nkey_seed), or_empty(a->creds), or_empty(a->tls_ca),
                           or_empty(a->tls_cert), or_empty(a->tls_key), a->tls_required);
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
    client->lazy_meta_ref = LUA_NOREF;
    if (!nats->env->check_only) {
        struct publisher_options po = {
            .servers = (const char *const *)spec->servers,
            .server_count = spec->server_count,
            .name = spec->name ? spec->name : "kumo-nats-relay",
            .ack_timeout_ms = nats->cfg->ack_timeout_ms,
            .auth = spec->auth,
            .streams = nats->env->streams,
            .set = nats->env->publishers,
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

struct connect_spec *lua_nats_read_spec(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_nats_check_keys(L, idx, connect_keys, "kumo.nats.connect");
    check_types(L, idx);
    struct connect_spec *spec = push_spec(L);
    read_servers(L, idx, spec);
    if (lua_getfield(L, idx, "name") == LUA_TSTRING)
        spec->name = xstrdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    read_auth(L, idx, &spec->auth);
    read_tls_and_keys(L, idx, &spec->auth);
    check_auth(L, &spec->auth);
    return spec;
}

int lua_nats_connect(lua_State *L)
{
    struct lua_nats *nats = lua_touserdata(L, lua_upvalueindex(1));
    lua_settop(L, 1);
    struct connect_spec *spec = lua_nats_read_spec(L, 1);
    struct lua_nats_client *client = find_or_open(L, nats, spec);
    spec_free(spec);
    struct client_handle *h = lua_newuserdatauv(L, sizeof(*h), 0);
    h->client = client;
    h->closed = false;
    luaL_setmetatable(L, CLIENT_META);
    return 1;
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
