/* The NATS auth rules both front ends share (nats_auth.c): the YAML nats: section and
 * kumo.nats.connect build the same struct nats_auth from the same settings, and refuse
 * the same wrong combinations with the same message, each in its own key names. */
#include "config.h"
#include "lua_nats_internal.h"
#include "nats_auth.h"

#include <criterion/criterion.h>
#include <lauxlib.h>
#include <lualib.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SEED "SUAAAAICAMCAKBQHBAEQUCYMBUHA6EARCIJRIFIWC4MBSGQ3DQOR4H776Y"

static char *write_temp(const char *text)
{
    char *path = strdup("/tmp/test_nats_auth_XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0, "mkstemp failed");
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

/* The YAML front end: config_load on "spool: ..." plus nats. NULL or the errors. */
static char *load_yaml(const char *nats, struct config *cfg)
{
    char *yaml = NULL;
    cr_assert(asprintf(&yaml, "spool: { dir: /tmp }\nnats: %s\n", nats) > 0);
    char *path = write_temp(yaml);
    char *errors = config_load(path, cfg);
    unlink(path);
    free(path);
    free(yaml);
    return errors;
}

static int read_spec(lua_State *L)
{
    lua_nats_read_spec(L, 1);
    return 1;
}

/* The Lua front end: lua_nats_read_spec on the table the Lua expression builds. The spec
 * stays on L's stack; NULL with the error in *err when it is refused. */
static struct connect_spec *load_lua(lua_State *L, const char *table, const char **err)
{
    char *code = NULL;
    cr_assert(asprintf(&code, "return %s", table) > 0);
    cr_assert_eq(luaL_dostring(L, code), LUA_OK, "%s", lua_tostring(L, -1));
    free(code);
    lua_pushcfunction(L, read_spec);
    lua_insert(L, -2);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        *err = lua_tostring(L, -1);
        return NULL;
    }
    *err = NULL;
    return lua_touserdata(L, -1);
}

static void assert_same_string(const char *field, const char *yaml, const char *lua)
{
    if (!yaml || !lua)
        cr_assert_eq(yaml, lua, "%s: yaml %s, lua %s", field, yaml ? yaml : "NULL",
                     lua ? lua : "NULL");
    else
        cr_assert_str_eq(yaml, lua, "%s", field);
}

static void assert_same_auth(const struct nats_auth *a, const struct nats_auth *b)
{
    assert_same_string("user", a->user, b->user);
    assert_same_string("password", a->password, b->password);
    assert_same_string("token", a->token, b->token);
    assert_same_string("nkey_seed", a->nkey_seed, b->nkey_seed);
    assert_same_string("creds", a->creds, b->creds);
    assert_same_string("tls_ca", a->tls_ca, b->tls_ca);
    assert_same_string("tls_cert", a->tls_cert, b->tls_cert);
    assert_same_string("tls_key", a->tls_key, b->tls_key);
    cr_assert_eq(a->tls_required, b->tls_required);
}

Test(nats_auth, both_front_ends_build_the_same_struct)
{
    char *seed = write_temp(SEED "\n");
    char *yaml[4], *lua[4];
    cr_assert(asprintf(&yaml[0], "{ user: relay, password: s3cret, tls: { ca: /etc/hostname, cert: "
                                 "/etc/hostname, key: /etc/passwd }, tls_required: true }") > 0);
    cr_assert(asprintf(&lua[0],
                       "{ servers = { '127.0.0.1:4222' }, auth = { username = { key_data = "
                       "'relay' }, password = { key_data = 's3cret' } }, certificate = "
                       "'/etc/hostname', client_cert = '/etc/hostname', client_key = "
                       "'/etc/passwd', tls_required = true }") > 0);
    cr_assert(asprintf(&yaml[1], "{ token: t0ken }") > 0);
    cr_assert(
        asprintf(&lua[1], "{ servers = { 'h' }, auth = { token = { key_data = 't0ken' } } }") > 0);
    cr_assert(asprintf(&yaml[2], "{ creds: /etc/hostname, tls_required: false }") > 0);
    cr_assert(asprintf(&lua[2], "{ servers = { 'h' }, creds = '/etc/hostname' }") > 0);
    cr_assert(asprintf(&yaml[3], "{ nkey_seed: %s }", seed) > 0);
    cr_assert(asprintf(&lua[3], "{ servers = { 'h' }, nkey_seed = '%s' }", seed) > 0);
    for (size_t i = 0; i < 4; i++) {
        struct config cfg;
        char *errors = load_yaml(yaml[i], &cfg);
        cr_assert_null(errors, "case %zu: %s", i, errors);
        lua_State *L = luaL_newstate();
        const char *err;
        struct connect_spec *spec = load_lua(L, lua[i], &err);
        cr_assert_not_null(spec, "case %zu: %s", i, err);
        struct nats_auth from_config = nats_auth_from_config(&cfg);
        assert_same_auth(&from_config, &spec->auth);
        lua_close(L); /* the spec's __gc frees its strings */
        config_free(&cfg);
        free(yaml[i]);
        free(lua[i]);
    }
    unlink(seed);
    free(seed);
}

Test(nats_auth, both_front_ends_refuse_the_same_combinations_alike)
{
    static const struct {
        const char *yaml, *lua;
        const char *yaml_message, *lua_message;
    } cases[] = {
        {"{ user: u }", "{ servers = { 'h' }, auth = { username = { key_data = 'u' } } }",
         "nats: user and password go together; password is missing",
         "kumo.nats.connect: auth.username and auth.password go together; auth.password is "
         "missing"},
        {"{ password: p }", "{ servers = { 'h' }, auth = { password = { key_data = 'p' } } }",
         "nats: user and password go together; user is missing",
         "kumo.nats.connect: auth.username and auth.password go together; auth.username is "
         "missing"},
        {"{ user: u, password: p, token: t }",
         "{ servers = { 'h' }, auth = { username = { key_data = 'u' }, password = { key_data = "
         "'p' }, token = { key_data = 't' } } }",
         "nats: authenticate one way only: user and password, token, nkey_seed or creds",
         "kumo.nats.connect: authenticate one way only: auth.username and auth.password, "
         "auth.token, nkey_seed or creds"},
        {"{ token: t, creds: /etc/hostname }",
         "{ servers = { 'h' }, auth = { token = { key_data = 't' } }, creds = '/etc/hostname' }",
         "nats: authenticate one way only: user and password, token, nkey_seed or creds",
         "kumo.nats.connect: authenticate one way only: auth.username and auth.password, "
         "auth.token, nkey_seed or creds"},
        {"{ tls: { key: /etc/hostname } }", "{ servers = { 'h' }, client_key = '/etc/hostname' }",
         "nats.tls: cert and key go together; cert is missing",
         "kumo.nats.connect: client_cert and client_key go together; client_cert is missing"},
        {"{ tls: { cert: /etc/hostname } }", "{ servers = { 'h' }, client_cert = '/etc/hostname' }",
         "nats.tls: cert and key go together; key is missing",
         "kumo.nats.connect: client_cert and client_key go together; client_key is missing"},
        {"{ creds: /nonexistent/x.creds }", "{ servers = { 'h' }, creds = '/nonexistent/x.creds' }",
         "nats.creds: cannot read /nonexistent/x.creds: No such file or directory",
         "kumo.nats.connect: creds: cannot read /nonexistent/x.creds: No such file or directory"},
        {"{ nkey_seed: /etc/hostname }", "{ servers = { 'h' }, nkey_seed = '/etc/hostname' }",
         "nats.nkey_seed: /etc/hostname: no nkey seed (a line of 58 characters starting with S)",
         "kumo.nats.connect: nkey_seed: /etc/hostname: no nkey seed (a line of 58 characters "
         "starting with S)"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct config cfg;
        char *errors = load_yaml(cases[i].yaml, &cfg);
        cr_assert_not_null(errors, "case %zu loads", i);
        /* config_load's lines are "file:line: message". */
        char *at = strstr(errors, ": nats");
        cr_assert_not_null(at, "case %zu: %s", i, errors);
        char *eol = strchr(at, '\n');
        if (eol)
            *eol = '\0';
        cr_assert_str_eq(at + 2, cases[i].yaml_message, "case %zu: %s", i, at + 2);
        free(errors);

        lua_State *L = luaL_newstate();
        const char *err;
        cr_assert_null(load_lua(L, cases[i].lua, &err), "case %zu loads", i);
        cr_assert_str_eq(err, cases[i].lua_message, "case %zu: %s", i, err);
        lua_close(L);
    }
}

Test(nats_auth, check_reports_every_broken_rule_in_order)
{
    static const struct nats_auth_names names = {
        .section = "s",
        .user = "u",
        .password = "p",
        .ways = "w",
        .tls_section = "t",
        .cert = "c",
        .key = "k",
    };
    struct nats_auth none = {0};
    char *errors[NATS_AUTH_MAX_ERRORS];
    cr_assert_eq(nats_auth_check(&none, &names, errors), 0);
    struct nats_auth bad = {.password = "x", .token = "y", .tls_key = "z"};
    cr_assert_eq(nats_auth_check(&bad, &names, errors), 3);
    cr_assert_str_eq(errors[0], "s: u and p go together; u is missing");
    cr_assert_str_eq(errors[1], "s: authenticate one way only: w");
    cr_assert_str_eq(errors[2], "t: c and k go together; c is missing");
    for (size_t i = 0; i < 3; i++)
        free(errors[i]);
}
