/* Why a NATS server cannot be reached, in the operating system's words. nats.c says only
 * "No server available for connection" while it retries in the background; a plain TCP
 * connect to each server says "Connection refused", "No route to host" or that the name
 * does not resolve. Also: server URLs as they may be logged, without their userinfo. */
#ifndef RELAY_NATS_PROBE_H
#define RELAY_NATS_PROBE_H

#include <stdbool.h>
#include <stddef.h>

/* Connect over TCP to each server (at most NATS_PROBE_TIMEOUT_MS each) and close again.
 * Returns true when one accepted; otherwise buf gets "host:port: reason" for each,
 * joined with "; ". Blocks the caller: use only while nothing can be published. */
#define NATS_PROBE_TIMEOUT_MS 500
bool nats_probe_tcp(const char *const *servers, size_t count, char *buf, size_t size);

#endif
