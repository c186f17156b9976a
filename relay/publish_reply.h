/* What JetStream answers to a publish, read in one pass over the top level of its JSON.
 *
 * A PubAck is {"stream":"S","seq":N[,"domain":"D"][,"duplicate":true]}, a refusal
 * {"error":{"code":..,"err_code":..,"description":".."}}, and a fast-ingest batch
 * (publish_batch.c) is answered with flow acks {"type":"ack","seq":N,"msgs":M} (or
 * "gap", "err") and a final {"stream":..,"seq":..,"batch":..,"count":C}. Only top-level
 * members count, in any order, so a stream named "seq" or a description that mentions
 * "duplicate" cannot be taken for a member. One runs per acknowledged record (or per flow
 * ack): nothing is allocated. */
#ifndef RELAY_PUBLISH_REPLY_H
#define RELAY_PUBLISH_REPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct publish_reply {
    bool error;            /* an "error" member (not null): the publish was refused */
    char description[128]; /* the error's "description", decoded; "" when none */
    int64_t err_code;      /* the error's "err_code"; 0 when none */
    char stream[128];      /* "stream", decoded; "" when absent */
    char domain[64];       /* "domain"; "" when absent */
    uint64_t seq;          /* "seq" when an unsigned integer, else 0 */
    bool duplicate;        /* "duplicate": true */
    char type[8];          /* a flow ack's "type" ("ack", "gap", "err"); "" when absent */
    bool batch;            /* a "batch" member: the final ack of a batch */
    uint64_t count;        /* "count" when an unsigned integer, else 0 */
};

/* Reads data[0..len). Returns false, with *r unspecified, when it is not one well-formed
 * JSON object. */
bool publish_reply_parse(const char *data, size_t len, struct publish_reply *r);

#endif
