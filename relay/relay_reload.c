/* SIGHUP: load the configuration and the policy again, atomically. If either fails, the
 * running ones stay and the log says why. The replaced policy is retired, not destroyed:
 * its connections still carry unacknowledged publishes, and records it held (batches,
 * retries) are handed to the new policy in their place in the watermark. */
#include "config.h"
#include "deadletter.h"
#include "log.h"
#include "notify.h"
#include "policy.h"
#include "publish.h"
#include "relay.h"
#include "relay_internal.h"
#include "segment.h"
#include "xalloc.h"

#include <stdlib.h>
#include <string.h>

#define RESTART "restart to apply it"

/* The spool directories the running relay watches: each segment carries the index of its
 * directory into cfg->spools, so the list cannot change (not even past its first entry)
 * without a restart. A segment_header may: readers opened from now on take the new one.
 * NULL when the list is the same, else what changed. */
static char *spools_changed(const struct config *old, const struct config *cfg)
{
    if (old->spool_count != cfg->spool_count)
        return xasprintf("spool list changed (%zu directories, was %zu): %s", cfg->spool_count,
                         old->spool_count, RESTART);
    for (size_t i = 0; i < cfg->spool_count; i++) {
        const struct spool_source *a = &old->spools[i], *b = &cfg->spools[i];
        if (strcmp(a->dir, b->dir) != 0)
            return xasprintf("spool directory %zu changed (%s, was %s): %s", i + 1, b->dir, a->dir,
                             RESTART);
        if (strcmp(a->pattern, b->pattern) != 0)
            return xasprintf("spool.pattern of %s changed: %s", b->dir, RESTART);
    }
    return NULL;
}

/* Settings the running relay cannot change under its records. */
static char *incompatible(const struct config *old, const struct config *cfg)
{
    static const char *const restart = "changed: " RESTART;
    char *err = spools_changed(old, cfg);
    if (err)
        return err;
    if (strcmp(old->state_dir, cfg->state_dir) != 0)
        return xasprintf("state_dir %s", restart);
    if (strcmp(old->relay_id, cfg->relay_id) != 0)
        return xasprintf("relay_id %s", restart);
    if (old->max_in_flight != cfg->max_in_flight)
        return xasprintf("jetstream.max_in_flight %s", restart);
    if ((old->metrics_listen == NULL) != (cfg->metrics_listen == NULL) ||
        (old->metrics_listen && strcmp(old->metrics_listen, cfg->metrics_listen) != 0))
        return xasprintf("metrics.listen %s", restart);
    return NULL;
}

/* A record the old policy held goes through the new one; then the old hold is let go. */
static void resubmit(void *ctx, struct inflight_record *rec, const char *data, size_t len)
{
    struct relay *r = ctx;
    struct segment_record sr = {
        .data = data,
        .len = len,
        .start = rec->start,
        .end = rec->end,
        .ordinal = rec->ordinal,
    };
    relay_apply_policy(r, rec, &sr);
    relay_release_hold(r, rec);
}

static void retire(struct relay *r)
{
    struct retired *old = xcalloc(1, sizeof(*old));
    old->policy = r->policy;
    old->pub = r->pub;
    old->cfg = r->owned_cfg;
    old->next = r->retired;
    r->retired = old;
}

static void discard(struct config *cfg, struct policy *policy)
{
    policy_destroy(policy);
    config_free(cfg);
    free(cfg);
}

/* logrotate's create mode: the dead-letter file was renamed and a new one made. Done
 * whether or not the configuration reloads. */
static void reopen_deadletter(struct relay *r)
{
    if (!r->deadletter) /* not open (yet): nothing was written to rotate */
        return;
    bool rotated = false;
    char *err = deadletter_reopen(r->deadletter, &rotated);
    if (rotated)
        log_info("SIGHUP: dead letters now go to a new file (the old one was rotated)");
    if (err) {
        log_warn("SIGHUP: dead-letter file error=\"%s\"", err);
        free(err);
    }
}

void reload_run(struct relay *r)
{
    notify_reloading();
    reopen_deadletter(r);
    log_info("SIGHUP: reloading config=%s", r->cfg->path);
    struct config *cfg = xcalloc(1, sizeof(*cfg));
    struct policy *policy = NULL;
    struct publisher *pub = NULL;
    char *err = config_load(r->cfg->path, cfg);
    if (!err)
        err = incompatible(r->cfg, cfg);
    if (!err) {
        struct policy_env env = relay_policy_env(r);
        policy = policy_create(cfg, &env, &err);
    }
    if (!err && policy_uses_default_connection(policy))
        pub = relay_open_default_publisher(r, cfg, &err);
    if (err) {
        /* config_load's errors may span lines; keep the log one line per event. */
        for (char *nl = strchr(err, '\n'); nl; nl = strchr(nl, '\n'))
            *nl = nl[1] ? ';' : '\0';
        log_error("reload failed, still running the previous configuration and policy "
                  "error=\"%s\"",
                  err);
        free(err);
        discard(cfg, policy);
        notify_ready();
        return;
    }
    retire(r);
    struct policy *old = r->policy;
    r->policy = policy;
    r->pub = pub;
    r->cfg = r->owned_cfg = cfg;
    log_set_level((enum log_level)cfg->log_level);
    log_configure((enum log_format)cfg->log_format, (enum log_target)cfg->log_target);
    stream_check_configure(&r->streams,
                           cfg->expected_max_downtime_ms); /* streams are checked again */
    policy_release_held(old, resubmit, r);
    log_info("reloaded configuration and policy policy=%s",
             cfg->policy_script ? cfg->policy_script : "built-in");
    notify_ready();
}

static bool drained(const struct retired *old)
{
    return policy_in_flight(old->policy) == 0 && (!old->pub || publisher_in_flight(old->pub) == 0);
}

static void destroy_retired(struct retired *old)
{
    policy_destroy(old->policy);
    publisher_destroy(old->pub);
    if (old->cfg) {
        config_free(old->cfg);
        free(old->cfg);
    }
    free(old);
}

void reload_tick(struct relay *r)
{
    for (struct retired **p = &r->retired; *p;) {
        struct retired *old = *p;
        policy_tick(old->policy);
        if (old->pub)
            publisher_tick(old->pub);
        if (drained(old)) {
            *p = old->next;
            destroy_retired(old);
        } else {
            p = &old->next;
        }
    }
}

void reload_release_all(struct relay *r)
{
    while (r->retired) {
        struct retired *old = r->retired;
        r->retired = old->next;
        destroy_retired(old);
    }
    if (r->owned_cfg) {
        config_free(r->owned_cfg);
        free(r->owned_cfg);
        r->owned_cfg = NULL;
    }
}
