/* Size-class free lists for the Lua state's blocks (see lua_alloc.h for why). */
#include "lua_alloc.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* n in 1..LUA_POOL_LARGEST. Classes 0..15 are 16..256 bytes by 16; from 256 on, each
 * doubling is cut in four, so a block wastes at most a quarter of its size. */
static unsigned size_class(size_t n)
{
    if (n <= 256)
        return (unsigned)((n + 15) >> 4) - 1;
    unsigned lg = 63u - (unsigned)__builtin_clzll((unsigned long long)(n - 1)); /* 8..11 */
    unsigned quarter = (unsigned)((n - 1) >> (lg - 2)) & 3u;
    return 16u + (lg - 8u) * 4u + quarter;
}

static size_t class_size(unsigned c)
{
    if (c < 16)
        return (size_t)(c + 1) * 16;
    unsigned lg = 8u + (c - 16u) / 4u, quarter = (c - 16u) % 4u;
    return ((size_t)1 << lg) + (size_t)(quarter + 1) * ((size_t)1 << (lg - 2));
}

static bool pooled(size_t n)
{
    return LUA_POOL_ENABLED && n > 0 && n <= LUA_POOL_LARGEST;
}

static void *take(struct lua_pool *pool, size_t n)
{
    unsigned c = size_class(n);
    void *block = pool->free[c];
    if (!block)
        return malloc(class_size(c));
    memcpy(&pool->free[c], block, sizeof(void *));
    pool->kept -= class_size(c);
    return block;
}

static void give_back(struct lua_pool *pool, void *block, size_t n)
{
    unsigned c = size_class(n);
    if (pool->kept + class_size(c) > LUA_POOL_KEEP) {
        free(block);
        return;
    }
    memcpy(block, &pool->free[c], sizeof(void *));
    pool->free[c] = block;
    pool->kept += class_size(c);
}

void *lua_pool_realloc(struct lua_pool *pool, void *ptr, size_t osize, size_t nsize)
{
    size_t old = ptr ? osize : 0; /* with ptr NULL, Lua passes the object's type in osize */
    if (nsize == 0) {
        if (pooled(old))
            give_back(pool, ptr, old);
        else
            free(ptr);
        return NULL;
    }
    if (!pooled(old) && !pooled(nsize))
        return realloc(ptr, nsize);
    if (pooled(old) && pooled(nsize) && size_class(old) == size_class(nsize))
        return ptr; /* the block already has room */
    void *block = pooled(nsize) ? take(pool, nsize) : malloc(nsize);
    if (!block)
        return nsize <= old ? ptr : NULL; /* a shrink keeps its bigger block */
    if (ptr) {
        memcpy(block, ptr, old < nsize ? old : nsize);
        if (pooled(old))
            give_back(pool, ptr, old);
        else
            free(ptr);
    }
    return block;
}

void lua_pool_release(struct lua_pool *pool)
{
    for (unsigned c = 0; c < LUA_POOL_CLASSES; c++) {
        void *block = pool->free[c];
        while (block) {
            void *next;
            memcpy(&next, block, sizeof(next));
            free(block);
            block = next;
        }
        pool->free[c] = NULL;
    }
    pool->kept = 0;
}
