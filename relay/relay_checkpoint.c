/* The relay's checkpoint: loading it at start and applying its entry to each segment as
 * the spool finds it, and writing it (every checkpoint interval when offsets moved, and at
 * stop) with the stream floor that bounds the read-back at the next start. offsets.c owns
 * the file format and the durable write; this file owns what goes in it and when. The
 * ordering rule lives here: dead letters are synced before the offsets that skip them. */
#include "relay_checkpoint.h"
#include "relay_internal.h"

#include "config.h"
#include "deadletter.h"
#include "log.h"
#include "metrics.h"
#include "offsets.h"
#include "recover.h"
#include "relay.h"
#include "spool.h"
#include "xalloc.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const struct checkpoint_entry *checkpoint_entry(const struct relay *r, const char *name)
{
    for (size_t i = 0; i < r->checkpoint.count; i++)
        if (strcmp(r->checkpoint.entries[i].name, name) == 0)
            return &r->checkpoint.entries[i];
    return NULL;
}

void relay_checkpoint_segment_added(void *ctx, struct segment *seg)
{
    struct relay *r = ctx;
    const struct checkpoint_entry *e = checkpoint_entry(r, seg->name);
    if (e && seg->generation < e->generation)
        spool_set_generation(seg, e->generation);
    const char *why = e ? spool_check_identity(seg, e) : NULL;
    if (why) {
        /* A new file under a known name: its offsets start again at 0, so its ids need a
         * new generation or they would equal the old file's, and be dropped as copies. One
         * replaced while we run may already have a later one from the spool. */
        spool_set_generation(seg,
                             seg->generation > e->generation ? seg->generation : e->generation + 1);
        log_warn("segment %s, reading it from the start segment=%s generation=%u", why, seg->name,
                 seg->generation);
        e = NULL;
    }
    if (e) {
        seg->resume_offset = e->offset;
        seg->wm.committed_offset = e->offset;
        seg->wm.committed_ordinal = e->ordinal;
        if (e->finished)
            seg->state = SEGMENT_STATE_FINISHED;
    } else if (!r->started && !r->have_checkpoint && r->cfg->start_at == START_AT_END) {
        seg->skip_existing = true;
    }
    r->dirty = true;
    log_debug("segment added segment=%s offset=%" PRIu64 " state=%d", seg->name, seg->resume_offset,
              seg->state);
}

/* A sequence of jetstream.stream below every message stored for a record the checkpoint
 * does not cover: the lowest floor of the records still in flight (a segment's oldest has
 * its lowest), else the last acknowledged sequence. While ids found at start wait to be
 * read again, it stays below where that read began, or a crash now would lose them.
 * False when not known (a record read before the stream's sequence was). */
static bool stream_floor(const struct relay *r, uint64_t *floor)
{
    if (!r->cfg->jetstream_stream || !r->stream_seq_known)
        return false;
    *floor = r->stream_seq;
    if (recover_pending(r->recovery) > 0 && recover_from_seq(r->recovery) - 1 < *floor)
        *floor = recover_from_seq(r->recovery) - 1;
    size_t n = spool_segment_count(r->spool);
    for (size_t i = 0; i < n; i++) {
        const struct inflight_record *head = spool_segment(r->spool, i)->wm.head;
        if (head && head->stream_floor == UNKNOWN_FLOOR)
            return false;
        if (head && head->stream_floor < *floor)
            *floor = head->stream_floor;
    }
    return true;
}

void relay_checkpoint_write(struct relay *r)
{
    struct checkpoint cp = {.spool_dir = (char *)r->cfg->spools[0].dir};
    if (stream_floor(r, &cp.stream_floor))
        cp.stream = (char *)r->cfg->jetstream_stream;
    size_t n = spool_segment_count(r->spool);
    for (size_t i = 0; i < n; i++) {
        struct segment *seg = spool_segment(r->spool, i);
        struct checkpoint_entry e = {
            .name = seg->name,
            .inode = seg->inode,
            .offset = seg->wm.committed_offset,
            .ordinal = seg->wm.committed_ordinal,
            .finished = seg->state == SEGMENT_STATE_FINISHED,
            .generation = seg->generation,
        };
        if (seg->reader)
            relay_reader_keep_identity(seg);
        e.size = seg->size;
        e.fp_len = seg->fp_len;
        e.fp_hash = seg->fp_hash;
        offsets_checkpoint_add(&cp, &e);
    }
    /* Dead letters must be durable before the offsets that skip their records are. */
    char *err = deadletter_sync(r->deadletter);
    if (!err)
        err = offsets_checkpoint_write(r->cfg->state_dir, &cp);
    if (err) {
        r->checkpoint_failures++;
        METRIC_ADD(checkpoint_failures, 1);
        if (r->checkpoint_failures == 1 || r->checkpoint_failures % 100 == 0)
            log_error("cannot write the checkpoint, offsets are not saved failures=%" PRIu64
                      " error=\"%s\"",
                      r->checkpoint_failures, err);
        free(err);
        r->dirty = true; /* tried again at the next interval, even if no offset moves */
    } else {
        if (r->checkpoint_failures > 0)
            log_info("checkpoint written again after failures=%" PRIu64, r->checkpoint_failures);
        r->checkpoint_failures = 0;
        METRIC_ADD(checkpoint_writes, 1);
        r->dirty = false;
    }
    for (size_t i = 0; i < cp.count; i++)
        free(cp.entries[i].name);
    free(cp.entries);
}

void relay_checkpoint_timer(struct loop *loop, void *arg)
{
    struct relay *r = arg;
    if (r->dirty)
        relay_checkpoint_write(r);
}

char *relay_checkpoint_load(struct relay *r)
{
    if (r->options->reset_offsets) {
        char *path = xasprintf("%s/checkpoint", r->cfg->state_dir);
        char *aside =
            xasprintf("%s/checkpoint.reset-%lld", r->cfg->state_dir, (long long)time(NULL));
        if (rename(path, aside) == 0)
            log_warn("--reset-offsets: checkpoint set aside as %s; relaying from the start", aside);
        free(path);
        free(aside);
    }
    char *err = offsets_checkpoint_load(r->cfg->state_dir, &r->checkpoint, &r->have_checkpoint);
    if (err)
        return err;
    if (r->have_checkpoint && !r->checkpoint.spool_dir)
        return xasprintf("checkpoint %s/checkpoint names no spool; refusing to apply its offsets "
                         "(use --reset-offsets to start over)",
                         r->cfg->state_dir);
    if (r->have_checkpoint && strcmp(r->checkpoint.spool_dir, r->cfg->spools[0].dir) != 0)
        return xasprintf("checkpoint %s/checkpoint belongs to spool %s, not %s; refusing to "
                         "apply its offsets (use --reset-offsets to start over)",
                         r->cfg->state_dir, r->checkpoint.spool_dir, r->cfg->spools[0].dir);
    return NULL;
}
