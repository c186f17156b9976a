/* The policy's Lua state (allocator with a ceiling, instruction budget), kumo.on, and
 * loading the script: package path, the kumo module, load, pre_init and init. */
#include "policy_lua.h"
#include "policy_check.h"

#include "config.h"
#include "hook_watchdog.h"
#include "lua_alloc.h"
#include "lua_kumo.h"
#include "lua_kumod.h"
#include "lua_message.h"
#include "lua_nats.h"
#include "lua_sandbox.h"
#include "xalloc.h"

#include <lauxlib.h>
#include <lualib.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "policy_lua_internal.h"

#define EVENTS_KEY    "kumo-nats-relay.events"    /* event name -> { handlers... } */
#define LOCATIONS_KEY "kumo-nats-relay.locations" /* event name -> "file:line" */

/* ---- the Lua state: allocator with a ceiling, instruction budget ---- */

static void *lua_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct policy_lua *p = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        lua_pool_realloc(&p->pool, ptr, osize, 0);
        p->memory_used -= old;
        return NULL;
    }
    if (nsize > old && p->memory_used + (nsize - old) > MEMORY_CEILING)
        return NULL; /* Lua raises "not enough memory" in the policy */
    void *q = lua_pool_realloc(&p->pool, ptr, osize, nsize);
    if (q)
        p->memory_used = p->memory_used - old + nsize;
    return q;
}

static struct policy_lua *policy_of(lua_State *L)
{
    void *ud;
    lua_getallocf(L, &ud);
    return ud;
}

static void budget_hook(lua_State *L, lua_Debug *ar)
{
    struct policy_lua *p = policy_of(L);
    p->budget -= HOOK_EVERY;
    if (!p->stopping && hook_watchdog_stopping(p->env.watchdog)) {
        /* SIGTERM while this hook runs: cut it short, so the drain can begin. */
        p->stopping = true;
        if (p->budget > STOPPING_BUDGET)
            p->budget = STOPPING_BUDGET;
    }
    if (p->budget >= 0)
        return;
    p->budget = INSTRUCTION_BUDGET; /* room for the error handling itself */
    const char *event = p->current_event ? p->current_event : "?";
    if (p->stopping)
        luaL_error(L, "the relay is stopping: the '%s' event was cut short", event);
    luaL_error(L, "instruction budget of %d exceeded in the '%s' event", INSTRUCTION_BUDGET, event);
}

/* Calls the function below nargs arguments, protected, under a fresh budget. Leaves
 * nresults results, or the error value, on the stack. */
int policy_lua_call_hook(struct policy_lua *p, const char *event, int nargs, int nresults)
{
    p->stopping = hook_watchdog_stopping(p->env.watchdog);
    p->budget = p->stopping ? STOPPING_BUDGET : INSTRUCTION_BUDGET;
    p->current_event = event;
    hook_watchdog_enter(p->env.watchdog, event);
    int rc = lua_pcall(p->L, nargs, nresults, 0);
    hook_watchdog_leave(p->env.watchdog);
    p->current_event = NULL;
    return rc;
}

/* ---- kumo.on ---- */

static bool takes_several_handlers(const char *event)
{
    return lua_kumod_takes_several(event);
}

static int kumo_on(lua_State *L)
{
    const char *event = luaL_checkstring(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    if (lua_kumod_event_ignored(L, event))
        return 0;
    lua_getfield(L, LUA_REGISTRYINDEX, EVENTS_KEY);
    lua_getfield(L, LUA_REGISTRYINDEX, LOCATIONS_KEY);
    if (lua_getfield(L, -2, event) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, -4, event);
        luaL_where(L, 1); /* "file:line: " */
        size_t len;
        const char *where = lua_tolstring(L, -1, &len);
        lua_pushlstring(L, where, len >= 2 ? len - 2 : len);
        lua_remove(L, -2);
        lua_setfield(L, -3, event);
    } else if (!takes_several_handlers(event)) {
        lua_getfield(L, -2, event);
        /* luaL_error prefixes the place of this second registration. */
        return luaL_error(L, "%s event already has a handler defined at %s", event,
                          lua_tostring(L, -1));
    }
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    return 0;
}

lua_Integer policy_lua_push_handlers(lua_State *L, const char *event)
{
    lua_getfield(L, LUA_REGISTRYINDEX, EVENTS_KEY);
    lua_Integer n = 0;
    if (lua_getfield(L, -1, event) == LUA_TTABLE)
        n = (lua_Integer)lua_rawlen(L, -1);
    if (n == 0) {
        lua_pop(L, 2);
        return 0;
    }
    lua_remove(L, -2);
    return n;
}

/* ---- loading ---- */

static void set_package_path(lua_State *L, const char *script)
{
    const char *slash = strrchr(script, '/');
    char *dir = slash ? xstrndup(script, (size_t)(slash - script)) : xstrdup(".");
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s", dir, dir, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
    free(dir);
}

static void open_kumo(struct policy_lua *p)
{
    lua_State *L = p->L;
    lua_kumo_open(L);
    lua_pushcfunction(L, kumo_on);
    lua_setfield(L, -2, "on");
    lua_kumod_open(L, p->env.check_only);
    lua_nats_open(L, &p->nats);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    lua_pushvalue(L, -3);
    lua_setfield(L, -2, "kumo");
    lua_pop(L, 2);
    lua_setglobal(L, "kumo"); /* the seed document uses it without require */
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, EVENTS_KEY);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, LOCATIONS_KEY);
    lua_message_register(L);
}

/* Loads the policy file under its base name, so every error and kumo.log_* line says
 * "policy.lua:12:" whole instead of a long path cut short by Lua's 60-byte source ids. */
static int load_chunk(lua_State *L, const char *path)
{
    const char *failed_to;
    if (lua_kumo_push_file(L, path, &failed_to) != 0) {
        lua_pushfstring(L, "cannot %s %s: %s", failed_to, path, strerror(errno));
        return LUA_ERRFILE;
    }
    const char *slash = strrchr(path, '/');
    lua_pushfstring(L, "@%s", slash ? slash + 1 : path);
    size_t len;
    const char *text = lua_tolstring(L, -2, &len);
    int rc = luaL_loadbufferx(L, text, len, lua_tostring(L, -1), "t");
    lua_remove(L, -2); /* the chunk name */
    lua_remove(L, -2); /* the text */
    return rc;
}

static char *load_script(struct policy_lua *p)
{
    lua_State *L = p->L;
    if (load_chunk(L, p->cfg->policy_script) != LUA_OK ||
        policy_lua_call_hook(p, "load", 0, 0) != LUA_OK) {
        char *err = xasprintf("policy.script %s: %s", p->cfg->policy_script, lua_tostring(L, -1));
        lua_pop(L, 1);
        return err;
    }
    /* kumod runs every pre_init handler, then init (log_hooks:new configures its hook
     * in pre_init). */
    lua_Integer pre_init = policy_lua_push_handlers(L, "pre_init");
    for (lua_Integer i = 1; i <= pre_init; i++) {
        lua_geti(L, -1, i);
        if (policy_lua_call_hook(p, "pre_init", 0, 0) != LUA_OK) {
            char *err = xasprintf("pre_init: %s", lua_tostring(L, -1));
            lua_pop(L, 2);
            return err;
        }
    }
    if (pre_init > 0)
        lua_pop(L, 1);
    if (policy_lua_push_handlers(L, "init") > 0) {
        lua_geti(L, -1, 1);
        lua_remove(L, -2);
        if (policy_lua_call_hook(p, "init", 0, 0) != LUA_OK) {
            char *err = xasprintf("init: %s", lua_tostring(L, -1));
            lua_pop(L, 1);
            return err;
        }
    }
    p->hook_name = lua_kumod_hook_name(L, p->cfg->policy_hook_name);
    char *unknown = policy_check_kumo_calls(L, p->cfg->policy_script);
    char *err = unknown ? xasprintf("policy.script %s: %s", p->cfg->policy_script, unknown) : NULL;
    free(unknown);
    return err;
}

struct policy_lua *policy_lua_create(const struct config *cfg, const struct policy_env *env,
                                     char **err)
{
    struct policy_lua *p = xcalloc(1, sizeof(*p));
    p->cfg = cfg;
    p->env = *env;
    p->nats.cfg = cfg;
    p->nats.env = &p->env;
    p->L = lua_newstate(lua_alloc, p);
    if (!p->L) {
        *err = xstrdup("cannot create a Lua state");
        lua_pool_release(&p->pool);
        free(p);
        return NULL;
    }
    luaL_openlibs(p->L);
    lua_sandbox_open(p->L);
    lua_sethook(p->L, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
    set_package_path(p->L, cfg->policy_script);
    open_kumo(p);
    *err = load_script(p);
    if (*err) {
        policy_lua_destroy(p);
        return NULL;
    }
    return p;
}

static void close_connections(struct policy_lua *p)
{
    for (struct queue_state *q = p->queues; q; q = q->next)
        policy_lua_drop_connection(p, q);
}

static void free_queues(struct policy_lua *p)
{
    while (p->queues) {
        struct queue_state *q = p->queues;
        p->queues = q->next;
        lua_kumo_queue_config_free(&q->qc);
        free(q->batch);
        free(q->name);
        free(q->parts_buf);
        free(q);
    }
    policy_await_free(p);
}

void policy_lua_destroy(struct policy_lua *p)
{
    if (!p)
        return;
    if (p->L)
        close_connections(p);
    lua_nats_close_all(&p->nats);
    if (p->L)
        lua_close(p->L);
    lua_pool_release(&p->pool);
    free_queues(p);
    free(p->hook_name);
    free(p);
}
