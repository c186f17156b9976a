/* kumod compatibility: what an existing kumod init.lua calls that the relay has no use
 * for is accepted (no-op functions, events that never fire), configure_log_hook names the
 * hook the relay serves, kumo.memoize caches, and require 'policy-extras.log_hooks' finds
 * the relay's own implementation of kumod's module. */
#ifndef RELAY_LUA_KUMOD_H
#define RELAY_LUA_KUMOD_H

#include <lua.h>
#include <stdbool.h>

/* Add kumod's server functions (define_spool, configure_local_logs, start_esmtp_listener,
 * ...) as no-ops, configure_log_hook and memoize to the kumo table on top of the stack,
 * and preload policy-extras.log_hooks. A no-op logs once per function: a warning with
 * check_only (--check), an info line otherwise. */
void lua_kumod_open(lua_State *L, bool check_only);

/* kumo.on for a kumod-only event (smtp_server_message_received, ...): logs one info line
 * per event and returns true (the handler is not registered). */
bool lua_kumod_event_ignored(lua_State *L, const char *event);

/* Events that take several handlers in kumod: pre_init, get_queue_config,
 * should_enqueue_log_record. */
bool lua_kumod_takes_several(const char *event);

/* The hook name to pass to should_enqueue_log_record (malloc'd): `configured` when no log
 * hook is configured or one has that name, else the first configured one (warning when
 * there are several). */
char *lua_kumod_hook_name(lua_State *L, const char *configured);

/* Put the relay's policy-extras.log_hooks in package.preload (lua_log_hooks.c). */
void lua_log_hooks_preload(lua_State *L);

#endif
