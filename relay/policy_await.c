/* Records the Lua policy holds between attempts: retries with their backoff, and hooks
 * parked in publish until their ack comes (kumod's await_ack). A parked hook is a Lua
 * coroutine; the loop resumes it from policy_lua_acked, so waiting never stops the relay
 * and the record stays held (uncommitted) until the hook has finished. */
#include "policy_lua_internal.h"

#include "hook_watchdog.h"
#include "log.h"
#include "loop.h"
#include "lua_message.h"
#include "offsets.h"
#include "publish.h"
#include "rng.h"
#include "segment.h"
#include "xalloc.h"

#include <lauxlib.h>
#include <stdlib.h>

static bool owns_await(void *owner, uint64_t await_id);

/* Resumes co (nargs values on its stack) under a fresh budget, with publish allowed to
 * yield in it. A yield that is not publish's is an error. */
static int resume_hook(struct policy_lua *p, lua_State *co, const char *event, int nargs, int *nres)
{
    p->stopping = hook_watchdog_stopping(p->env.watchdog);
    p->budget = p->stopping ? STOPPING_BUDGET : INSTRUCTION_BUDGET;
    p->current_event = event;
    p->nats.runner = co;
    p->nats.owns = owns_await;
    p->nats.owner = p;
    p->nats.event = event;
    p->nats.parked_await_id = 0;
    hook_watchdog_enter(p->env.watchdog, event);
    int rc = lua_resume(co, p->L, nargs, nres);
    hook_watchdog_leave(p->env.watchdog);
    p->nats.runner = NULL;
    p->current_event = NULL;
    if (rc == LUA_YIELD && p->nats.parked_await_id == 0) {
        lua_settop(co, 0);
        lua_pushfstring(co, "attempt to yield from the '%s' event", event);
        rc = LUA_ERRRUN;
    }
    return rc;
}

/* As call_hook, but on a coroutine when p->may_park: a publish that waits for its ack
 * (kumod's await_ack, the default) yields, and the loop resumes the hook when the ack
 * comes, relaying other records meanwhile. Returns LUA_YIELD with the coroutine in
 * p->just_parked. Lua 5.4 hooks are per thread: each coroutine gets the budget hook. */
int policy_await_call(struct policy_lua *p, const char *event, int nargs, int nresults)
{
    if (!p->may_park)
        return policy_lua_call_hook(p, event, nargs, nresults);
    lua_State *L = p->L;
    if (!p->runner && p->spare_count > 0) {
        p->spare_count--;
        p->runner = p->spare[p->spare_count].co;
        p->runner_ref = p->spare[p->spare_count].ref;
    } else if (!p->runner) {
        p->runner = lua_newthread(L);
        lua_sethook(p->runner, lua_gethook(L), lua_gethookmask(L), lua_gethookcount(L));
        p->runner_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_State *co = p->runner;
    lua_xmove(L, co, nargs + 1);
    int nres = 0;
    int rc = resume_hook(p, co, event, nargs, &nres);
    if (rc == LUA_OK) {
        int keep = nres < nresults ? nres : nresults;
        lua_settop(co, keep); /* the results are all that is on its stack */
        lua_xmove(co, L, keep);
        for (int i = keep; i < nresults; i++)
            lua_pushnil(L);
        return LUA_OK;
    }
    if (rc == LUA_YIELD) {
        p->just_parked.co = co;
        p->just_parked.co_ref = p->runner_ref;
        p->just_parked.await_id = p->nats.parked_await_id;
        p->just_parked.event = event;
        p->just_parked.publish_index = p->nats.publish_index;
    } else {
        lua_xmove(co, L, 1); /* the error */
        luaL_unref(L, LUA_REGISTRYINDEX, p->runner_ref);
    }
    p->runner = NULL; /* parked, or dead after an error: the next hook gets a new one */
    return rc;
}

static uint64_t retry_delay_ms(const struct queue_config *qc, uint32_t attempts)
{
    double ms = (double)(qc->retry_interval_ms > 0 ? qc->retry_interval_ms : 1000);
    for (uint32_t i = 1; i < attempts && ms < 1e12; i++)
        ms *= 2;
    if (qc->max_retry_interval_ms > 0 && ms > (double)qc->max_retry_interval_ms)
        ms = (double)qc->max_retry_interval_ms;
    return (uint64_t)(ms * (0.9 + 0.2 * rng_unit())); /* jitter ±10 % */
}

/* Every record a hook leaves waiting for an ack gets a retry, freed when the ack comes:
 * freed ones are kept for the next (the policies run on the loop thread only). */
enum { SPARE_RETRIES = 4096 }; /* the default in-flight window */
static struct {
    struct retry *head;
    size_t count;
} spare_retries;

static struct retry *retry_new(void)
{
    struct retry *r = spare_retries.head;
    if (!r)
        return xcalloc(1, sizeof(*r));
    spare_retries.head = r->next;
    spare_retries.count--;
    *r = (struct retry){0};
    return r;
}

void policy_await_retry_free(struct retry *r)
{
    free(r->ack);
    if (r->members != &r->one)
        free(r->members);
    free(r->last_error);
    free(r->lazy_error);
    if (spare_retries.count >= SPARE_RETRIES) {
        free(r);
        return;
    }
    r->next = spare_retries.head;
    spare_retries.head = r;
    spare_retries.count++;
}

static void schedule_retry(struct policy_lua *p, struct retry *r, const char *reason)
{
    r->attempts++;
    const struct queue_config *qc = r->queue ? &r->queue->qc : NULL;
    struct queue_config defaults = {.retry_interval_ms = 1000, .max_retry_interval_ms = 60000};
    r->due_ms = loop_now_ms() + retry_delay_ms(qc ? qc : &defaults, r->attempts);
    free(r->last_error);
    r->last_error = xstrdup(reason);
    log_debug("record will be retried attempts=%u in_ms=%llu reason=\"%s\"", r->attempts,
              (unsigned long long)(r->due_ms - loop_now_ms()), reason);
    r->next = p->retries;
    p->retries = r;
}

/* r (from retry_new) for count members, which may be r's own one. */
static struct retry *retry_fill(struct retry *r, struct queue_state *q, struct held_record *members,
                                size_t count)
{
    r->co_ref = LUA_NOREF;
    r->queue = q;
    r->members = members;
    r->count = count;
    r->first_ms = loop_now_ms();
    for (size_t i = 0; i < count; i++)
        if (members[i].rec->read_at_ms < r->first_ms)
            r->first_ms = members[i].rec->read_at_ms;
    return r;
}

static struct retry *retry_alloc(struct queue_state *q, struct held_record *members, size_t count)
{
    return retry_fill(retry_new(), q, members, count);
}

void policy_await_retry_new(struct policy_lua *p, struct queue_state *q,
                            struct held_record *members, size_t count, const char *reason)
{
    schedule_retry(p, retry_alloc(q, members, count), reason);
}

/* Held records are found by await_id in an open-addressing table: with a window of
 * thousands waiting, a list scan per ack was most of a Lua policy's CPU. A record has one
 * slot per ack it waits for. */
static size_t slot_home(uint64_t id, size_t cap)
{
    return (size_t)(id * 0x9E3779B97F4A7C15ull >> 20) & (cap - 1);
}

static void slot_insert(struct await_slot *slots, size_t cap, uint64_t id, struct retry *r)
{
    size_t i = slot_home(id, cap);
    while (slots[i].r)
        i = (i + 1) & (cap - 1);
    slots[i] = (struct await_slot){id, r};
}

static void slot_put(struct policy_lua *p, uint64_t id, struct retry *r)
{
    if ((p->parked.count + 1) * 2 > p->parked.cap) {
        size_t cap = p->parked.cap ? p->parked.cap * 2 : 256;
        struct await_slot *slots = xcalloc(cap, sizeof(*slots));
        for (size_t i = 0; i < p->parked.cap; i++)
            if (p->parked.slots[i].r)
                slot_insert(slots, cap, p->parked.slots[i].await_id, p->parked.slots[i].r);
        free(p->parked.slots);
        p->parked.slots = slots;
        p->parked.cap = cap;
    }
    slot_insert(p->parked.slots, p->parked.cap, id, r);
    p->parked.count++;
}

/* The slot of id, or the free one its probe run ends at. */
static size_t slot_find(const struct policy_lua *p, uint64_t id)
{
    size_t mask = p->parked.cap - 1, i = slot_home(id, p->parked.cap);
    while (p->parked.slots[i].r && p->parked.slots[i].await_id != id)
        i = (i + 1) & mask;
    return i;
}

/* Removes and returns the record waiting for id, or NULL. Deletion shifts the rest of the
 * probe run back, so lookups never need tombstones. */
static struct retry *slot_take(struct policy_lua *p, uint64_t id)
{
    if (p->parked.count == 0)
        return NULL;
    size_t mask = p->parked.cap - 1, i = slot_find(p, id);
    struct await_slot *slots = p->parked.slots;
    struct retry *found = slots[i].r;
    if (!found)
        return NULL;
    slots[i].r = NULL;
    p->parked.count--;
    for (size_t j = (i + 1) & mask; slots[j].r; j = (j + 1) & mask) {
        size_t home = slot_home(slots[j].await_id, p->parked.cap);
        /* slots[j] may move to the hole at i unless its home lies cyclically in (i, j]. */
        bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (!stays) {
            slots[i] = slots[j];
            slots[j].r = NULL;
            i = j;
        }
    }
    return found;
}

/* Takes every slot of r out: its attempt failed, the acks no longer matter. A scan, but
 * only on a failed attempt that left lazy publishes. */
static void slot_forget(struct policy_lua *p, struct retry *r)
{
    for (size_t i = 0; i < p->parked.cap && r->lazy > 0;) {
        if (p->parked.slots[i].r == r) {
            slot_take(p, p->parked.slots[i].await_id);
            r->lazy--;
            continue; /* the shift may have moved another slot here */
        }
        i++;
    }
    r->lazy = 0;
}

/* lua_nats' owns: a lazy publish is the running attempt's own when this run made it (its
 * id is not attached yet), or an earlier run of the attempt did (it waits with the record
 * resumed). Its table then parks the hook, which no other attempt's may. */
static bool owns_await(void *owner, uint64_t await_id)
{
    struct policy_lua *p = owner;
    for (size_t i = 0; i < p->nats.lazy_count; i++)
        if (p->nats.lazy_ids[i] == await_id)
            return true;
    return p->resumed && p->parked.count > 0 &&
           p->parked.slots[slot_find(p, await_id)].r == p->resumed;
}

/* Empties the table onto the front of *list, each record once (for release and free). */
static void parked_drain(struct policy_lua *p, struct retry **list)
{
    for (size_t i = 0; i < p->parked.cap; i++) {
        struct retry *r = p->parked.slots[i].r;
        p->parked.slots[i].r = NULL;
        if (r && !r->listed) {
            r->listed = true;
            r->next = *list;
            *list = r;
        }
    }
    p->parked.count = 0;
}

bool policy_await_pending(const struct policy_lua *p)
{
    return p->nats.lazy_count > 0 || p->nats.lazy_error;
}

void policy_await_discard(struct policy_lua *p)
{
    p->nats.lazy_count = 0;
    free(p->nats.lazy_error);
    p->nats.lazy_error = NULL;
}

/* The lazy publishes the attempt just made wait with r for their acks. */
static void attach_lazy(struct policy_lua *p, struct retry *r)
{
    for (size_t i = 0; i < p->nats.lazy_count; i++) {
        slot_put(p, p->nats.lazy_ids[i], r);
        r->lazy++;
    }
    p->nats.lazy_count = 0;
    if (!r->event)
        r->event = p->nats.event;
    if (p->nats.lazy_error && !r->lazy_error)
        r->lazy_error = p->nats.lazy_error;
    else
        free(p->nats.lazy_error);
    p->nats.lazy_error = NULL;
}

/* The hook of r waits for an ack: policy_lua_acked resumes it. */
static void park(struct policy_lua *p, struct retry *r)
{
    r->co = p->just_parked.co;
    r->co_ref = p->just_parked.co_ref;
    r->await_id = p->just_parked.await_id;
    r->event = p->just_parked.event;
    r->publish_index = p->just_parked.publish_index;
    r->next = NULL;
    attach_lazy(p, r);
    /* A lazy table read waits for its publish's ack: that slot now resumes the hook. */
    if (slot_take(p, r->await_id))
        r->lazy--;
    slot_put(p, r->await_id, r);
    log_debug("lua hook parked for an ack event=%s await_id=%llu", r->event,
              (unsigned long long)r->await_id);
}

/* Decides r: again later, or published / dead-lettered. */
static void decide(struct policy_lua *p, struct retry *r, struct outcome *o)
{
    if (o->kind == OUTCOME_TRANSIENT) {
        schedule_retry(p, r, o->reason);
    } else {
        policy_lua_resolve_all(p, r->members, r->count, o);
        policy_await_retry_free(r);
    }
    free(o->reason);
}

/* Every lazy publish of r's attempt is acked: published, or the first error as if the
 * hook had raised it (a retry; the connection is built again). */
static void lazy_done(struct policy_lua *p, struct retry *r)
{
    struct outcome o = {.kind = OUTCOME_OK};
    if (r->lazy_error) {
        lua_pushstring(p->L, r->lazy_error);
        free(r->lazy_error);
        r->lazy_error = NULL;
        o = policy_lua_error_outcome(p, r->event ? r->event : "send");
        if (o.reconnect && r->queue && !r->queue->per_record)
            policy_lua_drop_connection(p, r->queue);
    }
    decide(p, r, &o);
}

/* The attempt of r is over: parked again, waiting for lazy publishes, retried later, or
 * decided. */
void policy_await_settle(struct policy_lua *p, struct retry *r, struct outcome *o)
{
    if (o->kind == OUTCOME_PARKED) {
        park(p, r);
        free(o->reason);
        return;
    }
    if (o->kind == OUTCOME_OK) {
        attach_lazy(p, r);
        free(o->reason);
        if (r->lazy == 0)
            lazy_done(p, r);
        return;
    }
    policy_await_discard(p);
    slot_forget(p, r);
    free(r->lazy_error);
    r->lazy_error = NULL;
    decide(p, r, o);
}

/* Goes on with a parked hook: its publish returns the ack table or raises the error. */
static void resume_parked(struct policy_lua *p, struct retry *r, const struct publish_ack *ack)
{
    lua_State *L = p->L, *co = r->co;
    struct inflight_record *one, **recs = r->count == 1 ? &one : xcalloc(r->count, sizeof(*recs));
    for (size_t i = 0; i < r->count; i++)
        recs[i] = r->members[i].rec;
    policy_lua_bind_records(p, recs, r->count);
    p->nats.publish_index = r->publish_index; /* the next publish gets the next id */
    p->resumed = r;
    bool seed = r->queue->per_record; /* its constructor reads the global */
    if (seed) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, r->members[0].message_ref);
        lua_setglobal(L, "message");
    }
    lua_nats_push_resume(co, ack);
    int nres = 0;
    int rc = resume_hook(p, co, r->event, 2, &nres);
    p->resumed = NULL;
    if (seed) {
        lua_pushnil(L);
        lua_setglobal(L, "message");
    }
    struct outcome o = {.kind = OUTCOME_OK};
    if (rc == LUA_YIELD) {
        p->just_parked.co = co;
        p->just_parked.co_ref = r->co_ref;
        p->just_parked.await_id = p->nats.parked_await_id;
        p->just_parked.event = r->event;
        p->just_parked.publish_index = p->nats.publish_index;
        o.kind = OUTCOME_PARKED;
    } else {
        if (rc != LUA_OK) {
            lua_xmove(co, L, 1);
            o = policy_lua_error_outcome(p, r->event);
            if (o.reconnect && !seed)
                policy_lua_drop_connection(p, r->queue);
        }
        if (rc == LUA_OK && p->spare_count < SPARE_RUNNERS) {
            lua_settop(co, 0); /* finished: it can run the next hook */
            p->spare[p->spare_count].co = co;
            p->spare[p->spare_count].ref = r->co_ref;
            p->spare_count++;
        } else {
            luaL_unref(L, LUA_REGISTRYINDEX, r->co_ref);
        }
        r->co = NULL;
        r->co_ref = LUA_NOREF;
    }
    policy_lua_bind_records(p, NULL, 0);
    if (recs != &one)
        free(recs);
    policy_await_settle(p, r, &o);
}

/* Later, at the tick: r's ack came while a hook ran. */
static void make_ready(struct policy_lua *p, struct retry *r, const struct publish_ack *ack)
{
    if (ack) {
        r->ack = xmalloc(sizeof(*r->ack));
        *r->ack = *ack;
    }
    r->listed = true;
    r->next = p->ready;
    p->ready = r;
}

/* An ack for a lazy publish of the attempt still running (a table read polled for it). */
static void pending_acked(struct policy_lua *p, const struct publish_ack *ack)
{
    struct lua_nats *nats = &p->nats;
    for (size_t i = 0; i < nats->lazy_count; i++) {
        if (nats->lazy_ids[i] == ack->await_id) {
            nats->lazy_ids[i] = nats->lazy_ids[--nats->lazy_count];
            if (ack->error[0] && !nats->lazy_error)
                nats->lazy_error = xasprintf("publish: %s", ack->error);
            return;
        }
    }
}

void policy_await_acked(struct policy_lua *p, const struct publish_ack *ack)
{
    lua_nats_acked(p->L, &p->nats, ack); /* fills the table publish returned, if any */
    struct retry *r = slot_take(p, ack->await_id);
    if (!r) {
        pending_acked(p, ack);
        return;
    }
    if (r->co && r->await_id == ack->await_id) {
        if (p->current_event)
            make_ready(p, r, ack); /* taken while a hook waits (a table read polling) */
        else
            resume_parked(p, r, ack);
        return;
    }
    r->lazy--;
    if (ack->error[0] && !r->lazy_error)
        r->lazy_error = xasprintf("publish: %s", ack->error);
    if (r->lazy > 0 || r->co)
        return; /* the hook, or another publish of it, is still to finish */
    if (p->current_event)
        make_ready(p, r, NULL);
    else
        lazy_done(p, r);
}

void policy_await_release_members(struct policy_lua *p, struct held_record *members, size_t count,
                                  void (*fn)(void *, struct inflight_record *, const char *,
                                             size_t),
                                  void *ctx)
{
    for (size_t i = 0; i < count; i++) {
        size_t len = 0;
        lua_rawgeti(p->L, LUA_REGISTRYINDEX, members[i].message_ref);
        const char *data = lua_message_data(p->L, -1, &len);
        fn(ctx, members[i].rec, data, len);
        lua_pop(p->L, 1);
        policy_lua_unhold(p, members[i].message_ref);
    }
}

void policy_await_hold(struct policy_lua *p, struct queue_state *q, struct held_record *members,
                       size_t count, struct outcome *o)
{
    policy_await_settle(p, retry_alloc(q, members, count), o);
}

void policy_await_hold_one(struct policy_lua *p, struct queue_state *q, const struct held_record *h,
                           struct outcome *o)
{
    struct retry *r = retry_new();
    r->one = *h;
    policy_await_settle(p, retry_fill(r, q, &r->one, 1), o);
}

/* Resumes the parked hooks whose ack came while another hook ran, and decides the
 * records whose last lazy ack came then. */
void policy_await_run_ready(struct policy_lua *p)
{
    while (p->ready) {
        struct retry *r = p->ready;
        p->ready = r->next;
        r->listed = false;
        struct publish_ack *ack = r->ack;
        r->ack = NULL;
        if (ack)
            resume_parked(p, r, ack);
        else
            lazy_done(p, r);
        free(ack);
    }
}

void policy_await_release(struct policy_lua *p,
                          void (*fn)(void *ctx, struct inflight_record *rec, const char *data,
                                     size_t len),
                          void *ctx)
{
    parked_drain(p, &p->retries);
    struct retry **lists[] = {&p->retries, &p->ready};
    for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
        while (*lists[i]) {
            struct retry *r = *lists[i];
            *lists[i] = r->next;
            /* A parked hook is abandoned: the new policy runs the record again. */
            luaL_unref(p->L, LUA_REGISTRYINDEX, r->co_ref);
            policy_await_release_members(p, r->members, r->count, fn, ctx);
            policy_await_retry_free(r);
        }
    }
}

void policy_await_free(struct policy_lua *p)
{
    parked_drain(p, &p->retries);
    free(p->parked.slots);
    p->parked.slots = NULL;
    p->parked.cap = 0;
    struct retry **lists[] = {&p->retries, &p->ready};
    for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
        while (*lists[i]) {
            struct retry *r = *lists[i];
            *lists[i] = r->next;
            policy_await_retry_free(r);
        }
    }
    while (spare_retries.head) {
        struct retry *r = spare_retries.head;
        spare_retries.head = r->next;
        free(r);
    }
    spare_retries.count = 0;
}
