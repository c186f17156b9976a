/* Publishing to JetStream over one nats.c connection: in-flight publishes, acks delivered
 * to the loop, and retries with the same Nats-Msg-Id until JetStream has the message.
 *
 * The JetStream publish protocol is a core NATS publish with a reply subject; the stream
 * answers on it with {"stream":..,"seq":..[,"duplicate":true]} or {"error":{..}}. We speak
 * it directly rather than through js_PublishMsgAsync: the reply subject then names our
 * in-flight slot (<inbox>.<slot>.<generation>), so an ack finds its record without a
 * lookup and without state shared with the nats.c thread, one timer walks the oldest
 * entries for ack timeouts (no per-message timers), and after a reconnect we resend what
 * is unacknowledged ourselves (nats.c never reports acks lost in a server restart).
 *
 * Where the stream allows it, the relay's own connection publishes in fast-ingest batches
 * instead, one flow ack per many messages (publish_batch.c, fast_batch_window).
 *
 * The window (how many publishes may be in flight) is the caller's to enforce: one relay
 * may publish through several connections (Lua policies), and the limit is for all. */
#ifndef RELAY_PUBLISH_H
#define RELAY_PUBLISH_H

#include "nats_auth.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct loop;
struct publisher;
struct stream_check;

/* The publishers one owner (the relay) has open: its own connection and those of its Lua
 * policy. Health reads their connection state from it, and the loop takes their acks
 * through it. Publishers add and remove themselves (publisher_options.set); the array
 * is freed when the last one goes. Loop thread only. */
struct publisher_set {
    struct publisher **items;
    size_t count;
};

struct publisher_options {
    const char *const *servers;
    size_t server_count;
    const char *name;             /* connection name shown by the server */
    int64_t ack_timeout_ms;       /* then the same message is sent again */
    struct nats_auth auth;        /* credentials and TLS; used by publisher_create only */
    struct stream_check *streams; /* checks each stream's duplicate_window; NULL: none */
    struct publisher_set *set;    /* the owner's, which the publisher joins; NULL: none */
    /* Not 0: publish in fast-ingest batches (publish_batch.c) once the stream of the first
     * ack says it takes them; the caller's window, which the flow acks must keep open. */
    size_t fast_batch_window;
};

/* What JetStream answered for one publish. */
struct publish_ack {
    bool duplicate; /* JetStream already had this Nats-Msg-Id */
    uint64_t sequence;
    char stream[128];
    char domain[64];
    uint64_t await_id; /* as given in the request */
    char error[160];   /* not empty: JetStream refused a publish someone waits for */
};

/* Called on the loop once per publish, when JetStream has stored it, or, for a publish
 * someone waits for (await_id), when JetStream refused it: the waiter decides (a Lua
 * policy sees the error as kumod's publish raises it). */
typedef void (*publish_done_fn)(void *ctx, void *cookie, const struct publish_ack *ack);

struct publish_request {
    const char *subject;
    const char *data;
    size_t len;
    const char *msg_id;         /* NULL: no Nats-Msg-Id */
    const char *const *headers; /* name, value pairs */
    size_t header_count;        /* pairs */
    uint64_t await_id;          /* handed back in the ack; 0 if nobody waits */
};

struct publisher *publisher_create(const struct publisher_options *options, struct loop *loop,
                                   publish_done_fn done, void *ctx, char **err);
void publisher_destroy(struct publisher *p);

bool publisher_connected(const struct publisher *p);
size_t publisher_in_flight(const struct publisher *p);

/* Queue one message. Returns 0, or -1 with *err (malloc'd) when it can never be
 * published (larger than the server's max_payload): the caller dead-letters it. */
int publisher_publish(struct publisher *p, void *cookie, const struct publish_request *req,
                      char **err);

/* How many publishers of the set are not connected now (and how many there are). */
size_t publisher_set_disconnected(const struct publisher_set *set, size_t *total);
/* Why the set's first connection that is down is down ("127.0.0.1:4222: Connection
 * refused", "connecting" before the first attempt is over), and since when (loop ms; 0 if
 * unknown); NULL while every connection is up. */
const char *publisher_set_down_reason(const struct publisher_set *set, uint64_t *since_ms);

/* While a connection is down its warning repeats this often (the first comes at once). */
#define PUBLISHER_DOWN_WARN_INTERVAL_MS 30000

/* Ack timeouts and due retries; call periodically from the loop. */
void publisher_tick(struct publisher *p);
/* Take the acks that arrived, waiting up to timeout_ms for one (for a policy that must see
 * one ack before it goes on). */
void publisher_poll(struct publisher *p, int timeout_ms);
/* Take the acks of every publisher of the set without waiting: call whenever the loop
 * runs, and come back within a millisecond while publisher_set_in_flight() is not 0. */
void publisher_set_take_acks(struct publisher_set *set);
size_t publisher_set_in_flight(const struct publisher_set *set);

#endif
