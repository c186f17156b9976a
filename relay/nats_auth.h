/* Authentication and TLS of a nats.c connection, from the relay's connection settings. */
#ifndef RELAY_NATS_AUTH_H
#define RELAY_NATS_AUTH_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>

/* The secrets and files one connection authenticates with. Strings are read at once
 * (nats.c copies them, and loads certificates when told), so they may be freed after
 * nats_auth_apply. */
struct nats_auth {
    const char *user, *password; /* the values */
    const char *token;           /* the value */
    const char *nkey_seed;       /* path of a file holding a user nkey seed */
    const char *creds;           /* path of a .creds file */
    const char *tls_ca;          /* PEM CAs; NULL: the system's */
    const char *tls_cert, *tls_key;
    bool tls_required;
};

struct config;

/* The default connection's settings (the nats: section); the strings stay the config's. */
struct nats_auth nats_auth_from_config(const struct config *cfg);

/* True when the settings ask for TLS (tls_required, a CA or a client certificate). */
bool nats_auth_wants_tls(const struct nats_auth *auth);

/* Apply to opts. Returns NATS_OK, or another status with *err (malloc'd) saying what
 * failed and with which file; it never quotes a secret. */
natsStatus nats_auth_apply(natsOptions *opts, const struct nats_auth *auth, char **err);

/* Describes how a connection authenticates, for the log: "user relay", "token",
 * "nkey UABC...", "creds /etc/x.creds", "none"; and whether with TLS. Never a secret. */
void nats_auth_describe(const struct nats_auth *auth, char *buf, size_t size);

/* The same for a connection to these servers: credentials in a server URL
 * (nats://user:password@host, nats://token@host) are named as "user NAME in the server
 * URL" or "token in the server URL", since nats.c prefers them to the settings'. */
void nats_auth_describe_servers(const struct nats_auth *auth, const char *const *servers,
                                size_t count, char *buf, size_t size);

#endif
