/* FNV-1a, the one hash of the relay: the spool directory tag in segment names (32 bits,
 * in message ids: never change it), the segment fingerprint (64 bits, in checkpoints:
 * never change it), and in-memory sets. Not for anything an adversary chooses. */
#ifndef RELAY_FNV_H
#define RELAY_FNV_H

#include <stddef.h>
#include <stdint.h>

#define FNV32_OFFSET 2166136261u
#define FNV32_PRIME  16777619u
#define FNV64_OFFSET 0xcbf29ce484222325ull
#define FNV64_PRIME  0x100000001b3ull

static inline uint64_t fnv64_update(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * FNV64_PRIME;
    return h;
}

static inline uint64_t fnv64_str(const char *s)
{
    uint64_t h = FNV64_OFFSET;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * FNV64_PRIME;
    return h;
}

static inline uint32_t fnv32_str(const char *s)
{
    uint32_t h = FNV32_OFFSET;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * FNV32_PRIME;
    return h;
}

#endif
