/* kumo.encode and kumo.digest: kumod's mod-encode and mod-digest (data_encoding's
 * BASE32, BASE32HEX, BASE64, BASE64URL, with and without padding, and HEXLOWER; ring's
 * SHA digests, here OpenSSL's). Decoding is strict as data_encoding's: canonical
 * padding, no stray symbols, zero trailing bits, lowercase hex only. */
#include "lua_helpers.h"

#include "lua_json.h"

#include <lauxlib.h>
#include <openssl/evp.h>

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define DIGEST_METATABLE "kumo.digest.DigestResult"

struct encoding {
    const char *name;
    const char *symbols; /* 2^bits of them */
    int bits;            /* per symbol */
    bool pad;            /* '=' up to a whole block */
};

static const struct encoding encodings[] = {
    {"base32", "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 5, true},
    {"base32_nopad", "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 5, false},
    {"base32hex", "0123456789ABCDEFGHIJKLMNOPQRSTUV", 5, true},
    {"base32hex_nopad", "0123456789ABCDEFGHIJKLMNOPQRSTUV", 5, false},
    {"base64", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", 6, true},
    {"base64_nopad", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", 6, false},
    {"base64url", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", 6, true},
    {"base64url_nopad", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", 6,
     false},
    {"hex", "0123456789abcdef", 4, false},
};

/* Symbols in a padded block: 8 for base32 (40 bits), 4 for base64 (24 bits). */
static size_t block_symbols(const struct encoding *e)
{
    return e->bits == 5 ? 8 : e->bits == 6 ? 4 : 2;
}

static void push_encoded(lua_State *L, const struct encoding *e, const unsigned char *in,
                         size_t len)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    unsigned acc = 0;
    int have = 0;
    size_t out = 0;
    unsigned mask = (1u << e->bits) - 1;
    for (size_t i = 0; i < len; i++) {
        acc = (acc << 8) | in[i];
        have += 8;
        while (have >= e->bits) {
            have -= e->bits;
            luaL_addchar(&b, e->symbols[(acc >> have) & mask]);
            out++;
        }
    }
    if (have > 0) {
        luaL_addchar(&b, e->symbols[(acc << (e->bits - have)) & mask]);
        out++;
    }
    for (; e->pad && out % block_symbols(e) != 0; out++)
        luaL_addchar(&b, '=');
    luaL_pushresult(&b);
}

/* Is n a possible count of symbols of a final, partial block? */
static bool valid_tail(const struct encoding *e, size_t n)
{
    size_t bits = n * (size_t)e->bits;
    return bits % 8 < (size_t)e->bits; /* fewer leftover bits than one symbol holds */
}

/* data_encoding's error text: "<what> at <position>". */
static const char *why_at(const char *what, size_t at)
{
    static char why[64];
    snprintf(why, sizeof(why), "%s at %zu", what, at);
    return why;
}

/* Returns NULL and pushes the bytes, or an error text. */
static const char *decode(lua_State *L, const struct encoding *e, const char *in, size_t len)
{
    size_t n = len;
    if (e->pad) {
        if (len % block_symbols(e) != 0)
            return why_at("invalid length", len);
        while (n > 0 && in[n - 1] == '=')
            n--;
        if (len - n >= block_symbols(e) || (len > n && !valid_tail(e, n % block_symbols(e))))
            return why_at("invalid padding length", n);
    }
    if (!valid_tail(e, n % block_symbols(e)) || (e->bits == 4 && n % 2))
        return why_at("invalid length", n);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    unsigned acc = 0;
    int have = 0;
    for (size_t i = 0; i < n; i++) {
        const char *hit = in[i] ? strchr(e->symbols, in[i]) : NULL;
        if (!hit) {
            luaL_pushresult(&b);
            lua_pop(L, 1);
            return why_at("invalid symbol", i);
        }
        acc = (acc << e->bits) | (unsigned)(hit - e->symbols);
        have += e->bits;
        if (have >= 8) {
            have -= 8;
            luaL_addchar(&b, (char)((acc >> have) & 0xff));
        }
    }
    luaL_pushresult(&b);
    if (have > 0 && (acc & ((1u << have) - 1)) != 0) {
        lua_pop(L, 1);
        return why_at("non-zero trailing bits", n - 1);
    }
    return NULL;
}

static int encode_fn(lua_State *L)
{
    const struct encoding *e = lua_touserdata(L, lua_upvalueindex(1));
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "parameter must be a string");
    size_t len;
    const char *s = lua_tolstring(L, 1, &len);
    push_encoded(L, e, (const unsigned char *)s, len);
    return 1;
}

static int decode_fn(lua_State *L)
{
    const struct encoding *e = lua_touserdata(L, lua_upvalueindex(1));
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *err = decode(L, e, s, len);
    if (err)
        return luaL_error(L, "%s_decode: %s", e->name, err);
    return 1;
}

/* ---- kumo.digest -------------------------------------------------------------------- */

/* The digest of every argument in turn: strings as their bytes, anything else as its
 * JSON (mod-digest's digest_recursive). Returns a DigestResult whose fields are the
 * encodings above, `bytes`, and whose tostring is the hex. */
static int digest_fn(lua_State *L)
{
    const EVP_MD *md = lua_touserdata(L, lua_upvalueindex(1));
    int n = lua_gettop(L);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestInit_ex(ctx, md, NULL) != 1) {
        EVP_MD_CTX_free(ctx);
        return luaL_error(L, "digest: cannot initialise %s", EVP_MD_get0_name(md));
    }
    for (int i = 1; i <= n; i++) {
        if (lua_type(L, i) == LUA_TSTRING) {
            lua_pushvalue(L, i);
        } else {
            lua_pushcfunction(L, lua_json_encode);
            lua_pushvalue(L, i);
            if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
                EVP_MD_CTX_free(ctx);
                return lua_error(L);
            }
        }
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        EVP_DigestUpdate(ctx, s, len);
        lua_pop(L, 1);
    }
    unsigned char *out = lua_newuserdatauv(L, EVP_MAX_MD_SIZE + 1, 0);
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx, out + 1, &len);
    EVP_MD_CTX_free(ctx);
    out[0] = (unsigned char)len;
    luaL_setmetatable(L, DIGEST_METATABLE);
    return 1;
}

static int digest_index(lua_State *L)
{
    const unsigned char *d = luaL_checkudata(L, 1, DIGEST_METATABLE);
    const char *field = luaL_checkstring(L, 2);
    if (strcmp(field, "bytes") == 0) {
        lua_pushlstring(L, (const char *)d + 1, d[0]);
        return 1;
    }
    for (size_t i = 0; i < sizeof(encodings) / sizeof(encodings[0]); i++)
        if (strcmp(field, encodings[i].name) == 0) {
            push_encoded(L, &encodings[i], d + 1, d[0]);
            return 1;
        }
    lua_pushnil(L);
    return 1;
}

static int digest_tostring(lua_State *L)
{
    const unsigned char *d = luaL_checkudata(L, 1, DIGEST_METATABLE);
    push_encoded(L, &encodings[sizeof(encodings) / sizeof(encodings[0]) - 1], d + 1, d[0]);
    return 1;
}

static void digest_open(lua_State *L)
{
    const struct {
        const char *name;
        const EVP_MD *md;
    } digests[] = {
        {"sha1", EVP_sha1()},     {"sha256", EVP_sha256()},         {"sha384", EVP_sha384()},
        {"sha512", EVP_sha512()}, {"sha512_256", EVP_sha512_256()},
    };
    if (luaL_newmetatable(L, DIGEST_METATABLE)) {
        lua_pushcfunction(L, digest_index);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, digest_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    lua_createtable(L, 0, 5);
    for (size_t i = 0; i < sizeof(digests) / sizeof(digests[0]); i++) {
        lua_pushlightuserdata(L, (void *)digests[i].md);
        lua_pushcclosure(L, digest_fn, 1);
        lua_setfield(L, -2, digests[i].name);
    }
    lua_setfield(L, -2, "digest");
}

void lua_encode_open(lua_State *L)
{
    lua_createtable(L, 0, 2 * sizeof(encodings) / sizeof(encodings[0]));
    for (size_t i = 0; i < sizeof(encodings) / sizeof(encodings[0]); i++) {
        char name[32];
        snprintf(name, sizeof(name), "%s_encode", encodings[i].name);
        lua_pushlightuserdata(L, (void *)&encodings[i]);
        lua_pushcclosure(L, encode_fn, 1);
        lua_setfield(L, -2, name);
        snprintf(name, sizeof(name), "%s_decode", encodings[i].name);
        lua_pushlightuserdata(L, (void *)&encodings[i]);
        lua_pushcclosure(L, decode_fn, 1);
        lua_setfield(L, -2, name);
    }
    lua_setfield(L, -2, "encode");
    digest_open(L);
}
