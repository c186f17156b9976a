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
 * The loop pays two atomic stores and two atomic increments per hook. */
#ifndef RELAY_HOOK_WATCHDOG_H
#define RELAY_HOOK_WATCHDOG_H

#include <stdbool.h>
#include <stdint.h>

struct inflight_record;

enum { HOOK_WATCHDOG_LIMIT_MS = 5000 };

/* Start the watching thread (the daemon and --once); hooks run without it too. */
void hook_watchdog_start(uint64_t shutdown_timeout_ms);
void hook_watchdog_stop(void);

/* Around every call into the policy's Lua, on the loop. event must outlive the call. */
void hook_watchdog_enter(const char *event);
void hook_watchdog_leave(void);
/* The record the hooks about to run work for (NULL: none); it must stay in flight until
 * set to another. */
void hook_watchdog_set_record(const struct inflight_record *rec);

/* The relay stops: from now on hooks run under a short budget. */
void hook_watchdog_request_stop(void);
bool hook_watchdog_stopping(void);

/* /healthz: a malloc'd reason when a hook has run past the limit, else NULL. Any thread. */
char *hook_watchdog_health(void);

#endif
