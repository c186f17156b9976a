#include "hook_watchdog.h"

#include "log.h"
#include "loop.h"
#include "offsets.h"
#include "poison.h"
#include "spool.h"
#include "xalloc.h"

#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { CHECK_EVERY_MS = 50, STUCK_AFTER_STOP_MS = 1000 };

void hook_watchdog_enter(struct hook_watchdog *w, const char *name)
{
    if (!w || w->depth++ > 0)
        return;
    atomic_store(&w->event, name);
    atomic_store(&w->started_ms, loop_now_ms());
    atomic_fetch_add(&w->seq, 1);
}

void hook_watchdog_leave(struct hook_watchdog *w)
{
    if (!w || --w->depth > 0)
        return;
    atomic_fetch_add(&w->seq, 1);
}

void hook_watchdog_set_record(struct hook_watchdog *w, const struct inflight_record *rec)
{
    if (w)
        atomic_store(&w->record, rec);
}

void hook_watchdog_request_stop(struct hook_watchdog *w)
{
    if (!atomic_exchange(&w->stopping, true))
        atomic_store(&w->stop_ms, loop_now_ms());
}

bool hook_watchdog_stopping(struct hook_watchdog *w)
{
    return w && atomic_load_explicit(&w->stopping, memory_order_relaxed);
}

/* One running hook, as read by another thread. */
struct snapshot {
    uint64_t seq;
    uint64_t ran_ms;
    char event[64];
    bool has_record;
    char segment[256];
    uint64_t offset;
};

/* False when no hook runs, or it ended while being read. The record and its segment live
 * while their hook runs; the sequence check drops what was read after it ended. The
 * record is looked at only once its hook has run for a second: a hook that short may
 * end (and its segment be freed) between the first check and the read, one that long is
 * a hook the watchdog is about to report, which it needs the record for. */
static bool take_snapshot(struct hook_watchdog *w, struct snapshot *s)
{
    s->seq = atomic_load(&w->seq);
    if (!(s->seq & 1))
        return false;
    uint64_t started = atomic_load(&w->started_ms);
    uint64_t now = loop_now_ms();
    s->ran_ms = now > started ? now - started : 0;
    const char *name = atomic_load(&w->event);
    const struct inflight_record *rec =
        s->ran_ms >= STUCK_AFTER_STOP_MS ? atomic_load(&w->record) : NULL;
    snprintf(s->event, sizeof(s->event), "%s", name ? name : "?");
    s->has_record = rec != NULL;
    if (rec) {
        const struct segment *seg = rec->segment;
        snprintf(s->segment, sizeof(s->segment), "%s", seg->id_name);
        s->offset = rec->start;
    }
    return atomic_load(&w->seq) == s->seq;
}

char *hook_watchdog_health(struct hook_watchdog *w)
{
    struct snapshot s;
    uint64_t stuck = w ? atomic_load(&w->stuck_seq) : 0;
    if (!stuck || !take_snapshot(w, &s) || s.seq != stuck)
        return NULL;
    if (s.has_record)
        return xasprintf("policy hook '%s' has been running for %" PRIu64
                         "s (segment=%s offset=%" PRIu64 ")",
                         s.event, s.ran_ms / 1000, s.segment, s.offset);
    return xasprintf("policy hook '%s' has been running for %" PRIu64 "s", s.event,
                     s.ran_ms / 1000);
}

/* SIGTERM and SIGINT are blocked everywhere and read by the loop from a signalfd; while a
 * hook keeps the loop away they stay pending, where this thread can see them. */
static void notice_stop_signal(struct hook_watchdog *w, const struct snapshot *s)
{
    sigset_t pending;
    if (hook_watchdog_stopping(w) || sigpending(&pending) != 0)
        return;
    if (sigismember(&pending, SIGTERM) == 1 || sigismember(&pending, SIGINT) == 1) {
        hook_watchdog_request_stop(w);
        log_info("stop signal received while the policy runs, cutting the hook short event=%s",
                 s->event);
    }
}

static void report_stuck(struct hook_watchdog *w, const struct snapshot *s)
{
    if (s->has_record)
        poison_mark_stuck(w->poison, s->segment, s->offset);
    atomic_store(&w->stuck_seq, s->seq);
    log_error("policy hook has not returned, /healthz answers 503 until it does event=%s "
              "running_s=%" PRIu64 " segment=%s offset=%" PRIu64,
              s->event, s->ran_ms / 1000, s->has_record ? s->segment : "-",
              s->has_record ? s->offset : 0);
}

/* The last resort: the hook ignores the shortened budget (it is in C code), and the stop
 * may wait no longer. The checkpoint on disk covers acknowledged records only. */
static void exit_stuck(struct hook_watchdog *w, const struct snapshot *s)
{
    if (s->has_record)
        poison_mark_stuck(w->poison, s->segment, s->offset);
    log_error("policy hook did not return within shutdown_timeout of the stop, exiting now; "
              "the checkpoint stays as it was, unacknowledged records are read again at the "
              "next start event=%s running_s=%" PRIu64 " segment=%s offset=%" PRIu64,
              s->event, s->ran_ms / 1000, s->has_record ? s->segment : "-",
              s->has_record ? s->offset : 0);
    _exit(1);
}

static void *watch(void *arg)
{
    struct hook_watchdog *w = arg;
    uint64_t judged = 0; /* seq of the hook reported stuck */
    struct snapshot s;
    const struct timespec pause = {0, CHECK_EVERY_MS * 1000000L};
    while (!atomic_load(&w->quit)) {
        nanosleep(&pause, NULL);
        bool running = take_snapshot(w, &s);
        if (judged && (!running || s.seq != judged)) {
            atomic_store(&w->stuck_seq, 0);
            poison_unmark_stuck(w->poison);
            log_info("policy hook returned after all, /healthz follows the relay again");
            judged = 0;
        }
        if (!running)
            continue;
        notice_stop_signal(w, &s);
        if (!judged && s.ran_ms >= HOOK_WATCHDOG_LIMIT_MS) {
            report_stuck(w, &s);
            judged = s.seq;
        }
        /* A hook that began just now (a connection's close, after a drain that took all
         * of shutdown_timeout) gets a moment: Lua runs under a short budget by now. */
        if (hook_watchdog_stopping(w) && s.ran_ms >= STUCK_AFTER_STOP_MS &&
            loop_now_ms() - atomic_load(&w->stop_ms) >= w->shutdown_timeout_ms)
            exit_stuck(w, &s);
    }
    return NULL;
}

void hook_watchdog_start(struct hook_watchdog *w, uint64_t shutdown_timeout, struct poison *poison)
{
    w->shutdown_timeout_ms = shutdown_timeout;
    w->poison = poison;
    atomic_store(&w->quit, false);
    /* Signals stay blocked in this thread too (the mask is inherited). */
    if (pthread_create(&w->thread, NULL, watch, w) != 0) {
        log_warn("cannot start the policy hook watchdog; a hook that never returns will not "
                 "be reported");
        return;
    }
    w->thread_running = true;
}

void hook_watchdog_stop(struct hook_watchdog *w)
{
    if (!w->thread_running)
        return;
    atomic_store(&w->quit, true);
    pthread_join(w->thread, NULL);
    w->thread_running = false;
}
