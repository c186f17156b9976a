/* Dead-lettering a record, and holding it while its dead letter cannot be written
 * (relay_deadletter.c). Included only by the relay's own files. */
#ifndef RELAY_RELAY_DEADLETTER_H
#define RELAY_RELAY_DEADLETTER_H

#include "deadletter.h"

#include <stdbool.h>
#include <stddef.h>

struct inflight_record;
struct relay;
struct segment;

/* Writes the record's dead letter; when that fails, holds the record and its segment. */
void relay_deadletter_record(struct relay *r, struct inflight_record *rec,
                             enum deadletter_reason kind, const char *reason, const char *data,
                             size_t len);
/* Every second: writes the held dead letters again, releasing each record written. */
void relay_deadletter_retry(struct relay *r);
/* A record of this segment waits for its dead letter to be written. */
bool relay_deadletter_holds(const struct relay *r, const struct segment *seg);

#endif
