/* Deep equality of two Lua values as JSON parsing makes them: same types (an integer is
 * not a float), same numbers, same bytes, tables with the same keys and values. For the
 * tests and the fuzzer that compare the direct JSON parser with jansson's. */
#ifndef TESTS_LUA_SAME_H
#define TESTS_LUA_SAME_H

#include <lua.h>
#include <stdbool.h>
#include <string.h>

static bool lua_same(lua_State *L, int a, int b)
{
    a = lua_absindex(L, a);
    b = lua_absindex(L, b);
    if (lua_type(L, a) != lua_type(L, b))
        return false;
    switch (lua_type(L, a)) {
    case LUA_TNIL:
        return true;
    case LUA_TBOOLEAN:
        return lua_toboolean(L, a) == lua_toboolean(L, b);
    case LUA_TNUMBER:
        if (lua_isinteger(L, a) != lua_isinteger(L, b))
            return false;
        if (lua_isinteger(L, a))
            return lua_tointeger(L, a) == lua_tointeger(L, b);
        {
            lua_Number x = lua_tonumber(L, a), y = lua_tonumber(L, b);
            return memcmp(&x, &y, sizeof(x)) == 0; /* -0.0 is not 0.0 */
        }
    case LUA_TSTRING: {
        size_t la, lb;
        const char *sa = lua_tolstring(L, a, &la), *sb = lua_tolstring(L, b, &lb);
        return la == lb && memcmp(sa, sb, la) == 0;
    }
    case LUA_TTABLE: {
        if (!lua_checkstack(L, 4))
            return false;
        size_t keys_a = 0, keys_b = 0;
        lua_pushnil(L);
        while (lua_next(L, a)) {
            keys_a++;
            lua_pushvalue(L, -2);
            lua_rawget(L, b);
            bool same = lua_same(L, -1, -2);
            lua_pop(L, 2);
            if (!same) {
                lua_pop(L, 1);
                return false;
            }
        }
        lua_pushnil(L);
        while (lua_next(L, b)) {
            keys_b++;
            lua_pop(L, 1);
        }
        return keys_a == keys_b;
    }
    default:
        return false;
    }
}

#endif
