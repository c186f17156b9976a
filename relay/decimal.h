/* Unsigned decimals written by hand, for the per-record paths (message ids, reply
 * subjects) where snprintf's format parsing was a measurable share of the relay's CPU. */
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

#endif
