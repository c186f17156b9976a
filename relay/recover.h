/* Recovery at start: read back the tail of the stream and remember which of this relay's
 * deterministic Nats-Msg-Ids JetStream already stores. A record whose id is there is not
 * published again, even when the relay was down longer than the stream's
 * duplicate_window (after which JetStream itself would store the copy). Also checks the
 * stream's duplicate_window (stream.h) before the first publish. */
#ifndef RELAY_RECOVER_H
#define RELAY_RECOVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config;
struct recovery;
struct stream_check;

/* NULL when jetstream.stream is not set or the stream cannot be read now (logged).
 * streams checks its duplicate_window. floor: the checkpoint's stream floor, or NULL;
 * reading starts above it. *last_seq gets the stream's last sequence (below every message
 * the relay stores from now on). */
struct recovery *recover_read(const struct config *cfg, struct stream_check *streams,
                              const uint64_t *floor, uint64_t *last_seq);
/* True when msg_id was found; it is then no longer pending. */
bool recover_has(struct recovery *rc, const char *msg_id);
size_t recover_count(const struct recovery *rc);
/* Marks as pending the ids for which pending() says their record is still to be read
 * again (the rest were committed before the crash); returns how many. While some are
 * pending, the checkpoint's floor must stay below recover_from_seq: a crash now must find
 * them again at the next start. */
size_t recover_keep_pending(struct recovery *rc, bool (*pending)(void *ctx, const char *msg_id),
                            void *ctx);
size_t recover_pending(const struct recovery *rc);
uint64_t recover_from_seq(const struct recovery *rc);
void recover_free(struct recovery *rc);

#endif
