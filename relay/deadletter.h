/* Dead letters: records the relay will never publish (the policy cannot route them, or
 * JetStream refuses them for good). Each becomes one JSON line in
 * state_dir/deadletter/deadletter.jsonl with the segment, offsets, reason and raw line, so
 * an operator can see and replay them; the offset then moves on. */
#ifndef RELAY_DEADLETTER_H
#define RELAY_DEADLETTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct deadletter;

/* Why a record was dead-lettered, as counted in
 * kumo_nats_relay_records_deadlettered_total{reason=...}. Carried beside the reason's
 * text from where the record is given up on, so rewording a text never moves its count.
 * Zero is the policy's: a reason nobody classified is the policy's own. */
enum deadletter_reason {
    DEADLETTER_POLICY,
    DEADLETTER_NOT_JSON,
    DEADLETTER_OVERSIZE,
    DEADLETTER_REJECTED,
    DEADLETTER_MAX_AGE,
    DEADLETTER_NO_PROTOCOL,
    DEADLETTER_PUBLISH,
    DEADLETTER_UNDECODABLE, /* the rest of a segment that cannot be decoded */
    DEADLETTER_REASON_COUNT
};

/* Opens (creating the directory) for appending. NULL with *err set on failure. */
struct deadletter *deadletter_open(const char *state_dir, char **err);
/* Appends one line. line may be NULL (an oversize record, not kept). Returns NULL or a
 * malloc'd error. */
char *deadletter_write(struct deadletter *dl, const char *segment, uint64_t start, uint64_t end,
                       const char *reason, const char *line, size_t len);
/* fsync what was written since the last sync; called before a checkpoint commits offsets
 * past dead-lettered records. */
char *deadletter_sync(struct deadletter *dl);
/* SIGHUP: appends to a new file if the path now names one (logrotate renamed the old one
 * and created it, or the relay creates it 0640). *rotated says whether it did. NULL or a
 * malloc'd error; on error the old file is kept when its lines could not be synced. */
char *deadletter_reopen(struct deadletter *dl, bool *rotated);
/* Size of the file dead letters are appended to (one fstat; for the once-a-second gauge). */
uint64_t deadletter_file_bytes(const struct deadletter *dl);
/* A dead letter that could not be written (a full state_dir) is held: copied here, with
 * the caller's cookie (its record, which stays in flight so its offset does not move),
 * and written by deadletter_retry once the disk takes it. */
void deadletter_hold(struct deadletter *dl, void *cookie, const char *segment, uint64_t start,
                     uint64_t end, enum deadletter_reason kind, const char *reason,
                     const char *line, size_t len);
size_t deadletter_held(const struct deadletter *dl);
/* A dead letter of this segment is held (the relay reads no further in it meanwhile). */
bool deadletter_holds(const struct deadletter *dl, const char *segment);
typedef void deadletter_written_fn(void *ctx, void *cookie, enum deadletter_reason kind,
                                   const char *reason);
/* Writes the held dead letters in order, calling written for each; stops at the first
 * failure and returns its error (malloc'd), or NULL when none is held any more. */
char *deadletter_retry(struct deadletter *dl, deadletter_written_fn *written, void *ctx);
/* Frees the held ones too: their records were not committed and are read again at the
 * next start. */
void deadletter_close(struct deadletter *dl);

#endif
