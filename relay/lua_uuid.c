/* kumo.uuid: kumod's mod-uuid (crates/mod-uuid/src/lib.rs). new_v1/new_v4/new_v6/new_v7
 * and parse return a UUID object with the fields hyphenated, simple, braced, urn and
 * bytes, and hyphenated as its tostring. v1 and v6 take a random node id with the
 * multicast bit set (RFC 9562 6.10) where kumod uses a MAC address. */
#include "lua_helpers.h"
#include "hex.h"

#include <lauxlib.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define UUID_METATABLE "kumo.uuid.Uuid"

static void random_bytes(lua_State *L, unsigned char *out, size_t n)
{
    if (getrandom(out, n, 0) != (ssize_t)n)
        luaL_error(L, "uuid: no random bytes from the kernel");
}

static unsigned char *push_uuid(lua_State *L)
{
    unsigned char *u = lua_newuserdatauv(L, 16, 0);
    luaL_setmetatable(L, UUID_METATABLE);
    return u;
}

static void set_version(unsigned char *u, int version)
{
    u[6] = (unsigned char)((u[6] & 0x0f) | (version << 4));
    u[8] = (unsigned char)((u[8] & 0x3f) | 0x80); /* RFC variant */
}

static int uuid_new_v4(lua_State *L)
{
    unsigned char *u = push_uuid(L);
    random_bytes(L, u, 16);
    set_version(u, 4);
    return 1;
}

/* 48 bits of Unix milliseconds, then random bits. */
static int uuid_new_v7(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    unsigned char *u = push_uuid(L);
    random_bytes(L, u + 6, 10);
    for (int i = 0; i < 6; i++)
        u[i] = (unsigned char)(ms >> (40 - 8 * i));
    set_version(u, 7);
    return 1;
}

/* 100 ns intervals since 1582-10-15, the Gregorian epoch of v1 and v6. */
static uint64_t gregorian_ticks(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 10000000 + (uint64_t)ts.tv_nsec / 100 + 0x01B21DD213814000ULL;
}

/* Clock sequence and node: random, the node with its multicast bit set. */
static void clock_seq_and_node(lua_State *L, unsigned char *u)
{
    random_bytes(L, u + 8, 8);
    u[10] |= 0x01;
}

static int uuid_new_v1(lua_State *L)
{
    uint64_t t = gregorian_ticks();
    unsigned char *u = push_uuid(L);
    clock_seq_and_node(L, u);
    uint32_t low = (uint32_t)t;
    uint16_t mid = (uint16_t)(t >> 32), high = (uint16_t)(t >> 48);
    unsigned char fields[8] = {low >> 24, low >> 16, low >> 8, low, mid >> 8, mid, high >> 8, high};
    memcpy(u, fields, 8);
    set_version(u, 1);
    return 1;
}

/* v1's timestamp with its most significant bits first, so that v6 ids sort by time. */
static int uuid_new_v6(lua_State *L)
{
    uint64_t t = gregorian_ticks() << 4; /* 60 bits, then the version nibble's place */
    unsigned char *u = push_uuid(L);
    clock_seq_and_node(L, u);
    for (int i = 0; i < 6; i++)
        u[i] = (unsigned char)(t >> (56 - 8 * i));
    u[6] = (unsigned char)((t >> 12) & 0x0f);
    u[7] = (unsigned char)(t >> 4);
    set_version(u, 6);
    return 1;
}

/* Uuid::try_parse: simple (32 hex), hyphenated (8-4-4-4-12), braced {…}, urn:uuid:… */
static bool parse_uuid(const char *s, size_t len, unsigned char *u)
{
    if (len == 45 && strncasecmp(s, "urn:uuid:", 9) == 0)
        s += 9, len -= 9;
    else if (len == 38 && s[0] == '{' && s[37] == '}')
        s += 1, len -= 2;
    bool hyphens = len == 36;
    if (!hyphens && len != 32)
        return false;
    int n = 0;
    for (size_t i = 0; i < len; i++) {
        if (hyphens && (i == 8 || i == 13 || i == 18 || i == 23)) {
            if (s[i] != '-')
                return false;
            continue;
        }
        int v = hex_value(s[i]);
        if (v < 0)
            return false;
        u[n / 2] = (unsigned char)(n % 2 ? (u[n / 2] | v) : v << 4);
        n++;
    }
    return true;
}

static int uuid_parse(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    unsigned char u[16];
    if (!parse_uuid(s, len, u))
        return luaL_error(L, "uuid.parse: '%s' is not a UUID", s);
    memcpy(push_uuid(L), u, 16);
    return 1;
}

static void format_uuid(const unsigned char *u, bool hyphens, char *out)
{
    for (int i = 0; i < 16; i++) {
        if (hyphens && (i == 4 || i == 6 || i == 8 || i == 10))
            *out++ = '-';
        out += sprintf(out, "%02x", u[i]);
    }
}

static int uuid_index(lua_State *L)
{
    const unsigned char *u = luaL_checkudata(L, 1, UUID_METATABLE);
    const char *field = luaL_checkstring(L, 2);
    char text[40];
    if (strcmp(field, "bytes") == 0) {
        lua_pushlstring(L, (const char *)u, 16);
    } else if (strcmp(field, "simple") == 0) {
        format_uuid(u, false, text);
        lua_pushlstring(L, text, 32);
    } else if (strcmp(field, "hyphenated") == 0) {
        format_uuid(u, true, text);
        lua_pushlstring(L, text, 36);
    } else if (strcmp(field, "braced") == 0) {
        format_uuid(u, true, text);
        lua_pushfstring(L, "{%s}", text);
    } else if (strcmp(field, "urn") == 0) {
        format_uuid(u, true, text);
        lua_pushfstring(L, "urn:uuid:%s", text);
    } else {
        lua_pushnil(L);
    }
    return 1;
}

static int uuid_tostring(lua_State *L)
{
    const unsigned char *u = luaL_checkudata(L, 1, UUID_METATABLE);
    char text[40];
    format_uuid(u, true, text);
    lua_pushlstring(L, text, 36);
    return 1;
}

void lua_uuid_open(lua_State *L)
{
    static const luaL_Reg functions[] = {
        {"new_v1", uuid_new_v1}, {"new_v4", uuid_new_v4}, {"new_v6", uuid_new_v6},
        {"new_v7", uuid_new_v7}, {"parse", uuid_parse},   {NULL, NULL},
    };
    if (luaL_newmetatable(L, UUID_METATABLE)) {
        lua_pushcfunction(L, uuid_index);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, uuid_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    luaL_newlib(L, functions);
    lua_setfield(L, -2, "uuid");
}
