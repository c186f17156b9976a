/* Secrets: ${ENV} and { file: } values, nkey seeds, the nats: keys of config_load, and
 * that no message ever quotes a secret. */
#include "config.h"
#include "nats_auth.h"
#include "nkey.h"
#include "secret.h"

#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SECRET "s3cret-Value-9c2e"

/* A seed and the public key Python's cryptography package computes for it (the raw seed
 * is bytes 0..31). */
#define SEED   "SUAAAAICAMCAKBQHBAEQUCYMBUHA6EARCIJRIFIWC4MBSGQ3DQOR4H776Y"
#define PUBLIC "UAB2CB576PHBBPQ5ODORRZ2LYCMWPZGWGCN2KDK7DXOIMZASKUY3RLKK"

static char *write_temp(const char *text, size_t length, mode_t mode)
{
    char *path = strdup("/tmp/test_secret_XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0, "mkstemp failed");
    cr_assert_eq(write(fd, text, length), (ssize_t)length);
    fchmod(fd, mode);
    close(fd);
    return path;
}

Test(secret, env_reference_is_the_whole_value)
{
    char name[64];
    cr_assert(secret_env_reference("${NATS_PASSWORD}", name, sizeof(name)));
    cr_assert_str_eq(name, "NATS_PASSWORD");
    cr_assert(secret_env_reference("${_x1}", name, sizeof(name)));
    cr_assert_not(secret_env_reference("pre${X}", name, sizeof(name)));
    cr_assert_not(secret_env_reference("${X}post", name, sizeof(name)));
    cr_assert_not(secret_env_reference("${}", name, sizeof(name)));
    cr_assert_not(secret_env_reference("${1X}", name, sizeof(name)));
    cr_assert_not(secret_env_reference("${A-B}", name, sizeof(name)));
    cr_assert_not(secret_env_reference("$X", name, sizeof(name)));
    cr_assert_not(secret_env_reference("${TOO_LONG_FOR_THE_BUFFER}", name, 8));
}

Test(secret, env_unset_and_empty_are_errors_naming_the_variable)
{
    char *err = NULL;
    unsetenv("KNR_TEST_UNSET");
    cr_assert_null(secret_from_env("KNR_TEST_UNSET", &err));
    cr_assert_str_eq(err, "environment variable KNR_TEST_UNSET is not set");
    free(err);
    setenv("KNR_TEST_EMPTY", "", 1);
    cr_assert_null(secret_from_env("KNR_TEST_EMPTY", &err));
    cr_assert_str_eq(err, "environment variable KNR_TEST_EMPTY is empty");
    free(err);
    setenv("KNR_TEST_SET", SECRET, 1);
    char *value = secret_from_env("KNR_TEST_SET", &err);
    cr_assert_str_eq(value, SECRET);
    secret_free(value);
}

Test(secret, file_loses_its_trailing_newlines_only)
{
    char *path = write_temp(" " SECRET " \r\n\n", strlen(SECRET) + 5, 0600);
    char *err = NULL, *value = secret_read_file(path, &err);
    cr_assert_str_eq(value, " " SECRET " ");
    secret_free(value);
    unlink(path);
    free(path);
}

Test(secret, file_problems_name_the_file_not_the_content)
{
    char *err = NULL;
    cr_assert_null(secret_read_file("/nonexistent/secret", &err));
    cr_assert_str_eq(err, "cannot read /nonexistent/secret: No such file or directory");
    free(err);
    cr_assert_null(secret_read_file("/tmp", &err));
    cr_assert_str_eq(err, "/tmp is not a regular file");
    free(err);

    char *path = write_temp("\n\n", 2, 0600);
    cr_assert_null(secret_read_file(path, &err));
    cr_assert(strstr(err, "is empty"));
    free(err);
    unlink(path);
    free(path);

    path = write_temp(SECRET "\0more", strlen(SECRET) + 5, 0600);
    cr_assert_null(secret_read_file(path, &err));
    cr_assert(strstr(err, "holds a NUL byte") && !strstr(err, SECRET));
    free(err);
    unlink(path);
    free(path);

    size_t big = SECRET_FILE_MAX + 1;
    char *text = malloc(big);
    memset(text, 'x', big);
    path = write_temp(text, big, 0600);
    cr_assert_null(secret_read_file(path, &err));
    cr_assert(strstr(err, "is larger than 65536 bytes"));
    free(err);
    unlink(path);
    free(path);
    free(text);
}

Test(secret, exposed_means_others_may_read)
{
    char *path = write_temp("x", 1, 0640);
    mode_t mode = 0;
    cr_assert_not(secret_file_exposed(path, &mode));
    chmod(path, 0604);
    cr_assert(secret_file_exposed(path, &mode));
    cr_assert_eq(mode, 0604);
    unlink(path);
    free(path);

    /* Inside a directory others cannot search, an o+r file is not exposed. */
    char dir[] = "/tmp/test_secret_dir_XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char *inner = NULL;
    cr_assert(asprintf(&inner, "%s/secret", dir) > 0);
    FILE *f = fopen(inner, "w");
    fputs("x", f);
    fclose(f);
    chmod(inner, 0644);
    chmod(dir, 0750);
    cr_assert_not(secret_file_exposed(inner, &mode));
    chmod(dir, 0755);
    cr_assert(secret_file_exposed(inner, &mode));
    unlink(inner);
    rmdir(dir);
    free(inner);
}

Test(nkey, public_key_of_a_user_seed)
{
    char pub[NKEY_PUBLIC_LEN + 1], *err = NULL;
    cr_assert_eq(nkey_public_from_seed(SEED, strlen(SEED), pub, &err), 0, "%s", err);
    cr_assert_str_eq(pub, PUBLIC);
    /* A seed file as nsc writes it, and a .creds-like file with headers around it. */
    const char *file = "\n  " SEED "  \r\n";
    cr_assert_eq(nkey_public_from_seed(file, strlen(file), pub, &err), 0);
    cr_assert_str_eq(pub, PUBLIC);
    const char *creds =
        "-----BEGIN USER NKEY SEED-----\n" SEED "\n------END USER NKEY SEED------\n";
    cr_assert_eq(nkey_public_from_seed(creds, strlen(creds), pub, &err), 0);
    cr_assert_str_eq(pub, PUBLIC);
}

Test(nkey, damaged_seeds_are_refused_without_quoting_them)
{
    char pub[NKEY_PUBLIC_LEN + 1], *err = NULL;
    char seed[] = SEED;
    seed[20] = seed[20] == 'A' ? 'B' : 'A'; /* one character off: the checksum catches it */
    cr_assert_eq(nkey_public_from_seed(seed, strlen(seed), pub, &err), -1);
    cr_assert_str_eq(err, "the nkey seed's checksum does not match (damaged or mistyped)");
    cr_assert_null(strstr(err, seed));
    free(err);
    seed[20] = '1'; /* not base32 */
    cr_assert_eq(nkey_public_from_seed(seed, strlen(seed), pub, &err), -1);
    cr_assert_str_eq(err, "the nkey seed is not valid base32");
    free(err);
    cr_assert_eq(nkey_public_from_seed("SUAB", 4, pub, &err), -1);
    cr_assert(strstr(err, "no nkey seed"));
    free(err);
    /* A public key where the seed should be. */
    cr_assert_eq(nkey_public_from_seed(PUBLIC, strlen(PUBLIC), pub, &err), -1);
    free(err);
}

Test(nkey, file_errors_name_the_file)
{
    char pub[NKEY_PUBLIC_LEN + 1], *err = NULL;
    char *path = write_temp(SEED "\n", strlen(SEED) + 1, 0600);
    cr_assert_eq(nkey_public_from_file(path, pub, &err), 0);
    cr_assert_str_eq(pub, PUBLIC);
    unlink(path);
    cr_assert_eq(nkey_public_from_file(path, pub, &err), -1);
    cr_assert(strstr(err, path) && strstr(err, "No such file"));
    free(err);
    free(path);
}

/* ---- config_load: the nats: keys ---- */

static char *load(const char *yaml, struct config *cfg)
{
    char *path = write_temp(yaml, strlen(yaml), 0600);
    char *errors = config_load(path, cfg);
    unlink(path);
    free(path);
    return errors;
}

Test(config_secrets, every_form_resolves)
{
    char *pw = write_temp(SECRET "\n", strlen(SECRET) + 1, 0600);
    setenv("KNR_TEST_TOKENLESS_USER", "relay-user", 1);
    char *yaml = NULL;
    cr_assert(asprintf(&yaml,
                       "spool: { dir: /tmp }\n"
                       "nats:\n"
                       "  user: ${KNR_TEST_TOKENLESS_USER}\n"
                       "  password: { file: %s }\n"
                       "  tls: { ca: /etc/hostname }\n"
                       "  tls_required: true\n",
                       pw) > 0);
    struct config cfg;
    char *errors = load(yaml, &cfg);
    cr_assert_null(errors, "%s", errors);
    cr_assert_str_eq(cfg.nats_user, "relay-user");
    cr_assert_str_eq(cfg.nats_password, SECRET);
    cr_assert_null(cfg.nats_token);
    cr_assert_str_eq(cfg.nats_tls_ca, "/etc/hostname");
    cr_assert_eq(cfg.nats_tls_required, 1);
    config_free(&cfg);
    unlink(pw);
    free(pw);
    free(yaml);
}

Test(config_secrets, defaults_are_no_auth_and_no_tls)
{
    struct config cfg;
    char *errors = load("spool: { dir: /tmp }\n", &cfg);
    cr_assert_null(errors, "%s", errors);
    cr_assert(!cfg.nats_user && !cfg.nats_password && !cfg.nats_token && !cfg.nats_creds &&
              !cfg.nats_nkey_seed && !cfg.nats_tls_ca && !cfg.nats_tls_cert && !cfg.nats_tls_key);
    cr_assert_eq(cfg.nats_tls_required, 0);
    config_free(&cfg);
}

/* Every error of a bad secret names the key, never the value. */
Test(config_secrets, errors_never_quote_the_value)
{
    static const char *const cases[] = {
        "nats: { user: u, password: [" SECRET "] }\n",
        "nats: { user: u, password: { file: /nonexistent/" SECRET "x, " SECRET ": 1 } }\n",
        "nats: { user: u, password: \"" SECRET "\\0\" }\n",
        "nats: { password: " SECRET " }\n",
        "nats: { user: u, password: " SECRET ", token: " SECRET " }\n",
        "nats: { token: { " SECRET ": x } }\n",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *yaml = NULL;
        cr_assert(asprintf(&yaml, "spool: { dir: /tmp }\n%s", cases[i]) > 0);
        struct config cfg;
        char *errors = load(yaml, &cfg);
        cr_assert_not_null(errors, "case %zu loads", i);
        cr_assert_null(strstr(errors, SECRET), "case %zu shows the secret: %s", i, errors);
        free(errors);
        free(yaml);
    }
}

Test(config_secrets, pairs_and_exclusive_ways)
{
    static const struct {
        const char *yaml, *message;
    } cases[] = {
        {"nats: { user: u }\n", "nats: user and password go together; password is missing"},
        {"nats: { token: t, creds: /etc/hostname }\n", "nats: authenticate one way only"},
        {"nats: { tls: { key: /etc/hostname } }\n", "nats.tls: cert and key go together; cert"},
        {"nats: { tls: { ca: /nonexistent.pem } }\n",
         "nats.tls.ca: cannot read /nonexistent.pem: No such file or directory"},
        {"nats: { tls_required: yes }\n", "nats.tls_required: expected one of false, true"},
        {"nats: { token: \"${KNR_TEST_SURELY_UNSET}\" }\n",
         "nats.token: environment variable KNR_TEST_SURELY_UNSET is not set"},
        {"nats: { nkey_seed: /etc/hostname }\n", "nats.nkey_seed: /etc/hostname: no nkey seed"},
        {"nats: { password: ~ }\n", "nats.password: expected a string, ${ENV_VAR} or { file: "
                                    "path }, got nothing"},
    };
    unsetenv("KNR_TEST_SURELY_UNSET");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *yaml = NULL;
        cr_assert(asprintf(&yaml, "spool: { dir: /tmp }\n%s", cases[i].yaml) > 0);
        struct config cfg;
        char *errors = load(yaml, &cfg);
        cr_assert_not_null(errors, "case %zu loads", i);
        cr_assert(strstr(errors, cases[i].message), "case %zu: %s", i, errors);
        free(errors);
        free(yaml);
    }
}

Test(nats_auth, describe_never_shows_a_secret)
{
    char buf[160];
    struct nats_auth a = {.user = "relay", .password = SECRET};
    nats_auth_describe(&a, buf, sizeof(buf));
    cr_assert_str_eq(buf, "user relay");
    a = (struct nats_auth){.token = SECRET, .tls_ca = "/ca.pem"};
    nats_auth_describe(&a, buf, sizeof(buf));
    cr_assert_str_eq(buf, "token, tls");
    a = (struct nats_auth){.tls_required = true, .tls_cert = "c", .tls_key = "k"};
    nats_auth_describe(&a, buf, sizeof(buf));
    cr_assert_str_eq(buf, "none, tls with a client certificate");
    a = (struct nats_auth){0};
    nats_auth_describe(&a, buf, sizeof(buf));
    cr_assert_str_eq(buf, "none");
}

Test(nats_auth, unreadable_certificates_are_named)
{
    natsOptions *opts = NULL;
    cr_assert_eq(natsOptions_Create(&opts), NATS_OK);
    struct nats_auth a = {.tls_ca = "/nonexistent/ca.pem"};
    char *err = NULL;
    cr_assert_neq(nats_auth_apply(opts, &a, &err), NATS_OK);
    cr_assert(strstr(err, "/nonexistent/ca.pem"), "%s", err);
    free(err);
    natsOptions_Destroy(opts);
}
