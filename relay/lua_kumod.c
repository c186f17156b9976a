/* What lets an existing kumod init.lua load unchanged: kumod's server functions accepted as
 * no-ops, configure_log_hook naming the hook the relay serves, kumod's events accepted and
 * never fired, kumo.memoize, and require 'policy-extras.log_hooks' (lua_log_hooks.c). */
#include "lua_kumod.h"

#include "log.h"
#include "lua_json.h"
#include "lua_kumo.h"
#include "lua_record.h"
#include "xalloc.h"

#include <lauxlib.h>

#include <stdint.h>
#include <string.h>
#include <time.h>

#define NOTED_KEY     "kumo-nats-relay.kumod_noted"    /* name -> true, once logged */
#define LOG_HOOKS_KEY "kumo-nats-relay.log_hook_names" /* configure_log_hook names, in order */
#define MEMOIZE_KEY   "kumo-nats-relay.memoize_caches" /* cache name -> cache table */

/* kumod's functions that configure its SMTP/HTTP server, spools, local logs, threads and
 * Lua context pool (crates/kumod/src/mod_kumo.rs, kumo-server-common, kumo-api-types).
 * The relay has none of these; `returns_arg` ones give their argument back, because
 * kumod returns an object the policy passes on (make_egress_source into a pool...). */
static const struct kumod_only {
    const char *name;
    bool returns_arg;
} kumod_only_functions[] = {
    {"define_spool", false},
    {"configure_local_logs", false},
    {"configure_bounce_classifier", false},
    {"configure_accounting_db_path", false},
    {"configure_redis_throttles", false},
    {"start_esmtp_listener", false},
    {"start_http_listener", false},
    {"start_https_listener", false},
    {"start_lmtp_listener", false},
    {"set_diagnostic_log_filter", false},
    {"set_max_spare_lua_contexts", false},
    {"set_max_lua_context_use_count", false},
    {"set_max_lua_context_age", false},
    {"set_lua_gc_on_put", false},
    {"set_spoolin_threads", false},
    {"set_httpinject_threads", false},
    {"set_qmaint_threads", false},
    {"set_smtpsrv_threads", false},
    {"set_readyq_threads", false},
    {"set_config_monitor_globs", false},
    {"set_memory_hard_limit", false},
    {"set_memory_low_thresh", false},
    {"set_memory_soft_limit", false},
    {"enable_memory_callstack_tracking", false},
    {"make_egress_source", true},
    {"make_egress_pool", true},
    {"make_listener_domain", true},
    {"make_egress_path", true},
};

/* Events kumod fires from its SMTP server, HTTP injector, egress and queues: a policy
 * may register them, the relay never fires them. */
static const char *const kumod_only_events[] = {
    "smtp_server_message_received",
    "smtp_server_connection_accepted",
    "smtp_server_ehlo",
    "smtp_server_mail_from",
    "smtp_server_mail_rcpt_to",
    "smtp_server_data",
    "smtp_server_auth_plain",
    "smtp_server_get_dynamic_parameters",
    "smtp_server_rewrite_response",
    "smtp_server_split_transaction",
    "smtp_client_rewrite_delivery_status",
    "http_message_generated",
    "http_server_validate_auth_basic",
    "http_server_validate_auth_bearer",
    "get_egress_path_config",
    "get_egress_source",
    "get_egress_pool",
    "get_listener_domain",
    "get_tsa_config",
    "tsa_load_shaping_data",
    "throttle_insert_ready_queue",
    "message_requeued",
    "requeue_message",
    "spool_message_enumerated",
    "validate_config",
    "main",
};

/* Events kumod lets several handlers share, called in order until one returns a value
 * (declare_event! Multiple / CallbackSignature::new_with_multiple). */
static const char *const several_handler_events[] = {
    "pre_init",
    "get_queue_config",
    "should_enqueue_log_record",
};

static bool in_list(const char *const *list, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i], name) == 0)
            return true;
    return false;
}

#define IN_LIST(list, name) in_list(list, sizeof(list) / sizeof(list[0]), name)

bool lua_kumod_takes_several(const char *event)
{
    return IN_LIST(several_handler_events, event);
}

/* True the first time `what` is noted in this state. */
static bool first_note(lua_State *L, const char *what)
{
    lua_getfield(L, LUA_REGISTRYINDEX, NOTED_KEY);
    bool first = lua_getfield(L, -1, what) == LUA_TNIL;
    lua_pop(L, 1);
    if (first) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, what);
    }
    lua_pop(L, 1);
    return first;
}

/* "policy.lua:12: " of the caller's caller (the policy line calling kumo.on or the
 * function), for the log line. */
static const char *caller_where(lua_State *L)
{
    luaL_where(L, 1);
    return lua_tostring(L, -1);
}

bool lua_kumod_event_ignored(lua_State *L, const char *event)
{
    if (!IN_LIST(kumod_only_events, event))
        return false;
    if (first_note(L, event))
        log_info("%sthe '%s' event is kumod's; the relay accepts the handler and never fires it",
                 caller_where(L), event);
    lua_pop(L, 1);
    return true;
}

/* ---- kumod-only functions -------------------------------------------------------- */

static int kumod_only_call(lua_State *L)
{
    const struct kumod_only *f = lua_touserdata(L, lua_upvalueindex(1));
    bool check_only = lua_toboolean(L, lua_upvalueindex(2));
    if (first_note(L, f->name)) {
        const char *where = caller_where(L);
        if (check_only)
            log_warn("%skumo.%s is kumod-only; the relay ignores it", where, f->name);
        else
            log_info("%skumo.%s is kumod-only; the relay ignores it", where, f->name);
        lua_pop(L, 1);
    }
    if (f->returns_arg) {
        lua_settop(L, 1);
        return 1;
    }
    return 0;
}

/* ---- configure_log_hook ---------------------------------------------------------- */

/* kumod's LogHookParams (logging/hooks.rs), deny_unknown_fields: the relay checks the
 * shape and keeps the name; the rest configures kumod's own logger. */
static int kumo_configure_log_hook(lua_State *L)
{
    static const char *const keys[] = {"name",    "back_pressure", "meta",
                                       "headers", "per_record",    "deferred_spool"};
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_record_fill(L, 1);
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING || !IN_LIST(keys, lua_tostring(L, -1)))
            return luaL_error(L, "configure_log_hook: unknown field `%s`",
                              luaL_tolstring(L, -1, NULL));
    }
    if (lua_getfield(L, 1, "name") != LUA_TSTRING)
        return luaL_error(L, "configure_log_hook: missing field `name`");
    const char *name = lua_tostring(L, -1);
    lua_getfield(L, LUA_REGISTRYINDEX, LOG_HOOKS_KEY);
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        bool same = strcmp(lua_tostring(L, -1), name) == 0;
        lua_pop(L, 1);
        if (same)
            return luaL_error(L, "configure_log_hook: a hook named '%s' is already configured",
                              name);
    }
    lua_pushvalue(L, -2);
    lua_rawseti(L, -2, n + 1);
    return 0;
}

char *lua_kumod_hook_name(lua_State *L, const char *configured)
{
    lua_getfield(L, LUA_REGISTRYINDEX, LOG_HOOKS_KEY);
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    char *name = NULL;
    for (lua_Integer i = 1; i <= n && !name; i++) {
        lua_rawgeti(L, -1, i);
        if (strcmp(lua_tostring(L, -1), configured) == 0)
            name = xstrdup(configured);
        lua_pop(L, 1);
    }
    if (!name && n > 0) {
        lua_rawgeti(L, -1, 1);
        name = xstrdup(lua_tostring(L, -1));
        lua_pop(L, 1);
        if (n > 1)
            log_warn("the policy configures %lld log hooks and none is named policy.hook_name "
                     "'%s': the relay serves the first, '%s'",
                     (long long)n, configured, name);
    }
    lua_pop(L, 1);
    return name ? name : xstrdup(configured);
}

/* ---- kumo.memoize ---------------------------------------------------------------- */

static int64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Push the JSON text of the values first..last as mod-memoize's key and value are built:
 * nothing is null, one value is itself, several are an array. */
static void push_values_json(lua_State *L, int first, int last)
{
    lua_pushcfunction(L, lua_json_encode);
    if (last < first) {
        lua_pushnil(L);
    } else if (last == first) {
        lua_pushvalue(L, first);
    } else {
        lua_createtable(L, last - first + 1, 0);
        for (int i = first; i <= last; i++) {
            lua_pushvalue(L, i);
            lua_rawseti(L, -2, i - first + 1);
        }
    }
    lua_call(L, 1, 1);
}

/* Drop expired entries; if the cache is still full, drop one more (any). */
static void cache_make_room(lua_State *L, int entries, lua_Integer *count, int64_t now)
{
    lua_pushnil(L);
    while (lua_next(L, entries)) {
        lua_getfield(L, -1, "expires");
        bool expired = lua_tointeger(L, -1) <= now;
        lua_pop(L, 2);
        if (expired) {
            lua_pushvalue(L, -1);
            lua_pushnil(L);
            lua_rawset(L, entries); /* clearing a field during lua_next is allowed */
            (*count)--;
        }
    }
    if (*count == 0)
        return;
    lua_pushnil(L);
    if (lua_next(L, entries)) {
        lua_pop(L, 1);
        lua_pushnil(L);
        lua_rawset(L, entries);
        (*count)--;
    }
}

/* The memoized function. Upvalues: the function, its cache table { ttl_ms, capacity,
 * count, entries = { key json -> { json, expires } } }. A hit returns the stored value
 * parsed afresh, as kumod returns a new Lua value from its JSON each time. */
static int memoized_call(lua_State *L)
{
    int nargs = lua_gettop(L);
    int cache = lua_upvalueindex(2);
    push_values_json(L, 1, nargs);
    int key = lua_gettop(L);
    lua_getfield(L, cache, "entries");
    int entries = key + 1;
    int64_t now = monotonic_ms();
    lua_pushvalue(L, key);
    if (lua_rawget(L, entries) == LUA_TTABLE) {
        lua_getfield(L, -1, "expires");
        if (lua_tointeger(L, -1) > now) {
            lua_getfield(L, -2, "json");
            size_t len;
            const char *json = lua_tolstring(L, -1, &len);
            char *err = NULL;
            if (lua_json_push(L, json, len, &err) != 0)
                return luaL_error(L, "memoize: %s", err);
            return 1;
        }
    }
    lua_settop(L, entries);
    lua_pushvalue(L, lua_upvalueindex(1));
    for (int i = 1; i <= nargs; i++)
        lua_pushvalue(L, i);
    lua_call(L, nargs, LUA_MULTRET);
    push_values_json(L, entries + 1, lua_gettop(L));
    int json = lua_gettop(L);

    lua_getfield(L, cache, "count");
    lua_Integer count = lua_tointeger(L, -1);
    lua_getfield(L, cache, "capacity");
    lua_Integer capacity = lua_tointeger(L, -1);
    lua_getfield(L, cache, "ttl_ms");
    int64_t ttl = lua_tointeger(L, -1);
    lua_pop(L, 3);
    lua_pushvalue(L, key);
    bool present = lua_rawget(L, entries) != LUA_TNIL;
    lua_pop(L, 1);
    if (!present && count >= capacity)
        cache_make_room(L, entries, &count, now);
    if (count < capacity || present) {
        lua_pushvalue(L, key);
        lua_createtable(L, 0, 2);
        lua_pushvalue(L, json);
        lua_setfield(L, -2, "json");
        lua_pushinteger(L, now + ttl);
        lua_setfield(L, -2, "expires");
        lua_rawset(L, entries);
        lua_pushinteger(L, count + !present);
        lua_setfield(L, cache, "count");
    }
    size_t len;
    const char *text = lua_tolstring(L, json, &len);
    char *err = NULL;
    if (lua_json_push(L, text, len, &err) != 0)
        return luaL_error(L, "memoize: %s", err);
    return 1;
}

/* kumo.memoize(fn, { name, ttl, capacity }) as mod-memoize: all three are required; one
 * cache per name, kept while the parameters stay the same. */
static int kumo_memoize(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    luaL_checktype(L, 2, LUA_TTABLE);
    int64_t ttl;
    if (lua_getfield(L, 2, "ttl") == LUA_TNIL || lua_kumo_duration(L, -1, &ttl) != 0)
        return luaL_error(L, "memoize: `ttl` must be a duration such as '5 minutes'");
    if (lua_getfield(L, 2, "capacity") != LUA_TNUMBER || !lua_isinteger(L, -1) ||
        lua_tointeger(L, -1) < 1)
        return luaL_error(L, "memoize: `capacity` must be a positive integer");
    lua_Integer capacity = lua_tointeger(L, -1);
    if (lua_getfield(L, 2, "name") != LUA_TSTRING)
        return luaL_error(L, "memoize: `name` must be a string");
    const char *name = lua_tostring(L, -1);
    lua_getfield(L, LUA_REGISTRYINDEX, MEMOIZE_KEY);
    int caches = lua_gettop(L);
    bool reuse = false;
    if (lua_getfield(L, caches, name) == LUA_TTABLE) {
        lua_getfield(L, -1, "ttl_ms");
        lua_getfield(L, -2, "capacity");
        reuse = lua_tointeger(L, -2) == ttl && lua_tointeger(L, -1) == capacity;
        lua_pop(L, 2);
    }
    if (!reuse) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 4);
        lua_pushinteger(L, ttl);
        lua_setfield(L, -2, "ttl_ms");
        lua_pushinteger(L, capacity);
        lua_setfield(L, -2, "capacity");
        lua_pushinteger(L, 0);
        lua_setfield(L, -2, "count");
        lua_newtable(L);
        lua_setfield(L, -2, "entries");
        lua_pushvalue(L, -1);
        lua_setfield(L, caches, name);
    }
    lua_pushvalue(L, 1);
    lua_insert(L, -2);
    lua_pushcclosure(L, memoized_call, 2);
    return 1;
}

/* ---- the module ------------------------------------------------------------------ */

void lua_kumod_open(lua_State *L, bool check_only)
{
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, NOTED_KEY);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, LOG_HOOKS_KEY);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, MEMOIZE_KEY);
    for (size_t i = 0; i < sizeof(kumod_only_functions) / sizeof(kumod_only_functions[0]); i++) {
        lua_pushlightuserdata(L, (void *)&kumod_only_functions[i]);
        lua_pushboolean(L, check_only);
        lua_pushcclosure(L, kumod_only_call, 2);
        lua_setfield(L, -2, kumod_only_functions[i].name);
    }
    lua_pushcfunction(L, kumo_configure_log_hook);
    lua_setfield(L, -2, "configure_log_hook");
    lua_pushcfunction(L, kumo_memoize);
    lua_setfield(L, -2, "memoize");
    /* kumod sets it while validating (config crate, load_config). */
    if (check_only) {
        lua_pushboolean(L, 1);
        lua_setglobal(L, "_VALIDATING_CONFIG");
    }
    lua_log_hooks_preload(L);
}
