/* The one place a nats.c options object is made from the relay's connection settings:
 * servers, name, credentials and TLS, and how it retries. */
#ifndef RELAY_NATS_OPTIONS_H
#define RELAY_NATS_OPTIONS_H

#include "nats_auth.h"

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>

/* A connection made for one question (a probe, reading the stream back at start) gives
 * up after this long, and never reconnects. */
#define NATS_OPTIONS_ONCE_TIMEOUT_MS 2000

struct nats_options_spec {
    const char *const *servers;
    size_t server_count;
    const char *name;             /* shown by the server; NULL: nats.c's default */
    const struct nats_auth *auth; /* credentials and TLS */
    bool once;                    /* one attempt; else reconnect forever */
};

/* *opts gets a new options object (the caller destroys it, also on failure). Returns
 * NATS_OK, or another status with *err (malloc'd) when the credentials or certificates
 * cannot be applied (see nats_auth_apply). */
natsStatus nats_options_create(natsOptions **opts, const struct nats_options_spec *spec,
                               char **err);

#endif
