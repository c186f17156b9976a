/* The reading side of the relay (relay_reader.c): the ready queue and the done-reader
 * slots. Included only by the relay's own files (relay_internal.h). */
#ifndef RELAY_RELAY_READER_H
#define RELAY_RELAY_READER_H

#include <stdbool.h>
#include <stddef.h>

struct relay;
struct segment;

struct relay_reader {
    struct segment *ready_head, *ready_tail; /* segments that may have records to read */
    size_t done_readers;                     /* open readers of done segments (see DONE_READERS) */
};

/* Queue the segment for a read, unless it is queued, not being read, or gone. */
void relay_reader_push(struct relay_reader *rd, struct segment *seg);
bool relay_reader_idle(const struct relay_reader *rd); /* nothing queued to read */
/* Note the segment's size and first-bytes fingerprint from its open reader. */
void relay_reader_keep_identity(struct segment *seg);
/* Reads the queued segments while the window is open. */
void relay_reader_pump(struct relay *r);

/* spool_events callbacks; ctx is the struct relay. */
void relay_reader_segment_changed(void *ctx, struct segment *seg);
void relay_reader_segment_removed(void *ctx, struct segment *seg);

#endif
