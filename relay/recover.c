#include "recover.h"

#include "config.h"
#include "fnv.h"
#include "log.h"
#include "msgid.h"
#include "stream.h"
#include "xalloc.h"

#include <inttypes.h>
#include <jansson.h>
#include <nats/nats.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum {
    TAIL_MESSAGES = 65536,    /* covers a checkpoint interval at full rate plus the window */
    FLOOR_MESSAGES = 1 << 20, /* from the checkpoint's floor: ours are in the first few */
};

/* An open-addressing set of message ids. */
struct recovery {
    char **slots;
    bool *pending; /* per slot: a record not yet re-read (see recover_keep_pending) */
    size_t cap, count, pending_count;
    uint64_t from_seq; /* the first sequence read */
};

static void set_add(struct recovery *rc, const char *id)
{
    if ((rc->count + 1) * 2 > rc->cap) {
        size_t cap = rc->cap ? rc->cap * 2 : 1024;
        struct recovery bigger = {.slots = xcalloc(cap, sizeof(char *)), .cap = cap};
        for (size_t i = 0; i < rc->cap; i++) {
            if (rc->slots[i]) {
                set_add(&bigger, rc->slots[i]);
                free(rc->slots[i]);
            }
        }
        free(rc->slots);
        rc->slots = bigger.slots;
        rc->cap = bigger.cap;
        rc->count = bigger.count;
    }
    size_t i = fnv64_str(id) & (rc->cap - 1);
    while (rc->slots[i]) {
        if (strcmp(rc->slots[i], id) == 0)
            return;
        i = (i + 1) & (rc->cap - 1);
    }
    rc->slots[i] = xstrdup(id);
    rc->count++;
}

bool recover_has(struct recovery *rc, const char *msg_id)
{
    if (!rc || rc->count == 0)
        return false;
    for (size_t i = fnv64_str(msg_id) & (rc->cap - 1); rc->slots[i]; i = (i + 1) & (rc->cap - 1)) {
        if (strcmp(rc->slots[i], msg_id) == 0) {
            if (rc->pending && rc->pending[i]) {
                rc->pending[i] = false;
                rc->pending_count--;
            }
            return true;
        }
    }
    return false;
}

size_t recover_keep_pending(struct recovery *rc, bool (*pending)(void *ctx, const char *msg_id),
                            void *ctx)
{
    if (!rc || rc->cap == 0)
        return 0;
    free(rc->pending);
    rc->pending = xcalloc(rc->cap, sizeof(*rc->pending));
    rc->pending_count = 0;
    for (size_t i = 0; i < rc->cap; i++) {
        if (rc->slots[i] && pending(ctx, rc->slots[i])) {
            rc->pending[i] = true;
            rc->pending_count++;
        }
    }
    return rc->pending_count;
}

size_t recover_pending(const struct recovery *rc)
{
    return rc ? rc->pending_count : 0;
}

uint64_t recover_from_seq(const struct recovery *rc)
{
    return rc ? rc->from_seq : 0;
}

size_t recover_count(const struct recovery *rc)
{
    return rc ? rc->count : 0;
}

void recover_free(struct recovery *rc)
{
    if (!rc)
        return;
    for (size_t i = 0; i < rc->cap; i++)
        free(rc->slots[i]);
    free(rc->slots);
    free(rc->pending);
    free(rc);
}

struct reading {
    struct recovery *rc;
    const char *relay_id;
};

static void keep_if_ours(void *ctx, const char *msg_id)
{
    struct reading *reading = ctx;
    if (msgid_is_ours(msg_id, reading->relay_id))
        set_add(reading->rc, msg_id);
}

struct recovery *recover_read(const struct config *cfg, struct stream_check *streams,
                              const uint64_t *floor, uint64_t *last_seq)
{
    if (!cfg->jetstream_stream)
        return NULL;
    natsConnection *nc = stream_connect(cfg);
    if (!nc)
        return NULL;
    json_t *info = stream_ensure(nc, cfg);
    struct recovery *rc = NULL;
    if (info) {
        stream_check_info(streams, info);
        json_t *state = json_object_get(info, "state");
        uint64_t first = (uint64_t)json_integer_value(json_object_get(state, "first_seq"));
        uint64_t last = (uint64_t)json_integer_value(json_object_get(state, "last_seq"));
        *last_seq = last;
        rc = xcalloc(1, sizeof(*rc));
        /* From the checkpoint's floor: every message this relay stored for a record the
         * checkpoint does not cover is above it, however many other relays stored since.
         * Without one (an older checkpoint, a first start), the stream's last messages. */
        uint64_t start = floor ? *floor + 1 : last >= TAIL_MESSAGES ? last - TAIL_MESSAGES + 1 : 1;
        if (start < first)
            start = first;
        rc->from_seq = start;
        struct reading reading = {rc, cfg->relay_id};
        if (last > 0 && last >= start)
            stream_read_ids(nc, cfg, start, floor ? FLOOR_MESSAGES : TAIL_MESSAGES, keep_if_ours,
                            &reading);
        log_info("read back the stream stream=%s from_seq=%" PRIu64 " last_seq=%" PRIu64
                 " ids_of_this_relay=%zu",
                 cfg->jetstream_stream, start, last, rc->count);
        json_decref(info);
    }
    natsConnection_Destroy(nc);
    return rc;
}
