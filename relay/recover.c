#include "recover.h"

#include "config.h"
#include "dupwindow.h"
#include "fnv.h"
#include "log.h"
#include "msgid.h"
#include "nats_auth.h"
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
    REQUEST_MS = 5000,
    READ_DEADLINE_MS = 30000,
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

/* A JetStream API request; returns the parsed JSON reply or NULL (logged). */
static json_t *api_request(natsConnection *nc, const char *subject, const char *body)
{
    natsMsg *reply = NULL;
    natsStatus st = natsConnection_RequestString(&reply, nc, subject, body, REQUEST_MS);
    if (st != NATS_OK) {
        log_warn("jetstream request failed subject=%s error=\"%s\"", subject,
                 natsStatus_GetText(st));
        return NULL;
    }
    json_error_t jerr;
    json_t *doc =
        json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0, &jerr);
    natsMsg_Destroy(reply);
    json_t *error = doc ? json_object_get(doc, "error") : NULL;
    if (!doc || error) {
        log_warn("jetstream refused a request subject=%s error=\"%s\"", subject,
                 error ? json_string_value(json_object_get(error, "description")) : "bad reply");
        json_decref(doc);
        return NULL;
    }
    return doc;
}

/* Reads the headers of the stream's messages from sequence start on, at most limit of
 * them, through an ephemeral push consumer (headers only, no acks) and keeps the ids that
 * start with "<relay_id>:". */
static void read_from(natsConnection *nc, const struct config *cfg, uint64_t start, uint64_t limit,
                      struct recovery *rc)
{
    rc->from_seq = start;
    natsInbox *inbox = NULL;
    natsSubscription *sub = NULL;
    if (natsInbox_Create(&inbox) != NATS_OK ||
        natsConnection_SubscribeSync(&sub, nc, inbox) != NATS_OK ||
        natsSubscription_SetPendingLimits(sub, -1, -1) != NATS_OK) {
        natsInbox_Destroy(inbox);
        natsSubscription_Destroy(sub);
        return;
    }
    char *subject = xasprintf("$JS.API.CONSUMER.CREATE.%s", cfg->jetstream_stream);
    char *body = xasprintf("{\"stream_name\":\"%s\",\"config\":{\"deliver_policy\":"
                           "\"by_start_sequence\",\"opt_start_seq\":%" PRIu64
                           ",\"ack_policy\":\"none\",\"headers_only\":true,"
                           "\"deliver_subject\":\"%s\",\"inactive_threshold\":5000000000}}",
                           cfg->jetstream_stream, start, inbox);
    json_t *created = api_request(nc, subject, body);
    uint64_t seen = 0;
    for (int64_t deadline = nats_Now() + READ_DEADLINE_MS;
         created && seen < limit && nats_Now() < deadline; seen++) {
        natsMsg *msg = NULL;
        if (natsSubscription_NextMsg(&msg, sub, REQUEST_MS) != NATS_OK)
            break;
        const char *id = NULL;
        if (natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) == NATS_OK &&
            msgid_is_ours(id, cfg->relay_id))
            set_add(rc, id);
        /* $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending> */
        const char *reply = natsMsg_GetReply(msg);
        const char *pending = reply ? strrchr(reply, '.') : NULL;
        bool done = !pending || strtoull(pending + 1, NULL, 10) == 0;
        natsMsg_Destroy(msg);
        if (done)
            break;
    }
    json_decref(created);
    natsSubscription_Destroy(sub);
    natsInbox_Destroy(inbox);
    free(subject);
    free(body);
}

static natsConnection *connect_once(const struct config *cfg)
{
    natsOptions *opts = NULL;
    natsConnection *nc = NULL;
    struct nats_auth auth = nats_auth_from_config(cfg);
    char *err = NULL;
    natsStatus st = natsOptions_Create(&opts);
    if (st == NATS_OK)
        st = natsOptions_SetServers(opts, (const char **)cfg->nats_servers,
                                    (int)cfg->nats_server_count);
    if (st == NATS_OK)
        st = natsOptions_SetTimeout(opts, 2000);
    if (st == NATS_OK)
        st = natsOptions_SetAllowReconnect(opts, false);
    if (st == NATS_OK)
        st = nats_auth_apply(opts, &auth, &err); /* the same credentials and TLS */
    if (st == NATS_OK)
        st = natsConnection_Connect(&nc, opts);
    natsOptions_Destroy(opts);
    if (st != NATS_OK && !err) {
        const char *detail = nats_GetLastError(NULL);
        err = xstrdup(detail && *detail ? detail : natsStatus_GetText(st));
    }
    if (st != NATS_OK)
        log_warn("cannot read back the stream at start; relying on its duplicate_window for "
                 "records sent again error=\"%s\"",
                 err);
    free(err);
    return st == NATS_OK ? nc : NULL;
}

/* jetstream.create: make the stream when it does not exist yet. */
static void create_stream(natsConnection *nc, const struct config *cfg)
{
    json_t *subjects = json_array();
    for (size_t i = 0; i < cfg->create_subject_count; i++)
        json_array_append_new(subjects, json_string(cfg->create_subjects[i]));
    json_t *req = json_pack("{s:s, s:o, s:s, s:I, s:I}", "name", cfg->jetstream_stream, "subjects",
                            subjects, "storage", cfg->create_memory_storage ? "memory" : "file",
                            "num_replicas", (json_int_t)cfg->create_replicas, "duplicate_window",
                            (json_int_t)cfg->create_duplicate_window_ms * 1000000);
    char *body = json_dumps(req, JSON_COMPACT);
    char *subject = xasprintf("$JS.API.STREAM.CREATE.%s", cfg->jetstream_stream);
    json_t *created = api_request(nc, subject, body);
    if (created)
        log_info("created the stream stream=%s subjects=%zu replicas=%zu", cfg->jetstream_stream,
                 cfg->create_subject_count, cfg->create_replicas);
    json_decref(created);
    json_decref(req);
    free(body);
    free(subject);
}

static json_t *stream_info(natsConnection *nc, const struct config *cfg)
{
    char *subject = xasprintf("$JS.API.STREAM.INFO.%s", cfg->jetstream_stream);
    natsMsg *reply = NULL;
    json_t *info = NULL;
    bool missing = false;
    if (natsConnection_RequestString(&reply, nc, subject, "", REQUEST_MS) == NATS_OK) {
        info = json_loadb(natsMsg_GetData(reply), (size_t)natsMsg_GetDataLength(reply), 0, NULL);
        json_t *error = info ? json_object_get(info, "error") : NULL;
        missing = error && json_integer_value(json_object_get(error, "code")) == 404;
        natsMsg_Destroy(reply);
    }
    free(subject);
    if (missing && cfg->create_subject_count > 0) {
        json_decref(info);
        create_stream(nc, cfg);
        info = NULL;
    } else if (info && !json_object_get(info, "error")) {
        return info;
    }
    json_decref(info);
    subject = xasprintf("$JS.API.STREAM.INFO.%s", cfg->jetstream_stream);
    info = api_request(nc, subject, "");
    free(subject);
    return info;
}

struct recovery *recover_read(const struct config *cfg, const uint64_t *floor, uint64_t *last_seq)
{
    if (!cfg->jetstream_stream)
        return NULL;
    natsConnection *nc = connect_once(cfg);
    if (!nc)
        return NULL;
    json_t *info = stream_info(nc, cfg);
    struct recovery *rc = NULL;
    if (info) {
        dupwindow_check(info);
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
        if (last > 0 && last >= start)
            read_from(nc, cfg, start, floor ? FLOOR_MESSAGES : TAIL_MESSAGES, rc);
        else
            rc->from_seq = start;
        log_info("read back the stream stream=%s from_seq=%" PRIu64 " last_seq=%" PRIu64
                 " ids_of_this_relay=%zu",
                 cfg->jetstream_stream, start, last, rc->count);
        json_decref(info);
    }
    natsConnection_Destroy(nc);
    return rc;
}
