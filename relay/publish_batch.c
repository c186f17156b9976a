/* Fast-ingest batches (ADR-50, nats-server 2.14 and later, a stream with allow_batched):
 * many publishes, one flow ack per up to `flow` of them instead of one ack each.
 *
 * The protocol is in the reply subject of plain core publishes,
 * <inbox>.<batch id>.<flow>.fail.<batch seq>.<op>.$FI (op 0 starts the batch, 1 adds to
 * it, 3 ends it with a marker that is not stored); the stream answers on the reply
 * subject of the message that moved it: {"type":"ack","seq":N,"msgs":M} means, with
 * "fail" (no gaps allowed), that the batch's messages up to N are stored, and the final
 * {"stream":..,"seq":..,"batch":..,"count":C} that those up to C are. A gap or an error
 * ends the batch on the server; its final ack then counts what it stored.
 *
 * Exactly once rests on Nats-Msg-Id as for single publishes: the stream drops an id it
 * has seen, inside a batch as across batches, without failing the batch
 * (tests/integration/test_fast_batch.py). So whatever goes wrong with a batch (an error,
 * a gap, an ack that does not come, a reconnect) its unacknowledged messages simply go
 * out again as single publishes with the same ids, and a record is done only when the
 * stream has acknowledged it: the watermark never passes an unstored record.
 *
 * The stream is learnt from the first ack, and whether it takes batches from its
 * STREAM.INFO: until then, and for streams or servers without them, every publish is a
 * single one. Only the relay's own connection asks for batches (the built-in policy
 * publishes into one stream); a batch ends when nothing was published for a moment,
 * since the messages after the last flow ack are acknowledged only by its end. */
#include "publish_internal.h"

#include "decimal.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "publish_reply.h"
#include "stream.h"
#include "xalloc.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    IDLE_MS = 5,          /* no publish for this long: the open batch ends */
    FAILURES_TO_STOP = 3, /* batches failed in a row: single publishes from then on */
    MAX_FLOW = 500,       /* nats-server 2.15 acks every 500 messages at most */
};

#define INFO_REPLY ".b.0" /* the STREAM.INFO answer: <inbox>.b.0 */
#define SUFFIX     ".$FI"

void publish_batch_init(struct publisher *p)
{
    struct fast_ingest *f = &p->fast;
    size_t window = p->options.fast_batch_window;
    f->state = window > 0 ? FAST_UNKNOWN : FAST_OFF;
    /* A flow ack per quarter window at most, so the window never waits on one; the server
     * sends one per 500 messages at most anyway. */
    f->flow = window / 4 > MAX_FLOW ? MAX_FLOW : window / 4 > 0 ? (uint32_t)(window / 4) : 1;
    f->open = -1;
}

static void release(struct publisher *p, struct fast_batch *b)
{
    if (p->fast.open >= 0 && &p->fast.batches[p->fast.open] == b)
        p->fast.open = -1;
    free(b->subject);
    *b = (struct fast_batch){0};
}

void publish_batch_free(struct publisher *p)
{
    for (int i = 0; i < FAST_BATCHES; i++)
        free(p->fast.batches[i].subject);
}

size_t publish_batch_in_flight(const struct publisher *p)
{
    size_t n = 0;
    for (int i = 0; i < FAST_BATCHES; i++)
        n += p->fast.batches[i].slots.count;
    return n;
}

/* The last token of the inbox: unique to this connection, so that no other publisher's
 * batch on the stream has the same id. */
static const char *inbox_token(const struct publisher *p)
{
    const char *dot = strrchr(p->inbox, '.');
    return dot ? dot + 1 : p->inbox;
}

/* A new batch for messages to subject; -1 when every entry still awaits a final ack. */
static int start_batch(struct publisher *p, const char *subject)
{
    for (int i = 0; i < FAST_BATCHES; i++) {
        struct fast_batch *b = &p->fast.batches[i];
        if (b->number)
            continue;
        uint64_t number = p->fast.started + 1;
        int n = snprintf(b->reply, sizeof(b->reply), "%s.%sF%" PRIu64 ".%u.fail.", p->inbox,
                         inbox_token(p), number, p->fast.flow);
        if (n < 0 || (size_t)n + DECIMAL_MAX + 8 > sizeof(b->reply))
            return -1; /* an inbox prefix too long for batches */
        p->fast.started = number;
        b->number = number;
        b->reply_len = (size_t)n;
        b->next_seq = 1;
        b->progress_ms = loop_now_ms();
        b->subject = xstrdup(subject);
        p->fast.open = i;
        return i;
    }
    return -1;
}

/* <batch reply prefix><seq>.<op>.$FI */
static void batch_reply(const struct fast_batch *b, uint64_t seq, char op, char *out)
{
    memcpy(out, b->reply, b->reply_len);
    char *at = out + b->reply_len;
    at += decimal_put(at, seq);
    *at++ = '.';
    *at++ = op;
    memcpy(at, SUFFIX, sizeof(SUFFIX));
}

int publish_batch_send(struct publisher *p, struct slot *s, const struct publish_request *req,
                       char **err)
{
    int i = p->fast.open >= 0 ? p->fast.open : start_batch(p, req->subject);
    if (i < 0)
        return 1;
    struct fast_batch *b = &p->fast.batches[i];
    uint64_t seq = b->next_seq;
    char reply[sizeof(b->reply)];
    batch_reply(b, seq, seq == 1 ? '0' : '1', reply);
    natsMsg *msg = NULL;
    natsStatus st = publisher_build_message(p, s, req, reply, &msg);
    if (st == NATS_OK)
        st = natsConnection_PublishMsg(p->conn, msg);
    if (st != NATS_OK) {
        /* Not sent: the sequence is not used, so the batch has no gap. */
        natsMsg_Destroy(msg);
        if (st == NATS_MAX_PAYLOAD) {
            *err = xasprintf("the message is larger than the server's max_payload");
            return -1;
        }
        return 1; /* the single path builds, sends or holds it */
    }
    b->next_seq++;
    s->msg = msg;
    s->batch = (uint32_t)i;
    s->batch_seq = seq;
    s->attempts = 1;
    METRIC_ADD(publishes, 1);
    publisher_move_slot(p, s, SLOT_BATCHED, 0);
    p->fast.last_publish_ms = loop_now_ms();
    return 0;
}

/* The same message with another reply subject. */
static natsStatus copy_message(natsMsg *old, const char *reply, natsMsg **msg)
{
    natsStatus st = natsMsg_Create(msg, natsMsg_GetSubject(old), reply, natsMsg_GetData(old),
                                   natsMsg_GetDataLength(old));
    const char **keys = NULL;
    int key_count = 0;
    if (st == NATS_OK && natsMsgHeader_Keys(old, &keys, &key_count) != NATS_OK)
        key_count = 0; /* no headers */
    for (int k = 0; st == NATS_OK && k < key_count; k++) {
        const char **values = NULL;
        int value_count = 0;
        st = natsMsgHeader_Values(old, keys[k], &values, &value_count);
        for (int v = 0; st == NATS_OK && v < value_count; v++)
            st = natsMsgHeader_Add(*msg, keys[k], values[v]);
        free((void *)values);
    }
    free((void *)keys);
    return st;
}

/* A batched message goes out again as a single publish, with the same Nats-Msg-Id: the
 * stream drops it if the batch did store it. publisher_tick (or a reconnect) sends it. */
static void fall_back(struct publisher *p, struct slot *s)
{
    char reply[160];
    publisher_single_reply(p, s, false, reply, sizeof(reply));
    natsMsg *msg = NULL;
    natsStatus st = copy_message(s->msg, reply, &msg);
    if (st == NATS_OK) {
        natsMsg_Destroy(s->msg);
        s->msg = msg;
    } else {
        natsMsg_Destroy(msg); /* kept as it was: its ack timeout comes round again */
        log_warn("cannot copy a batched message error=\"%s\"", natsStatus_GetText(st));
    }
    s->attempts = 0;
    METRIC_ADD(publish_resends, 1);
    publisher_move_slot(p, s, SLOT_RETRY, 0);
}

static void fall_back_batch(struct publisher *p, struct fast_batch *b)
{
    while (b->slots.head)
        fall_back(p, b->slots.head);
    release(p, b);
}

void publish_batch_fail_all(struct publisher *p, const char *why)
{
    if (p->fast.state == FAST_ASKED)
        p->fast.state = FAST_UNKNOWN; /* the answer may have been lost: ask again */
    for (int i = 0; i < FAST_BATCHES; i++) {
        struct fast_batch *b = &p->fast.batches[i];
        if (!b->number)
            continue;
        if (b->slots.count)
            log_info("%s: the unacknowledged messages of a batch are sent again one by one "
                     "batch=%" PRIu64 " messages=%zu",
                     why, b->number, b->slots.count);
        fall_back_batch(p, b);
    }
}

/* A batch went wrong: its messages go out singly, and after a few such batches in a row
 * (or an answer that says batches cannot work) no batch is started again. */
static void batch_failed(struct publisher *p, struct fast_batch *b, const char *why, bool stop)
{
    METRIC_ADD(publish_errors, 1);
    log_warn("a fast-ingest batch failed, its unacknowledged messages are sent again one by "
             "one stream=%s batch=%" PRIu64 " messages=%zu error=\"%s\"",
             p->fast.stream, b->number, b->slots.count, why);
    fall_back_batch(p, b);
    if (stop || ++p->fast.failures >= FAILURES_TO_STOP) {
        publish_batch_fail_all(p, "fast-ingest batches stopped");
        p->fast.state = FAST_OFF;
        log_warn("publishing with one ack per message from now on: fast-ingest batches do "
                 "not work here stream=%s",
                 p->fast.stream);
    }
}

static void complete(struct publisher *p, struct slot *s, uint64_t sequence)
{
    struct publish_ack ack = {.sequence = sequence};
    snprintf(ack.stream, sizeof(ack.stream), "%s", p->fast.stream);
    METRIC_ADD(publishes_batched, 1);
    publisher_acked(p, s, &ack);
}

/* The batch's messages up to seq are stored. */
static void flow_ack(struct publisher *p, struct fast_batch *b, uint64_t seq)
{
    b->progress_ms = loop_now_ms();
    p->fast.failures = 0;
    while (b->slots.head && b->slots.head->batch_seq <= seq)
        complete(p, b->slots.head, 0);
}

/* The batch is over on the server, which stored its messages up to count. */
static void final_ack(struct publisher *p, struct fast_batch *b, uint64_t count,
                      uint64_t stream_seq)
{
    while (b->slots.head && b->slots.head->batch_seq <= count) {
        struct slot *s = b->slots.head;
        bool last = !s->next || s->next->batch_seq > count;
        complete(p, s, last ? stream_seq : 0); /* the stream's sequence after the batch */
    }
    if (b->slots.count) {
        log_info("a fast-ingest batch ended early, the rest of its messages are sent one by one "
                 "stream=%s batch=%" PRIu64 " stored=%" PRIu64 " messages=%zu",
                 p->fast.stream, b->number, count, b->slots.count);
        fall_back_batch(p, b);
        return;
    }
    p->fast.failures = 0;
    log_debug("fast-ingest batch stored stream=%s batch=%" PRIu64 " messages=%" PRIu64,
              p->fast.stream, b->number, count);
    release(p, b);
}

static void end_open_batch(struct publisher *p)
{
    struct fast_batch *b = &p->fast.batches[p->fast.open];
    p->fast.open = -1;
    b->progress_ms = loop_now_ms();
    if (b->next_seq == 1) {
        release(p, b); /* nothing was sent in it */
        return;
    }
    char reply[sizeof(b->reply)];
    batch_reply(b, b->next_seq, '3', reply);
    natsStatus st = natsConnection_PublishRequest(p->conn, b->subject, reply, NULL, 0);
    if (st != NATS_OK) /* the ack timeout sends its messages again */
        log_debug("cannot end a batch batch=%" PRIu64 " error=\"%s\"", b->number,
                  natsStatus_GetText(st));
}

/* Only a tail shorter than the flow waits for the batch's end to be acknowledged: a
 * longer one (the window is full, the stream is the bottleneck) gets a flow ack anyway,
 * and the batch goes on. */
void publish_batch_idle(struct publisher *p)
{
    if (p->fast.open < 0 || !p->conn || loop_now_ms() - p->fast.last_publish_ms < IDLE_MS)
        return;
    if (p->fast.batches[p->fast.open].slots.count < p->fast.flow)
        end_open_batch(p);
}

void publish_batch_tick(struct publisher *p)
{
    uint64_t now = loop_now_ms();
    for (int i = 0; i < FAST_BATCHES; i++) {
        struct fast_batch *b = &p->fast.batches[i];
        if (!b->number || now - b->progress_ms < (uint64_t)p->options.ack_timeout_ms)
            continue;
        if (b->slots.count)
            batch_failed(p, b, "no ack within ack_timeout", false);
        else
            release(p, b); /* all stored; its final ack did not come */
    }
}

void publish_batch_learn(struct publisher *p, const char *stream)
{
    if (!stream[0] || !p->conn)
        return;
    snprintf(p->fast.stream, sizeof(p->fast.stream), "%s", stream);
    char subject[192], reply[256];
    stream_info_subject(subject, sizeof(subject), stream);
    snprintf(reply, sizeof(reply), "%s" INFO_REPLY, p->inbox);
    if (natsConnection_PublishRequestString(p->conn, subject, reply, "") == NATS_OK)
        p->fast.state = FAST_ASKED;
}

static void info_reply(struct publisher *p, json_t *info)
{
    json_t *error = json_object_get(info, "error");
    bool allowed = json_is_true(json_object_get(json_object_get(info, "config"), "allow_batched"));
    p->fast.state = allowed ? FAST_ON : FAST_OFF;
    if (allowed)
        log_info("publishing in fast-ingest batches stream=%s flow=%u", p->fast.stream,
                 p->fast.flow);
    else if (error)
        log_info("one ack per message: cannot read the stream's configuration stream=%s "
                 "error=\"%s\"",
                 p->fast.stream, json_string_value(json_object_get(error, "description")));
    else
        log_info("one ack per message: the stream does not take fast-ingest batches "
                 "(allow_batched, nats-server 2.14 or later) stream=%s",
                 p->fast.stream);
}

/* Batch ids the server says can never work: batches are off, or ours are malformed. */
static bool error_stops_batches(int64_t code)
{
    return code == 10205 || code == 10206 || code == 10207;
}

static void batch_answer(struct publisher *p, struct fast_batch *b, const struct publish_reply *r)
{
    if (strcmp(r->type, "ack") == 0) {
        flow_ack(p, b, r->seq);
    } else if (strcmp(r->type, "gap") == 0 || strcmp(r->type, "err") == 0) {
        /* With "fail" the server ends the batch; its final ack says what it stored. */
        log_warn("jetstream ended a fast-ingest batch stream=%s batch=%" PRIu64 " seq=%" PRIu64
                 " error=\"%s\"",
                 p->fast.stream, b->number, r->seq, r->description[0] ? r->description : r->type);
        if (p->fast.open >= 0 && &p->fast.batches[p->fast.open] == b)
            p->fast.open = -1;
    } else if (r->error) {
        batch_failed(p, b, r->description[0] ? r->description : "error",
                     error_stops_batches(r->err_code));
    } else if (r->batch) {
        final_ack(p, b, r->count, r->seq);
    }
}

/* The batch a reply subject <inbox>.<inbox token>F<number>.<flow>... names, or NULL (a
 * batch given up already: its messages went out singly). */
static struct fast_batch *batch_named(struct publisher *p, const char *subject, size_t len)
{
    const char *token = inbox_token(p);
    size_t token_len = strlen(token);
    const char *at = subject + p->inbox_len + 1;
    uint64_t number = 0;
    if (len <= p->inbox_len + 1 + token_len + 1 || strncmp(at, token, token_len) != 0 ||
        at[token_len] != 'F' || !decimal_get(at + token_len + 1, &number))
        return NULL;
    for (int i = 0; number && i < FAST_BATCHES; i++)
        if (p->fast.batches[i].number == number)
            return &p->fast.batches[i];
    return NULL;
}

bool publish_batch_reply(struct publisher *p, natsMsg *msg)
{
    const char *subject = natsMsg_GetSubject(msg);
    size_t len = strlen(subject);
    const char *data = natsMsg_GetData(msg);
    size_t data_len = data ? (size_t)natsMsg_GetDataLength(msg) : 0;
    if (len == p->inbox_len + strlen(INFO_REPLY) &&
        strcmp(subject + p->inbox_len, INFO_REPLY) == 0) {
        json_t *doc = json_loadb(data, data_len, 0, NULL);
        if (doc)
            info_reply(p, doc);
        json_decref(doc);
        return true;
    }
    if (len <= strlen(SUFFIX) || strcmp(subject + len - strlen(SUFFIX), SUFFIX) != 0)
        return false;
    struct publish_reply r;
    struct fast_batch *b = batch_named(p, subject, len);
    if (b && publish_reply_parse(data, data_len, &r))
        batch_answer(p, b, &r);
    return true;
}
