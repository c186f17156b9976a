/* The reading side of the relay: the ready queue (segments that may have records to
 * read, taken in turn so that no segment starves the others), the done-reader slots (how
 * many done segments have a reader open at once), and the read of a segment's records up
 * to the window, with what ends a segment's read: its end, damage it cannot be read past,
 * or a file shorter than the checkpoint says. Each record read is handed to the policy
 * (relay_apply_policy); what happens to it then is relay_inflight.c's. */
#include "relay_reader.h"
#include "relay_deadletter.h"
#include "relay_internal.h"

#include "config.h"
#include "deadletter.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "publish.h"
#include "segment.h"
#include "spool.h"
#include "xalloc.h"

#include <inttypes.h>
#include <stdlib.h>

enum {
    RECORDS_PER_TURN = 256, /* records read from one segment before the next gets a turn */
    /* Done segments decoded at once. Each open reader holds a zstd window and buffers
     * (~2.5 MB), so a backlog of many done segments, read all at once, would cost memory
     * in proportion to the backlog. Live segments always get a reader: a quiet one must
     * never wait behind a busy one. */
    DONE_READERS = 2,
};

bool relay_reader_idle(const struct relay_reader *rd)
{
    return !rd->ready_head;
}

void relay_reader_push(struct relay_reader *rd, struct segment *seg)
{
    if (seg->ready || seg->state != SEGMENT_STATE_READING || seg->gone)
        return;
    seg->ready = true;
    seg->ready_next = NULL;
    if (rd->ready_tail)
        rd->ready_tail->ready_next = seg;
    else
        rd->ready_head = seg;
    rd->ready_tail = seg;
}

static struct segment *ready_pop(struct relay_reader *rd)
{
    struct segment *seg = rd->ready_head;
    if (!seg)
        return NULL;
    rd->ready_head = seg->ready_next;
    if (!rd->ready_head)
        rd->ready_tail = NULL;
    seg->ready = false;
    return seg;
}

static void ready_forget(struct relay_reader *rd, struct segment *seg)
{
    for (struct segment **p = &rd->ready_head; *p; p = &(*p)->ready_next) {
        if (*p == seg) {
            *p = seg->ready_next;
            if (rd->ready_tail == seg) {
                rd->ready_tail = NULL;
                for (struct segment *s = rd->ready_head; s; s = s->ready_next)
                    rd->ready_tail = s;
            }
            break;
        }
    }
    seg->ready = false;
}

void relay_reader_segment_changed(void *ctx, struct segment *seg)
{
    struct relay *r = ctx;
    relay_reader_push(&r->reader, seg);
}

/* The segment's size and the fingerprint of its first bytes, for its checkpoint entry: an
 * open reader has read the file from its start, so it knows them without a system call. */
void relay_reader_keep_identity(struct segment *seg)
{
    uint64_t hash;
    size_t len;
    segment_reader_fingerprint(seg->reader, &hash, &len);
    if (len > seg->fp_len) {
        seg->fp_len = (uint32_t)len;
        seg->fp_hash = hash;
    }
    if (segment_reader_bytes_read(seg->reader) > seg->size)
        seg->size = segment_reader_bytes_read(seg->reader);
}

/* Closes a segment's reader. A done reader's slot goes to the waiting backlog: all of it
 * is queued again, in name order, and the first to run takes the slot. Waking all (not
 * one) means a segment that fails to open cannot leave the others waiting. */
static void close_reader(struct relay_reader *rd, struct spool *spool, struct segment *seg)
{
    if (seg->reader)
        relay_reader_keep_identity(seg);
    segment_reader_close(seg->reader);
    seg->reader = NULL;
    if (!seg->holds_done_slot)
        return;
    seg->holds_done_slot = false;
    rd->done_readers--;
    size_t n = spool_segment_count(spool);
    for (size_t i = 0; i < n; i++) {
        struct segment *s = spool_segment(spool, i);
        if (s->awaiting_reader) {
            s->awaiting_reader = false;
            relay_reader_push(rd, s);
        }
    }
}

void relay_reader_segment_removed(void *ctx, struct segment *seg)
{
    struct relay *r = ctx;
    if (seg->state != SEGMENT_STATE_FINISHED) {
        METRIC_ADD(segments_lost, 1);
        log_warn("segment deleted before it was relayed completely, forgetting it segment=%s "
                 "records_read=%" PRIu64 " committed_offset=%" PRIu64,
                 seg->name, seg->records_read, seg->wm.committed_offset);
    }
    ready_forget(&r->reader, seg);
    seg->awaiting_reader = false;
    close_reader(&r->reader, r->spool, seg);
    r->dirty = true;
    relay_inflight_free_if_unused(seg);
}

static void handle_record(struct relay *r, struct segment *seg, const struct segment_record *sr)
{
    uint64_t floor = r->stream_seq_known ? r->stream_seq : UNKNOWN_FLOOR;
    relay_apply_policy(r, relay_inflight_take(&r->inflight, seg, sr, floor), sr);
}

/* Opens the segment's reader; false when it cannot now (logged), or when it is done and
 * every done-reader slot is taken (it is queued again when one frees). */
static bool open_reader(struct relay *r, struct segment *seg)
{
    if (seg->done && r->reader.done_readers >= DONE_READERS) {
        seg->awaiting_reader = true;
        return false;
    }
    char *err = NULL;
    seg->reader =
        segment_reader_open(seg->path, seg->resume_offset, r->cfg->max_record_bytes, &err);
    if (!seg->reader) {
        log_warn("cannot open segment, will retry at the next change segment=%s error=\"%s\"",
                 seg->name, err);
        free(err);
        return false;
    }
    segment_reader_set_header(seg->reader, r->cfg->spools[seg->dir].segment_header);
    if (seg->done) {
        seg->holds_done_slot = true;
        r->reader.done_readers++;
    }
    return true;
}

/* The segment is done and read to its end: note a truncated tail, stop reading. */
static void end_of_segment(struct relay *r, struct segment *seg)
{
    struct segment_tail tail;
    segment_reader_tail(seg->reader, &tail);
    if (tail.frame_truncated || tail.partial_bytes > 0) {
        METRIC_ADD(segments_truncated, 1);
        log_warn("segment ends mid-record (kumod stopped without finishing it); its tail is "
                 "dropped segment=%s dropped_bytes=%zu frame_truncated=%s",
                 seg->name, tail.partial_bytes, tail.frame_truncated ? "yes" : "no");
    }
    close_reader(&r->reader, r->spool, seg);
    seg->state = SEGMENT_STATE_DRAINING;
    relay_inflight_finish_if_drained(seg);
    r->dirty = true;
}

/* The segment cannot be read past a point: every record before it was handed on (the
 * reader salvages what a decode error would lose); the rest is written down as one dead
 * letter, and the segment finishes once those records are complete, so its checkpoint
 * moves past it and the relay is not stuck on it. */
static void segment_failed(struct relay *r, struct segment *seg)
{
    struct segment_damage d;
    segment_reader_damage(seg->reader, &d);
    uint64_t last = segment_reader_offset(seg->reader);
    const char *error = segment_reader_error(seg->reader);
    char *reason = xasprintf("undecodable: %s at compressed offset %" PRIu64 " of %" PRIu64
                             " bytes, after %" PRIu64 " decompressed bytes; the rest of the "
                             "segment after offset %" PRIu64 " is lost",
                             error, d.compressed_offset, d.compressed_size, d.decoded_offset, last);
    char *err = deadletter_write(r->deadletter, seg->name, last, d.decoded_offset, reason, NULL, 0);
    free(reason);
    if (err) {
        /* The reader keeps its error: the next scan (or change) brings us back here. */
        log_error("cannot dead-letter the undecodable rest of a segment, will retry segment=%s "
                  "error=\"%s\"",
                  seg->name, err);
        free(err);
        return;
    }
    METRIC_ADD(segments_corrupt, 1);
    METRIC_ADD(deadlettered[DEADLETTER_UNDECODABLE], 1);
    log_error("segment cannot be decoded past this point; the records before it are relayed, "
              "the rest is dead-lettered segment=%s offset=%" PRIu64 " decoded=%" PRIu64
              " compressed_offset=%" PRIu64 " error=\"%s\"",
              seg->name, last, d.decoded_offset, d.compressed_offset, error);
    close_reader(&r->reader, r->spool, seg);
    seg->state = SEGMENT_STATE_DRAINING;
    relay_inflight_finish_if_drained(seg);
    r->dirty = true;
}

/* The whole file decodes to less than the checkpoint's offset: it is not the file the
 * checkpoint was written for (made again under the same name and inode, or the checkpoint
 * edited by hand). Read it from the start as a new generation rather than call it done. */
static void read_again_from_start(struct relay *r, struct segment *seg)
{
    log_warn("segment ends before the checkpoint's offset, reading it from the start "
             "segment=%s offset=%" PRIu64 " decoded=%" PRIu64 " generation=%u",
             seg->name, seg->resume_offset, segment_reader_decoded(seg->reader),
             seg->generation + 1);
    close_reader(&r->reader, r->spool, seg);
    spool_set_generation(seg, seg->generation + 1);
    seg->resume_offset = 0;
    seg->wm.committed_offset = seg->wm.committed_ordinal = 0;
    r->dirty = true;
}

static bool window_open(const struct relay *r)
{
    return r->inflight.free_records && r->publishes_in_flight < r->cfg->max_in_flight &&
           !r->draining && (!r->pub || publisher_connected(r->pub));
}

/* Reads up to RECORDS_PER_TURN records. Returns true if the segment should get another
 * turn right away (more records may be there). */
static bool read_segment(struct relay *r, struct segment *seg)
{
    if (relay_deadletter_holds(r, seg) || (!seg->reader && !open_reader(r, seg)))
        return false;
    /* Done (write bits cleared) seen before this pass means every byte was written before
     * our reads began, so EOF now is the real end. */
    bool done_before = seg->done;
    for (int n = 0; n < RECORDS_PER_TURN; n++) {
        if (!window_open(r))
            return true;
        struct segment_record sr;
        enum segment_read res = segment_reader_next(seg->reader, &sr);
        if (res == SEGMENT_RECORD) {
            if (!seg->skip_existing)
                handle_record(r, seg, &sr);
            if (relay_deadletter_holds(r, seg))
                return false;
            continue;
        }
        if (res == SEGMENT_ERROR) {
            segment_failed(r, seg);
            return false;
        }
        if (segment_reader_decoded(seg->reader) < seg->resume_offset && seg->records_read == 0) {
            read_again_from_start(r, seg);
            return true;
        }
        if (seg->skip_existing) {
            seg->skip_existing = false;
            seg->resume_offset = seg->wm.committed_offset = segment_reader_offset(seg->reader);
            seg->wm.committed_ordinal = segment_reader_ordinal(seg->reader);
            r->dirty = true;
        }
        if (done_before) {
            end_of_segment(r, seg);
            return false;
        }
        if (!spool_refresh_mode(seg) || !seg->done)
            return false; /* live: inotify tells us when it grows */
        done_before = true;
    }
    return true;
}

void relay_reader_pump(struct relay *r)
{
    size_t turns = 0, limit = 1 + r->cfg->max_in_flight / RECORDS_PER_TURN * 4;
    struct relay_reader *rd = &r->reader;
    while (window_open(r) && rd->ready_head && turns++ < limit) {
        struct segment *seg = ready_pop(rd);
        if (read_segment(r, seg))
            relay_reader_push(rd, seg);
    }
    /* Stopped only by the turn limit, with room left: come back without sleeping. */
    if (window_open(r) && rd->ready_head)
        loop_wake_within(r->loop, 0);
}
