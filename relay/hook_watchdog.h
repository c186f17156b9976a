/* A policy hook that does not return: seen, and survived. The loop runs every hook; a
 * hook stuck in C code (a pattern match that backtracks for ever) is out of reach of the
 * instruction budget, and the loop can neither answer signals nor report it. So a thread
 * of its own watches a few atomics the loop sets around each hook:
 * - after HOOK_WATCHDOG_LIMIT_MS it logs the hook, makes /healthz answer 503, and names
 *   the record in the poison marker (poison.h);
 * - once SIGTERM or SIGINT is pending (the loop cannot read it while stuck), or the relay
 *   begins to stop, hooks get a short budget, and a hook still running shutdown_timeout
 *   later ends the process (_exit, status 1). The checkpoint stays as it was written,
 *   which covers only acknowledged records: nothing is lost, some records are sent again.
 * The loop pays a few relaxed stores (copies of the hook's name and of the record's id, so
 * that the watching thread never follows a pointer into the loop's memory) and two atomic
 * increments per hook. The relay owns one
 * struct hook_watchdog and hands it to the policy (policy_env) and to /healthz; a NULL
 * watchdog (--check) watches nothing. */
#ifndef RELAY_HOOK_WATCHDOG_H
#define RELAY_HOOK_WATCHDOG_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct inflight_record;
struct poison;

enum {
    HOOK_WATCHDOG_LIMIT_MS = 5000,
    HOOK_WATCHDOG_EVENT_WORDS = 8,   /* 64 bytes of the hook's name */
    HOOK_WATCHDOG_SEGMENT_WORDS = 32 /* 256 bytes of the record's segment id */
};

/* Zeroed before use. The atomics are shared between the loop and the watching thread. */
struct hook_watchdog {
    /* Odd while a hook runs: each enter and each leave adds one. The loop writes the
     * fields below only while it is even (no hook runs); a reader that sees the same odd
     * value before and after reading them read one hook's values (a seqlock: see
     * take_snapshot). The texts are copies, written as relaxed atomic words. */
    atomic_uint_fast64_t seq;
    atomic_uint_fast64_t started_ms;
    _Atomic uint64_t event[HOOK_WATCHDOG_EVENT_WORDS];
    atomic_bool has_record;
    _Atomic uint64_t record_start;
    _Atomic uint64_t record_segment[HOOK_WATCHDOG_SEGMENT_WORDS];
    unsigned depth; /* the loop's: a hook that runs another is one hook */

    atomic_bool stopping;
    atomic_uint_fast64_t stop_ms;
    atomic_uint_fast64_t stuck_seq; /* the hook judged stuck (its seq), or 0 */

    uint64_t shutdown_timeout_ms;
    struct poison *poison; /* where a stuck hook's record is named */
    pthread_t thread;
    bool thread_running;
    atomic_bool quit;
};

/* Start the watching thread (the daemon and --once); hooks run without it too. A hook
 * found stuck has its record named in poison. */
void hook_watchdog_start(struct hook_watchdog *w, uint64_t shutdown_timeout_ms,
                         struct poison *poison);
void hook_watchdog_stop(struct hook_watchdog *w);

/* Around every call into the policy's Lua, on the loop. event must outlive the call. */
void hook_watchdog_enter(struct hook_watchdog *w, const char *event);
void hook_watchdog_leave(struct hook_watchdog *w);
/* The record the hooks about to run work for (NULL: none): its id is copied. Between
 * hooks only. */
void hook_watchdog_set_record(struct hook_watchdog *w, const struct inflight_record *rec);

/* The relay stops: from now on hooks run under a short budget. */
void hook_watchdog_request_stop(struct hook_watchdog *w);
bool hook_watchdog_stopping(struct hook_watchdog *w);

/* /healthz: a malloc'd reason when a hook has run past the limit, else NULL. Any thread. */
char *hook_watchdog_health(struct hook_watchdog *w);

#endif
