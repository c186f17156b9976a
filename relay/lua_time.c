/* kumo.time: kumod's mod-time (crates/mod-time/src/lib.rs): now() with elapsed() (ns)
 * and format(strftime, UTC), epoch_millis(), since_millis(ms), start_timer(label) whose
 * done() (or <close>) returns the seconds since it started. sleep is refused: the relay
 * runs every policy on its one event loop, which a sleep would stop for everyone. */
#include "lua_helpers.h"

#include <lauxlib.h>

#include <stdint.h>
#include <time.h>

#define TIME_METATABLE  "kumo.time.Time"
#define TIMER_METATABLE "kumo.time.Timer"

static int64_t ns_of(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int time_now(lua_State *L)
{
    int64_t *t = lua_newuserdatauv(L, sizeof(*t), 0);
    *t = ns_of(CLOCK_REALTIME);
    luaL_setmetatable(L, TIME_METATABLE);
    return 1;
}

static int time_elapsed(lua_State *L)
{
    const int64_t *t = luaL_checkudata(L, 1, TIME_METATABLE);
    lua_pushinteger(L, ns_of(CLOCK_REALTIME) - *t);
    return 1;
}

/* chrono's strftime and C's agree on the common specifiers (%Y %m %d %H %M %S %z ...). */
static int time_format(lua_State *L)
{
    const int64_t *t = luaL_checkudata(L, 1, TIME_METATABLE);
    const char *fmt = luaL_checkstring(L, 2);
    time_t secs = (time_t)(*t / 1000000000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char out[512];
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral" /* the policy's format, by design */
    size_t n = fmt[0] ? strftime(out, sizeof(out), fmt, &tm) : 0;
#pragma GCC diagnostic pop
    if (n == 0 && fmt[0])
        return luaL_error(L, "format: the result of '%s' is empty or too long", fmt);
    lua_pushlstring(L, out, n);
    return 1;
}

static int time_epoch_millis(lua_State *L)
{
    lua_pushinteger(L, ns_of(CLOCK_REALTIME) / 1000000);
    return 1;
}

static int time_since_millis(lua_State *L)
{
    lua_Integer then = luaL_checkinteger(L, 1);
    lua_pushinteger(L, ns_of(CLOCK_REALTIME) / 1000000 - then);
    return 1;
}

/* A timer: its start (monotonic ns), or -1 once done. */
static int time_start_timer(lua_State *L)
{
    luaL_checkstring(L, 1);
    int64_t *t = lua_newuserdatauv(L, sizeof(*t), 0);
    *t = ns_of(CLOCK_MONOTONIC);
    luaL_setmetatable(L, TIMER_METATABLE);
    return 1;
}

static int timer_done(lua_State *L)
{
    int64_t *t = luaL_checkudata(L, 1, TIMER_METATABLE);
    if (*t < 0)
        return 0;
    lua_pushnumber(L, (double)(ns_of(CLOCK_MONOTONIC) - *t) / 1e9);
    *t = -1;
    return 1;
}

static int time_sleep(lua_State *L)
{
    return luaL_error(L, "kumo.sleep is not available in the relay: it would stop the loop "
                         "that relays every record");
}

void lua_time_open(lua_State *L)
{
    static const luaL_Reg time_methods[] = {
        {"elapsed", time_elapsed}, {"format", time_format}, {NULL, NULL}};
    static const luaL_Reg functions[] = {
        {"now", time_now},
        {"epoch_millis", time_epoch_millis},
        {"since_millis", time_since_millis},
        {"start_timer", time_start_timer},
        {"sleep", time_sleep},
        {NULL, NULL},
    };
    if (luaL_newmetatable(L, TIME_METATABLE)) {
        luaL_newlib(L, time_methods);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, TIMER_METATABLE)) {
        lua_createtable(L, 0, 1);
        lua_pushcfunction(L, timer_done);
        lua_setfield(L, -2, "done");
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, timer_done);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
    luaL_newlib(L, functions);
    lua_setfield(L, -2, "time");
    lua_pushcfunction(L, time_sleep);
    lua_setfield(L, -2, "sleep");
}
