/* The `kumo` module for Lua policies: the helpers KumoMTA policies use (make_queue_config,
 * reject, log, and kumod's helper modules of lua_helpers.h). policy_lua.c adds `kumo.on`
 * and lua_kumod.c's kumod compatibility, lua_nats.c adds `kumo.nats`. */
#ifndef RELAY_LUA_KUMO_H
#define RELAY_LUA_KUMO_H

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Push a new `kumo` table holding make_queue_config, reject, json_encode, json_parse,
 * json_encode_pretty, json_load (deprecated aliases of kumo.serde's), log_error, log_warn,
 * log_info, log_debug, sleep, and the serde, string, encode, digest, uuid and time
 * tables. */
void lua_kumo_open(lua_State *L);

/* Push the Lua value of a JSON text (objects → tables, arrays → sequences from 1, null →
 * nil as a value and omitted inside tables, integers → integers). Returns 0, or -1 with
 * *err (malloc'd) for invalid JSON (nothing pushed). */
int lua_kumo_push_json(lua_State *L, const char *text, size_t len, char **err);

/* Raise an error that dead-letters the record being handled with `reason` as its reason,
 * never retried: a kumo.reject whose code is 0 (no SMTP status). Does not return. */
int lua_kumo_record_unusable(lua_State *L, const char *reason);

/* Push the whole content of the file at path as a Lua string. Returns 0, or -1 with errno
 * set, *failed_to ("open" or "read") saying which step failed, and nothing pushed. */
int lua_kumo_push_file(lua_State *L, const char *path, const char **failed_to);

/* Is the value at idx an error raised by kumo.reject(code, msg) (or, with *code 0, by
 * lua_kumo_record_unusable)? */
bool lua_kumo_is_reject(lua_State *L, int idx, int *code, const char **message);

/* Parse a humantime duration ("20m", "7 days", "1h 30m", "0s") or a number of seconds at
 * idx. Returns 0 and sets *ms, or -1. */
int lua_kumo_duration(lua_State *L, int idx, int64_t *ms);

/* What the relay uses of a queue config (the table kumo.make_queue_config returns). */
struct queue_config {
    char *constructor;             /* protocol.custom_lua.constructor, NULL if none */
    size_t batch_size;             /* default 1 */
    size_t min_batch_size;         /* default 1 */
    int64_t max_batch_latency_ms;  /* default 0 */
    int64_t retry_interval_ms;     /* default 20m */
    int64_t max_retry_interval_ms; /* default 0 = no cap */
    int64_t max_age_ms;            /* default 7 days */
};

/* Read the queue config table at idx. Returns NULL or a malloc'd error. */
char *lua_kumo_queue_config(lua_State *L, int idx, struct queue_config *qc);
void lua_kumo_queue_config_free(struct queue_config *qc);

#endif
