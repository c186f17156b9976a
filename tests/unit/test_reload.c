/* reload: SIGHUP's reload_run on a relay made by hand (configuration, loop, policy and
 * the default connection, to a loopback port where nothing listens): what it applies,
 * what it refuses with "restart to apply it", and that a failure keeps the running
 * configuration and policy. */
#include "config.h"
#include "log.h"
#include "loop.h"
#include "policy.h"
#include "publish.h"
#include "relay_internal.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[64];
static char config_path[128];
static char log_path[128];
static int saved_stderr = -1;

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

/* stderr (where log_msg writes) goes to a file for the test. */
static void setup(void)
{
    strcpy(tmpdir, "/tmp/relay-test-reload-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir), "mkdtemp: %s", strerror(errno));
    snprintf(config_path, sizeof(config_path), "%s/relay.yaml", tmpdir);
    snprintf(log_path, sizeof(log_path), "%s/log", tmpdir);
    int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    cr_assert_geq(fd, 0);
    saved_stderr = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
    log_set_level(LOG_LEVEL_INFO);
}

static void teardown(void)
{
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(reload, .init = setup, .fini = teardown);

static char *log_text(void)
{
    static char text[16384];
    int fd = open(log_path, O_RDONLY);
    ssize_t n = read(fd, text, sizeof(text) - 1);
    close(fd);
    text[n > 0 ? n : 0] = '\0';
    return text;
}

static void clear_log(void)
{
    cr_assert_eq(truncate(log_path, 0), 0);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "create %s: %s", path, strerror(errno));
    fputs(text, f);
    cr_assert_eq(fclose(f), 0);
}

/* The relay's configuration: the base settings with extra lines (printf format, with
 * every %s the temp dir). */
static void write_config(const char *extra, ...)
{
    char more[1024] = "";
    va_list ap;
    va_start(ap, extra);
    vsnprintf(more, sizeof(more), extra, ap);
    va_end(ap);
    char text[2048];
    snprintf(text, sizeof(text),
             "nats:\n"
             "  servers: nats://127.0.0.1:1\n" /* nothing listens: connecting never blocks */
             "%s",
             more);
    write_text(config_path, text);
}

static const char base[] = "relay_id: r1\n"
                           "spool:\n"
                           "  dir: %s/spool\n"
                           "  pattern: \"*\"\n"
                           "state_dir: %s/state\n"
                           "jetstream:\n"
                           "  max_in_flight: 100\n";

struct fixture {
    struct relay r;
    struct config cfg; /* as main owns it */
};

static void start(struct fixture *f)
{
    write_config(base, tmpdir, tmpdir);
    char *err = config_load(config_path, &f->cfg);
    cr_assert_null(err, "config: %s", err);
    f->r.cfg = &f->cfg;
    f->r.loop = loop_create();
    struct policy_env env = relay_policy_env(&f->r);
    f->r.policy = policy_create(&f->cfg, &env, &err);
    cr_assert_not_null(f->r.policy, "policy: %s", err);
    f->r.pub = relay_open_default_publisher(&f->r, &f->cfg, &err);
    cr_assert_not_null(f->r.pub, "publisher: %s", err);
    clear_log();
}

static void stop(struct fixture *f)
{
    policy_destroy(f->r.policy);
    reload_release_all(&f->r);
    publisher_destroy(f->r.pub);
    loop_destroy(f->r.loop);
    config_free(&f->cfg);
}

/* reload_run refused: the running configuration, policy and connection stay, and the
 * log says why in one line. */
static void expect_refused(struct fixture *f, const char *error /* NULL: any */)
{
    const struct config *cfg = f->r.cfg;
    struct policy *policy = f->r.policy;
    struct publisher *pub = f->r.pub;
    clear_log();
    reload_run(&f->r);
    cr_expect_eq(f->r.cfg, cfg, "the configuration was replaced");
    cr_expect_eq(f->r.policy, policy, "the policy was replaced");
    cr_expect_eq(f->r.pub, pub, "the connection was replaced");
    cr_expect_null(f->r.retired);
    char want[1024];
    snprintf(want, sizeof(want),
             "error reload failed, still running the previous configuration and policy "
             "error=\"%s%s",
             error ? error : "", error ? "\"\n" : "");
    const char *log = log_text();
    cr_expect_not_null(strstr(log, want), "expected\n%s\nin\n%s", want, log);
    cr_expect_null(strstr(log, "reloaded"), "%s", log);
}

Test(reload, applies_the_log_level_and_a_new_policy)
{
    struct fixture f = {0};
    start(&f);
    struct policy *old_policy = f.r.policy;
    struct publisher *old_pub = f.r.pub;
    cr_expect_not(log_enabled(LOG_LEVEL_DEBUG));
    char more[512];
    snprintf(more, sizeof(more), "%s%s", base,
             "policy:\n  subject: \"mail.{type}\"\nlog:\n  level: debug\n");
    write_config(more, tmpdir, tmpdir);

    reload_run(&f.r);
    cr_assert_neq(f.r.cfg, &f.cfg);
    cr_expect_eq(f.r.owned_cfg, f.r.cfg);
    cr_expect_str_eq(f.r.cfg->policy_subject, "mail.{type}");
    cr_expect(log_enabled(LOG_LEVEL_DEBUG), "log.level applies at once");
    cr_expect_neq(f.r.policy, old_policy);
    cr_expect_not_null(f.r.pub, "the built-in policy gets its own new connection");
    cr_expect_neq(f.r.pub, old_pub);
    /* The old policy and connection are retired until their publishes are acked. */
    cr_assert_not_null(f.r.retired);
    cr_expect_eq(f.r.retired->policy, old_policy);
    cr_expect_eq(f.r.retired->pub, old_pub);
    cr_expect_null(f.r.retired->cfg, "main owns the first configuration");
    cr_expect_not_null(strstr(log_text(), "reloaded configuration and policy policy=built-in"),
                       "%s", log_text());
    reload_tick(&f.r);
    cr_expect_null(f.r.retired, "nothing in flight: the retired ones are let go");

    /* A second reload retires the configuration the first one made. */
    const struct config *second = f.r.cfg;
    write_config(base, tmpdir, tmpdir);
    reload_run(&f.r);
    cr_assert_not_null(f.r.retired);
    cr_expect_eq(f.r.retired->cfg, second);
    cr_expect_not(log_enabled(LOG_LEVEL_DEBUG), "back to info");
    cr_expect_str_eq(f.r.cfg->policy_subject, "kumo.log.{type}");
    stop(&f);
}

Test(reload, refuses_what_needs_a_restart)
{
    struct fixture f = {0};
    start(&f);
    char more[1024], want[512];

    write_config("relay_id: r1\n"
                 "spool:\n"
                 "  - dir: %s/spool\n"
                 "  - dir: %s/spool2\n"
                 "state_dir: %s/state\n"
                 "jetstream:\n"
                 "  max_in_flight: 100\n",
                 tmpdir, tmpdir, tmpdir);
    expect_refused(&f, "spool list changed (2 directories, was 1): restart to apply it");

    write_config("relay_id: r1\nspool:\n  dir: %s/other\n  pattern: \"*\"\nstate_dir: %s/state\n"
                 "jetstream:\n  max_in_flight: 100\n",
                 tmpdir, tmpdir);
    snprintf(want, sizeof(want),
             "spool directory 1 changed (%s/other, was %s/spool): restart to apply it", tmpdir,
             tmpdir);
    expect_refused(&f, want);

    write_config("relay_id: r1\nspool:\n  dir: %s/spool\n  pattern: \"*.log\"\n"
                 "state_dir: %s/state\njetstream:\n  max_in_flight: 100\n",
                 tmpdir, tmpdir);
    snprintf(want, sizeof(want), "spool.pattern of %s/spool changed: restart to apply it", tmpdir);
    expect_refused(&f, want);

    write_config("relay_id: r1\nspool:\n  dir: %s/spool\n  pattern: \"*\"\n"
                 "state_dir: %s/state2\njetstream:\n  max_in_flight: 100\n",
                 tmpdir, tmpdir);
    expect_refused(&f, "state_dir changed: restart to apply it");

    snprintf(more, sizeof(more), "%s", base);
    more[strlen("relay_id: r")] = '2';
    write_config(more, tmpdir, tmpdir);
    expect_refused(&f, "relay_id changed: restart to apply it");

    snprintf(more, sizeof(more), "%s", base);
    strstr(more, "100")[2] = '1';
    write_config(more, tmpdir, tmpdir);
    expect_refused(&f, "jetstream.max_in_flight changed: restart to apply it");

    snprintf(more, sizeof(more), "%smetrics:\n  listen: 127.0.0.1:1\n", base);
    write_config(more, tmpdir, tmpdir);
    expect_refused(&f, "metrics.listen changed: restart to apply it");
    stop(&f);
}

Test(reload, a_policy_that_does_not_load_keeps_the_running_one)
{
    struct fixture f = {0};
    start(&f);
    char script[160], more[1024], want[512];
    snprintf(script, sizeof(script), "%s/policy.lua", tmpdir);
    write_text(script, "kumo.on('init', function(\n");
    snprintf(more, sizeof(more), "%spolicy:\n  script: %s\n", base, script);
    write_config(more, tmpdir, tmpdir);
    clear_log();
    reload_run(&f.r);
    cr_expect_eq(f.r.cfg, &f.cfg);
    cr_expect_null(f.r.retired);
    snprintf(want, sizeof(want),
             "reload failed, still running the previous configuration and policy "
             "error=\"policy.script %s: policy.lua:2: <name> or '...' expected near <eof>\"\n",
             script);
    cr_expect_not_null(strstr(log_text(), want), "expected\n%s\nin\n%s", want, log_text());

    /* Fixed, it loads: a Lua policy opens its own connections, so none for the relay. */
    write_text(script, "kumo.on('init', function() end)\n");
    struct publisher *old_pub = f.r.pub;
    clear_log();
    reload_run(&f.r);
    cr_expect_str_eq(f.r.cfg->policy_script, script);
    cr_expect_null(f.r.pub);
    cr_assert_not_null(f.r.retired);
    cr_expect_eq(f.r.retired->pub, old_pub);
    snprintf(want, sizeof(want), "reloaded configuration and policy policy=%s", script);
    cr_expect_not_null(strstr(log_text(), want), "%s", log_text());
    stop(&f);
}

Test(reload, a_configuration_with_errors_is_one_log_line)
{
    struct fixture f = {0};
    start(&f);
    char more[1024];
    snprintf(more, sizeof(more), "%sfrobnicate: 1\nwibble: 2\n", base);
    write_config(more, tmpdir, tmpdir);
    expect_refused(&f, NULL);
    const char *log = log_text();
    const char *line = strstr(log, "error=\"");
    cr_assert_not_null(line, "%s", log);
    const char *end = strchr(line, '\n');
    cr_assert_not_null(end);
    /* Both errors, joined by ';' on the one line. */
    char *one = strndup(line, (size_t)(end - line));
    cr_expect_not_null(strstr(one, "frobnicate"), "%s", one);
    cr_expect_not_null(strstr(one, "wibble"), "%s", one);
    cr_expect_not_null(strstr(one, ";"), "%s", one);
    cr_expect_eq(one[strlen(one) - 1], '"', "no ';' left at the end: %s", one);
    free(one);
    stop(&f);
}
