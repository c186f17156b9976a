/* Dead letters of records, and the hold when one cannot be written. A record the policy
 * gives up on is written down (deadletter.c) before its offset may move past it; if the
 * write fails (a full disk), the record is held, its segment is read no further, and the
 * write is retried every second. Kept apart from relay.c so that the hold, its retry and
 * the reader's check of it are read together. The undecodable rest of a segment is
 * dead-lettered by relay_reader.c, which owns the read that found it. */
#include "relay_deadletter.h"
#include "relay_internal.h"

#include "deadletter.h"
#include "log.h"
#include "metrics.h"
#include "spool.h"

#include <inttypes.h>
#include <stdlib.h>

static void deadletter_counted(const struct inflight_record *rec, enum deadletter_reason kind,
                               const char *reason)
{
    const struct segment *seg = rec->segment;
    METRIC_ADD(deadlettered[kind], 1);
    log_warn("record dead-lettered segment=%s offset=%" PRIu64 " reason=\"%s\"", seg->name,
             rec->start, reason);
}

void relay_deadletter_record(struct relay *r, struct inflight_record *rec,
                             enum deadletter_reason kind, const char *reason, const char *data,
                             size_t len)
{
    const struct segment *seg = rec->segment;
    char *err = deadletter_write(r->deadletter, seg->name, rec->start, rec->end, reason, data,
                                 data ? len : 0);
    if (!err) {
        deadletter_counted(rec, kind, reason);
        return;
    }
    /* Moving the offset past a record we could not even write down would lose it, and
     * stopping would relay nothing else. As with a checkpoint that cannot be written: the
     * record is held (one more hold: its offset stays), its segment is read no further,
     * the others go on, and the dead letter is written again every second. */
    rec->outstanding++;
    deadletter_hold(r->deadletter, rec, seg->name, rec->start, rec->end, kind, reason, data,
                    data ? len : 0);
    r->deadletters_held = deadletter_held(r->deadletter);
    log_error("cannot dead-letter a record, holding it and retrying segment=%s offset=%" PRIu64
              " error=\"%s\"",
              seg->name, rec->start, err);
    free(err);
}

static void on_deadletter_written(void *ctx, void *cookie, enum deadletter_reason kind,
                                  const char *reason)
{
    struct relay *r = ctx;
    struct inflight_record *rec = cookie;
    struct segment *seg = rec->segment;
    deadletter_counted(rec, kind, reason);
    relay_release_hold(r, rec);
    relay_reader_push(&r->reader, seg); /* read on, if nothing else of it is held */
}

void relay_deadletter_retry(struct relay *r)
{
    if (!r->deadletters_held)
        return;
    char *err = deadletter_retry(r->deadletter, on_deadletter_written, r);
    r->deadletter_retries++;
    r->deadletters_held = deadletter_held(r->deadletter);
    if (err && r->deadletter_retries % 60 == 0)
        log_error("cannot dead-letter a record, still holding records=%zu retries=%" PRIu64
                  " error=\"%s\"",
                  r->deadletters_held, r->deadletter_retries, err);
    if (!err) {
        log_info("dead letters written again after retries=%" PRIu64, r->deadletter_retries);
        r->deadletter_retries = 0;
    }
    free(err);
}

bool relay_deadletter_holds(const struct relay *r, const struct segment *seg)
{
    return r->deadletters_held && deadletter_holds(r->deadletter, seg->name);
}
