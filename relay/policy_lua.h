/* The operator's Lua policy, mirroring KumoMTA: kumo.on events, should_enqueue_log_record,
 * get_queue_config, custom_lua constructors (connection objects with send/send_batch, or
 * the seed document's shape that publishes with the global `message` bound). */
#ifndef RELAY_POLICY_LUA_H
#define RELAY_POLICY_LUA_H

#include "policy.h"

struct policy_lua;

struct policy_lua *policy_lua_create(const struct config *cfg, const struct policy_env *env,
                                     char **err);
enum policy_verdict policy_lua_handle(struct policy_lua *p, struct inflight_record *rec,
                                      const struct segment_record *sr,
                                      struct policy_reason *reason);
void policy_lua_tick(struct policy_lua *p);
void policy_lua_acked(struct policy_lua *p, const struct publish_ack *ack);
size_t policy_lua_in_flight(const struct policy_lua *p);
void policy_lua_release_held(struct policy_lua *p,
                             void (*fn)(void *ctx, struct inflight_record *rec, const char *data,
                                        size_t len),
                             void *ctx);
void policy_lua_destroy(struct policy_lua *p);

#endif
