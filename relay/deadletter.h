/* Dead letters: records the relay will never publish (the policy cannot route them, or
 * JetStream refuses them for good). Each becomes one JSON line in
 * state_dir/deadletter/deadletter.jsonl with the segment, offsets, reason and raw line, so
 * an operator can see and replay them; the offset then moves on. */
#ifndef RELAY_DEADLETTER_H
#define RELAY_DEADLETTER_H

#include <stddef.h>
#include <stdint.h>

struct deadletter;

/* Opens (creating the directory) for appending. NULL with *err set on failure. */
struct deadletter *deadletter_open(const char *state_dir, char **err);
/* Appends one line. line may be NULL (an oversize record, not kept). Returns NULL or a
 * malloc'd error. */
char *deadletter_write(struct deadletter *dl, const char *segment, uint64_t start, uint64_t end,
                       const char *reason, const char *line, size_t len);
/* fsync what was written since the last sync; called before a checkpoint commits offsets
 * past dead-lettered records. */
char *deadletter_sync(struct deadletter *dl);
void deadletter_close(struct deadletter *dl);

#endif
