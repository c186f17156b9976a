/* The stream's duplicate_window against expected_max_downtime, for every stream the relay
 * publishes into. JetStream drops a re-sent copy only within that window, so a relay down
 * for longer may store records twice; the operator is warned once per stream.
 *
 * Streams are learnt from acks (each names its stream), so the check covers the built-in
 * policy and every subject a Lua policy publishes to, with or without jetstream.stream.
 * The first ack from a stream asks for its configuration asynchronously; the answer comes
 * back on the publisher's ack subscription. Loop thread only. */
#ifndef RELAY_DUPWINDOW_H
#define RELAY_DUPWINDOW_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Turns the check on (expected_max_downtime; 0 turns it off) and forgets what was
 * checked: a reload may change the floor. */
void dupwindow_configure(int64_t expected_max_downtime_ms);
/* An ack came from this stream. True the first time: the caller requests its info. */
bool dupwindow_first_ack(const char *stream);
/* The caller sent the request for a stream first_ack named. */
void dupwindow_asked(uint64_t now_ms);
/* A request is unanswered and younger than 2 s: --once waits for it before exiting. */
bool dupwindow_waiting(uint64_t now_ms);
/* A $JS.API.STREAM.INFO reply: warns if the window is too short. */
void dupwindow_info_reply(const char *data, size_t len);
/* The same for an already parsed reply (jetstream.stream, read at start). */
void dupwindow_check(json_t *info);
void dupwindow_free(void);

#endif
