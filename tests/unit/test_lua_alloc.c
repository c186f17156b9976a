/* lua_alloc: the Lua state's size-class free lists keep Lua's allocator contract. */
#include "lua_alloc.h"

#include <criterion/criterion.h>

#include <stdint.h>
#include <string.h>

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(seed + i * 7);
}

static void expect_filled(const unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(p[i], (unsigned char)(seed + i * 7), "byte %zu of %zu", i, n);
}

Test(lua_alloc, every_size_holds_its_bytes)
{
    struct lua_pool pool = {0};
    for (size_t n = 1; n <= LUA_POOL_LARGEST + 64; n++) {
        unsigned char *p = lua_pool_realloc(&pool, NULL, 5 /* a type tag */, n);
        cr_assert_not_null(p);
        fill(p, n, (unsigned)n);
        expect_filled(p, n, (unsigned)n);
        cr_assert_null(lua_pool_realloc(&pool, p, n, 0));
    }
    lua_pool_release(&pool);
}

Test(lua_alloc, resizing_keeps_the_contents)
{
    /* Up and down across classes and across the largest pooled size, both ways. */
    static const size_t steps[] = {1,    16,   17,   250,  257, 1000, 1030, 4096,
                                   4097, 9000, 4096, 2000, 300, 256,  15,   1};
    struct lua_pool pool = {0};
    unsigned char *p = lua_pool_realloc(&pool, NULL, 0, steps[0]);
    fill(p, steps[0], 3);
    for (size_t i = 1; i < sizeof(steps) / sizeof(*steps); i++) {
        size_t old = steps[i - 1], n = steps[i], kept = old < n ? old : n;
        p = lua_pool_realloc(&pool, p, old, n);
        cr_assert_not_null(p, "%zu -> %zu", old, n);
        expect_filled(p, kept, 3);
        fill(p, n, 3);
    }
    lua_pool_realloc(&pool, p, steps[sizeof(steps) / sizeof(*steps) - 1], 0);
    lua_pool_release(&pool);
}

Test(lua_alloc, a_freed_block_is_handed_out_again_in_its_class)
{
    struct lua_pool pool = {0};
    void *a = lua_pool_realloc(&pool, NULL, 0, 1001);
    lua_pool_realloc(&pool, a, 1001, 0);
    void *b = lua_pool_realloc(&pool, NULL, 0, 1024); /* 1001 and 1024: both in 897..1024 */
    if (LUA_POOL_ENABLED) {
        cr_assert_eq(a, b);
        cr_assert_eq(pool.kept, 0);
        /* Shrinking within the class keeps the block where it is. */
        cr_assert_eq(lua_pool_realloc(&pool, b, 1024, 900), b);
    }
    lua_pool_realloc(&pool, b, 900, 0);
    if (LUA_POOL_ENABLED)
        cr_assert_eq(pool.kept, 1024);
    lua_pool_release(&pool);
    cr_assert_eq(pool.kept, 0);
    for (unsigned c = 0; c < LUA_POOL_CLASSES; c++)
        cr_assert_null(pool.free[c]);
}

Test(lua_alloc, the_free_lists_keep_a_bounded_number_of_bytes)
{
    enum { N = 2 * (LUA_POOL_KEEP / LUA_POOL_LARGEST) };
    static void *blocks[N];
    struct lua_pool pool = {0};
    for (size_t i = 0; i < N; i++)
        blocks[i] = lua_pool_realloc(&pool, NULL, 0, LUA_POOL_LARGEST);
    for (size_t i = 0; i < N; i++)
        lua_pool_realloc(&pool, blocks[i], LUA_POOL_LARGEST, 0);
    cr_assert_eq(pool.kept, LUA_POOL_ENABLED ? (size_t)LUA_POOL_KEEP : 0);
    lua_pool_release(&pool);
}
