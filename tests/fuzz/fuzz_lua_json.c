/* JSON → Lua (a record's log_record, kumo.serde.json_parse), then Lua → JSON and back:
 * the second parse must accept what the encoder wrote. The direct parser must agree with
 * jansson's (lua_json_push_reference) on every input: the same values, or both refuse.
 * log_record read a member at a time (lua_record.c) must be the direct parse's object
 * once filled, and taken exactly when the direct parser reads an object. */
#include "lua_json.h"
#include "lua_kumo.h"
#include "lua_record.h"

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
    lua_record_register(L);
    return 0;
}

/* The direct parse is at -1 (nil when it refused). */
static void check_lazy_record(const uint8_t *data, size_t size)
{
    static struct lua_json_member *members;
    static size_t cap;
    size_t count;
    bool object = lua_istable(L, -1) && !lua_json_is_array(L, -1);
    lua_json_check_allow_avx2(size % 2 == 0); /* both maps, the AVX2 one and SSE2 one */
    if (lua_json_scan_object((const char *)data, size, &members, &cap, &count) != object)
        abort(); /* the check and the direct parser disagree on what is an object */
    if (!object)
        return;
    lua_pushlstring(L, (const char *)data, size);
    lua_record_push(L, -1);
    lua_record_fill(L, -1);
    if (!lua_same(L, -1, -3))
        abort(); /* the filled record is not the direct parse */
    lua_pop(L, 2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *err = NULL, *ref_err = NULL;
    if (!lua_json_push_direct(L, (const char *)data, size))
        lua_pushnil(L);
    check_lazy_record(data, size);
    lua_settop(L, 0);
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
