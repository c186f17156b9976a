/* kumo.nats for Lua policies: connect, publish, close — publishing through the relay's
 * pipelined publisher, so a publish does not block and a record completes when every
 * publish it made is acknowledged. */
#ifndef RELAY_LUA_NATS_H
#define RELAY_LUA_NATS_H

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config;
struct inflight_record;
struct policy_env;
struct publish_ack;

/* Shared with policy_lua.c: who the publishes made right now are for. */
struct lua_nats {
    const struct config *cfg;
    const struct policy_env *env;
    struct inflight_record **records; /* the record (or batch) whose hook is running */
    size_t record_count;
    unsigned publish_index; /* publishes made in this attempt: the Nats-Msg-Id suffix */
    uint64_t next_await_id;
    lua_State *runner;        /* the coroutine a parkable hook runs on: publish waits there */
    uint64_t parked_await_id; /* the ack a publish just yielded for */
    const char *event;        /* the hook the runner runs */
    /* Whether a lazy publish is the running attempt's own: only then may a read of its
     * table park the hook (policy_await.c answers, for owner). */
    bool (*owns)(void *owner, uint64_t await_id);
    void *owner;
    /* Lazy publishes of the running attempt (see client_publish), until policy_await.c
     * attaches them to the held record; an ack that comes first (a table read polling
     * outside a coroutine) takes its id out and leaves an error in lazy_error. */
    uint64_t *lazy_ids;
    size_t lazy_count, lazy_cap;
    char *lazy_error;
    lua_CFunction pcall, xpcall; /* the originals: a publish under them waits at once */
    int awaits_ref;              /* await_id -> the table a publish returned, weak (lua_nats.c) */
    struct lua_nats_client **clients; /* one per distinct connect configuration */
    size_t client_count;
};

/* Set kumo.nats on the table at the top of the stack. */
void lua_nats_open(lua_State *L, struct lua_nats *nats);
/* Ack timeouts and retries of every connection. */
void lua_nats_tick(struct lua_nats *nats);
/* Fill the ack table a publish with await_ack returned, if it is still referenced;
 * false when no such table waits for this ack. */
bool lua_nats_acked(lua_State *L, struct lua_nats *nats, const struct publish_ack *ack);
/* C code about to iterate the table at idx (json_encode...): when it is a lazy publish's
 * table, wait for its ack (polling: C code cannot yield), so it holds kumod's fields. */
void lua_nats_resolve(lua_State *L, int idx);
/* Push what a coroutine parked in publish is resumed with: true and the ack table
 * (kumod's {stream, sequence, duplicate, domain, value}), or false and the error. */
void lua_nats_push_resume(lua_State *L, const struct publish_ack *ack);
/* In flight through all connections. */
size_t lua_nats_in_flight(const struct lua_nats *nats);
void lua_nats_close_all(struct lua_nats *nats);

#endif
