/* Publishing to JetStream over one nats.c connection, with a window of in-flight
 * publishes, acknowledgements delivered to the loop, and retries with the same
 * Nats-Msg-Id until JetStream has the message.
 *
 * The JetStream publish protocol is a core NATS publish with a reply subject; the stream
 * answers on it with {"stream":..,"seq":..[,"duplicate":true]} or {"error":{..}}. We speak
 * it directly rather than through js_PublishMsgAsync: the reply subject then names our
 * in-flight slot (<inbox>.<slot>.<generation>), so an ack finds its record without a
 * lookup and without state shared with the nats.c thread, one timer walks the oldest
 * entries for ack timeouts (no per-message timers), and after a reconnect we resend what
 * is unacknowledged ourselves (nats.c never reports acks lost in a server restart). */
#ifndef RELAY_PUBLISH_H
#define RELAY_PUBLISH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config;
struct loop;

enum publish_outcome {
    PUBLISH_ACKED,     /* stored by JetStream */
    PUBLISH_DUPLICATE, /* JetStream already had this Nats-Msg-Id: stored earlier */
};

/* Called on the loop once per successful publish with the cookie given to it. */
typedef void (*publish_done_fn)(void *ctx, void *cookie, enum publish_outcome outcome);

struct publisher_stats {
    uint64_t published; /* first sends */
    uint64_t resent;    /* sends after a timeout, error or reconnect */
    uint64_t acked;
    uint64_t duplicates;
    uint64_t timeouts;
    uint64_t errors; /* error replies and failed sends */
    uint64_t no_responders;
    uint64_t reconnects;
    uint64_t disconnects;
};

struct publisher;

struct publisher *publisher_create(const struct config *cfg, struct loop *loop,
                                   publish_done_fn done, void *ctx, char **err);
void publisher_destroy(struct publisher *p);

/* True when a publish now would be sent at once: connected and a slot is free. */
bool publisher_can_publish(const struct publisher *p);
bool publisher_connected(const struct publisher *p);
size_t publisher_in_flight(const struct publisher *p);
const struct publisher_stats *publisher_stats(const struct publisher *p);

/* Queue one message. Returns 0, or -1 with *err (malloc'd) when it can never be
 * published (larger than the server's max_payload): the caller dead-letters it. The
 * window must have room (publisher_can_publish). */
int publisher_publish(struct publisher *p, void *cookie, const char *subject, const char *msg_id,
                      const char *data, size_t len, char **err);

/* Ack timeouts and due retries; call periodically from the loop. */
void publisher_tick(struct publisher *p);

#endif
