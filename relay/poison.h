/* Poison records: a record whose policy hook did not return, twice in a row, is
 * dead-lettered at the next start instead of hanging (or crashing) the relay again.
 *
 * state_dir/hook-record names the record a hook was running for when the process died,
 * and how many runs in a row died on it ("<count> <start offset>\n<segment id>"; empty:
 * none). It is written, with fdatasync, only when it can matter:
 * - by the hook watchdog, for a hook running past its limit (a hook stuck in C code is
 *   found this way from the first run, at no cost to the others);
 * - by the loop, before the policy runs on each record, while the previous run did not
 *   stop cleanly (state_dir/running was left behind) and for the first few thousand
 *   records only: the ones the dead run may have been handling. This also catches a hook
 *   that crashed the process.
 * A record marked by the previous run gets count + 1 when it is marked again; once the
 * count is 2 the record is dead-lettered without running the policy. One death on a record
 * is retried; a hook that returns clears its mark. */
#ifndef RELAY_POISON_H
#define RELAY_POISON_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct inflight_record;

#define POISON_REASON "poison record: the policy did not return"

/* The relay owns one, and hands it to the policy (policy_env) and to the hook watchdog.
 * Its fields are poison.c's. */
struct poison {
    /* Is there anything to do around the policy (a marked record, records to guard)? The
     * loop's; false for good once both are done, so the hot path tests one bool. */
    bool armed;
    bool opened;
    pthread_mutex_t lock; /* the loop and the hook watchdog both write the marker */
    int marker_fd;
    char *marker_path, *running_path;
    /* The record the previous run died on, until this run has handled it. */
    struct {
        bool set;
        char *segment;
        uint64_t start;
        unsigned count;
    } last;
    size_t guard_left; /* records still to mark before the policy runs */
    bool stuck_marked; /* the marker holds the watchdog's mark (under lock) */
    bool write_failed; /* warned once */
};

/* At start, before the first record: read the marker, note whether the last run stopped
 * cleanly, and guard the first guarded_records records if it did not. NULL or an error. */
char *poison_open(struct poison *p, const char *state_dir, size_t guarded_records);
/* At a clean stop (the drain finished): the next start need not guard. Harmless on one
 * never opened. */
void poison_close(struct poison *p);

/* Anything to do around the policy? p may be NULL (--check): nothing. */
static inline bool poison_armed(const struct poison *p)
{
    return p && p->armed;
}
/* Before the policy runs on rec: true when rec is the poison record (dead-letter it with
 * POISON_REASON and do not run the policy); else marks it if guarding. */
bool poison_before(struct poison *p, const struct inflight_record *rec);
/* The policy returned for rec. */
void poison_after(struct poison *p, const struct inflight_record *rec);

/* From the hook watchdog: the hook for the record (segment id, start offset) has not
 * returned; name it in the marker. No-op while the loop marks every record itself. */
void poison_mark_stuck(struct poison *p, const char *segment, uint64_t start);
/* That hook returned after all. */
void poison_unmark_stuck(struct poison *p);

#endif
