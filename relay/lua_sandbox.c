#include "lua_sandbox.h"

#include <lauxlib.h>

#include <string.h>

/* load(chunk [, chunkname [, mode [, env]]]) with mode forced to "t". A string that is a
 * binary chunk gets a message that says why, instead of Lua's "(mode is 't')". */
static int sandbox_load(lua_State *L)
{
    int n = lua_gettop(L);
    size_t len;
    const char *s = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &len) : NULL;
    if (s && len > 0 && s[0] == LUA_SIGNATURE[0]) {
        lua_pushnil(L);
        lua_pushliteral(L, "binary chunks cannot be loaded: a policy loads Lua source only");
        return 2;
    }
    if (n < 3)
        lua_settop(L, n = 3); /* chunkname stays nil when it was not given */
    lua_pushliteral(L, "t");
    lua_replace(L, 3);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, n, LUA_MULTRET);
    return lua_gettop(L);
}

/* loadfile([filename [, mode [, env]]]) with mode forced to "t". */
static int sandbox_loadfile(lua_State *L)
{
    int n = lua_gettop(L);
    if (n < 2)
        lua_settop(L, n = 2);
    lua_pushliteral(L, "t");
    lua_replace(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, n, LUA_MULTRET);
    return lua_gettop(L);
}

static int sandbox_dofile(lua_State *L)
{
    const char *name = luaL_optstring(L, 1, NULL);
    lua_settop(L, 1);
    if (luaL_loadfilex(L, name, "t") != LUA_OK)
        return lua_error(L);
    lua_call(L, 0, LUA_MULTRET);
    return lua_gettop(L) - 1;
}

/* require's searcher for Lua files (package.searchers[2]), text only: the stock one loads
 * whatever the file holds. Upvalue 1 is the package table. */
static int search_lua_source(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    lua_getfield(L, lua_upvalueindex(1), "searchpath");
    lua_pushvalue(L, 1);
    if (lua_getfield(L, lua_upvalueindex(1), "path") != LUA_TSTRING)
        return luaL_error(L, "'package.path' must be a string");
    lua_call(L, 2, 2);
    if (lua_isnil(L, -2))
        return 1; /* searchpath's list of the files tried */
    lua_pop(L, 1);
    const char *file = lua_tostring(L, -1);
    if (luaL_loadfilex(L, file, "t") != LUA_OK)
        return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s", name, file,
                          lua_tostring(L, -1));
    lua_pushvalue(L, -2); /* the file name: require passes it to the chunk */
    return 2;
}

static void wrap_global(lua_State *L, const char *name, lua_CFunction fn)
{
    lua_getglobal(L, name);
    lua_pushcclosure(L, fn, 1);
    lua_setglobal(L, name);
}

/* package.searchers becomes { preload, Lua source }: no C modules, no all-in-one loader. */
static void sandbox_package(lua_State *L)
{
    lua_getglobal(L, "package");
    lua_pushnil(L);
    lua_setfield(L, -2, "loadlib");
    lua_getfield(L, -1, "loaded");
    lua_pushnil(L);
    lua_setfield(L, -2, "debug");
    lua_pop(L, 1);
    lua_getfield(L, -1, "searchers");
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, search_lua_source, 1);
    lua_rawseti(L, -2, 2);
    for (lua_Integer i = (lua_Integer)lua_rawlen(L, -1); i > 2; i--) {
        lua_pushnil(L);
        lua_rawseti(L, -2, i);
    }
    lua_pop(L, 2);
}

void lua_sandbox_open(lua_State *L)
{
    wrap_global(L, "load", sandbox_load);
    wrap_global(L, "loadfile", sandbox_loadfile);
    lua_pushcfunction(L, sandbox_dofile);
    lua_setglobal(L, "dofile");
    lua_pushnil(L);
    lua_setglobal(L, "debug");
    sandbox_package(L);
}
