#include "publish_internal.h"

#include "decimal.h"
#include "log.h"
#include "loop.h"
#include "rng.h"
#include "stream.h"
#include "url.h"
#include "metrics.h"
#include "nats_options.h"
#include "nats_probe.h"
#include "xalloc.h"

#include <errno.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

/* The owner's set of publishers (publish.h). Loop thread only. */
static void set_add(struct publisher_set *set, struct publisher *p)
{
    if (!set)
        return;
    set->items = xrealloc(set->items, (set->count + 1) * sizeof(*set->items));
    set->items[set->count++] = p;
}

static void set_remove(struct publisher_set *set, struct publisher *p)
{
    if (!set)
        return;
    for (size_t i = 0; i < set->count; i++) {
        if (set->items[i] == p) {
            set->items[i] = set->items[--set->count];
            break;
        }
    }
    if (set->count == 0) {
        free(set->items);
        set->items = NULL;
    }
}

static void list_push(struct slot_list *l, struct slot *s)
{
    s->next = NULL;
    s->prev = l->tail;
    if (l->tail)
        l->tail->next = s;
    else
        l->head = s;
    l->tail = s;
    l->count++;
}

static void list_remove(struct slot_list *l, struct slot *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        l->head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    else
        l->tail = s->prev;
    s->prev = s->next = NULL;
    l->count--;
}

static struct slot_list *list_of(struct publisher *p, struct slot *s)
{
    switch (s->state) {
    case SLOT_FREE:
        return &p->free_list;
    case SLOT_SENT:
        return &p->sent;
    case SLOT_BATCHED:
        return &p->fast.batches[s->batch].slots;
    default:
        return &p->retry;
    }
}

void publisher_move_slot(struct publisher *p, struct slot *s, enum slot_state state, uint64_t due)
{
    list_remove(list_of(p, s), s);
    s->state = state;
    s->due_ms = due;
    list_push(list_of(p, s), s);
}

static struct slot *slot_at(struct publisher *p, uint32_t index)
{
    size_t chunk = index / SLOTS_PER_CHUNK;
    return chunk < p->chunk_count ? &p->chunks[chunk][index % SLOTS_PER_CHUNK] : NULL;
}

/* The caller bounds the window; slots grow in chunks to whatever it allows. */
static struct slot *take_slot(struct publisher *p)
{
    if (!p->free_list.head) {
        p->chunks = xrealloc(p->chunks, (p->chunk_count + 1) * sizeof(*p->chunks));
        struct slot *chunk = xcalloc(SLOTS_PER_CHUNK, sizeof(*chunk));
        for (uint32_t i = 0; i < SLOTS_PER_CHUNK; i++) {
            chunk[i].index = (uint32_t)(p->chunk_count * SLOTS_PER_CHUNK + i);
            list_push(&p->free_list, &chunk[i]);
        }
        p->chunks[p->chunk_count++] = chunk;
    }
    return p->free_list.head;
}

/* ---- nats.c threads: only enqueue and wake the loop ---- */

void publisher_enqueue(struct publisher *p, const struct event *ev)
{
    struct event_queue *q = &p->queue;
    pthread_mutex_lock(&q->lock);
    if (q->shutting_down) {
        pthread_mutex_unlock(&q->lock);
        return;
    }
    if (q->count == q->cap) {
        q->cap = q->cap ? q->cap * 2 : 256;
        q->items = xrealloc(q->items, q->cap * sizeof(*q->items));
    }
    q->items[q->count++] = *ev;
    bool wake = q->count == 1; /* the loop drains everything once woken */
    pthread_mutex_unlock(&q->lock);
    if (wake) {
        uint64_t one = 1;
        ssize_t n = write(q->eventfd, &one, sizeof(one));
        (void)n;
    }
}

/* Reply subjects are <inbox>.<slot>.<generation>: read by hand, as they were written
 * (publisher_single_reply), since this runs for every ack. */
static bool parse_reply(const char *subject, size_t inbox_len, uint32_t *slot, uint32_t *gen)
{
    if (strnlen(subject, inbox_len + 2) <= inbox_len + 1)
        return false;
    uint64_t s, g;
    const char *end = decimal_get(subject + inbox_len + 1, &s);
    if (!end || *end != '.' || s > UINT32_MAX)
        return false;
    end = decimal_get(end + 1, &g);
    if (!end || *end != '\0' || g > UINT32_MAX)
        return false;
    *slot = (uint32_t)s;
    *gen = (uint32_t)g;
    return true;
}

/* Classifies a JetStream reply (publish_reply.c); errors keep their description for the
 * log. */
static void classify_reply(natsMsg *msg, struct reply *ev)
{
    if (natsMsg_IsNoResponders(msg)) {
        ev->kind = REPLY_NO_RESPONDERS;
        snprintf(ev->detail, sizeof(ev->detail), "no stream listens on the subject");
        return;
    }
    const char *data = natsMsg_GetData(msg);
    publish_reply_classify(data, data ? (size_t)natsMsg_GetDataLength(msg) : 0, ev);
}

/* ---- the loop side ---- */

uint64_t publisher_backoff_ms(uint32_t attempts)
{
    /* 1 s doubling to 1 min, with up to 20 % jitter so a fleet does not retry in step. */
    uint64_t ms = 1000;
    for (uint32_t i = 1; i < attempts && ms < 60000; i++)
        ms *= 2;
    if (ms > 60000)
        ms = 60000;
    return ms - rng_below(ms / 5 + 1);
}

/* Sends (or re-sends) a slot's message. Returns the nats status. */
natsStatus publisher_send_slot(struct publisher *p, struct slot *s)
{
    s->attempts++;
    natsStatus st = natsConnection_PublishMsg(p->conn, s->msg);
    uint64_t now = loop_now_ms();
    if (st == NATS_OK) {
        publisher_move_slot(p, s, SLOT_SENT, now + (uint64_t)p->options.ack_timeout_ms);
    } else if (st != NATS_MAX_PAYLOAD) {
        log_warn("publish failed, will retry subject=%s error=\"%s\"", natsMsg_GetSubject(s->msg),
                 natsStatus_GetText(st));
        publisher_move_slot(p, s, SLOT_RETRY, now + publisher_backoff_ms(s->attempts));
    }
    return st;
}

void publisher_free_slot(struct publisher *p, struct slot *s)
{
    natsMsg_Destroy(s->msg);
    s->msg = NULL;
    s->cookie = NULL;
    s->attempts = 0;
    s->probed = 0;
    s->await_id = 0;
    s->generation++;
    publisher_move_slot(p, s, SLOT_FREE, 0);
}

/* The first ack from a stream: ask for its configuration (stream.h). The answer comes
 * on <inbox>.w.0, which the ack subscription (<inbox>.>) receives; no slot has that
 * name, so it cannot be taken for an ack. */
#define STREAM_INFO_REPLY ".w.0"

static void request_stream_info(struct publisher *p, const char *stream)
{
    char subject[192], reply[256];
    stream_info_subject(subject, sizeof(subject), stream);
    snprintf(reply, sizeof(reply), "%s" STREAM_INFO_REPLY, p->inbox);
    if (p->conn && natsConnection_PublishRequestString(p->conn, subject, reply, "") == NATS_OK)
        stream_check_asked(p->options.streams, loop_now_ms());
}

static bool is_stream_info_reply(const struct publisher *p, const char *subject)
{
    return p->options.streams && strlen(subject) == p->inbox_len + strlen(STREAM_INFO_REPLY) &&
           strcmp(subject + p->inbox_len, STREAM_INFO_REPLY) == 0;
}

void publisher_acked(struct publisher *p, struct slot *s, const struct publish_ack *ack)
{
    void *cookie = s->cookie;
    METRIC_ADD(publish_duplicates, ack->duplicate);
    METRIC_ADD(publishes_acked, 1);
    publisher_free_slot(p, s);
    if (p->options.streams && stream_check_first_ack(p->options.streams, ack->stream))
        request_stream_info(p, ack->stream);
    if (p->fast.state == FAST_UNKNOWN)
        publish_batch_learn(p, ack->stream);
    p->done(p->ctx, cookie, ack);
}

static void refused(struct publisher *p, struct slot *s, const struct reply *ev);

static void handle_reply(struct publisher *p, const struct reply *ev)
{
    struct slot *s = slot_at(p, ev->slot);
    if (!s || s->state == SLOT_FREE || s->generation != ev->generation)
        return; /* a second ack for a publish we already resent and completed */
    if (ev->kind == REPLY_ACK || ev->kind == REPLY_DUPLICATE) {
        struct publish_ack ack = {.duplicate = ev->kind == REPLY_DUPLICATE,
                                  .sequence = ev->sequence,
                                  .await_id = s->await_id};
        memcpy(ack.stream, ev->detail, sizeof(ack.stream) - 1);
        memcpy(ack.domain, ev->domain, sizeof(ack.domain));
        publisher_acked(p, s, &ack);
        return;
    }
    if (ev->kind == REPLY_NO_RESPONDERS) {
        METRIC_ADD(publish_no_responders, 1);
    } else {
        METRIC_ADD(publish_errors, 1);
    }
    refused(p, s, ev);
}

/* A probe's reply (probe_awaited): only its "no responders" says something about the
 * original, which got the same and lost it in NextMsg (counted there). Any other answer
 * is to a copy; the original's own comes on the polled inbox, or its ack timeout. */
static void handle_probe_reply(struct publisher *p, const struct reply *ev)
{
    struct slot *s = slot_at(p, ev->slot);
    if (!s || s->state != SLOT_SENT || s->generation != ev->generation || !s->await_id ||
        ev->kind != REPLY_NO_RESPONDERS)
        return;
    refused(p, s, ev);
}

/* JetStream refused the slot's publish (ev): the waiting policy hears of it, others are
 * sent again after a backoff. */
static void refused(struct publisher *p, struct slot *s, const struct reply *ev)
{
    if (s->await_id) {
        /* A Lua policy waits for this one: kumod raises the error in publish, so the
         * policy decides (pcall, reject, or a retry of the record). */
        struct publish_ack ack = {.await_id = s->await_id};
        if (ev->kind == REPLY_NO_RESPONDERS)
            snprintf(ack.error, sizeof(ack.error), "no responders (%s)", ev->detail);
        else
            snprintf(ack.error, sizeof(ack.error), "%s", ev->detail);
        void *cookie = s->cookie;
        publisher_free_slot(p, s);
        p->done(p->ctx, cookie, &ack);
        return;
    }
    if (s->state == SLOT_SENT) {
        uint64_t wait = publisher_backoff_ms(s->attempts);
        log_warn("jetstream refused a publish, retrying in %" PRIu64 "ms subject=%s attempts=%u "
                 "error=\"%s\"",
                 wait, natsMsg_GetSubject(s->msg), s->attempts, ev->detail);
        publisher_move_slot(p, s, SLOT_RETRY, loop_now_ms() + wait);
    }
}

/* After a (re)connect every unacknowledged publish is sent again: acks lost with the old
 * connection are never reported, and the copies that did land come back as duplicates.
 * Publishes held back while disconnected go out too. */
void publisher_resend_all(struct publisher *p)
{
    publish_batch_fail_all(p, "reconnected");
    for (size_t n = p->sent.count; n > 0 && p->sent.head; n--) {
        METRIC_ADD(publish_resends, 1);
        publisher_send_slot(p, p->sent.head);
    }
    struct slot *next;
    for (struct slot *s = p->retry.head; s; s = next) {
        next = s->next;
        if (s->attempts == 0)
            publisher_send_slot(p, s);
    }
}

static size_t in_flight(const struct publisher *p)
{
    return p->sent.count + p->retry.count + publish_batch_in_flight(p);
}

static void process_events(struct publisher *p)
{
    pthread_mutex_lock(&p->queue.lock);
    size_t count = p->queue.count;
    if (count > p->batch_cap) {
        p->batch_cap = p->queue.cap;
        p->batch = xrealloc(p->batch, p->batch_cap * sizeof(*p->batch));
    }
    memcpy(p->batch, p->queue.items, count * sizeof(*p->batch));
    p->queue.count = 0;
    pthread_mutex_unlock(&p->queue.lock);
    for (size_t i = 0; i < count; i++) {
        if (p->batch[i].kind == EVENT_AWAITED_REPLY)
            handle_probe_reply(p, &p->batch[i].reply);
        else
            publish_connection_event(p, p->batch[i].kind);
    }
}

static void on_eventfd(struct loop *loop, int fd, uint32_t events, void *arg)
{
    uint64_t counter;
    ssize_t n = read(fd, &counter, sizeof(counter));
    (void)n;
    process_events(arg);
}

/* One reply taken from the ack subscription, on the loop. */
static void take_reply(struct publisher *p, natsMsg *msg)
{
    struct reply ev = {0};
    const char *subject = natsMsg_GetSubject(msg);
    if (parse_reply(subject, p->inbox_len, &ev.slot, &ev.generation)) {
        classify_reply(msg, &ev);
        handle_reply(p, &ev);
    } else if (publish_batch_reply(p, msg)) {
    } else if (is_stream_info_reply(p, subject)) {
        stream_check_reply(p->options.streams, natsMsg_GetData(msg),
                           (size_t)natsMsg_GetDataLength(msg));
    }
    natsMsg_Destroy(msg);
}

/* A copy of the slot's message (same subject, headers, Nats-Msg-Id, data) with its reply
 * on the probes' subscription, <inbox>A.<slot>.<generation>. */
static natsStatus send_probe(struct publisher *p, struct slot *s)
{
    char reply[160];
    publisher_single_reply(p, s, true, reply, sizeof(reply));
    natsMsg *probe = NULL;
    const char **keys = NULL;
    int count = 0;
    natsStatus st = natsMsg_Create(&probe, natsMsg_GetSubject(s->msg), reply,
                                   natsMsg_GetData(s->msg), natsMsg_GetDataLength(s->msg));
    if (st == NATS_OK)
        st = natsMsgHeader_Keys(s->msg, &keys, &count);
    if (st == NATS_NOT_FOUND)
        st = NATS_OK;
    for (int i = 0; st == NATS_OK && i < count; i++) {
        const char **values = NULL;
        int n = 0;
        st = natsMsgHeader_Values(s->msg, keys[i], &values, &n);
        for (int j = 0; st == NATS_OK && j < n; j++)
            st = natsMsgHeader_Add(probe, keys[i], values[j]);
        free((void *)values);
    }
    free((void *)keys);
    if (st == NATS_OK)
        st = natsConnection_PublishMsg(p->conn, probe);
    natsMsg_Destroy(probe);
    return st;
}

/* nats.c's NextMsg destroys a "no responders" reply, subject and all, so which publish it
 * answered is unknown. A Lua policy waiting for one must see that error as kumod raises
 * it, so every awaited publish in flight is sent again once per attempt, its reply on an
 * asynchronous subscription where a "no responders" keeps its subject (on_await_reply).
 * A copy that reaches a stream is a duplicate of its original (the same Nats-Msg-Id), and
 * only a probe's "no responders" is acted on. The sent list is in send order, so the slots
 * not yet probed are those after the last one that was. Returns how many were probed. */
static size_t probe_awaited(struct publisher *p)
{
    struct slot *first = NULL; /* probed in send order, as their originals went */
    for (struct slot *s = p->sent.tail; s; s = s->prev) {
        if (s->await_id && s->probed == s->attempts)
            break;
        first = s;
    }
    size_t n = 0;
    for (struct slot *s = first; s; s = s->next) {
        if (!s->await_id)
            continue;
        s->probed = s->attempts;
        if (p->conn && send_probe(p, s) == NATS_OK)
            n++;
    }
    if (n > 0)
        log_debug("no responders for a publish: probing %zu awaited publishes", n);
    return n;
}

/* The ack subscription is synchronous and drained here, from the loop, without waiting:
 * an asynchronous one wakes a nats.c delivery thread for every ack, and those wake-ups
 * cost more than the publishes themselves. The loop calls this whenever it runs and
 * comes back within a millisecond while publishes are in flight. */
static void take_acks(struct publisher *p, int64_t wait_ms)
{
    size_t no_responders = 0;
    for (;;) {
        natsMsg *msg = NULL;
        natsStatus st = natsSubscription_NextMsg(&msg, p->sub, wait_ms);
        wait_ms = 0;
        if (st == NATS_NO_RESPONDERS) {
            METRIC_ADD(publish_no_responders, 1);
            no_responders++;
            continue;
        }
        if (st != NATS_OK)
            break;
        take_reply(p, msg);
    }
    /* nats.c dropped the reply subject of these: an awaited publish learns of it from its
     * probe; any other times out and is sent again. */
    if (no_responders > 0 && probe_awaited(p) == 0)
        log_warn("jetstream refused a publish: no stream listens on its subject; it is "
                 "sent again after ack_timeout");
}

void publisher_set_take_acks(struct publisher_set *set)
{
    for (size_t i = 0; i < set->count; i++) {
        if (set->items[i]->sub) {
            take_acks(set->items[i], 0);
            publish_batch_idle(set->items[i]);
        }
    }
}

size_t publisher_set_in_flight(const struct publisher_set *set)
{
    size_t n = 0;
    for (size_t i = 0; i < set->count; i++)
        n += in_flight(set->items[i]);
    return n;
}

void publisher_poll(struct publisher *p, int timeout_ms)
{
    process_events(p);
    if (p->sub)
        take_acks(p, timeout_ms);
    publish_batch_idle(p);
}

void publisher_tick(struct publisher *p)
{
    uint64_t now = loop_now_ms();
    publish_connection_tick(p);
    if (!p->connected)
        return; /* nothing can be sent; the reconnect resends everything */
    publish_batch_tick(p);
    /* The sent list is in send order and the timeout is fixed, so it is in due order. */
    while (p->sent.head && p->sent.head->due_ms <= now) {
        struct slot *s = p->sent.head;
        METRIC_ADD(publish_timeouts, 1);
        METRIC_ADD(publish_resends, 1);
        log_debug("ack timeout, resending subject=%s attempts=%u", natsMsg_GetSubject(s->msg),
                  s->attempts);
        publisher_send_slot(p, s);
    }
    struct slot *next;
    for (struct slot *s = p->retry.head; s; s = next) {
        next = s->next;
        if (s->due_ms <= now) {
            METRIC_ADD(publish_resends, s->attempts > 0);
            publisher_send_slot(p, s);
        }
    }
}

/* Replies to the probes of awaited publishes (probe_awaited) come on
 * <inbox>A.<slot>.<generation> to an asynchronous subscription: there, unlike in
 * NextMsg, a "no responders" reply keeps the subject that names its slot. Only the
 * probes come here, so its thread's wake-ups are few. */
static void on_await_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    struct publisher *p = closure;
    struct event ev = {.kind = EVENT_AWAITED_REPLY};
    if (parse_reply(natsMsg_GetSubject(msg), p->inbox_len + 1, &ev.reply.slot,
                    &ev.reply.generation)) {
        classify_reply(msg, &ev.reply);
        publisher_enqueue(p, &ev);
    }
    natsMsg_Destroy(msg);
}

/* At shutdown these two are the last callbacks nats.c makes with our closure; the
 * publisher is freed only after both ran. */
void publisher_final_callback(struct publisher *p, bool *flag)
{
    pthread_mutex_lock(&p->queue.lock);
    *flag = true;
    pthread_cond_signal(&p->queue.done);
    pthread_mutex_unlock(&p->queue.lock);
}

/* nats.c's last call of on_await_reply has returned. */
static void on_await_sub_complete(void *closure)
{
    struct publisher *p = closure;
    pthread_mutex_lock(&p->queue.lock);
    bool shutting_down = p->queue.shutting_down;
    pthread_mutex_unlock(&p->queue.lock);
    if (shutting_down)
        publisher_final_callback(p, &p->queue.subscription_closed);
}

/* The ack inboxes of a new connection: <inbox>.>, drained by the loop, and
 * <inbox>A.<slot>.<generation> for the probes of awaited publishes (on_await_reply). */
natsStatus publisher_subscribe(struct publisher *p)
{
    /* <inbox>.<slot>.<generation>, <inbox>.w.0 and the batches' <inbox>.<id>...$FI. */
    char *wildcard = xasprintf("%s.>", p->inbox);
    natsStatus st = natsConnection_SubscribeSync(&p->sub, p->conn, wildcard);
    /* Acks are bounded by the window; never let nats.c drop one as a slow consumer. */
    if (st == NATS_OK)
        st = natsSubscription_SetPendingLimits(p->sub, -1, -1);
    free(wildcard);
    wildcard = xasprintf("%sA.*.*", p->inbox);
    if (st == NATS_OK)
        st = natsConnection_Subscribe(&p->await_sub, p->conn, wildcard, on_await_reply, p);
    if (st == NATS_OK)
        st = natsSubscription_SetPendingLimits(p->await_sub, -1, -1);
    if (st == NATS_OK)
        st = natsSubscription_SetOnCompleteCB(p->await_sub, on_await_sub_complete, p);
    free(wildcard);
    return st;
}

static void copy_options(struct publisher *p, const struct publisher_options *o)
{
    p->options = *o;
    p->options.auth = (struct nats_auth){0}; /* the caller's strings: used at create only */
    p->servers = xcalloc(o->server_count, sizeof(*p->servers));
    for (size_t i = 0; i < o->server_count; i++)
        p->servers[i] = xstrdup(o->servers[i]);
    p->name = xstrdup(o->name ? o->name : "kumo-nats-relay");
}

struct publisher *publisher_create(const struct publisher_options *options, struct loop *loop,
                                   publish_done_fn done, void *ctx, char **err)
{
    if ((*err = publish_connection_check_servers(options)))
        return NULL;
    struct publisher *p = xcalloc(1, sizeof(*p));
    copy_options(p, options);
    p->set = options->set;
    publish_batch_init(p);
    set_add(p->set, p);
    p->loop = loop;
    p->done = done;
    p->ctx = ctx;
    pthread_mutex_init(&p->queue.lock, NULL);
    pthread_cond_init(&p->queue.done, NULL);
    p->queue.eventfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->queue.eventfd < 0 || loop_add_fd(loop, p->queue.eventfd, EPOLLIN, on_eventfd, p) != 0) {
        *err = xasprintf("cannot set up the ack queue: %s", strerror(errno));
        publisher_destroy(p);
        return NULL;
    }
    char *why = NULL;
    natsStatus st = natsInbox_Create(&p->inbox);
    if (st == NATS_OK) {
        p->inbox_len = strlen(p->inbox);
        st = publish_connection_options(p, &options->auth, &why);
    }
    nats_auth_describe_servers(&options->auth, options->servers, options->server_count, p->auth,
                               sizeof(p->auth));
    /* Refused credentials or certificates are the server's answer, not a setup error:
     * say so and keep trying, as for a server that is down. */
    if (st == NATS_OK && publish_connection_open(p) != NATS_OK)
        publish_connection_failed(p);
    if (st == NATS_OK)
        publish_connection_warn_if_down(
            p); /* at once: whoever starts the relay should see why it waits */
    if (st != NATS_OK) {
        *err =
            xasprintf("cannot set up the nats connection: %s", why ? why : natsStatus_GetText(st));
        free(why);
        publisher_destroy(p);
        return NULL;
    }
    return p;
}

void publisher_destroy(struct publisher *p)
{
    if (!p)
        return;
    set_remove(p->set, p);
    if (!publish_connection_close(p)) {
        /* Freeing now could crash a nats.c thread still holding p; exiting is near. */
        log_warn("nats connection did not close in time, leaving it to the exit");
        return;
    }
    natsSubscription_Destroy(p->sub);
    natsSubscription_Destroy(p->await_sub);
    natsConnection_Destroy(p->conn);
    natsOptions_Destroy(p->opts);
    natsOptions_Destroy(p->probe_opts);
    natsInbox_Destroy(p->inbox);
    for (size_t c = 0; c < p->chunk_count; c++) {
        for (size_t i = 0; i < SLOTS_PER_CHUNK; i++)
            natsMsg_Destroy(p->chunks[c][i].msg);
        free(p->chunks[c]);
    }
    free(p->chunks);
    publish_batch_free(p);
    if (p->queue.eventfd >= 0) {
        loop_del_fd(p->loop, p->queue.eventfd);
        close(p->queue.eventfd);
    }
    pthread_mutex_destroy(&p->queue.lock);
    pthread_cond_destroy(&p->queue.done);
    free(p->queue.items);
    free(p->batch);
    for (size_t i = 0; i < p->options.server_count; i++)
        free(p->servers[i]);
    free(p->servers);
    free(p->name);
    free(p);
}

bool publisher_connected(const struct publisher *p)
{
    return p->connected;
}

size_t publisher_in_flight(const struct publisher *p)
{
    return in_flight(p);
}

void publisher_single_reply(const struct publisher *p, const struct slot *s, bool awaited,
                            char *buf, size_t size)
{
    /* <inbox>.<slot>.<generation>, by hand: this runs for every record. */
    if (p->inbox_len + 3 + 2 * DECIMAL_MAX < size) {
        char *at = buf;
        memcpy(at, p->inbox, p->inbox_len);
        at += p->inbox_len;
        if (awaited)
            *at++ = 'A'; /* the awaited publishes' own subscription */
        *at++ = '.';
        at += decimal_put(at, s->index);
        *at++ = '.';
        at += decimal_put(at, s->generation);
        *at = '\0';
    } else {
        snprintf(buf, size, "%s%s.%u.%u", p->inbox, awaited ? "A" : "", s->index, s->generation);
    }
}

natsStatus publisher_build_message(struct publisher *p, struct slot *s,
                                   const struct publish_request *req, const char *reply,
                                   natsMsg **msg)
{
    natsStatus st = natsMsg_Create(msg, req->subject, reply, req->data, (int)req->len);
    for (size_t i = 0; st == NATS_OK && i < req->header_count; i++)
        st = natsMsgHeader_Add(*msg, req->headers[2 * i], req->headers[2 * i + 1]);
    if (st == NATS_OK && req->msg_id)
        st = natsMsgHeader_Set(*msg, "Nats-Msg-Id", req->msg_id);
    return st;
}

int publisher_publish(struct publisher *p, void *cookie, const struct publish_request *req,
                      char **err)
{
    struct slot *s = take_slot(p);
    s->cookie = cookie;
    s->await_id = req->await_id;
    s->attempts = 0;
    if (!req->await_id && publish_batch_on(p)) {
        int taken = publish_batch_send(p, s, req, err);
        if (taken <= 0) {
            if (taken < 0)
                s->cookie = NULL;
            return taken;
        }
    }
    char reply[160];
    publisher_single_reply(p, s, false, reply, sizeof(reply));
    natsMsg *msg = NULL;
    natsStatus st = publisher_build_message(p, s, req, reply, &msg);
    if (st != NATS_OK) {
        natsMsg_Destroy(msg);
        s->cookie = NULL;
        s->await_id = 0;
        *err = xasprintf("cannot build the message: %s", natsStatus_GetText(st));
        return -1;
    }
    s->msg = msg;
    METRIC_ADD(publishes, 1);
    /* Held back while disconnected (attempts 0 in RETRY): the connect sends it. */
    publisher_move_slot(p, s, SLOT_RETRY, 0);
    if (!p->connected)
        return 0;
    if (publisher_send_slot(p, s) == NATS_MAX_PAYLOAD) {
        publisher_free_slot(p, s);
        *err = xasprintf("the message is larger than the server's max_payload");
        return -1;
    }
    return 0;
}
