#include "rng.h"

#include <stdbool.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static _Thread_local uint64_t state;
static _Thread_local bool seeded;

void rng_seed(void)
{
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed)) {
        /* Before the pool is ready (early boot): still differs between hosts and runs. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)getpid() << 40);
    }
    state = seed;
    seeded = true;
    srand((unsigned)(rng_next() >> 32));
}

/* splitmix64: one add and a few multiplies, fine for jitter. */
uint64_t rng_next(void)
{
    if (!seeded)
        rng_seed();
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t rng_below(uint64_t n)
{
    return n ? rng_next() % n : 0;
}

double rng_unit(void)
{
    return (double)(rng_next() >> 11) * 0x1.0p-53;
}
