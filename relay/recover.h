/* Recovery at start: read back the tail of the stream and remember which of this relay's
 * deterministic Nats-Msg-Ids JetStream already stores. A record whose id is there is not
 * published again, even when the relay was down longer than the stream's
 * duplicate_window (after which JetStream itself would store the copy). Also checks the
 * stream's duplicate_window (dupwindow.h) before the first publish. */
#ifndef RELAY_RECOVER_H
#define RELAY_RECOVER_H

#include <stdbool.h>
#include <stddef.h>

struct config;
struct recovery;

/* NULL when jetstream.stream is not set or the stream cannot be read now (logged). */
struct recovery *recover_read(const struct config *cfg);
bool recover_has(const struct recovery *rc, const char *msg_id);
size_t recover_count(const struct recovery *rc);
void recover_free(struct recovery *rc);

#endif
