/* What publish.c (slots, sends, replies, acks) and publish_connection.c (the nats.c
 * connection: its events, why it is down, reopening it) share. Not for other files. */
#ifndef RELAY_PUBLISH_INTERNAL_H
#define RELAY_PUBLISH_INTERNAL_H

#include "publish.h"

#include <nats/nats.h>
#include <pthread.h>

enum slot_state { SLOT_FREE, SLOT_SENT, SLOT_RETRY };

/* One in-flight publish. The natsMsg holds subject, reply, headers and payload, and is
 * sent again as is on a retry, so the Nats-Msg-Id cannot change between attempts. */
struct slot {
    enum slot_state state;
    uint32_t index;
    uint32_t generation; /* bumped when freed: a late ack for an old use is ignored */
    uint32_t attempts;
    uint64_t due_ms; /* SENT: ack deadline; RETRY: when to send again */
    natsMsg *msg;
    void *cookie;
    uint64_t await_id;
    struct slot *prev, *next; /* in the free, sent or retry list */
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

/* What the nats.c threads hand to the loop: connection changes, and the replies to
 * awaited publishes (see on_await_reply). Other acks are taken from the subscription on
 * the loop itself, see take_acks. */
enum event_kind {
    EVENT_DISCONNECTED,
    EVENT_RECONNECTED,
    EVENT_CLOSED,
    EVENT_CONNECTED,
    EVENT_AWAITED_REPLY,
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
    natsSubscription *await_sub; /* replies to publishes someone waits for: see on_await_reply */
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
