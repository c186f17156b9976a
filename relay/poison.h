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

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct inflight_record;

#define POISON_REASON "poison record: the policy did not return"

/* At start, before the first record: read the marker, note whether the last run stopped
 * cleanly, and guard the first guarded_records records if it did not. NULL or an error. */
char *poison_open(const char *state_dir, size_t guarded_records);
/* At a clean stop (the drain finished): the next start need not guard. */
void poison_close(void);

/* Is there anything to do around the policy (a marked record, records to guard)? On the
 * loop; false for good once both are done, so the hot path tests one bool. */
extern bool poison_armed;
/* Before the policy runs on rec: true when rec is the poison record (dead-letter it with
 * POISON_REASON and do not run the policy); else marks it if guarding. */
bool poison_before(const struct inflight_record *rec);
/* The policy returned for rec. */
void poison_after(const struct inflight_record *rec);

/* From the hook watchdog: the hook for the record (segment id, start offset) has not
 * returned; name it in the marker. No-op while the loop marks every record itself. */
void poison_mark_stuck(const char *segment, uint64_t start);
/* That hook returned after all. */
void poison_unmark_stuck(void);

#endif
