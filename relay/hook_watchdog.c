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

/* Copies s, cut to fit, into words as relaxed atomic stores: the watching thread may read
 * them meanwhile (and throws away what it read, the sequence having moved). */
static void text_store(_Atomic uint64_t *words, size_t count, const char *s)
{
    size_t len = strnlen(s, count * 8 - 1);
    for (size_t i = 0; i * 8 <= len; i++) { /* the word holding the NUL too */
        uint64_t word = 0;
        size_t n = len - i * 8;
        memcpy(&word, s + i * 8, n < 8 ? n : 8);
        atomic_store_explicit(&words[i], word, memory_order_relaxed);
    }
}

static void text_load(const _Atomic uint64_t *words, size_t count, char *out)
{
    for (size_t i = 0; i < count; i++) {
        uint64_t word = atomic_load_explicit(&words[i], memory_order_relaxed);
        memcpy(out + i * 8, &word, 8);
        if (memchr(&word, 0, 8))
            break;
    }
    out[count * 8 - 1] = '\0'; /* a torn read, thrown away, still ends */
}

/* Before the loop writes the fields a reader checks with seq: a reader that reads one of
 * these writes then sees, after its acquire fence, the seq of the leave before them. */
static void begin_write(void)
{
    atomic_thread_fence(memory_order_release);
}

void hook_watchdog_enter(struct hook_watchdog *w, const char *name)
{
    if (!w || w->depth++ > 0)
        return;
    begin_write();
    text_store(w->event, HOOK_WATCHDOG_EVENT_WORDS, name ? name : "?");
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
    if (!w)
        return;
    begin_write();
    if (rec) {
        const struct segment *seg = rec->segment;
        text_store(w->record_segment, HOOK_WATCHDOG_SEGMENT_WORDS, seg->id_name);
        atomic_store_explicit(&w->record_start, rec->start, memory_order_relaxed);
    }
    atomic_store_explicit(&w->has_record, rec != NULL, memory_order_relaxed);
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
    char event[HOOK_WATCHDOG_EVENT_WORDS * 8];
    bool has_record;
    char segment[HOOK_WATCHDOG_SEGMENT_WORDS * 8];
    uint64_t offset;
};

/* False when no hook runs, or it ended while being read. Only the watchdog's own copies
 * are read, never the loop's records or strings: what was read after the hook ended is
 * wrong, not dangerous, and the second look at seq throws it away. */
static bool take_snapshot(struct hook_watchdog *w, struct snapshot *s)
{
    s->seq = atomic_load(&w->seq);
    if (!(s->seq & 1))
        return false;
    uint64_t started = atomic_load(&w->started_ms);
    uint64_t now = loop_now_ms();
    s->ran_ms = now > started ? now - started : 0;
    text_load(w->event, HOOK_WATCHDOG_EVENT_WORDS, s->event);
    s->has_record = atomic_load_explicit(&w->has_record, memory_order_relaxed);
    if (s->has_record) {
        text_load(w->record_segment, HOOK_WATCHDOG_SEGMENT_WORDS, s->segment);
        s->offset = atomic_load_explicit(&w->record_start, memory_order_relaxed);
    }
    atomic_thread_fence(memory_order_acquire); /* the reads above before the second look */
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
