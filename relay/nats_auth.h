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
/* Frees the strings of an auth that owns them (kumo.nats.connect's), wiping the secrets. */
void nats_auth_free(struct nats_auth *auth);

/* The rules every front end (the YAML nats: section, kumo.nats.connect) applies, in one
 * place. The messages name the settings as the front end spells them. */
struct nats_auth_names {
    const char *section;         /* "nats": prefixes the credentials' messages */
    const char *user, *password; /* "user", "password" */
    const char *ways;            /* the ways to authenticate, listed */
    const char *tls_section;     /* "nats.tls": prefixes the client certificate's */
    const char *cert, *key;      /* "cert", "key" */
};

enum { NATS_AUTH_MAX_ERRORS = 3 };

/* Settings that are fine alone and wrong together: a user without a password (or the
 * reverse), more than one way to authenticate, a client certificate without its key (or
 * the reverse). Stores a malloc'd message for each in errors, in that order; returns how
 * many (0: fine). */
size_t nats_auth_check(const struct nats_auth *auth, const struct nats_auth_names *names,
                       char *errors[NATS_AUTH_MAX_ERRORS]);

/* A file the settings name (a certificate, a key, creds, an nkey seed), checked before the
 * first connect so that --check reports it: NULL when it can be read (and, for an nkey
 * seed, holds one), else a malloc'd "<key>: cannot read <path>: <why>" or
 * "<key>: <path>: <what is wrong with the seed>". */
char *nats_auth_check_file(const char *key, const char *path, bool nkey_seed);

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
