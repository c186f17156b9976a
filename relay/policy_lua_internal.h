/* What policy_lua.c, policy_lua_load.c and policy_await.c share: the policy's state, and
 * the calls each makes into the others. Private to those files. */
#ifndef RELAY_POLICY_LUA_INTERNAL_H
#define RELAY_POLICY_LUA_INTERNAL_H

#include "lua_alloc.h"
#include "lua_kumo.h"
#include "lua_nats.h"
#include "policy.h"
#include "subject.h"

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    INSTRUCTION_BUDGET = 100 * 1000 * 1000, /* per hook call: a runaway loop becomes an error */
    STOPPING_BUDGET = 1000 * 1000,      /* per hook call once the relay stops: the drain waits */
    HOOK_EVERY = 10000,                 /* instructions between budget checks */
    MEMORY_CEILING = 512 * 1024 * 1024, /* bytes for the whole Lua state */
    SEEN_ERRORS = 256,                  /* distinct error messages logged at warn */
    SPARE_RUNNERS = 256,                /* finished coroutines kept for the next hooks */
    SPARE_REFS = 4096,                  /* registry slots of let-go messages: the window */
};

/* A record the policy holds: in a batch, or waiting to be sent again. */
struct held_record {
    struct inflight_record *rec;
    int message_ref; /* the pinned Message, in the registry */
};

struct queue_state;
struct retry;

/* An ack a held record waits for: its parked hook's, or one of its lazy publishes'. */
struct await_slot {
    uint64_t await_id;
    struct retry *r; /* NULL: free */
};

/* One record or one batch waiting for its next attempt. */
struct retry {
    struct queue_state *queue;   /* NULL: run the whole policy again (the error came early) */
    struct held_record *members; /* &one for a single record held by run_policy */
    size_t count;
    struct held_record one;
    uint32_t attempts;
    uint64_t due_ms;
    uint64_t first_ms; /* when the oldest member was read, for max_age */
    char *last_error;  /* for the dead letter when max_age runs out */
    /* Parked: the hook waits in publish for an ack (see call_parkable). */
    lua_State *co;
    int co_ref;
    uint64_t await_id;
    const char *event;       /* the hook's name, for errors and the budget */
    unsigned publish_index;  /* publishes made so far in this attempt */
    struct publish_ack *ack; /* came while another hook ran: resumed at the tick */
    /* Lazy publishes (lua_nats.c) of this attempt whose ack has not come: the hook may
     * have finished, the record is decided when the last comes. */
    unsigned lazy;
    char *lazy_error; /* "publish: <error>" of the first of them JetStream refused */
    bool listed;      /* on p->ready, or collected by a drain */
    struct retry *next;
};

struct queue_state {
    char *name;
    char *parts_buf;
    struct queue_parts parts;
    struct queue_config qc;
    bool constructed;
    bool per_record;     /* the seed shape: the constructor publishes for each record */
    int connection_ref;  /* the connection table (LUA_NOREF for the seed shape) */
    int constructor_ref; /* the constructor event's handler list, once it has one */
    struct held_record *batch;
    size_t batch_count;
    uint64_t batch_started_ms;
    struct queue_state *next;
};

struct policy_lua {
    const struct config *cfg;
    struct policy_env env;
    lua_State *L;
    struct lua_pool pool; /* the state's freed blocks, by size class */
    size_t memory_used;
    long budget;
    bool stopping; /* the budget is STOPPING_BUDGET */
    const char *current_event;
    struct lua_nats nats;
    struct queue_state *queues;
    struct retry *retries;
    struct {
        struct await_slot *slots; /* held records waiting for acks, by await_id */
        size_t cap, count;
    } parked;
    struct retry *ready;   /* parked hooks whose ack came while another hook ran */
    struct retry *resumed; /* the record whose parked hook runs again now */
    lua_State *runner;     /* the coroutine the next parkable hook runs on */
    int runner_ref;
    struct {
        lua_State *co;
        int ref;
    } spare[SPARE_RUNNERS]; /* coroutines whose hook finished: cheaper than new ones */
    size_t spare_count;
    int spare_refs[SPARE_REFS]; /* registry slots holding false, for the next held message */
    size_t spare_ref_count;
    bool may_park;            /* the hook about to run may wait for an ack (call_parkable) */
    struct retry just_parked; /* what call_parkable parked: co, co_ref, await_id, event */
    bool has_should_enqueue;
    char *hook_name; /* passed to should_enqueue_log_record; see lua_kumod_hook_name */
    uint64_t seen_errors[SEEN_ERRORS];
    size_t seen_error_count;
};

enum outcome_kind {
    OUTCOME_OK,
    OUTCOME_TRANSIENT,
    OUTCOME_PERMANENT,
    OUTCOME_PARKED, /* the hook waits for an ack: p->just_parked */
};

struct outcome {
    enum outcome_kind kind;
    char *reason;   /* malloc'd for TRANSIENT and PERMANENT */
    bool reconnect; /* a Lua error or a 421: kumod closes the connection and builds a new one */
    enum deadletter_reason why; /* PERMANENT: the dead letter's class (zero: the policy's) */
};

/* policy_lua_load.c */
int policy_lua_call_hook(struct policy_lua *p, const char *event, int nargs, int nresults);
/* Pushes the handler list of event and returns its length; pushes nothing when the event
 * has no handler. */
lua_Integer policy_lua_push_handlers(lua_State *L, const char *event);

/* policy_lua.c */
struct outcome policy_lua_error_outcome(struct policy_lua *p, const char *event);
void policy_lua_drop_connection(struct policy_lua *p, struct queue_state *q);
void policy_lua_bind_records(struct policy_lua *p, struct inflight_record **recs, size_t count);
void policy_lua_resolve_all(struct policy_lua *p, struct held_record *members, size_t count,
                            const struct outcome *o);
/* Lets go of a held message's registry reference. */
void policy_lua_unhold(struct policy_lua *p, int message_ref);

/* policy_await.c */
/* As policy_lua_call_hook, but a publish in it may park the hook (LUA_YIELD, the
 * coroutine in p->just_parked) when p->may_park. */
int policy_await_call(struct policy_lua *p, const char *event, int nargs, int nresults);
/* Holds members after an attempt made in call: parked, or waiting for lazy publishes.
 * Frees o->reason. */
void policy_await_hold(struct policy_lua *p, struct queue_state *q, struct held_record *members,
                       size_t count, struct outcome *o);
/* As policy_await_hold for one record, copied: no array to allocate per record. */
void policy_await_hold_one(struct policy_lua *p, struct queue_state *q, const struct held_record *h,
                           struct outcome *o);
/* The attempt that just ran left lazy publishes: its records must be held for them. */
bool policy_await_pending(const struct policy_lua *p);
/* The attempt that just ran failed: its lazy publishes no longer matter. */
void policy_await_discard(struct policy_lua *p);
void policy_await_retry_new(struct policy_lua *p, struct queue_state *q,
                            struct held_record *members, size_t count, const char *reason);
/* The attempt of r is over: parked again, retried later, or decided. Frees o->reason. */
void policy_await_settle(struct policy_lua *p, struct retry *r, struct outcome *o);
void policy_await_retry_free(struct retry *r);
void policy_await_acked(struct policy_lua *p, const struct publish_ack *ack);
void policy_await_run_ready(struct policy_lua *p);
void policy_await_release_members(struct policy_lua *p, struct held_record *members, size_t count,
                                  void (*fn)(void *, struct inflight_record *, const char *,
                                             size_t),
                                  void *ctx);
void policy_await_release(struct policy_lua *p,
                          void (*fn)(void *ctx, struct inflight_record *rec, const char *data,
                                     size_t len),
                          void *ctx);
void policy_await_free(struct policy_lua *p);

#endif
