/* Unsigned decimals written and read by hand, for the per-record paths (message ids, reply
 * subjects) where snprintf's format parsing and strtoul's generality were a measurable
 * share of the relay's CPU. */
#ifndef RELAY_DECIMAL_H
#define RELAY_DECIMAL_H

#include <stdint.h>
#include <string.h>

enum { DECIMAL_MAX = 20 }; /* digits of UINT64_MAX */

/* Writes v's digits (no NUL) at out, which has DECIMAL_MAX bytes of room; returns how many. */
static inline size_t decimal_put(char *out, uint64_t v)
{
    char tmp[DECIMAL_MAX];
    char *p = tmp + DECIMAL_MAX;
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    size_t n = (size_t)(tmp + DECIMAL_MAX - p);
    memcpy(out, p, n);
    return n;
}

/* Reads the decimal digits at p into *v: at least one, at most DECIMAL_MAX - 1 (so *v
 * cannot overflow), no sign, no space. Returns the first byte after them (a NUL-ended
 * string stops at its NUL), or NULL when there is no digit or too many. */
static inline const char *decimal_get(const char *p, uint64_t *v)
{
    uint64_t n = 0;
    const char *start = p;
    while ((unsigned)(*p - '0') < 10) {
        if (p - start == DECIMAL_MAX - 1)
            return NULL;
        n = n * 10 + (uint64_t)(*p++ - '0');
    }
    *v = n;
    return p == start ? NULL : p;
}

#endif
