/* The relay's orchestrator: the loop's callbacks (before sleep, the tick, the second, the
 * rescan, signals, the drain at stop) and the policy's environment (what a publish and a
 * verdict do to the records). The parts it ties together have their own files: reading
 * segments (relay_reader.c), the in-flight records (relay_inflight.c), dead letters and
 * their hold (relay_deadletter.c), the checkpoint (relay_checkpoint.c), start and stop
 * (relay_lifecycle.c); relay_health.c and relay_reload.c for what an operator sees and
 * SIGHUP. */
#include "relay.h"
#include "relay_checkpoint.h"
#include "relay_deadletter.h"
#include "relay_inflight.h"
#include "relay_internal.h"
#include "relay_lifecycle.h"
#include "relay_reader.h"

#include "config.h"
#include "hook_watchdog.h"
#include "log.h"
#include "metrics.h"
#include "msgid.h"
#include "notify.h"
#include "loop.h"
#include "policy.h"
#include "publish.h"
#include "recover.h"
#include "segment.h"
#include "spool.h"
#include "xalloc.h"

#include <stdlib.h>
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

enum {
    TICK_MS = 100,     /* ack timeouts and retries */
    RESCAN_MS = 30000, /* the safety-net scan, in case inotify missed something */
};

/* ---- records ---- */

static void on_publish_done(void *ctx, void *cookie, const struct publish_ack *ack)
{
    struct relay *r = ctx;
    r->publishes_in_flight--;
    if (r->cfg->jetstream_stream && ack->sequence > r->stream_seq &&
        strcmp(ack->stream, r->cfg->jetstream_stream) == 0) {
        r->stream_seq = ack->sequence;
        r->stream_seq_known = true;
    }
    if (ack->await_id)
        policy_acked(r->policy, ack);
    relay_inflight_published(r, cookie);
}

static int env_publish(void *ctx, struct inflight_record *const *records, size_t count,
                       const struct policy_publish *msg, char **err)
{
    struct relay *r = ctx;
    char id[MSGID_MAX];
    const char *msg_id = msg->msg_id;
    if (!msg_id) {
        /* The same on every retry and replay (see msgid.h). The n-th publish of a batch
         * gets the n-th record's id (a policy that publishes each message of the batch in
         * order thus gives each its own record's id, whatever batch it lands in after a
         * restart); extra publishes get ":<n>". */
        const struct inflight_record *rec = msg->index < count ? records[msg->index] : records[0];
        const struct segment *seg = rec->segment;
        msgid_format(id, sizeof(id), r->cfg->relay_id, seg->id_name, rec->end, msg->index >= count,
                     msg->index);
        msg_id = id;
        /* Read back from the stream at start: already stored, whatever the time since. */
        if (recover_has(r->recovery, msg_id)) {
            METRIC_ADD(publishes_skipped, 1);
            return 1; /* nothing sent: no ack will come */
        }
    }
    struct publish_request req = {
        .subject = msg->subject,
        .data = msg->data,
        .len = msg->len,
        .msg_id = msg_id,
        .headers = msg->headers,
        .header_count = msg->header_count,
        .await_id = msg->await_id,
    };
    void *cookie = relay_inflight_cookie(records, count);
    if (publisher_publish(msg->via ? msg->via : r->pub, cookie, &req, err) != 0) {
        relay_inflight_cookie_free(cookie);
        return -1;
    }
    for (size_t i = 0; i < count; i++) {
        records[i]->outstanding++;
        records[i]->publishes++;
    }
    r->publishes_in_flight++;
    return 0;
}

static void env_resolve(void *ctx, struct inflight_record *rec, enum policy_verdict verdict,
                        enum deadletter_reason kind, const char *reason, const char *data,
                        size_t len)
{
    struct relay *r = ctx;
    if (verdict == POLICY_DEADLETTER)
        relay_deadletter_record(r, rec, kind, reason ? reason : "policy error", data, len);
    else if (verdict == POLICY_DROPPED)
        METRIC_ADD(records_dropped, 1);
    relay_release_hold(r, rec); /* the hold taken when the policy deferred it */
}

/* Runs the policy on a record. The record is held while the policy runs: an ack
 * processed meanwhile (a policy that waits for one) must not complete it before the
 * policy has decided. */
void relay_apply_policy(struct relay *r, struct inflight_record *rec,
                        const struct segment_record *sr)
{
    rec->outstanding++;
    struct policy_reason reason = {0};
    enum policy_verdict verdict = policy_handle(r->policy, rec, sr, &reason);
    if (verdict == POLICY_DEADLETTER)
        relay_deadletter_record(r, rec, reason.kind, reason.text ? reason.text : "policy error",
                                sr->data, sr->len);
    else if (verdict == POLICY_DROPPED)
        METRIC_ADD(records_dropped, 1);
    free(reason.text);
    if (verdict != POLICY_DEFERRED)
        relay_release_hold(r, rec);
}

/* ---- the loop's hooks ---- */

static void begin_drain(struct relay *r, const char *why)
{
    if (r->draining)
        return;
    r->draining = true;
    hook_watchdog_request_stop(&r->watchdog); /* policy hooks get a short budget from now on */
    notify_stopping();
    r->drain_deadline_ms = loop_now_ms() + (uint64_t)r->cfg->shutdown_timeout_ms;
    log_info("%s, draining in_flight=%zu", why, r->publishes_in_flight);
}

static void finish_drain(struct relay *r)
{
    size_t left = r->publishes_in_flight;
    if (left > 0)
        log_warn("shutdown timeout: %zu publishes unacknowledged; they will be sent again at "
                 "the next start",
                 left);
    relay_checkpoint_write(r);
    if (r->options->once)
        relay_lifecycle_once_report(r);
    loop_stop(r->loop);
}

static bool all_relayed(const struct relay *r)
{
    return relay_reader_idle(&r->reader) && r->inflight.records_in_use == 0;
}

static void before_sleep(struct loop *loop, void *arg)
{
    struct relay *r = arg;
    publisher_set_take_acks(&r->publishers);
    if (!r->draining)
        relay_reader_pump(r);
    if (publisher_set_in_flight(&r->publishers) > 0)
        loop_wake_within(r->loop, 1); /* acks are taken, not pushed: see publish.c */
    /* A duplicate_window check still on its way is worth a moment (stream.h bounds
     * it): a backfill warns about a short window as the daemon does. */
    bool checking = stream_check_waiting(&r->streams, loop_now_ms());
    if (checking)
        loop_wake_within(r->loop, 1);
    if (r->options->once && !r->draining && all_relayed(r) && !checking) {
        health_report_done(r);
        health_log_totals("spool relayed");
        r->draining = true;
        finish_drain(r);
        return;
    }
    if (r->draining) {
        if (r->publishes_in_flight == 0 || loop_now_ms() >= r->drain_deadline_ms)
            finish_drain(r);
    }
}

static void on_tick(struct loop *loop, void *arg)
{
    struct relay *r = arg;
    if (r->pub)
        publisher_tick(r->pub);
    policy_tick(r->policy);
    reload_tick(r);
}

static void on_rescan(struct loop *loop, void *arg)
{
    spool_scan(((struct relay *)arg)->spool);
}

static void on_signal(struct loop *loop, int fd, uint32_t events, void *arg)
{
    struct relay *r = arg;
    struct signalfd_siginfo si;
    while (read(fd, &si, sizeof(si)) == sizeof(si)) {
        if (si.ssi_signo == SIGHUP)
            reload_run(r);
        else
            begin_drain(r, si.ssi_signo == SIGTERM ? "SIGTERM received" : "SIGINT received");
    }
}

/* ---- what an operator sees: totals, gauges, health, systemd ---- */

static void on_second(struct loop *loop, void *arg)
{
    struct relay *r = arg;
    relay_deadletter_retry(r);
    health_update(r);
    health_report(r);
}

static void on_watchdog(struct loop *loop, void *arg)
{
    notify_watchdog();
}

/* The relay's own connection, for the built-in policy (a Lua policy opens its own). */
struct publisher *relay_open_default_publisher(struct relay *r, const struct config *cfg,
                                               char **err)
{
    struct publisher_options po = {
        .servers = (const char *const *)cfg->nats_servers,
        .server_count = cfg->nats_server_count,
        .name = "kumo-nats-relay",
        .ack_timeout_ms = cfg->ack_timeout_ms,
        .auth = nats_auth_from_config(cfg),
        .streams = &r->streams,
        .set = &r->publishers,
        /* The built-in policy publishes into one stream; a Lua policy's publishes through
         * this connection may go anywhere. */
        .fast_batch_window =
            cfg->jetstream_batch_off || cfg->policy_script ? 0 : cfg->max_in_flight,
    };
    return publisher_create(&po, r->loop, on_publish_done, r, err);
}

struct policy_env relay_policy_env(struct relay *r)
{
    return (struct policy_env){
        .loop = r->loop,
        .ctx = r,
        .publish = env_publish,
        .resolve = env_resolve,
        .publish_done = on_publish_done,
        .streams = &r->streams,
        .publishers = &r->publishers,
        .watchdog = &r->watchdog,
        .poison = &r->poison,
    };
}

/* The loop's callbacks, once the relay has started: its signals and periodic work. */
static char *add_loop_hooks(struct relay *r)
{
    if (loop_add_fd(r->loop, r->signal_fd, EPOLLIN, on_signal, r) != 0)
        return xasprintf("cannot set up signal handling: %s", strerror(errno));
    loop_add_timer(r->loop, TICK_MS, on_tick, r);
    loop_add_timer(r->loop, 1000, on_second, r);
    uint64_t watchdog_ms = notify_watchdog_interval_ms();
    if (watchdog_ms > 0)
        loop_add_timer(r->loop, watchdog_ms, on_watchdog, r);
    loop_add_timer(r->loop, RESCAN_MS, on_rescan, r);
    loop_add_timer(r->loop, (uint64_t)r->cfg->checkpoint_interval_ms, relay_checkpoint_timer, r);
    loop_set_before_sleep(r->loop, before_sleep, r);
    return NULL;
}

int relay_run(const struct config *cfg, const struct relay_options *options)
{
    struct relay r = {.cfg = cfg, .options = options, .signal_fd = -1};
    char *err = relay_lifecycle_start(&r);
    if (!err)
        err = add_loop_hooks(&r);
    if (err) {
        log_error("%s", err);
        free(err);
        relay_lifecycle_stop(&r);
        return r.exit_status ? r.exit_status : RELAY_EXIT_FAILURE;
    }
    log_info("relaying spool=%s segments=%zu state_dir=%s servers=%zu", cfg->spools[0].dir,
             spool_segment_count(r.spool), cfg->state_dir, cfg->nats_server_count);
    loop_run(r.loop);
    health_log_totals("stopped");
    relay_lifecycle_stop(&r);
    return r.exit_status;
}
