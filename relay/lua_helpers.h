/* kumod's helper modules, each added to the `kumo` table on top of the stack by
 * lua_kumo_open: kumo.serde (lua_serde.c), kumo.string (lua_string.c), kumo.encode and
 * kumo.digest (lua_encode.c), kumo.uuid (lua_uuid.c), kumo.time (lua_time.c). */
#ifndef RELAY_LUA_HELPERS_H
#define RELAY_LUA_HELPERS_H

#include <lua.h>

void lua_serde_open(lua_State *L);
void lua_string_open(lua_State *L);
void lua_encode_open(lua_State *L);
void lua_uuid_open(lua_State *L);
void lua_time_open(lua_State *L);

/* kumo.serde.json_load(path), also kumo.json_load. */
int lua_serde_json_load(lua_State *L);

#endif
