/* Everything the relay asks JetStream about a stream, as opposed to publishing into it:
 * making sure it exists (jetstream.create), reading back the ids it stores, and checking
 * its duplicate_window against expected_max_downtime.
 *
 * The duplicate_window check covers every stream the relay publishes into. JetStream
 * drops a re-sent copy only within that window, so a relay down for longer may store
 * records twice; the operator is warned once per stream. Streams are learnt from acks
 * (each names its stream), so the check covers the built-in policy and every subject a
 * Lua policy publishes to, with or without jetstream.stream. The first ack from a stream
 * asks for its configuration asynchronously (publish.c sends the request on its
 * connection); the answer comes back to stream_check_reply. The relay owns one
 * struct stream_check and hands it to every publisher. Loop thread only. */
#ifndef RELAY_STREAM_H
#define RELAY_STREAM_H

#include <jansson.h>
#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config;

struct stream_check {
    int64_t floor_ms;  /* expected_max_downtime; 0: no check */
    size_t unanswered; /* requests sent, replies not yet taken */
    uint64_t asked_at_ms;
    char **seen; /* streams asked about; a handful at most */
    size_t seen_count;
};

/* Turns the check on (expected_max_downtime; 0 turns it off) and forgets what was
 * checked: a reload may change the floor. */
void stream_check_configure(struct stream_check *sc, int64_t expected_max_downtime_ms);
/* An ack came from this stream. True the first time: the caller requests its info. */
bool stream_check_first_ack(struct stream_check *sc, const char *stream);
/* The caller sent the request for a stream first_ack named. */
void stream_check_asked(struct stream_check *sc, uint64_t now_ms);
/* A request is unanswered and younger than 2 s: --once waits for it before exiting. */
bool stream_check_waiting(const struct stream_check *sc, uint64_t now_ms);
/* A $JS.API.STREAM.INFO reply: warns if the window is too short. */
void stream_check_reply(struct stream_check *sc, const char *data, size_t len);
/* The same for an already parsed reply (jetstream.stream, read at start). */
void stream_check_info(struct stream_check *sc, json_t *info);
void stream_check_free(struct stream_check *sc);

/* The subject of a stream's INFO request. */
void stream_info_subject(char *buf, size_t size, const char *stream);

/* A connection for the questions asked at start (one attempt, no reconnect), with the
 * nats: section's servers and credentials; NULL when it cannot connect (logged). */
natsConnection *stream_connect(const struct config *cfg);
/* jetstream.stream's info (created first when missing and jetstream.create says how), or
 * NULL (logged). */
json_t *stream_ensure(natsConnection *nc, const struct config *cfg);
/* Reads the headers of jetstream.stream's messages from sequence start on, at most limit
 * of them, through an ephemeral push consumer (headers only, no acks), and hands each
 * Nats-Msg-Id to fn. */
void stream_read_ids(natsConnection *nc, const struct config *cfg, uint64_t start, uint64_t limit,
                     void (*fn)(void *ctx, const char *msg_id), void *ctx);

#endif
