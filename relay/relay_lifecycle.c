/* Start and stop of the relay: the state directory, the checkpoint, the record pool, the
 * signals, the dead-letter file, the policy and its connection, the read-back of what the
 * stream already holds, the first scan and the first checkpoint, in the order each needs
 * the ones before; the teardown in the order the policy's connections need; and what
 * --once says when it stops short. relay.c runs the loop in between. */
#include "relay_lifecycle.h"
#include "relay_checkpoint.h"
#include "relay_inflight.h"
#include "relay_internal.h"
#include "relay_reader.h"

#include "config.h"
#include "deadletter.h"
#include "hook_watchdog.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "msgid.h"
#include "offsets.h"
#include "poison.h"
#include "policy.h"
#include "publish.h"
#include "recover.h"
#include "relay.h"
#include "rng.h"
#include "spool.h"
#include "xalloc.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

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

/* Blocks the stop and reload signals, to be read from signal_fd (relay.c adds it to the
 * loop). Must come before the first thread: nats.c's threads inherit the mask. */
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
    return r->signal_fd < 0 ? -1 : 0;
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

char *relay_lifecycle_start(struct relay *r)
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
    if ((err = poison_open(&r->poison, r->cfg->state_dir, r->inflight.record_count)) != NULL)
        return err;
    hook_watchdog_start(&r->watchdog, (uint64_t)r->cfg->shutdown_timeout_ms, &r->poison);
    struct policy_env env = relay_policy_env(r);
    if (!(r->policy = policy_create(r->cfg, &env, &err))) {
        r->exit_status = RELAY_EXIT_CONFIG; /* the policy is wrong: a restart cannot help */
        return err;
    }
    stream_check_configure(&r->streams, r->cfg->expected_max_downtime_ms);
    bool floor_applies = r->have_checkpoint && r->checkpoint.stream && r->cfg->jetstream_stream &&
                         strcmp(r->checkpoint.stream, r->cfg->jetstream_stream) == 0;
    uint64_t last_seq = 0;
    r->recovery = recover_read(r->cfg, &r->streams,
                               floor_applies ? &r->checkpoint.stream_floor : NULL, &last_seq);
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
    const char *dirs[METRICS_MAX_DIRS];
    for (size_t i = 0; i < r->cfg->spool_count && i < METRICS_MAX_DIRS; i++)
        dirs[i] = r->cfg->spools[i].dir;
    metrics_set_dirs(dirs, r->cfg->spool_count);
    if (r->cfg->metrics_listen &&
        (err = metrics_start(r->cfg->metrics_listen, &r->watchdog)) != NULL)
        return err;
    health_update(r);
    return NULL;
}

void relay_lifecycle_stop(struct relay *r)
{
    metrics_stop();
    policy_destroy(r->policy); /* calls the connections' close, which may still publish */
    reload_release_all(r);
    hook_watchdog_stop(&r->watchdog); /* after the last hook: the connections' close */
    poison_close(&r->poison);         /* a clean stop: the next start need not guard */
    publisher_destroy(r->pub);
    spool_close(r->spool);
    deadletter_close(r->deadletter);
    if (r->loop)
        loop_destroy(r->loop);
    if (r->signal_fd > 0)
        close(r->signal_fd);
    offsets_checkpoint_free(&r->checkpoint);
    recover_free(r->recovery);
    stream_check_free(&r->streams);
    relay_inflight_free(&r->inflight);
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
void relay_lifecycle_once_report(struct relay *r)
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
