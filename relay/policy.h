/* The policy seam: what happens to each record. Two policies stand behind it: the
 * built-in one (every record to a subject template, policy_builtin.c) and the operator's Lua
 * policy (policy_lua.c), which mirrors KumoMTA's log hook and custom_lua queue events. */
#ifndef RELAY_POLICY_H
#define RELAY_POLICY_H

#include "deadletter.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config;
struct loop;
struct publisher;
struct publisher_set;
struct publish_ack;
struct stream_check;
struct hook_watchdog;
struct poison;
struct segment_record;
struct inflight_record;

enum policy_verdict {
    POLICY_PUBLISHED,  /* its publishes (maybe none) are made; complete when all are acked */
    POLICY_DROPPED,    /* deliberately not relayed (counted) */
    POLICY_DEADLETTER, /* cannot be relayed; the reason says why */
    POLICY_DEFERRED,   /* kept by the policy (a batch, a retry); it calls resolve later */
};

/* One publish a policy makes on behalf of a group of records (one, or a batch). */
struct policy_publish {
    struct publisher *via; /* NULL: the relay's own connection */
    const char *subject;
    const char *data;
    size_t len;
    const char *msg_id; /* NULL: the relay's id: of records[index], or records[0] + ":<index>" */
    unsigned index;     /* n-th publish for this group in this attempt */
    const char *const *headers; /* name, value pairs */
    size_t header_count;
    uint64_t await_id; /* nonzero: report the ack to policy_acked */
};

/* What the relay offers a policy. */
/* Why the policy gives a record up (POLICY_DEADLETTER): its class, counted, and the text
 * written with its dead letter (malloc'd). */
struct policy_reason {
    enum deadletter_reason kind;
    char *text;
};

struct policy_env {
    struct loop *loop;
    void *ctx;
    /* Publish for records; returns 0, 1 when the stream already has it (read back at
     * start: nothing is sent, no ack comes), or -1 with *err when it can never be
     * published. */
    int (*publish)(void *ctx, struct inflight_record *const *records, size_t count,
                   const struct policy_publish *msg, char **err);
    /* A deferred record is decided. data is its line, for a dead letter. */
    void (*resolve)(void *ctx, struct inflight_record *rec, enum policy_verdict verdict,
                    enum deadletter_reason kind, const char *reason, const char *data, size_t len);
    /* The callback the relay wants for publishers the policy opens itself. */
    void (*publish_done)(void *ctx, void *cookie, const struct publish_ack *ack);
    struct stream_check *streams;     /* for those publishers too (publish.h) */
    struct publisher_set *publishers; /* which those publishers join (publish.h) */
    struct hook_watchdog *watchdog;   /* watches the hooks; NULL: not watched */
    struct poison *poison;            /* records a hook died on (poison.h); NULL: none */
    bool check_only;                  /* --check: load and run init, connect nothing */
};

struct policy;

struct policy *policy_create(const struct config *cfg, const struct policy_env *env, char **err);
/* Handle one record. rec identifies it to the relay; sr has its bytes (valid only during
 * the call). reason is set with POLICY_DEADLETTER. */
enum policy_verdict policy_handle(struct policy *policy, struct inflight_record *rec,
                                  const struct segment_record *sr, struct policy_reason *reason);
/* Periodic work: due retries, batches whose latency ran out. */
void policy_tick(struct policy *policy);
/* An ack a policy asked to see (policy_publish.await_id). */
void policy_acked(struct policy *policy, const struct publish_ack *ack);
/* Shutdown: flush what can be flushed, call each connection's close. */
void policy_destroy(struct policy *policy);
/* Publishes in flight through the policy's own connections. */
size_t policy_in_flight(const struct policy *policy);
/* Hand every record the policy holds (batches, retries) to fn, with its line, and forget
 * them (a reload gives them to the new policy). */
void policy_release_held(struct policy *policy,
                         void (*fn)(void *ctx, struct inflight_record *rec, const char *data,
                                    size_t len),
                         void *ctx);
/* Does the policy publish through the relay's own connection (so the relay needs one)? */
bool policy_uses_default_connection(const struct policy *policy);

#endif
