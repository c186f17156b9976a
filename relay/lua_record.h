/* A Message's log_record, read a member at a time. Building the whole ~60-field nested
 * table cost more than publishing the record, and most policies read a field or two (the
 * record type). So get_meta('log_record') checks the text and gives an empty table whose
 * metatable reads a top-level member from the text when it is indexed; anything that can
 * see the table whole (pairs, next, #, an assignment, the raw functions, getmetatable and
 * setmetatable, json_encode and the other C walkers) first fills it with every member, as
 * the eager parse did, and takes the metatable away. The values are lua_json_push_direct's
 * in every case. */
#ifndef RELAY_LUA_RECORD_H
#define RELAY_LUA_RECORD_H

#include <lua.h>

/* The metatable, and next/rawget/rawset/rawlen/getmetatable/setmetatable that fill a
 * record table first (once per state, after the base library is open). */
void lua_record_register(lua_State *L);
/* Push the log record of the record line at idx (a string): a table read lazily when the
 * line is an object the direct parser reads, else as lua_kumo_push_json gives it; nil when
 * it is not JSON. A record nested deeper than the parsers go raises the record error
 * (lua_kumo_record_unusable) that dead-letters it, as the built-in policy does. */
void lua_record_push(lua_State *L, int idx);
/* A C function about to walk the table at idx with lua_next or lua_rawget: fill it if it
 * is a record table not read whole yet. Any other value is left alone, cheaply. */
void lua_record_fill(lua_State *L, int idx);

#endif
