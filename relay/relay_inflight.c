/* The in-flight record pool and the publish cookies. A record is held while anything may
 * still publish for it (each publish, and the policy while it decides); when the last hold
 * goes it is complete, its segment's watermark may move, and it returns to the pool once
 * the watermark passes it. Kept apart from relay.c so that what completes a record, and
 * when a segment finishes, is in one place. */
#include "relay_inflight.h"
#include "relay_internal.h"

#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "offsets.h"
#include "segment.h"
#include "spool.h"
#include "xalloc.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

void relay_inflight_init(struct inflight_pool *pool, size_t count)
{
    pool->record_count = count;
    pool->records = xcalloc(count, sizeof(*pool->records));
    for (size_t i = 0; i < count; i++) {
        pool->records[i].next = pool->free_records;
        pool->free_records = &pool->records[i];
    }
}

void relay_inflight_free(struct inflight_pool *pool)
{
    free(pool->records);
}

struct inflight_record *relay_inflight_take(struct inflight_pool *pool, struct segment *seg,
                                            const struct segment_record *sr, uint64_t stream_floor)
{
    struct inflight_record *rec = pool->free_records;
    if (!rec)
        return NULL;
    pool->free_records = rec->next;
    pool->records_in_use++;
    rec->segment = seg;
    rec->start = sr->start;
    rec->end = sr->end;
    rec->ordinal = sr->ordinal;
    rec->outstanding = 0;
    rec->publishes = 0;
    rec->complete = false;
    rec->read_at_ms = loop_now_ms();
    rec->stream_floor = stream_floor;
    seg->in_flight_records++;
    seg->records_read++;
    METRIC_ADD(records_read, 1);
    offsets_watermark_push(&seg->wm, rec);
    return rec;
}

static void record_release(void *arg, struct inflight_record *rec)
{
    struct inflight_pool *pool = arg;
    struct segment *seg = rec->segment;
    seg->in_flight_records--;
    METRIC_ADD(records_committed, 1);
    rec->next = pool->free_records;
    pool->free_records = rec;
    pool->records_in_use--;
}

void relay_inflight_free_if_unused(struct segment *seg)
{
    if (seg->gone && seg->in_flight_records == 0)
        spool_segment_free(seg);
}

void relay_inflight_finish_if_drained(struct segment *seg)
{
    if (seg->state == SEGMENT_STATE_DRAINING && seg->wm.pending == 0) {
        seg->state = SEGMENT_STATE_FINISHED;
        log_debug("segment finished segment=%s records=%" PRIu64, seg->name,
                  seg->wm.committed_ordinal);
    }
}

static void record_complete(struct relay *r, struct inflight_record *rec)
{
    struct segment *seg = rec->segment;
    if (offsets_watermark_complete(&seg->wm, rec, record_release, &r->inflight))
        r->dirty = true;
    relay_inflight_finish_if_drained(seg);
    relay_inflight_free_if_unused(seg);
}

void relay_release_hold(struct relay *r, struct inflight_record *rec)
{
    if (--rec->outstanding > 0)
        return;
    if (rec->publishes > 0)
        metrics_observe_ack_latency((loop_now_ms() - rec->read_at_ms) * 1000);
    record_complete(r, rec);
}

/* A publish made for several records (a batch) completes all of them; the cookie of a
 * single record's publish is the record itself, tagged apart by its low bit. */
struct publish_group {
    size_t count;
    struct inflight_record *records[];
};

void *relay_inflight_cookie(struct inflight_record *const *records, size_t count)
{
    if (count == 1)
        return records[0];
    struct publish_group *g = xmalloc(sizeof(*g) + count * sizeof(g->records[0]));
    g->count = count;
    memcpy(g->records, records, count * sizeof(g->records[0]));
    return (void *)((uintptr_t)g | 1);
}

void relay_inflight_cookie_free(void *cookie)
{
    if ((uintptr_t)cookie & 1)
        free((void *)((uintptr_t)cookie & ~(uintptr_t)1));
}

void relay_inflight_published(struct relay *r, void *cookie)
{
    if ((uintptr_t)cookie & 1) {
        struct publish_group *g = (void *)((uintptr_t)cookie & ~(uintptr_t)1);
        for (size_t i = 0; i < g->count; i++)
            relay_release_hold(r, g->records[i]);
        free(g);
    } else {
        relay_release_hold(r, cookie);
    }
}
