/* The Message object a Lua policy receives for each log record, as in a KumoMTA log hook:
 * get_data() is the record line with its '\n', get_meta('log_record') the parsed record.
 * The record's JSON is parsed only when the policy asks for a field. */
#ifndef RELAY_LUA_MESSAGE_H
#define RELAY_LUA_MESSAGE_H

#include <lua.h>
#include <stddef.h>
#include <stdint.h>

struct message_source {
    const char *data; /* the line with its '\n'; borrowed until lua_message_pin */
    size_t len;
    const char *segment; /* segment file name */
    uint64_t start, end, ordinal;
    const char *relay_id;
    const char *default_queue; /* policy.queue: queue_name() when no meta 'queue' is set */
};

/* Create the Message metatable (once per state). */
void lua_message_register(lua_State *L);
/* Push a new Message for a record; its data is borrowed (not copied). */
void lua_message_push(lua_State *L, const struct message_source *src);
/* The functions below take the index of a Message (one lua_message_push pushed, or a
 * reference to one): they do not check it, as the methods check their self. */
/* Make the message outlive the record buffer and its segment (retry, batch, await): the
 * line is the Lua string the message makes once, the segment's name and the default queue
 * are copied. relay_id stays borrowed: the configuration outlives the Lua state. */
void lua_message_pin(lua_State *L, int idx);
/* The data was borrowed and is about to go away: any later use raises an error. */
void lua_message_detach(lua_State *L, int idx);
/* The current data (after any set_data) and the 'queue' meta (NULL when unset). */
const char *lua_message_data(lua_State *L, int idx, size_t *len);
const char *lua_message_queue(lua_State *L, int idx);
void lua_message_set_attempts(lua_State *L, int idx, int attempts);
/* Is the value at idx a Message? */
int lua_message_check(lua_State *L, int idx);

#endif
