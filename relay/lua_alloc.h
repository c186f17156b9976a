/* The Lua state's memory: freed blocks kept by size class and handed out again.
 *
 * A Lua policy allocates and frees a few dozen blocks per record (tables, closures, the
 * ~1 KB string of message:get_data(), coroutine stacks). Through glibc's malloc, blocks
 * over 1 KB miss its thread cache and each one first consolidates the fast bins: a
 * quarter of the seed policy's CPU went to malloc and free. Lua tells the allocator the
 * old size of every block, so a block can go back on the free list of its class with no
 * header; the lists live as long as the Lua state. */
#ifndef RELAY_LUA_ALLOC_H
#define RELAY_LUA_ALLOC_H

#include <stddef.h>

/* Under AddressSanitizer every block goes to malloc, so that a use after free of a Lua
 * object is still caught rather than hidden by a recycled block. */
#if defined(__SANITIZE_ADDRESS__)
#define LUA_POOL_ENABLED 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LUA_POOL_ENABLED 0
#endif
#endif
#ifndef LUA_POOL_ENABLED
#define LUA_POOL_ENABLED 1
#endif

enum {
    LUA_POOL_CLASSES = 32,    /* 16..256 by 16, then 4 per doubling up to 4096 */
    LUA_POOL_LARGEST = 4096,  /* bigger blocks go straight to malloc */
    LUA_POOL_KEEP = 32 << 20, /* bytes kept on the free lists; the rest goes back */
};

struct lua_pool {
    void *free[LUA_POOL_CLASSES]; /* each list linked through its blocks' first word */
    size_t kept;                  /* bytes on the free lists */
};

/* Lua's lua_Alloc contract (see lua_newstate): ptr NULL allocates, nsize 0 frees (returns
 * NULL), otherwise resizes; returns NULL and leaves ptr alone when memory runs out, and
 * never fails when shrinking. osize is ptr's size when ptr is not NULL. */
void *lua_pool_realloc(struct lua_pool *pool, void *ptr, size_t osize, size_t nsize);

/* Frees the free lists: after lua_close, when every block has come back. */
void lua_pool_release(struct lua_pool *pool);

#endif
