#include "stream.h"

#include "config.h"
#include "log.h"
#include "nats_auth.h"
#include "nats_options.h"
#include "xalloc.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    ANSWER_WAIT_MS = 2000,
    REQUEST_MS = 5000,
    READ_DEADLINE_MS = 30000,
};

void stream_check_free(struct stream_check *sc)
{
    for (size_t i = 0; i < sc->seen_count; i++)
        free(sc->seen[i]);
    free(sc->seen);
    sc->seen = NULL;
    sc->seen_count = 0;
    sc->unanswered = 0;
}

void stream_check_asked(struct stream_check *sc, uint64_t now_ms)
{
    sc->unanswered++;
    sc->asked_at_ms = now_ms;
}

bool stream_check_waiting(const struct stream_check *sc, uint64_t now_ms)
{
    return sc->unanswered > 0 && now_ms - sc->asked_at_ms < ANSWER_WAIT_MS;
}

void stream_check_configure(struct stream_check *sc, int64_t expected_max_downtime_ms)
{
    stream_check_free(sc);
    sc->floor_ms = expected_max_downtime_ms;
}

static bool remember(struct stream_check *sc, const char *stream)
{
    for (size_t i = 0; i < sc->seen_count; i++)
        if (strcmp(sc->seen[i], stream) == 0)
            return false;
    sc->seen = xrealloc(sc->seen, (sc->seen_count + 1) * sizeof(*sc->seen));
    sc->seen[sc->seen_count++] = xstrdup(stream);
    return true;
}

bool stream_check_first_ack(struct stream_check *sc, const char *stream)
{
    /* The common case, one stream, costs one comparison per ack. */
    if (sc->floor_ms <= 0 || !stream[0] || (sc->seen_count > 0 && strcmp(sc->seen[0], stream) == 0))
        return false;
    return remember(sc, stream);
}

void stream_check_info(struct stream_check *sc, json_t *info)
{
    json_t *config = json_object_get(info, "config");
    const char *name = json_string_value(json_object_get(config, "name"));
    json_t *window = json_object_get(config, "duplicate_window");
    if (!name || !json_is_integer(window))
        return;
    remember(sc, name); /* read at start: its acks need not ask again */
    int64_t window_ms = (int64_t)(json_integer_value(window) / 1000000);
    if (sc->floor_ms > 0 && window_ms < sc->floor_ms)
        log_warn("the stream's duplicate_window is shorter than expected_max_downtime: after a "
                 "longer outage JetStream cannot drop copies the relay sends again (with "
                 "jetstream.stream set, the relay still skips those it finds at the stream's "
                 "tail) stream=%s duplicate_window_ms=%" PRId64
                 " expected_max_downtime_ms=%" PRId64,
                 name, window_ms, sc->floor_ms);
}

void stream_check_reply(struct stream_check *sc, const char *data, size_t len)
{
    if (sc->unanswered > 0)
        sc->unanswered--;
    json_t *info = json_loadb(data, len, 0, NULL);
    json_t *error = info ? json_object_get(info, "error") : NULL;
    if (!info || error)
        log_info("cannot read a stream's configuration to check its duplicate_window "
                 "error=\"%s\"",
                 error ? json_string_value(json_object_get(error, "description")) : "bad reply");
    else
        stream_check_info(sc, info);
    json_decref(info);
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

void stream_read_ids(natsConnection *nc, const struct config *cfg, uint64_t start, uint64_t limit,
                     void (*fn)(void *ctx, const char *msg_id), void *ctx)
{
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
        if (natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) == NATS_OK)
            fn(ctx, id);
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

natsConnection *stream_connect(const struct config *cfg)
{
    natsOptions *opts = NULL;
    natsConnection *nc = NULL;
    struct nats_auth auth = nats_auth_from_config(cfg); /* the same credentials and TLS */
    struct nats_options_spec spec = {.servers = (const char *const *)cfg->nats_servers,
                                     .server_count = cfg->nats_server_count,
                                     .auth = &auth,
                                     .once = true};
    char *err = NULL;
    natsStatus st = nats_options_create(&opts, &spec, &err);
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

json_t *stream_ensure(natsConnection *nc, const struct config *cfg)
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

void stream_info_subject(char *buf, size_t size, const char *stream)
{
    snprintf(buf, size, "$JS.API.STREAM.INFO.%s", stream);
}
