/* JSON → Lua (a record's log_record, kumo.serde.json_parse), then Lua → JSON and back:
 * the second parse must accept what the encoder wrote. The direct parser must agree with
 * jansson's (lua_json_push_reference) on every input: the same values, or both refuse. */
#include "lua_json.h"
#include "lua_kumo.h"

#include "../lua_same.h"

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
    char *err = NULL, *ref_err = NULL;
    int ref = lua_json_push_reference(L, (const char *)data, size, &ref_err);
    free(ref_err);
    if (lua_kumo_push_json(L, (const char *)data, size, &err) != 0) {
        free(err);
        if (ref == 0)
            abort(); /* jansson took what lua_json_push refused */
        lua_settop(L, 0);
        return 0;
    }
    if (ref != 0 || !lua_same(L, -1, -2))
        abort(); /* the direct parser made other values than jansson */
    lua_remove(L, -2);
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
