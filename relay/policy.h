/* The policy seam: what happens to each record. The built-in policy publishes the line to
 * a subject template; the Lua engine is another policy behind the same interface. */
#ifndef RELAY_POLICY_H
#define RELAY_POLICY_H

#include <stddef.h>

struct config;
struct segment_record;

enum policy_verdict {
    POLICY_PUBLISHED,  /* it made one or more publishes; complete when all are acked */
    POLICY_DROPPED,    /* deliberately not relayed (counted) */
    POLICY_DEADLETTER, /* cannot be relayed; *reason says why */
};

/* What a policy may do with the record it is handed. */
struct policy_sink {
    /* Publish to JetStream. msg_id NULL means the relay's deterministic id. Returns 0, or
     * -1 with *err when the message can never be published. */
    int (*publish)(void *ctx, const char *subject, const char *data, size_t len, const char *msg_id,
                   char **err);
    void *ctx;
};

struct policy;

struct policy *policy_create(const struct config *cfg, char **err);
/* reason (malloc'd) is set with POLICY_DEADLETTER. */
enum policy_verdict policy_handle(struct policy *policy, const struct segment_record *rec,
                                  const struct policy_sink *sink, char **reason);
void policy_destroy(struct policy *policy);

#endif
