#include "relay.h"
#include "relay_internal.h"
#include "relay_inflight.h"
#include "relay_checkpoint.h"
#include "relay_deadletter.h"
#include "relay_reader.h"

#include "config.h"
#include "deadletter.h"
#include "dupwindow.h"
#include "hook_watchdog.h"
#include "log.h"
#include "metrics.h"
#include "msgid.h"
#include "notify.h"
#include "loop.h"
#include "offsets.h"
#include "policy.h"
#include "poison.h"
#include "publish.h"
#include "recover.h"
#include "rng.h"
#include "segment.h"
#include "spool.h"
#include "xalloc.h"

#include <stdlib.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
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
            return 0;
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
                        const char *reason, const char *data, size_t len)
{
    struct relay *r = ctx;
    if (verdict == POLICY_DEADLETTER)
        relay_deadletter_record(r, rec, reason ? reason : "policy error", data, len);
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
    char *reason = NULL;
    enum policy_verdict verdict = policy_handle(r->policy, rec, sr, &reason);
    if (verdict == POLICY_DEADLETTER)
        relay_deadletter_record(r, rec, reason ? reason : "policy error", sr->data, sr->len);
    else if (verdict == POLICY_DROPPED)
        METRIC_ADD(records_dropped, 1);
    free(reason);
    if (verdict != POLICY_DEFERRED)
        relay_release_hold(r, rec);
}

/* ---- the loop's hooks ---- */

static void begin_drain(struct relay *r, const char *why)
{
    if (r->draining)
        return;
    r->draining = true;
    hook_watchdog_request_stop(); /* policy hooks get a short budget from now on */
    notify_stopping();
    r->drain_deadline_ms = loop_now_ms() + (uint64_t)r->cfg->shutdown_timeout_ms;
    log_info("%s, draining in_flight=%zu", why, r->publishes_in_flight);
}

/* Not relayed to its end: done (or live with more to read) and not finished, never
 * opened, or with records not yet acknowledged. A live segment read to its current end is
 * relayed, as far as --once goes. */
static bool segment_left(const struct segment *seg)
{
    if (seg->gone || seg->state == SEGMENT_STATE_FINISHED)
        return false;
    return seg->done || !seg->reader || seg->ready || seg->wm.pending > 0;
}

/* --once promised what the spool held: if it stops short of that (a segment it cannot
 * open, SIGTERM before the acks, a checkpoint it cannot write), it says what is left and
 * exits RELAY_EXIT_INCOMPLETE, so that cron or a script does not take it for done. */
static void once_report(struct relay *r)
{
    enum { NAMED = 10 }; /* segments named in the log, of a backlog maybe much longer */
    size_t segments = 0, n = spool_segment_count(r->spool);
    for (size_t i = 0; i < n; i++) {
        const struct segment *seg = spool_segment(r->spool, i);
        if (!segment_left(seg))
            continue;
        if (segments++ < NAMED)
            log_warn("--once: segment not relayed completely segment=%s committed_offset=%" PRIu64
                     " records_unacknowledged=%zu opened=%s",
                     seg->name, seg->wm.committed_offset, seg->wm.pending,
                     seg->reader || seg->state != SEGMENT_STATE_READING ? "yes" : "no");
    }
    if (segments == 0 && r->inflight.records_in_use == 0 && r->checkpoint_failures == 0)
        return;
    log_error("--once stopped before the spool was relayed, exit status %d "
              "records_unacknowledged=%zu segments_left=%zu checkpoint=%s",
              RELAY_EXIT_INCOMPLETE, r->inflight.records_in_use, segments,
              r->checkpoint_failures ? "not written" : "written");
    r->exit_status = RELAY_EXIT_INCOMPLETE;
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
        once_report(r);
    loop_stop(r->loop);
}

static bool all_relayed(const struct relay *r)
{
    return relay_reader_idle(&r->reader) && r->inflight.records_in_use == 0;
}

static void before_sleep(struct loop *loop, void *arg)
{
    struct relay *r = arg;
    publisher_take_acks_all();
    if (!r->draining)
        relay_reader_pump(r);
    if (publisher_in_flight_all() > 0)
        loop_wake_within(r->loop, 1); /* acks are taken, not pushed: see publish.c */
    /* A duplicate_window check still on its way is worth a moment (dupwindow.h bounds
     * it): a backfill warns about a short window as the daemon does. */
    bool checking = dupwindow_waiting(loop_now_ms());
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

/* ---- start and stop ---- */

static char *prepare_state_dir(const struct config *cfg)
{
    if (mkdir(cfg->state_dir, 0750) != 0 && errno != EEXIST)
        return xasprintf("cannot create state_dir %s: %s", cfg->state_dir, strerror(errno));
    return NULL;
}

/* A full state_dir does not stop the start: the state was read, and records can be
 * relayed while the checkpoint (and any dead letter) waits for room, as when it fills up
 * later. Read-only, or not a directory, does. */
static bool state_dir_full(const char *dir)
{
    struct statvfs st;
    return statvfs(dir, &st) == 0 && st.f_bavail == 0;
}

static int setup_signals(struct relay *r)
{
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    /* Blocked in every thread (nats.c's threads inherit this mask), read from the loop. */
    pthread_sigmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    r->signal_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (r->signal_fd < 0)
        return -1;
    return loop_add_fd(r->loop, r->signal_fd, EPOLLIN, on_signal, r);
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
    };
}

/* The segment of one of this relay's ids, if it is in the spool; *end gets the record's
 * end offset. An id reads back in several ways (see msgid.h): the one whose segment exists
 * with that generation is it. */
static struct segment *segment_of_id(const struct relay *r, const char *id, uint64_t *end)
{
    struct msgid_reading readings[MSGID_READINGS];
    size_t n = msgid_parse(id, r->cfg->relay_id, readings);
    for (size_t i = 0; i < n; i++) {
        char *name = xstrndup(readings[i].name, readings[i].name_len);
        struct segment *seg = spool_find(r->spool, name);
        free(name);
        if (seg && seg->generation == readings[i].generation) {
            *end = readings[i].end;
            return seg;
        }
    }
    return NULL;
}

/* Found in the stream at start, and its record is still ahead of the checkpoint: it will
 * be read again (and skipped). Ids of records the checkpoint covers, or of segments gone,
 * will never be looked up. */
static bool id_to_read_again(void *ctx, const char *id)
{
    uint64_t end = 0;
    struct segment *seg = segment_of_id(ctx, id, &end);
    return seg && seg->state != SEGMENT_STATE_FINISHED && end > seg->resume_offset;
}

static char *relay_start(struct relay *r)
{
    rng_seed(); /* retry jitter that differs between the hosts of a fleet */
    char *err = prepare_state_dir(r->cfg);
    if (!err)
        err = relay_checkpoint_load(r);
    if (err)
        return err;
    relay_inflight_init(&r->inflight, r->cfg->max_in_flight * 2);
    r->loop = loop_create();
    if (setup_signals(r) != 0)
        return xasprintf("cannot set up signal handling: %s", strerror(errno));
    if (!(r->deadletter = deadletter_open(r->cfg->state_dir, &err)))
        return err;
    if ((err = poison_open(r->cfg->state_dir, r->inflight.record_count)) != NULL)
        return err;
    hook_watchdog_start((uint64_t)r->cfg->shutdown_timeout_ms);
    struct policy_env env = relay_policy_env(r);
    if (!(r->policy = policy_create(r->cfg, &env, &err))) {
        r->exit_status = RELAY_EXIT_CONFIG; /* the policy is wrong: a restart cannot help */
        return err;
    }
    dupwindow_configure(r->cfg->expected_max_downtime_ms);
    bool floor_applies = r->have_checkpoint && r->checkpoint.stream && r->cfg->jetstream_stream &&
                         strcmp(r->checkpoint.stream, r->cfg->jetstream_stream) == 0;
    uint64_t last_seq = 0;
    r->recovery =
        recover_read(r->cfg, floor_applies ? &r->checkpoint.stream_floor : NULL, &last_seq);
    if (r->recovery) {
        r->stream_seq = last_seq;
        r->stream_seq_known = true;
    }
    struct spool_events events = {relay_checkpoint_segment_added, relay_reader_segment_changed,
                                  relay_reader_segment_removed, r};
    if (!(r->spool = spool_open(r->cfg->spools, r->cfg->spool_count, r->loop, &events, &err)))
        return err;
    if (policy_uses_default_connection(r->policy) &&
        !(r->pub = relay_open_default_publisher(r, r->cfg, &err)))
        return err;
    spool_scan(r->spool);
    recover_keep_pending(r->recovery, id_to_read_again, r);
    r->started = true;
    /* Prove at once that the state directory takes a checkpoint, not at the first ack. */
    relay_checkpoint_write(r);
    if (r->checkpoint_failures && !state_dir_full(r->cfg->state_dir))
        return xasprintf("state_dir %s is not usable for checkpoints", r->cfg->state_dir);
    if (r->checkpoint_failures)
        log_warn("state_dir is full, relaying anyway: the checkpoint is written as soon as "
                 "there is room state_dir=%s",
                 r->cfg->state_dir);
    loop_add_timer(r->loop, TICK_MS, on_tick, r);
    loop_add_timer(r->loop, 1000, on_second, r);
    uint64_t watchdog_ms = notify_watchdog_interval_ms();
    if (watchdog_ms > 0)
        loop_add_timer(r->loop, watchdog_ms, on_watchdog, r);
    const char *dirs[METRICS_MAX_DIRS];
    for (size_t i = 0; i < r->cfg->spool_count && i < METRICS_MAX_DIRS; i++)
        dirs[i] = r->cfg->spools[i].dir;
    metrics_set_dirs(dirs, r->cfg->spool_count);
    if (r->cfg->metrics_listen && (err = metrics_start(r->cfg->metrics_listen)) != NULL)
        return err;
    health_update(r);
    loop_add_timer(r->loop, RESCAN_MS, on_rescan, r);
    loop_add_timer(r->loop, (uint64_t)r->cfg->checkpoint_interval_ms, relay_checkpoint_timer, r);
    loop_set_before_sleep(r->loop, before_sleep, r);
    return NULL;
}

static void relay_stop(struct relay *r)
{
    metrics_stop();
    policy_destroy(r->policy); /* calls the connections' close, which may still publish */
    reload_release_all(r);
    hook_watchdog_stop(); /* after the last hook: the connections' close */
    poison_close();       /* a clean stop: the next start need not guard */
    publisher_destroy(r->pub);
    spool_close(r->spool);
    deadletter_close(r->deadletter);
    if (r->loop)
        loop_destroy(r->loop);
    if (r->signal_fd > 0)
        close(r->signal_fd);
    offsets_checkpoint_free(&r->checkpoint);
    recover_free(r->recovery);
    dupwindow_free();
    relay_inflight_free(&r->inflight);
}

int relay_run(const struct config *cfg, const struct relay_options *options)
{
    struct relay r = {.cfg = cfg, .options = options, .signal_fd = -1};
    char *err = relay_start(&r);
    if (err) {
        log_error("%s", err);
        free(err);
        relay_stop(&r);
        return r.exit_status ? r.exit_status : RELAY_EXIT_FAILURE;
    }
    log_info("relaying spool=%s segments=%zu state_dir=%s servers=%zu", cfg->spool_dir,
             spool_segment_count(r.spool), cfg->state_dir, cfg->nats_server_count);
    loop_run(r.loop);
    health_log_totals("stopped");
    relay_stop(&r);
    return r.exit_status;
}
