#include "nats_auth.h"

#include "config.h"
#include "nkey.h"
#include "secret.h"
#include "url.h"
#include "xalloc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct nats_auth nats_auth_from_config(const struct config *cfg)
{
    return (struct nats_auth){
        .user = cfg->nats_user,
        .password = cfg->nats_password,
        .token = cfg->nats_token,
        .nkey_seed = cfg->nats_nkey_seed,
        .creds = cfg->nats_creds,
        .tls_ca = cfg->nats_tls_ca,
        .tls_cert = cfg->nats_tls_cert,
        .tls_key = cfg->nats_tls_key,
        .tls_required = cfg->nats_tls_required != 0,
    };
}

void nats_auth_free(struct nats_auth *auth)
{
    /* The strings are const to the connections that read them; an owner malloc'd them. */
    secret_free((char *)auth->user);
    secret_free((char *)auth->password);
    secret_free((char *)auth->token);
    free((char *)auth->nkey_seed);
    free((char *)auth->creds);
    free((char *)auth->tls_ca);
    free((char *)auth->tls_cert);
    free((char *)auth->tls_key);
    memset(auth, 0, sizeof(*auth));
}

/* Settings a and b go together: the message when one is missing, else NULL. */
static char *pair_error(const char *section, const char *a_name, const char *a, const char *b_name,
                        const char *b)
{
    if (!a == !b)
        return NULL;
    return xasprintf("%s: %s and %s go together; %s is missing", section, a_name, b_name,
                     a ? b_name : a_name);
}

size_t nats_auth_check(const struct nats_auth *auth, const struct nats_auth_names *names,
                       char *errors[NATS_AUTH_MAX_ERRORS])
{
    size_t n = 0;
    char *e = pair_error(names->section, names->user, auth->user, names->password, auth->password);
    if (e)
        errors[n++] = e;
    int ways = (auth->user || auth->password) + !!auth->token + !!auth->nkey_seed + !!auth->creds;
    if (ways > 1)
        errors[n++] = xasprintf("%s: authenticate one way only: %s", names->section, names->ways);
    e = pair_error(names->tls_section, names->cert, auth->tls_cert, names->key, auth->tls_key);
    if (e)
        errors[n++] = e;
    return n;
}

char *nats_auth_check_file(const char *key, const char *path, bool nkey_seed)
{
    char pub[NKEY_PUBLIC_LEN + 1], *err = NULL;
    if (access(path, R_OK) != 0)
        return xasprintf("%s: cannot read %s: %s", key, path, strerror(errno));
    if (nkey_seed && nkey_public_from_file(path, pub, &err) != 0) {
        char *message = xasprintf("%s: %s", key, err);
        free(err);
        return message;
    }
    return NULL;
}

bool nats_auth_wants_tls(const struct nats_auth *auth)
{
    return auth->tls_required || auth->tls_ca || auth->tls_cert;
}

/* nats.c's own account of the last failure (e.g. OpenSSL's reason for a certificate it
 * could not load); it names files, never the secrets given as values. */
static char *failure(natsStatus st, const char *what)
{
    const char *detail = nats_GetLastError(NULL);
    if (detail && *detail)
        return xasprintf("%s: %s (%s)", what, natsStatus_GetText(st), detail);
    return xasprintf("%s: %s", what, natsStatus_GetText(st));
}

static natsStatus apply_tls(natsOptions *opts, const struct nats_auth *auth, char **err)
{
    natsStatus st = natsOptions_SetSecure(opts, true);
    if (st != NATS_OK) {
        *err = failure(st, "cannot turn TLS on");
        return st;
    }
    if (auth->tls_ca &&
        (st = natsOptions_LoadCATrustedCertificates(opts, auth->tls_ca)) != NATS_OK) {
        *err = failure(st, auth->tls_ca);
        return st;
    }
    if (auth->tls_cert &&
        (st = natsOptions_LoadCertificatesChain(opts, auth->tls_cert, auth->tls_key)) != NATS_OK) {
        char *what = xasprintf("%s and %s", auth->tls_cert, auth->tls_key ? auth->tls_key : "?");
        *err = failure(st, what);
        free(what);
    }
    return st;
}

static natsStatus apply_credentials(natsOptions *opts, const struct nats_auth *auth, char **err)
{
    natsStatus st = NATS_OK;
    if (auth->user)
        st = natsOptions_SetUserInfo(opts, auth->user, auth->password);
    if (st == NATS_OK && auth->token)
        st = natsOptions_SetToken(opts, auth->token);
    if (st != NATS_OK) {
        *err = failure(st, "cannot set the credentials");
        return st;
    }
    if (auth->creds &&
        (st = natsOptions_SetUserCredentialsFromFiles(opts, auth->creds, NULL)) != NATS_OK) {
        *err = failure(st, auth->creds);
        return st;
    }
    if (auth->nkey_seed) {
        /* nats.c wants the public key too, and re-reads the seed at each connect. */
        char pub[NKEY_PUBLIC_LEN + 1];
        if (nkey_public_from_file(auth->nkey_seed, pub, err) != 0)
            return NATS_INVALID_ARG;
        if ((st = natsOptions_SetNKeyFromSeed(opts, pub, auth->nkey_seed)) != NATS_OK)
            *err = failure(st, auth->nkey_seed);
    }
    return st;
}

natsStatus nats_auth_apply(natsOptions *opts, const struct nats_auth *auth, char **err)
{
    natsStatus st = NATS_OK;
    if (nats_auth_wants_tls(auth))
        st = apply_tls(opts, auth, err);
    if (st == NATS_OK)
        st = apply_credentials(opts, auth, err);
    return st;
}

static const char *tls_text(const struct nats_auth *auth)
{
    if (!nats_auth_wants_tls(auth))
        return "";
    return auth->tls_cert ? ", tls with a client certificate" : ", tls";
}

void nats_auth_describe(const struct nats_auth *auth, char *buf, size_t size)
{
    char pub[NKEY_PUBLIC_LEN + 1];
    char *err = NULL;
    const char *tls = tls_text(auth);
    if (auth->user)
        snprintf(buf, size, "user %s%s", auth->user, tls);
    else if (auth->token)
        snprintf(buf, size, "token%s", tls);
    else if (auth->creds)
        snprintf(buf, size, "creds %s%s", auth->creds, tls);
    else if (auth->nkey_seed && nkey_public_from_file(auth->nkey_seed, pub, &err) == 0)
        snprintf(buf, size, "nkey %s%s", pub, tls);
    else if (auth->nkey_seed)
        snprintf(buf, size, "nkey from %s%s", auth->nkey_seed, tls);
    else if (*tls)
        snprintf(buf, size, "none%s", tls);
    else
        snprintf(buf, size, "none");
    free(err);
}

/* nats.c sends the credentials of a server's URL rather than the options' (and those of
 * the first URL that has some to the servers it discovers), so the URL's are the ones to
 * name. */
void nats_auth_describe_servers(const struct nats_auth *auth, const char *const *servers,
                                size_t count, char *buf, size_t size)
{
    char user[128];
    for (size_t i = 0; i < count; i++) {
        enum url_auth kind = url_auth(servers[i], user, sizeof(user));
        if (kind == URL_AUTH_USER) {
            snprintf(buf, size, "user %s in the server URL%s", user, tls_text(auth));
            return;
        }
        if (kind == URL_AUTH_TOKEN) {
            snprintf(buf, size, "token in the server URL%s", tls_text(auth));
            return;
        }
    }
    nats_auth_describe(auth, buf, size);
}
