/* What lua_nats.c (the client object: publish and its acks) and lua_nats_connect.c
 * (kumo.nats.connect and the connections) share. Private to those two files. */
#ifndef RELAY_LUA_NATS_INTERNAL_H
#define RELAY_LUA_NATS_INTERNAL_H

#include "lua_nats.h"
#include "nats_auth.h"

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>

#define CLIENT_META "kumo.nats.client"

struct lua_nats_client {
    char *key; /* the canonical connect configuration: equal keys share the connection */
    struct publisher *pub; /* NULL under --check */
    struct lua_nats *nats;
    int lazy_meta_ref; /* the metatable of its lazy publishes' tables (LUA_NOREF: none yet) */
};

/* The userdata a policy holds; several may point at one shared client. */
struct client_handle {
    struct lua_nats_client *client;
    bool closed;
};

/* What one connect call asked for. It lives in a userdata whose __gc frees it (and wipes
 * the secrets), so that a Lua error half way leaks nothing. */
struct connect_spec {
    char **servers;
    size_t server_count;
    char *name;
    struct nats_auth auth; /* its strings are the spec's */
};

/* Reads the connect table at idx as kumod would, and checks it (the auth rules are
 * nats_auth_check's); pushes the spec's userdata, or raises the first error. */
struct connect_spec *lua_nats_read_spec(lua_State *L, int idx);

/* kumo.nats.connect; its upvalue is the struct lua_nats. */
int lua_nats_connect(lua_State *L);

/* Raises "<what>: unknown key "<key>"" for a key of the table at idx not in allowed
 * (NULL-terminated). */
void lua_nats_check_keys(lua_State *L, int idx, const char *const *allowed, const char *what);

#endif
