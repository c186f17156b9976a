/* What a policy may load: Lua source only, as KumoMTA's safe Lua state allows. A binary
 * chunk (string.dump's output, maybe altered) is not checked by Lua's undump and can crash
 * the process, so load, loadfile, dofile and require take text only; C modules and the
 * debug library are not there at all. */
#ifndef RELAY_LUA_SANDBOX_H
#define RELAY_LUA_SANDBOX_H

#include <lua.h>

/* After luaL_openlibs: replace the loaders, remove debug and package.loadlib. */
void lua_sandbox_open(lua_State *L);

#endif
