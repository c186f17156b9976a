/* JSON → Lua (a record's log_record, kumo.serde.json_parse), then Lua → JSON and back:
 * the second parse must accept what the encoder wrote. */
#include "lua_json.h"
#include "lua_kumo.h"

#include <lauxlib.h>
#include <lualib.h>

#include <stdint.h>
#include <stdlib.h>

static lua_State *L;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    L = luaL_newstate();
    luaL_openlibs(L);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *err = NULL;
    if (lua_kumo_push_json(L, (const char *)data, size, &err) != 0) {
        free(err);
        lua_settop(L, 0);
        return 0;
    }
    lua_pushcfunction(L, lua_json_encode);
    lua_insert(L, -2);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING) {
        size_t len;
        const char *text = lua_tolstring(L, -1, &len);
        if (lua_kumo_push_json(L, text, len, &err) != 0)
            abort(); /* the encoder wrote JSON its own parser refuses */
    }
    lua_settop(L, 0);
    lua_gc(L, LUA_GCSTEP, 0);
    return 0;
}
