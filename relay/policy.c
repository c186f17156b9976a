#include "policy.h"

#include "policy_builtin.h"
#include "config.h"
#include "hook_watchdog.h"
#include "policy_lua.h"
#include "poison.h"
#include "xalloc.h"

#include <stdlib.h>

/* The seam itself: one of the two policies, chosen by policy.script. */
struct policy {
    struct builtin *builtin;
    struct policy_lua *lua;
    struct hook_watchdog *watchdog;
    struct poison *poison;
};

struct policy *policy_create(const struct config *cfg, const struct policy_env *env, char **err)
{
    struct policy *policy = xcalloc(1, sizeof(*policy));
    policy->watchdog = env->watchdog;
    policy->poison = env->poison;
    if (cfg->policy_script)
        policy->lua = policy_lua_create(cfg, env, err);
    else
        policy->builtin = builtin_create(cfg, env, err);
    if (!policy->lua && !policy->builtin) {
        free(policy);
        return NULL;
    }
    return policy;
}

/* The Lua policy, with the hook watchdog told which record its hooks work for. */
static enum policy_verdict handle_lua(struct policy *policy, struct inflight_record *rec,
                                      const struct segment_record *sr, struct policy_reason *reason)
{
    hook_watchdog_set_record(policy->watchdog, rec);
    enum policy_verdict v = policy_lua_handle(policy->lua, rec, sr, reason);
    hook_watchdog_set_record(policy->watchdog, NULL);
    return v;
}

/* After a run that died: the poison record is not handed to the policy again, and the
 * record being handled is on disk before the policy runs (poison.h). */
static enum policy_verdict handle_guarded(struct policy *policy, struct inflight_record *rec,
                                          const struct segment_record *sr,
                                          struct policy_reason *reason)
{
    if (poison_before(policy->poison, rec)) {
        reason->kind = DEADLETTER_POLICY;
        reason->text = xstrdup(POISON_REASON);
        return POLICY_DEADLETTER;
    }
    enum policy_verdict v = handle_lua(policy, rec, sr, reason);
    poison_after(policy->poison, rec);
    return v;
}

enum policy_verdict policy_handle(struct policy *policy, struct inflight_record *rec,
                                  const struct segment_record *sr, struct policy_reason *reason)
{
    if (!policy->lua)
        return builtin_handle(policy->builtin, rec, sr, reason);
    if (poison_armed(policy->poison))
        return handle_guarded(policy, rec, sr, reason);
    return handle_lua(policy, rec, sr, reason);
}

void policy_tick(struct policy *policy)
{
    if (policy->lua)
        policy_lua_tick(policy->lua);
}

void policy_acked(struct policy *policy, const struct publish_ack *ack)
{
    if (policy->lua)
        policy_lua_acked(policy->lua, ack);
}

size_t policy_in_flight(const struct policy *policy)
{
    return policy->lua ? policy_lua_in_flight(policy->lua) : 0;
}

void policy_release_held(struct policy *policy,
                         void (*fn)(void *ctx, struct inflight_record *rec, const char *data,
                                    size_t len),
                         void *ctx)
{
    if (policy->lua)
        policy_lua_release_held(policy->lua, fn, ctx);
}

bool policy_uses_default_connection(const struct policy *policy)
{
    return policy->builtin != NULL;
}

void policy_destroy(struct policy *policy)
{
    if (!policy)
        return;
    builtin_destroy(policy->builtin);
    policy_lua_destroy(policy->lua);
    free(policy);
}
