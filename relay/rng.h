/* The relay's jitter: a small PRNG per thread, seeded from getrandom(2), so that the hosts
 * of a fleet (and the restarts of one) draw different retry delays. Not for secrets. */
#ifndef RELAY_RNG_H
#define RELAY_RNG_H

#include <stdint.h>

/* Seeds this thread's generator from the kernel now (it seeds itself on first use
 * otherwise), and rand() too, for any caller still on it. */
void rng_seed(void);
uint64_t rng_next(void);
/* Uniform in [0, n); 0 for n 0. */
uint64_t rng_below(uint64_t n);
/* Uniform in [0, 1). */
double rng_unit(void);

#endif
