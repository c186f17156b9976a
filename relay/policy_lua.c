/* The policy at work on records: should_enqueue_log_record, get_queue_config and the
 * queues' constructors, sending (one record, or a batch), and the retries and batches the
 * tick runs. */
#include "policy_lua.h"

#include "config.h"
#include "fnv.h"
#include "log.h"
#include "loop.h"
#include "lua_kumo.h"
#include "lua_message.h"
#include "lua_nats.h"
#include "metrics.h"
#include "offsets.h"
#include "publish.h"
#include "segment.h"
#include "spool.h"
#include "subject.h"
#include "xalloc.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy_lua_internal.h"

/* ---- errors and outcomes ---- */

static bool first_time_seen(struct policy_lua *p, const char *text)
{
    uint64_t h = fnv64_str(text);
    for (size_t i = 0; i < p->seen_error_count; i++)
        if (p->seen_errors[i] == h)
            return false;
    if (p->seen_error_count < SEEN_ERRORS)
        p->seen_errors[p->seen_error_count++] = h;
    return true;
}

/* Turns the error value on top of the stack into an outcome, and pops it. */
struct outcome policy_lua_error_outcome(struct policy_lua *p, const char *event)
{
    struct outcome o = {0};
    int code;
    const char *message;
    if (lua_kumo_is_reject(p->L, -1, &code, &message) && code == 0) {
        o.kind = OUTCOME_PERMANENT; /* lua_kumo_record_unusable: the record itself */
        o.reason = xstrdup(message ? message : "");
    } else if (lua_kumo_is_reject(p->L, -1, &code, &message)) {
        o.kind = code >= 400 && code <= 499 ? OUTCOME_TRANSIENT : OUTCOME_PERMANENT;
        o.reason = xasprintf("rejected: %d %s", code, message ? message : "");
        o.why = DEADLETTER_REJECTED;
        o.reconnect = code == 421;
    } else {
        const char *text = luaL_tolstring(p->L, -1, NULL);
        o.kind = OUTCOME_TRANSIENT;
        metrics_policy_error();
        o.reason = xasprintf("%s", text);
        o.reconnect = true;
        lua_pop(p->L, 1);
        if (first_time_seen(p, o.reason))
            log_warn("lua error in the '%s' event, the record will be retried error=\"%s\"", event,
                     o.reason);
        else
            log_debug("lua error in the '%s' event error=\"%s\"", event, o.reason);
    }
    lua_pop(p->L, 1);
    return o;
}

/* ---- queues: get_queue_config and the constructor ---- */

static struct queue_state *find_queue(struct policy_lua *p, const char *name)
{
    for (struct queue_state *q = p->queues; q; q = q->next)
        if (strcmp(q->name, name) == 0)
            return q;
    return NULL;
}

/* Runs get_queue_config's handlers until one returns a value. */
static struct outcome resolve_queue(struct policy_lua *p, struct queue_state *q)
{
    lua_State *L = p->L;
    lua_Integer n = policy_lua_push_handlers(L, "get_queue_config");
    for (lua_Integer i = 1; i <= n; i++) {
        lua_geti(L, -1, i);
        lua_pushstring(L, q->parts.domain);
        q->parts.tenant[0] ? lua_pushstring(L, q->parts.tenant) : lua_pushnil(L);
        q->parts.campaign[0] ? lua_pushstring(L, q->parts.campaign) : lua_pushnil(L);
        q->parts.routing_domain[0] ? lua_pushstring(L, q->parts.routing_domain) : lua_pushnil(L);
        if (policy_lua_call_hook(p, "get_queue_config", 4, 1) != LUA_OK) {
            struct outcome o = policy_lua_error_outcome(p, "get_queue_config");
            lua_pop(L, 1);
            return o;
        }
        if (!lua_isnil(L, -1)) {
            char *err = lua_kumo_queue_config(L, -1, &q->qc);
            lua_pop(L, 2);
            if (err)
                return (struct outcome){.kind = OUTCOME_PERMANENT, .reason = err};
            return (struct outcome){.kind = OUTCOME_OK};
        }
        lua_pop(L, 1);
    }
    if (n > 0)
        lua_pop(L, 1);
    memset(&q->qc, 0, sizeof(q->qc)); /* no config: no custom_lua protocol */
    return (struct outcome){.kind = OUTCOME_OK};
}

static struct queue_state *new_queue(struct policy_lua *p, const char *name)
{
    struct queue_state *q = xcalloc(1, sizeof(*q));
    q->name = xstrdup(name);
    q->parts_buf = xmalloc(strlen(name) + 4);
    subject_parse_queue(name, q->parts_buf, &q->parts);
    q->connection_ref = LUA_NOREF;
    q->constructor_ref = LUA_NOREF;
    q->qc.batch_size = 0; /* 0 = not resolved yet */
    q->next = p->queues;
    p->queues = q;
    return q;
}

/* ---- sending ---- */

void policy_lua_bind_records(struct policy_lua *p, struct inflight_record **recs, size_t count)
{
    p->nats.records = recs;
    p->nats.record_count = count;
    p->nats.publish_index = 0;
}

/* Pushes the handler list of q's constructor event; false when it has none. kumo.on only
 * ever appends to a list once it exists, so the list is kept rather than looked up per
 * record. */
static bool push_constructor_handlers(struct policy_lua *p, struct queue_state *q)
{
    lua_State *L = p->L;
    if (q->constructor_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, q->constructor_ref);
        return true;
    }
    if (policy_lua_push_handlers(L, q->qc.constructor) == 0)
        return false;
    lua_pushvalue(L, -1);
    q->constructor_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return true;
}

/* Calls the constructor (domain, tenant, campaign) with the global `message` bound to
 * the message at msg_idx (0: none). Leaves its result on the stack on success. */
static int call_constructor(struct policy_lua *p, struct queue_state *q, int msg_idx,
                            struct outcome *o)
{
    lua_State *L = p->L;
    const char *event = q->qc.constructor;
    if (!push_constructor_handlers(p, q)) {
        *o = (struct outcome){
            .kind = OUTCOME_PERMANENT,
            .reason =
                xasprintf("constructor event '%s' of queue %s has no handler", event, q->name)};
        return -1;
    }
    lua_geti(L, -1, 1);
    lua_remove(L, -2);
    if (msg_idx)
        lua_pushvalue(L, msg_idx);
    else
        lua_pushnil(L);
    lua_setglobal(L, "message");
    lua_pushstring(L, q->parts.domain);
    q->parts.tenant[0] ? lua_pushstring(L, q->parts.tenant) : lua_pushnil(L);
    q->parts.campaign[0] ? lua_pushstring(L, q->parts.campaign) : lua_pushnil(L);
    int rc = msg_idx ? policy_await_call(p, event, 3, 1) : policy_lua_call_hook(p, event, 3, 1);
    lua_pushnil(L);
    lua_setglobal(L, "message");
    if (rc == LUA_YIELD) {
        *o = (struct outcome){.kind = OUTCOME_PARKED};
        return -1;
    }
    if (rc != LUA_OK) {
        *o = policy_lua_error_outcome(p, event);
        return -1;
    }
    *o = (struct outcome){.kind = OUTCOME_OK};
    return 0;
}

/* As kumod's lua_deliver.rs after a failed send: the connection object is closed (its
 * close method, if it has one) and the next record calls the constructor again, so a
 * connection gone stale recovers. */
void policy_lua_drop_connection(struct policy_lua *p, struct queue_state *q)
{
    lua_State *L = p->L;
    if (q->connection_ref == LUA_NOREF)
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, q->connection_ref);
    if (lua_getfield(L, -1, "close") == LUA_TFUNCTION) {
        lua_insert(L, -2);
        if (policy_lua_call_hook(p, "close", 1, 0) != LUA_OK) {
            log_warn("lua error in close queue=%s error=\"%s\"", q->name, lua_tostring(L, -1));
            lua_pop(L, 1);
        }
    } else {
        lua_pop(L, 2);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, q->connection_ref);
    q->connection_ref = LUA_NOREF;
    q->constructed = false;
}

/* conn:method(arg) where arg is at arg_idx. */
static struct outcome call_connection(struct policy_lua *p, struct queue_state *q,
                                      const char *method, int arg_idx)
{
    lua_State *L = p->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, q->connection_ref);
    if (lua_getfield(L, -1, method) != LUA_TFUNCTION) {
        lua_pop(L, 2);
        return (struct outcome){
            .kind = OUTCOME_PERMANENT,
            .reason = xasprintf("the connection of queue %s has no %s method", q->name, method)};
    }
    lua_insert(L, -2); /* fn, conn */
    lua_pushvalue(L, arg_idx);
    int rc = policy_await_call(p, method, 2, 0);
    if (rc == LUA_YIELD)
        return (struct outcome){.kind = OUTCOME_PARKED};
    if (rc != LUA_OK) {
        struct outcome o = policy_lua_error_outcome(p, method);
        if (o.reconnect)
            policy_lua_drop_connection(p, q);
        return o;
    }
    return (struct outcome){.kind = OUTCOME_OK};
}

/* Delivers one message (at msg_idx) through queue q. */
static struct outcome send_one(struct policy_lua *p, struct queue_state *q, int msg_idx)
{
    lua_State *L = p->L;
    struct outcome o;
    if (q->constructed && !q->per_record)
        return call_connection(p, q, "send", msg_idx);
    if (call_constructor(p, q, msg_idx, &o) != 0) {
        /* A constructor that waits for an ack publishes itself: the seed shape. */
        if (o.kind == OUTCOME_PARKED && !q->constructed)
            q->constructed = q->per_record = true;
        return o;
    }
    if (!q->constructed && lua_istable(L, -1)) {
        q->connection_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        q->constructed = true;
        return call_connection(p, q, "send", msg_idx);
    }
    /* Returned nothing: the seed document's shape, which published with `message`. */
    lua_pop(L, 1);
    q->constructed = q->per_record = true;
    return o;
}

/* ---- holding records: retries and batches ---- */

/* Every record a hook leaves waiting for its acks is held by a registry reference. A slot
 * let go keeps false (no hole that luaL_ref's length could land before) and is reused:
 * luaL_ref and luaL_unref cost ~540 instructions a record, reading and writing the
 * registry's free list. */
static void hold(struct policy_lua *p, struct held_record *h, struct inflight_record *rec,
                 int msg_idx)
{
    lua_message_pin(p->L, msg_idx);
    lua_pushvalue(p->L, msg_idx);
    h->rec = rec;
    if (p->spare_ref_count == 0) {
        h->message_ref = luaL_ref(p->L, LUA_REGISTRYINDEX);
        return;
    }
    h->message_ref = p->spare_refs[--p->spare_ref_count];
    lua_rawseti(p->L, LUA_REGISTRYINDEX, h->message_ref);
}

void policy_lua_unhold(struct policy_lua *p, int message_ref)
{
    if (p->spare_ref_count == SPARE_REFS) {
        luaL_unref(p->L, LUA_REGISTRYINDEX, message_ref);
        return;
    }
    lua_pushboolean(p->L, 0);
    lua_rawseti(p->L, LUA_REGISTRYINDEX, message_ref);
    p->spare_refs[p->spare_ref_count++] = message_ref;
}

static void let_go(struct policy_lua *p, struct held_record *h, enum policy_verdict verdict,
                   enum deadletter_reason why, const char *reason)
{
    size_t len = 0;
    const char *data = NULL;
    int top = lua_gettop(p->L);
    if (verdict == POLICY_DEADLETTER) {
        /* The data is the message's: it stays on the stack until resolve has it. */
        lua_rawgeti(p->L, LUA_REGISTRYINDEX, h->message_ref);
        data = lua_message_data(p->L, -1, &len);
    }
    p->env.resolve(p->env.ctx, h->rec, verdict, why, reason, data, len);
    lua_settop(p->L, top);
    policy_lua_unhold(p, h->message_ref);
}

void policy_lua_resolve_all(struct policy_lua *p, struct held_record *members, size_t count,
                            const struct outcome *o)
{
    enum policy_verdict v = o->kind == OUTCOME_OK ? POLICY_PUBLISHED : POLICY_DEADLETTER;
    for (size_t i = 0; i < count; i++)
        let_go(p, &members[i], v, o->why, o->reason);
}

/* A batch needs the connection object before there is a message to bind: call the
 * constructor without one. */
static struct outcome ensure_connection(struct policy_lua *p, struct queue_state *q)
{
    struct outcome o = {.kind = OUTCOME_OK};
    if (q->constructed || call_constructor(p, q, 0, &o) != 0)
        return o;
    if (lua_istable(p->L, -1)) {
        q->connection_ref = luaL_ref(p->L, LUA_REGISTRYINDEX);
    } else {
        lua_pop(p->L, 1);
        q->per_record = true;
    }
    q->constructed = true;
    return o;
}

/* Delivers held records: send_batch(self, messages) for a batch, send or the seed shape's
 * constructor for one. */
static struct outcome send_members(struct policy_lua *p, struct queue_state *q,
                                   struct held_record *members, size_t count)
{
    lua_State *L = p->L;
    struct inflight_record **recs = xcalloc(count, sizeof(*recs));
    lua_createtable(L, (int)count, 0);
    for (size_t i = 0; i < count; i++) {
        recs[i] = members[i].rec;
        lua_rawgeti(L, LUA_REGISTRYINDEX, members[i].message_ref);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    policy_lua_bind_records(p, recs, count);
    policy_await_discard(p);
    struct outcome o = {.kind = OUTCOME_OK};
    if (q->qc.batch_size > 1)
        o = ensure_connection(p, q);
    if (o.kind == OUTCOME_OK && q->qc.batch_size > 1 && !q->per_record) {
        p->may_park = true;
        o = call_connection(p, q, "send_batch", lua_gettop(L));
    } else {
        /* One hook per message of a batch cannot wait in the middle: only one may park. */
        p->may_park = count == 1;
        for (size_t i = 0; i < count && o.kind == OUTCOME_OK; i++) {
            policy_lua_bind_records(p, &recs[i], 1);
            lua_rawgeti(L, -1, (lua_Integer)i + 1);
            o = send_one(p, q, lua_gettop(L));
            lua_pop(L, 1);
        }
    }
    p->may_park = false;
    lua_pop(L, 1);
    policy_lua_bind_records(p, NULL, 0);
    free(recs);
    return o;
}

static void flush_batch(struct policy_lua *p, struct queue_state *q)
{
    struct held_record *members = q->batch;
    size_t count = q->batch_count;
    q->batch = NULL;
    q->batch_count = 0;
    struct outcome o = send_members(p, q, members, count);
    if (o.kind == OUTCOME_PARKED || (o.kind == OUTCOME_OK && policy_await_pending(p))) {
        policy_await_hold(p, q, members, count, &o);
        return;
    }
    policy_await_discard(p);
    if (o.kind == OUTCOME_TRANSIENT) {
        policy_await_retry_new(p, q, members, count, o.reason);
    } else {
        policy_lua_resolve_all(p, members, count, &o);
        free(members);
    }
    free(o.reason);
}

/* ---- per record ---- */

static struct outcome should_enqueue(struct policy_lua *p, int msg_idx, bool *relay)
{
    lua_State *L = p->L;
    lua_Integer n = policy_lua_push_handlers(L, "should_enqueue_log_record");
    *relay = n == 0; /* none registered: relay every record */
    /* As kumod's CallbackSignature::call (config crate): a handler that returns no value
     * passes to the next; any value, an explicit nil included, is the answer. */
    for (lua_Integer i = 1; i <= n; i++) {
        int base = lua_gettop(L);
        lua_geti(L, -1, i);
        lua_pushvalue(L, msg_idx);
        lua_pushstring(L, p->hook_name);
        if (policy_lua_call_hook(p, "should_enqueue_log_record", 2, LUA_MULTRET) != LUA_OK) {
            struct outcome o = policy_lua_error_outcome(p, "should_enqueue_log_record");
            lua_pop(L, 1);
            return o;
        }
        bool answered = lua_gettop(L) > base;
        *relay = answered && lua_toboolean(L, base + 1);
        lua_settop(L, base);
        if (answered)
            break;
    }
    if (n > 0)
        lua_pop(L, 1);
    return (struct outcome){.kind = OUTCOME_OK};
}

static struct outcome route(struct policy_lua *p, int msg_idx, struct queue_state **queue)
{
    const char *name = lua_message_queue(p->L, msg_idx);
    if (!name)
        name = p->cfg->policy_queue;
    struct queue_state *q = find_queue(p, name);
    if (!q)
        q = new_queue(p, name);
    *queue = q;
    if (q->qc.batch_size == 0) {
        struct outcome o = resolve_queue(p, q);
        if (o.kind != OUTCOME_OK)
            return o;
        if (q->qc.batch_size == 0)
            q->qc.batch_size = 1;
    }
    if (!q->qc.constructor)
        return (struct outcome){.kind = OUTCOME_PERMANENT,
                                .reason = xasprintf("queue %s has no custom_lua protocol", q->name),
                                .why = DEADLETTER_NO_PROTOCOL};
    return (struct outcome){.kind = OUTCOME_OK};
}

/* Runs the policy for the message at msg_idx. Returns the verdict, or DEFERRED when the
 * record is now held (batch or retry). */
static enum policy_verdict run_policy(struct policy_lua *p, struct inflight_record *rec,
                                      int msg_idx, struct policy_reason *reason)
{
    bool relay;
    struct queue_state *q = NULL;
    struct outcome o = should_enqueue(p, msg_idx, &relay);
    if (o.kind == OUTCOME_OK && !relay)
        return POLICY_DROPPED;
    if (o.kind == OUTCOME_OK)
        o = route(p, msg_idx, &q);
    if (o.kind == OUTCOME_OK && q->qc.batch_size > 1 && !q->per_record) {
        if (q->batch_count == 0)
            q->batch_started_ms = loop_now_ms();
        q->batch = xrealloc(q->batch, (q->batch_count + 1) * sizeof(*q->batch));
        hold(p, &q->batch[q->batch_count++], rec, msg_idx);
        if (q->batch_count >= q->qc.batch_size)
            flush_batch(p, q);
        return POLICY_DEFERRED;
    }
    bool sent = false;
    if (o.kind == OUTCOME_OK) {
        policy_lua_bind_records(p, &rec, 1);
        policy_await_discard(p);
        p->may_park = true;
        o = send_one(p, q, msg_idx);
        p->may_park = false;
        policy_lua_bind_records(p, NULL, 0);
        sent = true;
    }
    if (o.kind == OUTCOME_OK && !policy_await_pending(p))
        return POLICY_PUBLISHED;
    if (o.kind == OUTCOME_OK || o.kind == OUTCOME_PARKED) {
        /* Held until the hook, and every publish it left to be acked, has finished. */
        struct held_record h;
        hold(p, &h, rec, msg_idx);
        policy_await_hold_one(p, q, &h, &o);
        return POLICY_DEFERRED;
    }
    policy_await_discard(p);
    if (o.kind == OUTCOME_PERMANENT) {
        *reason = (struct policy_reason){o.why, o.reason};
        return POLICY_DEADLETTER;
    }
    struct held_record *h = xmalloc(sizeof(*h));
    hold(p, h, rec, msg_idx);
    /* An error from sending retries through the queue (max_age applies, and a dropped
     * connection is built again there); an earlier one runs the whole policy again. */
    policy_await_retry_new(p, sent ? q : NULL, h, 1, o.reason);
    free(o.reason);
    return POLICY_DEFERRED;
}

enum policy_verdict policy_lua_handle(struct policy_lua *p, struct inflight_record *rec,
                                      const struct segment_record *sr, struct policy_reason *reason)
{
    lua_State *L = p->L;
    struct segment *seg = rec->segment;
    struct message_source src = {
        .data = sr->data,
        .len = sr->len,
        .segment = seg->id_name,
        .start = sr->start,
        .end = sr->end,
        .ordinal = sr->ordinal,
        .relay_id = p->cfg->relay_id,
        .default_queue = p->cfg->policy_queue,
    };
    if (sr->oversize) {
        reason->kind = DEADLETTER_OVERSIZE;
        reason->text = xasprintf("record of %zu bytes is larger than max_record_bytes", sr->len);
        return POLICY_DEADLETTER;
    }
    int top = lua_gettop(L);
    lua_message_push(L, &src);
    enum policy_verdict v = run_policy(p, rec, top + 1, reason);
    lua_message_detach(L, top + 1); /* unless pinned: its data was borrowed */
    lua_settop(L, top);
    return v;
}

/* ---- periodic: retries and batches ---- */

static void run_retry(struct policy_lua *p, struct retry *r)
{
    lua_State *L = p->L;
    uint64_t max_age = r->queue ? (uint64_t)r->queue->qc.max_age_ms : 0;
    if (max_age > 0 && loop_now_ms() - r->first_ms > max_age) {
        struct outcome o = {.kind = OUTCOME_PERMANENT,
                            .reason = xasprintf("max_age exceeded; last error: %s",
                                                r->last_error ? r->last_error : "none"),
                            .why = DEADLETTER_MAX_AGE};
        policy_lua_resolve_all(p, r->members, r->count, &o);
        free(o.reason);
        policy_await_retry_free(r);
        return;
    }
    struct outcome o;
    if (r->queue) {
        for (size_t i = 0; i < r->count; i++) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, r->members[i].message_ref);
            lua_message_set_attempts(L, -1, (int)r->attempts);
            lua_pop(L, 1);
        }
        o = send_members(p, r->queue, r->members, r->count);
    } else {
        /* The error came before a queue was known: run the whole policy again. */
        lua_rawgeti(L, LUA_REGISTRYINDEX, r->members[0].message_ref);
        struct policy_reason reason = {0};
        enum policy_verdict v = run_policy(p, r->members[0].rec, lua_gettop(L), &reason);
        lua_pop(L, 1);
        if (v != POLICY_DEFERRED)
            let_go(p, &r->members[0], v, reason.kind, reason.text);
        else
            policy_lua_unhold(p, r->members[0].message_ref);
        free(reason.text);
        policy_await_retry_free(r);
        return;
    }
    policy_await_settle(p, r, &o);
}

void policy_lua_tick(struct policy_lua *p)
{
    lua_nats_tick(&p->nats);
    policy_await_run_ready(p);
    uint64_t now = loop_now_ms();
    struct retry *due = NULL;
    for (struct retry **r = &p->retries; *r;) {
        if ((*r)->due_ms <= now) {
            struct retry *take = *r;
            *r = take->next;
            take->next = due;
            due = take;
        } else {
            r = &(*r)->next;
        }
    }
    while (due) {
        struct retry *r = due;
        due = r->next;
        run_retry(p, r);
    }
    for (struct queue_state *q = p->queues; q; q = q->next) {
        if (q->batch_count > 0 &&
            (q->batch_count >= q->qc.min_batch_size ||
             now - q->batch_started_ms >= (uint64_t)q->qc.max_batch_latency_ms))
            flush_batch(p, q);
    }
}

size_t policy_lua_in_flight(const struct policy_lua *p)
{
    return lua_nats_in_flight(&p->nats);
}

void policy_lua_acked(struct policy_lua *p, const struct publish_ack *ack)
{
    policy_await_acked(p, ack);
}

void policy_lua_release_held(struct policy_lua *p,
                             void (*fn)(void *ctx, struct inflight_record *rec, const char *data,
                                        size_t len),
                             void *ctx)
{
    for (struct queue_state *q = p->queues; q; q = q->next) {
        policy_await_release_members(p, q->batch, q->batch_count, fn, ctx);
        free(q->batch);
        q->batch = NULL;
        q->batch_count = 0;
    }
    policy_await_release(p, fn, ctx);
}
