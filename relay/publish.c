#include "publish.h"

#include "config.h"
#include "log.h"
#include "loop.h"
#include "xalloc.h"

#include <errno.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

enum slot_state { SLOT_FREE, SLOT_SENT, SLOT_RETRY };

/* One in-flight publish. The natsMsg holds subject, reply, headers and payload, and is
 * sent again as is on a retry, so the Nats-Msg-Id cannot change between attempts. */
struct slot {
    enum slot_state state;
    uint32_t generation; /* bumped when freed: a late ack for an old use is ignored */
    uint32_t attempts;
    uint64_t due_ms; /* SENT: ack deadline; RETRY: when to send again */
    natsMsg *msg;
    void *cookie;
    struct slot *prev, *next; /* in the free, sent or retry list */
};

struct slot_list {
    struct slot *head, *tail;
    size_t count;
};

/* What the nats.c threads hand to the loop. */
enum event_kind {
    EVENT_ACK,
    EVENT_DUPLICATE,
    EVENT_ERROR,
    EVENT_NO_RESPONDERS,
    EVENT_DISCONNECTED,
    EVENT_RECONNECTED,
    EVENT_CLOSED,
    EVENT_CONNECTED
};

struct event {
    enum event_kind kind;
    uint32_t slot, generation;
    char detail[120];
};

struct event_queue {
    pthread_mutex_t lock;
    struct event *items;
    size_t count, cap;
    int eventfd;
};

struct publisher {
    const struct config *cfg;
    struct loop *loop;
    publish_done_fn done;
    void *ctx;
    natsOptions *opts;
    natsConnection *conn;
    natsSubscription *sub;
    natsInbox *inbox;
    size_t inbox_len;
    struct slot *slots;
    size_t slot_count;
    struct slot_list free_list, sent, retry;
    struct event_queue queue;
    struct event *batch; /* events taken from the queue, processed without the lock */
    size_t batch_cap;
    bool connected;
    bool ever_connected;
    struct publisher_stats stats;
};

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
    return s->state == SLOT_FREE ? &p->free_list : s->state == SLOT_SENT ? &p->sent : &p->retry;
}

static void move_slot(struct publisher *p, struct slot *s, enum slot_state state, uint64_t due)
{
    list_remove(list_of(p, s), s);
    s->state = state;
    s->due_ms = due;
    list_push(list_of(p, s), s);
}

/* ---- nats.c threads: only enqueue and wake the loop ---- */

static void enqueue(struct publisher *p, const struct event *ev)
{
    struct event_queue *q = &p->queue;
    pthread_mutex_lock(&q->lock);
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

/* Reply subjects are <inbox>.<slot>.<generation>. */
static bool parse_reply(const char *subject, size_t inbox_len, uint32_t *slot, uint32_t *gen)
{
    if (strlen(subject) <= inbox_len + 1)
        return false;
    char *end;
    unsigned long s = strtoul(subject + inbox_len + 1, &end, 10);
    if (*end != '.')
        return false;
    unsigned long g = strtoul(end + 1, &end, 10);
    if (*end != '\0')
        return false;
    *slot = (uint32_t)s;
    *gen = (uint32_t)g;
    return true;
}

/* Classifies a JetStream reply. A success is small and fixed in shape, so a substring test
 * is enough; errors keep their description for the log. */
static void classify_reply(natsMsg *msg, struct event *ev)
{
    const char *data = natsMsg_GetData(msg);
    int len = natsMsg_GetDataLength(msg);
    if (natsMsg_IsNoResponders(msg)) {
        ev->kind = EVENT_NO_RESPONDERS;
        snprintf(ev->detail, sizeof(ev->detail), "no stream listens on the subject");
        return;
    }
    if (len > 0 && data && memmem(data, (size_t)len, "\"error\"", 7)) {
        ev->kind = EVENT_ERROR;
        const char *desc = memmem(data, (size_t)len, "\"description\":\"", 15);
        if (desc) {
            desc += 15;
            const char *q = memchr(desc, '"', (size_t)(data + len - desc));
            int n = q ? (int)(q - desc) : 0;
            snprintf(ev->detail, sizeof(ev->detail), "%.*s", n, desc);
        } else {
            snprintf(ev->detail, sizeof(ev->detail), "%.*s", len > 100 ? 100 : len, data);
        }
        return;
    }
    ev->kind = (len > 0 && data && memmem(data, (size_t)len, "\"duplicate\":true", 16))
                   ? EVENT_DUPLICATE
                   : EVENT_ACK;
}

static void on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    struct publisher *p = closure;
    struct event ev = {0};
    if (parse_reply(natsMsg_GetSubject(msg), p->inbox_len, &ev.slot, &ev.generation)) {
        classify_reply(msg, &ev);
        enqueue(p, &ev);
    }
    natsMsg_Destroy(msg);
}

static void on_connection_event(struct publisher *p, enum event_kind kind)
{
    struct event ev = {.kind = kind};
    enqueue(p, &ev);
}

static void on_connected(natsConnection *nc, void *closure)
{
    on_connection_event(closure, EVENT_CONNECTED);
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    on_connection_event(closure, EVENT_DISCONNECTED);
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    on_connection_event(closure, EVENT_RECONNECTED);
}

static void on_closed(natsConnection *nc, void *closure)
{
    on_connection_event(closure, EVENT_CLOSED);
}

static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    log_warn("nats asynchronous error: %s", natsStatus_GetText(err));
}

/* ---- the loop side ---- */

static uint64_t backoff_ms(uint32_t attempts)
{
    /* 1 s doubling to 1 min, with up to 20 % jitter so a fleet does not retry in step. */
    uint64_t ms = 1000;
    for (uint32_t i = 1; i < attempts && ms < 60000; i++)
        ms *= 2;
    if (ms > 60000)
        ms = 60000;
    return ms - (uint64_t)(rand() % (int)(ms / 5 + 1));
}

static void send_slot(struct publisher *p, struct slot *s)
{
    s->attempts++;
    natsStatus st = natsConnection_PublishMsg(p->conn, s->msg);
    uint64_t now = loop_now_ms();
    if (st == NATS_OK) {
        move_slot(p, s, SLOT_SENT, now + (uint64_t)p->cfg->ack_timeout_ms);
        return;
    }
    p->stats.errors++;
    log_warn("publish failed, will retry subject=%s error=\"%s\"", natsMsg_GetSubject(s->msg),
             natsStatus_GetText(st));
    move_slot(p, s, SLOT_RETRY, now + backoff_ms(s->attempts));
}

static void free_slot(struct publisher *p, struct slot *s)
{
    natsMsg_Destroy(s->msg);
    s->msg = NULL;
    s->cookie = NULL;
    s->attempts = 0;
    s->generation++;
    move_slot(p, s, SLOT_FREE, 0);
}

static void handle_reply(struct publisher *p, const struct event *ev)
{
    if (ev->slot >= p->slot_count)
        return;
    struct slot *s = &p->slots[ev->slot];
    if (s->state == SLOT_FREE || s->generation != ev->generation)
        return; /* a second ack for a publish we already resent and completed */
    if (ev->kind == EVENT_ACK || ev->kind == EVENT_DUPLICATE) {
        void *cookie = s->cookie;
        if (ev->kind == EVENT_DUPLICATE)
            p->stats.duplicates++;
        p->stats.acked++;
        free_slot(p, s);
        p->done(p->ctx, cookie, ev->kind == EVENT_ACK ? PUBLISH_ACKED : PUBLISH_DUPLICATE);
        return;
    }
    if (ev->kind == EVENT_NO_RESPONDERS)
        p->stats.no_responders++;
    else
        p->stats.errors++;
    if (s->state == SLOT_SENT) {
        uint64_t wait = backoff_ms(s->attempts);
        log_warn("jetstream refused a publish, retrying in %llums subject=%s attempts=%u "
                 "error=\"%s\"",
                 (unsigned long long)wait, natsMsg_GetSubject(s->msg), s->attempts, ev->detail);
        move_slot(p, s, SLOT_RETRY, loop_now_ms() + wait);
    }
}

/* After a reconnect every unacknowledged publish is sent again: acks lost with the old
 * connection are never reported, and the copies that did land come back as duplicates. */
static void resend_all(struct publisher *p)
{
    size_t n = p->sent.count;
    for (size_t i = 0; i < n && p->sent.head; i++) {
        p->stats.resent++;
        send_slot(p, p->sent.head);
    }
}

static void rebuild_connection(struct publisher *p);

static void handle_connection_event(struct publisher *p, enum event_kind kind)
{
    switch (kind) {
    case EVENT_CONNECTED:
    case EVENT_RECONNECTED: {
        char url[256] = "";
        natsConnection_GetConnectedUrl(p->conn, url, sizeof(url));
        if (kind == EVENT_RECONNECTED)
            p->stats.reconnects++;
        log_info("%s to nats server=%s in_flight=%zu",
                 kind == EVENT_CONNECTED ? "connected" : "reconnected", url,
                 p->slot_count - p->free_list.count);
        p->connected = p->ever_connected = true;
        resend_all(p);
        break;
    }
    case EVENT_DISCONNECTED:
        if (p->connected) {
            p->stats.disconnects++;
            log_warn("disconnected from nats, reconnecting in_flight=%zu",
                     p->slot_count - p->free_list.count);
        }
        p->connected = false;
        break;
    case EVENT_CLOSED:
        p->connected = false;
        rebuild_connection(p);
        break;
    default:
        break;
    }
}

static void drain_events(struct loop *loop, int fd, uint32_t events, void *arg)
{
    struct publisher *p = arg;
    uint64_t counter;
    ssize_t n = read(fd, &counter, sizeof(counter));
    (void)n;
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
        if (p->batch[i].kind <= EVENT_NO_RESPONDERS)
            handle_reply(p, &p->batch[i]);
        else
            handle_connection_event(p, p->batch[i].kind);
    }
}

void publisher_tick(struct publisher *p)
{
    uint64_t now = loop_now_ms();
    if (!p->connected)
        return; /* nothing can be sent; the reconnect resends everything */
    /* The sent list is in send order and the timeout is fixed, so it is in due order. */
    while (p->sent.head && p->sent.head->due_ms <= now) {
        struct slot *s = p->sent.head;
        p->stats.timeouts++;
        p->stats.resent++;
        log_debug("ack timeout, resending subject=%s attempts=%u", natsMsg_GetSubject(s->msg),
                  s->attempts);
        send_slot(p, s);
    }
    struct slot *next;
    for (struct slot *s = p->retry.head; s; s = next) {
        next = s->next;
        if (s->due_ms <= now) {
            p->stats.resent++;
            send_slot(p, s);
        }
    }
}

static natsStatus connect_options(struct publisher *p)
{
    const struct config *cfg = p->cfg;
    natsStatus st = natsOptions_Create(&p->opts);
    if (st == NATS_OK)
        st = natsOptions_SetServers(p->opts, (const char **)cfg->nats_servers,
                                    (int)cfg->nats_server_count);
    if (st == NATS_OK)
        st = natsOptions_SetName(p->opts, "kumo-nats-relay");
    /* Reconnect forever: the spool is the buffer, and giving up would only stop the relay. */
    if (st == NATS_OK)
        st = natsOptions_SetMaxReconnect(p->opts, -1);
    if (st == NATS_OK)
        st = natsOptions_SetReconnectWait(p->opts, 1000);
    if (st == NATS_OK)
        st = natsOptions_SetRetryOnFailedConnect(p->opts, true, on_connected, p);
    if (st == NATS_OK)
        st = natsOptions_SetDisconnectedCB(p->opts, on_disconnected, p);
    if (st == NATS_OK)
        st = natsOptions_SetReconnectedCB(p->opts, on_reconnected, p);
    if (st == NATS_OK)
        st = natsOptions_SetClosedCB(p->opts, on_closed, p);
    if (st == NATS_OK)
        st = natsOptions_SetErrorHandler(p->opts, on_async_error, p);
    return st;
}

/* Connects (or starts connecting in the background) and subscribes to the ack inbox. */
static natsStatus open_connection(struct publisher *p)
{
    natsStatus st = natsConnection_Connect(&p->conn, p->opts);
    bool pending = st == NATS_NOT_YET_CONNECTED;
    if (pending)
        st = NATS_OK;
    char *wildcard = xasprintf("%s.*.*", p->inbox);
    if (st == NATS_OK)
        st = natsConnection_Subscribe(&p->sub, p->conn, wildcard, on_reply, p);
    /* Acks are bounded by the window; never let nats.c drop one as a slow consumer. */
    if (st == NATS_OK)
        st = natsSubscription_SetPendingLimits(p->sub, -1, -1);
    free(wildcard);
    if (st == NATS_OK && !pending)
        on_connection_event(p, EVENT_CONNECTED);
    return st;
}

static void rebuild_connection(struct publisher *p)
{
    log_warn("nats connection closed, opening a new one in_flight=%zu",
             p->slot_count - p->free_list.count);
    natsSubscription_Destroy(p->sub);
    natsConnection_Destroy(p->conn);
    p->sub = NULL;
    p->conn = NULL;
    natsStatus st = open_connection(p);
    if (st != NATS_OK)
        fatalx("cannot open a new nats connection: %s", natsStatus_GetText(st));
}

struct publisher *publisher_create(const struct config *cfg, struct loop *loop,
                                   publish_done_fn done, void *ctx, char **err)
{
    struct publisher *p = xcalloc(1, sizeof(*p));
    p->cfg = cfg;
    p->loop = loop;
    p->done = done;
    p->ctx = ctx;
    p->slot_count = cfg->max_in_flight;
    p->slots = xcalloc(p->slot_count, sizeof(*p->slots));
    for (size_t i = 0; i < p->slot_count; i++)
        list_push(&p->free_list, &p->slots[i]);
    pthread_mutex_init(&p->queue.lock, NULL);
    p->queue.eventfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->queue.eventfd < 0 ||
        loop_add_fd(loop, p->queue.eventfd, EPOLLIN, drain_events, p) != 0) {
        *err = xasprintf("cannot set up the ack queue: %s", strerror(errno));
        publisher_destroy(p);
        return NULL;
    }
    natsStatus st = natsInbox_Create(&p->inbox);
    if (st == NATS_OK) {
        p->inbox_len = strlen(p->inbox);
        st = connect_options(p);
    }
    if (st == NATS_OK)
        st = open_connection(p);
    if (st != NATS_OK) {
        *err = xasprintf("cannot set up the nats connection: %s", natsStatus_GetText(st));
        publisher_destroy(p);
        return NULL;
    }
    return p;
}

void publisher_destroy(struct publisher *p)
{
    if (!p)
        return;
    if (p->conn && p->connected)
        natsConnection_FlushTimeout(p->conn, 2000);
    natsSubscription_Destroy(p->sub);
    if (p->conn)
        natsConnection_Close(p->conn);
    natsConnection_Destroy(p->conn);
    natsOptions_Destroy(p->opts);
    natsInbox_Destroy(p->inbox);
    for (size_t i = 0; i < p->slot_count; i++)
        natsMsg_Destroy(p->slots[i].msg);
    if (p->queue.eventfd >= 0) {
        loop_del_fd(p->loop, p->queue.eventfd);
        close(p->queue.eventfd);
    }
    pthread_mutex_destroy(&p->queue.lock);
    free(p->queue.items);
    free(p->batch);
    free(p->slots);
    free(p);
}

bool publisher_can_publish(const struct publisher *p)
{
    return p->connected && p->free_list.head != NULL;
}

bool publisher_connected(const struct publisher *p)
{
    return p->connected;
}

size_t publisher_in_flight(const struct publisher *p)
{
    return p->slot_count - p->free_list.count;
}

const struct publisher_stats *publisher_stats(const struct publisher *p)
{
    return &p->stats;
}

int publisher_publish(struct publisher *p, void *cookie, const char *subject, const char *msg_id,
                      const char *data, size_t len, char **err)
{
    struct slot *s = p->free_list.head;
    if (!s)
        fatalx("publisher_publish called with a full window");
    uint32_t index = (uint32_t)(s - p->slots);
    char reply[160];
    snprintf(reply, sizeof(reply), "%s.%u.%u", p->inbox, index, s->generation);
    natsMsg *msg = NULL;
    natsStatus st = natsMsg_Create(&msg, subject, reply, data, (int)len);
    if (st == NATS_OK && msg_id)
        st = natsMsgHeader_Set(msg, "Nats-Msg-Id", msg_id);
    if (st != NATS_OK) {
        natsMsg_Destroy(msg);
        *err = xasprintf("cannot build the message: %s", natsStatus_GetText(st));
        return -1;
    }
    s->msg = msg;
    s->cookie = cookie;
    s->attempts = 0;
    p->stats.published++;
    /* Pretend-retry state so send_slot's move is uniform; it lands in SENT or RETRY. */
    move_slot(p, s, SLOT_RETRY, 0);
    s->attempts = 0;
    natsStatus sent = natsConnection_PublishMsg(p->conn, msg);
    s->attempts = 1;
    if (sent == NATS_MAX_PAYLOAD) {
        free_slot(p, s);
        *err = xasprintf("the record is larger than the server's max_payload");
        return -1;
    }
    if (sent == NATS_OK) {
        move_slot(p, s, SLOT_SENT, loop_now_ms() + (uint64_t)p->cfg->ack_timeout_ms);
    } else {
        p->stats.errors++;
        move_slot(p, s, SLOT_RETRY, loop_now_ms() + backoff_ms(1));
    }
    return 0;
}
