/* What publish.c (slots, sends, replies, acks), publish_connection.c (the nats.c
 * connection: its events, why it is down, reopening it) and publish_batch.c (fast-ingest
 * batches) share. Not for other files. */
#ifndef RELAY_PUBLISH_INTERNAL_H
#define RELAY_PUBLISH_INTERNAL_H

#include "publish.h"

#include <nats/nats.h>
#include <pthread.h>

enum slot_state { SLOT_FREE, SLOT_SENT, SLOT_RETRY, SLOT_BATCHED };

/* One in-flight publish. The natsMsg holds subject, reply, headers and payload, and is
 * sent again as is on a retry, so the Nats-Msg-Id cannot change between attempts. */
struct slot {
    enum slot_state state;
    uint32_t index;
    uint32_t generation; /* bumped when freed: a late ack for an old use is ignored */
    uint32_t attempts;
    uint32_t probed; /* the attempt last probed for "no responders" (probe_awaited) */
    uint64_t due_ms; /* SENT: ack deadline; RETRY: when to send again */
    natsMsg *msg;
    void *cookie;
    uint64_t await_id;
    uint64_t batch_seq;       /* BATCHED: its sequence in the batch */
    uint32_t batch;           /* BATCHED: which of fast.batches holds it */
    struct slot *prev, *next; /* in the free, sent or retry list, or its batch's */
};

struct slot_list {
    struct slot *head, *tail;
    size_t count;
};

/* A JetStream reply to one publish, read on the loop. */
enum reply_kind {
    REPLY_ACK,
    REPLY_DUPLICATE,
    REPLY_ERROR,
    REPLY_NO_RESPONDERS,
};

struct reply {
    enum reply_kind kind;
    uint32_t slot, generation;
    uint64_t sequence;
    char detail[128]; /* the error, or the stream of an ack */
    char domain[64];
};

/* publish_reply.c: what the reply data[0..len) to a single publish says, into ev's kind,
 * detail (the stream, or the error's description), domain and sequence. A reply that is
 * not a JSON object is read by substrings, as all were before. */
void publish_reply_classify(const char *data, size_t len, struct reply *ev);

/* What the nats.c threads hand to the loop: connection changes, and the replies to the
 * probes of awaited publishes (see probe_awaited). Acks are taken from the subscription
 * on the loop itself, see take_acks. */
enum event_kind {
    EVENT_DISCONNECTED,
    EVENT_RECONNECTED,
    EVENT_CLOSED,
    EVENT_CONNECTED,
    EVENT_AWAITED_REPLY,
};

/* Fast-ingest batches (publish_batch.c): whether the stream takes them, and the few
 * batches in flight. A batch's slots are in batch sequence order, which is the order
 * the stream acknowledges them in. */
enum fast_state {
    FAST_OFF,     /* not asked for, or the stream does not take them */
    FAST_UNKNOWN, /* asked for: the first ack names the stream to ask about */
    FAST_ASKED,   /* its STREAM.INFO is on the way */
    FAST_ON,
};

enum { FAST_BATCHES = 4 };

struct fast_batch {
    uint64_t number;      /* 0: this entry is unused */
    uint64_t next_seq;    /* of the next message */
    uint64_t progress_ms; /* when it last moved (started, acked, ended): for ack_timeout */
    char *subject;        /* its first message's: the end-of-batch marker goes there too */
    char reply[160];      /* <inbox>.<batch id>.<flow>.fail. : the sequence and op follow */
    size_t reply_len;
    struct slot_list slots;
};

struct fast_ingest {
    enum fast_state state;
    uint32_t flow; /* the flow acks we ask for: one per this many messages at most */
    char stream[128];
    uint64_t started;  /* batches, for their numbers */
    int open;          /* the batch new messages go to, or -1 */
    uint32_t failures; /* batches that failed in a row */
    uint64_t last_publish_ms;
    struct fast_batch batches[FAST_BATCHES];
};

struct event {
    enum event_kind kind;
    struct reply reply; /* EVENT_AWAITED_REPLY */
};

struct event_queue {
    pthread_mutex_t lock;
    pthread_cond_t done; /* shutdown: nats.c's last callbacks have run */
    struct event *items;
    size_t count, cap;
    int eventfd;
    bool shutting_down; /* callbacks stop enqueueing */
    bool connection_closed, subscription_closed;
};

enum { SLOTS_PER_CHUNK = 1024 };

struct publisher {
    struct publisher_options options; /* strings owned below */
    char **servers;
    char *name;
    struct loop *loop;
    publish_done_fn done;
    void *ctx;
    natsOptions *opts;
    natsOptions *probe_opts; /* the same servers and credentials, one attempt, no retry */
    natsConnection *conn;
    natsSubscription *sub;
    natsSubscription *await_sub; /* replies to the probes of awaited publishes: on_await_reply */
    natsInbox *inbox;
    size_t inbox_len;
    struct slot **chunks; /* slots never move: their index is in reply subjects */
    size_t chunk_count;
    struct slot_list free_list, sent, retry;
    struct event_queue queue;
    struct event *batch; /* events taken from the queue, processed without the lock */
    size_t batch_cap;
    bool connected;
    char auth[160];            /* how it authenticates, for the log: never a secret */
    uint32_t reopen_attempts;  /* connections refused or closed in a row */
    uint64_t reopen_due;       /* with conn NULL: when to try a new connection */
    uint64_t down_since;       /* not connected since (loop ms); 0 while connected */
    uint64_t down_warn_due;    /* when to say again that it still cannot connect */
    char down_error[256];      /* why not, for the log, /healthz and STATUS */
    struct publisher_set *set; /* the owner's, or NULL */
    struct fast_ingest fast;   /* publish_batch.c */
};

/* publish.c */
void publisher_enqueue(struct publisher *p, const struct event *ev);
uint64_t publisher_backoff_ms(uint32_t attempts);
/* After a (re)connect: everything unacknowledged goes out again. */
void publisher_resend_all(struct publisher *p);
/* Subscribes to the ack inboxes of a new connection. */
natsStatus publisher_subscribe(struct publisher *p);
/* At shutdown: nats.c made one of its last callbacks with p (see publisher_destroy). */
void publisher_final_callback(struct publisher *p, bool *flag);

/* A slot's message with the reply subject of a single publish, <inbox>.<slot>.<gen>. */
natsStatus publisher_build_message(struct publisher *p, struct slot *s,
                                   const struct publish_request *req, const char *reply,
                                   natsMsg **msg);
void publisher_single_reply(const struct publisher *p, const struct slot *s, bool awaited,
                            char *buf, size_t size);
void publisher_move_slot(struct publisher *p, struct slot *s, enum slot_state state, uint64_t due);
natsStatus publisher_send_slot(struct publisher *p, struct slot *s);
void publisher_free_slot(struct publisher *p, struct slot *s);
/* JetStream stored the slot's message: free it and tell the caller. */
void publisher_acked(struct publisher *p, struct slot *s, const struct publish_ack *ack);

/* publish_batch.c */
void publish_batch_init(struct publisher *p);
void publish_batch_free(struct publisher *p);
/* Publish s in the open batch (one is started when none is). Returns 0, -1 with *err
 * when it can never be published (larger than max_payload), or 1 when s is to be
 * published singly (no batch can start now, or the send failed). */
int publish_batch_send(struct publisher *p, struct slot *s, const struct publish_request *req,
                       char **err);
/* An ack from a stream: the first one names the stream to ask whether it takes batches. */
void publish_batch_learn(struct publisher *p, const char *stream);
/* A reply on the ack inbox: true if it was the batches' (and is handled). */
bool publish_batch_reply(struct publisher *p, natsMsg *msg);
/* Ends the open batch when nothing was published for a moment: its tail is acknowledged
 * only by the batch's final ack. */
void publish_batch_idle(struct publisher *p);
/* Batches whose acks are late by ack_timeout go back to single publishes. */
void publish_batch_tick(struct publisher *p);
/* Every batch's unacknowledged messages become single publishes again (a reconnect). */
void publish_batch_fail_all(struct publisher *p, const char *why);
size_t publish_batch_in_flight(const struct publisher *p);

static inline bool publish_batch_on(const struct publisher *p)
{
    return p->fast.state == FAST_ON && p->connected;
}

/* publish_connection.c */
/* Sets p->opts and p->probe_opts for p's servers and credentials. */
natsStatus publish_connection_options(struct publisher *p, const struct nats_auth *auth,
                                      char **err);
/* Connects (or starts connecting in the background) and subscribes to the ack inboxes. */
natsStatus publish_connection_open(struct publisher *p);
/* The connection is gone for good: a new one is tried after a backoff. */
void publish_connection_failed(struct publisher *p);
void publish_connection_event(struct publisher *p, enum event_kind kind);
/* Reopens a failed connection when due, and warns while it is down. */
void publish_connection_tick(struct publisher *p);
void publish_connection_warn_if_down(struct publisher *p);
/* NULL, or why these servers cannot be used (malloc'd). */
char *publish_connection_check_servers(const struct publisher_options *o);
/* Closes the connection and waits for nats.c's last callbacks; false on timeout. */
bool publish_connection_close(struct publisher *p);

#endif
