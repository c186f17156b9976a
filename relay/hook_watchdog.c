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

/* Odd while a hook runs: each enter and each leave adds one. A reader that sees the same
 * odd value before and after reading the fields below read one hook's values. All
 * accesses are sequentially consistent, which that argument relies on. */
static atomic_uint_fast64_t seq;
static atomic_uint_fast64_t started_ms;
static _Atomic(const char *) event;
static _Atomic(const struct inflight_record *) record;
static unsigned depth; /* the loop's: a hook that runs another is one hook */

static atomic_bool stopping;
static atomic_uint_fast64_t stop_ms;
static atomic_uint_fast64_t stuck_seq; /* the hook judged stuck (its seq), or 0 */

static uint64_t shutdown_timeout_ms;
static pthread_t thread;
static bool thread_running;
static atomic_bool quit;

void hook_watchdog_enter(const char *name)
{
    if (depth++ > 0)
        return;
    atomic_store(&event, name);
    atomic_store(&started_ms, loop_now_ms());
    atomic_fetch_add(&seq, 1);
}

void hook_watchdog_leave(void)
{
    if (--depth > 0)
        return;
    atomic_fetch_add(&seq, 1);
}

void hook_watchdog_set_record(const struct inflight_record *rec)
{
    atomic_store(&record, rec);
}

void hook_watchdog_request_stop(void)
{
    if (!atomic_exchange(&stopping, true))
        atomic_store(&stop_ms, loop_now_ms());
}

bool hook_watchdog_stopping(void)
{
    return atomic_load_explicit(&stopping, memory_order_relaxed);
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
static bool take_snapshot(struct snapshot *s)
{
    s->seq = atomic_load(&seq);
    if (!(s->seq & 1))
        return false;
    uint64_t started = atomic_load(&started_ms);
    uint64_t now = loop_now_ms();
    s->ran_ms = now > started ? now - started : 0;
    const char *name = atomic_load(&event);
    const struct inflight_record *rec =
        s->ran_ms >= STUCK_AFTER_STOP_MS ? atomic_load(&record) : NULL;
    snprintf(s->event, sizeof(s->event), "%s", name ? name : "?");
    s->has_record = rec != NULL;
    if (rec) {
        const struct segment *seg = rec->segment;
        snprintf(s->segment, sizeof(s->segment), "%s", seg->id_name);
        s->offset = rec->start;
    }
    return atomic_load(&seq) == s->seq;
}

char *hook_watchdog_health(void)
{
    struct snapshot s;
    uint64_t stuck = atomic_load(&stuck_seq);
    if (!stuck || !take_snapshot(&s) || s.seq != stuck)
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
static void notice_stop_signal(const struct snapshot *s)
{
    sigset_t pending;
    if (hook_watchdog_stopping() || sigpending(&pending) != 0)
        return;
    if (sigismember(&pending, SIGTERM) == 1 || sigismember(&pending, SIGINT) == 1) {
        hook_watchdog_request_stop();
        log_info("stop signal received while the policy runs, cutting the hook short event=%s",
                 s->event);
    }
}

static void report_stuck(const struct snapshot *s)
{
    if (s->has_record)
        poison_mark_stuck(s->segment, s->offset);
    atomic_store(&stuck_seq, s->seq);
    log_error("policy hook has not returned, /healthz answers 503 until it does event=%s "
              "running_s=%" PRIu64 " segment=%s offset=%" PRIu64,
              s->event, s->ran_ms / 1000, s->has_record ? s->segment : "-",
              s->has_record ? s->offset : 0);
}

/* The last resort: the hook ignores the shortened budget (it is in C code), and the stop
 * may wait no longer. The checkpoint on disk covers acknowledged records only. */
static void exit_stuck(const struct snapshot *s)
{
    if (s->has_record)
        poison_mark_stuck(s->segment, s->offset);
    log_error("policy hook did not return within shutdown_timeout of the stop, exiting now; "
              "the checkpoint stays as it was, unacknowledged records are read again at the "
              "next start event=%s running_s=%" PRIu64 " segment=%s offset=%" PRIu64,
              s->event, s->ran_ms / 1000, s->has_record ? s->segment : "-",
              s->has_record ? s->offset : 0);
    _exit(1);
}

static void *watch(void *arg)
{
    (void)arg;
    uint64_t judged = 0; /* seq of the hook reported stuck */
    struct snapshot s;
    const struct timespec pause = {0, CHECK_EVERY_MS * 1000000L};
    while (!atomic_load(&quit)) {
        nanosleep(&pause, NULL);
        bool running = take_snapshot(&s);
        if (judged && (!running || s.seq != judged)) {
            atomic_store(&stuck_seq, 0);
            poison_unmark_stuck();
            log_info("policy hook returned after all, /healthz follows the relay again");
            judged = 0;
        }
        if (!running)
            continue;
        notice_stop_signal(&s);
        if (!judged && s.ran_ms >= HOOK_WATCHDOG_LIMIT_MS) {
            report_stuck(&s);
            judged = s.seq;
        }
        /* A hook that began just now (a connection's close, after a drain that took all
         * of shutdown_timeout) gets a moment: Lua runs under a short budget by now. */
        if (hook_watchdog_stopping() && s.ran_ms >= STUCK_AFTER_STOP_MS &&
            loop_now_ms() - atomic_load(&stop_ms) >= shutdown_timeout_ms)
            exit_stuck(&s);
    }
    return NULL;
}

void hook_watchdog_start(uint64_t shutdown_timeout)
{
    shutdown_timeout_ms = shutdown_timeout;
    atomic_store(&quit, false);
    /* Signals stay blocked in this thread too (the mask is inherited). */
    if (pthread_create(&thread, NULL, watch, NULL) != 0) {
        log_warn("cannot start the policy hook watchdog; a hook that never returns will not "
                 "be reported");
        return;
    }
    thread_running = true;
}

void hook_watchdog_stop(void)
{
    if (!thread_running)
        return;
    atomic_store(&quit, true);
    pthread_join(thread, NULL);
    thread_running = false;
}
