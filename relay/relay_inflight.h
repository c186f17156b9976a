/* The records the relay has read and not yet committed: a fixed pool (twice the window, so
 * acks out of order never starve the reader), and the cookie a publish carries back to the
 * records it was made for. Included only by the relay's own files (relay_internal.h). */
#ifndef RELAY_RELAY_INFLIGHT_H
#define RELAY_RELAY_INFLIGHT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct inflight_record;
struct relay;
struct segment;
struct segment_record;

/* A record read before the stream's sequence was known: no floor for the checkpoint. */
#define UNKNOWN_FLOOR UINT64_MAX

struct inflight_pool {
    struct inflight_record *records, *free_records;
    size_t record_count, records_in_use;
};

void relay_inflight_init(struct inflight_pool *pool, size_t count);
void relay_inflight_free(struct inflight_pool *pool);
/* A free record, filled in from sr and pushed on its segment's watermark; NULL when the
 * pool is empty (the window keeps the reader from asking then). */
struct inflight_record *relay_inflight_take(struct inflight_pool *pool, struct segment *seg,
                                            const struct segment_record *sr, uint64_t stream_floor);

/* The publish of these records: what publisher_publish carries back to on_publish_done. */
void *relay_inflight_cookie(struct inflight_record *const *records, size_t count);
void relay_inflight_cookie_free(void *cookie); /* the publish was not made */
/* The publish is acknowledged (or given up): lets go of its hold on each record. */
void relay_inflight_published(struct relay *r, void *cookie);

/* A draining segment with nothing left in flight is finished. */
void relay_inflight_finish_if_drained(struct segment *seg);
/* A segment gone from the spool is freed once no record refers to it. */
void relay_inflight_free_if_unused(struct segment *seg);

#endif
