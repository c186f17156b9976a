/* config_load: every key, the defaults, and the exact text of every kind of error. */
#include "config.h"
#include "log.h"

#include <criterion/criterion.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Write text to a fresh file in /tmp; returns its malloc'd path. */
static char *write_temp(const char *text)
{
    char *path = strdup("/tmp/test_config_XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0, "mkstemp failed");
    size_t length = strlen(text);
    cr_assert_eq(write(fd, text, length), (ssize_t)length);
    close(fd);
    return path;
}

/* Load text as a config file. Returns the error text, or NULL and fills *cfg. */
static char *load_text(const char *text, struct config *cfg)
{
    char *path = write_temp(text);
    char *errors = config_load(path, cfg);
    unlink(path);
    free(path);
    return errors;
}

static struct config load_ok(const char *text)
{
    struct config cfg;
    char *errors = load_text(text, &cfg);
    cr_assert_null(errors, "unexpected errors:\n%s", errors);
    return cfg;
}

/* Each line of lines, prefixed with "path:" as config_load prints it. */
static char *with_path(const char *path, const char *lines)
{
    char *text = NULL;
    size_t size;
    FILE *out = open_memstream(&text, &size);
    for (const char *line = lines; *line;) {
        const char *end = strchr(line, '\n');
        cr_assert_not_null(end, "every expected line ends with a newline");
        fprintf(out, "%s:%.*s\n", path, (int)(end - line), line);
        line = end + 1;
    }
    fclose(out);
    return text;
}

/* Loading yaml fails with exactly these lines ("LINE:COLUMN: message\n" each). */
static void expect_errors(const char *yaml, const char *lines)
{
    struct config cfg;
    char *path = write_temp(yaml);
    char *errors = config_load(path, &cfg);
    char *expected = with_path(path, lines);
    cr_assert_not_null(errors, "loaded without errors, expected:\n%s", expected);
    cr_expect_str_eq(errors, expected);
    /* On error nothing is left behind: the struct is zeroed and config_free is harmless. */
    cr_expect_null(cfg.path);
    cr_expect_null(cfg.nats_servers);
    config_free(&cfg);
    unlink(path);
    free(path);
    free(errors);
    free(expected);
}

/* ---- Valid files ----------------------------------------------------------------- */

Test(config, every_key)
{
    struct config cfg = load_ok("relay_id: mta1\n"
                                "spool:\n"
                                "  dir: /var/log/kumomta\n"
                                "  pattern: \"*.log\"\n"
                                "  start_at: end\n"
                                "state_dir: /srv/relay-state\n"
                                "nats:\n"
                                "  servers: [nats://a:4222, nats://b:4222, nats://c:4222]\n"
                                "jetstream:\n"
                                "  stream: KUMO_LOGS\n"
                                "  max_in_flight: 1000\n"
                                "  ack_timeout: 2s\n"
                                "  batch: off\n"
                                "policy:\n"
                                "  script: /etc/kumo-nats-relay/policy.lua\n"
                                "  subject: \"mail.{type}\"\n"
                                "  queue: relay\n"
                                "  hook_name: relay_hook\n"
                                "checkpoint:\n"
                                "  interval: 1s\n"
                                "shutdown_timeout: 1m\n"
                                "max_record_bytes: 1MiB\n"
                                "log:\n"
                                "  level: debug\n");
    cr_expect_str_eq(cfg.relay_id, "mta1");
    cr_expect_str_eq(cfg.spools[0].dir, "/var/log/kumomta");
    cr_expect_str_eq(cfg.spools[0].pattern, "*.log");
    cr_expect_eq(cfg.start_at, START_AT_END);
    cr_expect_str_eq(cfg.state_dir, "/srv/relay-state");
    cr_assert_eq(cfg.nats_server_count, 3);
    cr_expect_str_eq(cfg.nats_servers[0], "nats://a:4222");
    cr_expect_str_eq(cfg.nats_servers[1], "nats://b:4222");
    cr_expect_str_eq(cfg.nats_servers[2], "nats://c:4222");
    cr_expect_str_eq(cfg.jetstream_stream, "KUMO_LOGS");
    cr_expect_eq(cfg.max_in_flight, 1000);
    cr_expect_eq(cfg.ack_timeout_ms, 2000);
    cr_expect_eq(cfg.jetstream_batch_off, 1);
    cr_expect_str_eq(cfg.policy_script, "/etc/kumo-nats-relay/policy.lua");
    cr_expect_str_eq(cfg.policy_subject, "mail.{type}");
    cr_expect_str_eq(cfg.policy_queue, "relay");
    cr_expect_str_eq(cfg.policy_hook_name, "relay_hook");
    cr_expect_eq(cfg.checkpoint_interval_ms, 1000);
    cr_expect_eq(cfg.shutdown_timeout_ms, 60000);
    cr_expect_eq(cfg.max_record_bytes, 1024 * 1024);
    cr_expect_eq(cfg.log_level, LOG_LEVEL_DEBUG);
    cr_expect_not_null(strstr(cfg.path, "/tmp/test_config_"));
    config_free(&cfg);
}

Test(config, defaults_for_a_minimal_file)
{
    struct config cfg = load_ok("spool:\n  dir: /var/log/kumomta\n");
    char host[HOST_NAME_MAX + 1] = "";
    cr_assert_eq(gethostname(host, sizeof(host)), 0);
    cr_expect_str_eq(cfg.relay_id, host);
    cr_expect_str_eq(cfg.spools[0].dir, "/var/log/kumomta");
    cr_expect_str_eq(cfg.spools[0].pattern, "*");
    cr_expect_eq(cfg.start_at, START_AT_BEGINNING);
    cr_expect_str_eq(cfg.state_dir, "/var/lib/kumo-nats-relay");
    cr_assert_eq(cfg.nats_server_count, 1);
    cr_expect_str_eq(cfg.nats_servers[0], "nats://127.0.0.1:4222");
    cr_expect_null(cfg.jetstream_stream);
    cr_expect_eq(cfg.max_in_flight, 4096);
    cr_expect_eq(cfg.ack_timeout_ms, 5000);
    cr_expect_eq(cfg.jetstream_batch_off, 0); /* auto */
    cr_expect_null(cfg.policy_script);
    cr_expect_str_eq(cfg.policy_subject, "kumo.log.{type}");
    cr_expect_str_eq(cfg.policy_queue, "nats");
    cr_expect_str_eq(cfg.policy_hook_name, "nats");
    cr_expect_eq(cfg.checkpoint_interval_ms, 200);
    cr_expect_eq(cfg.shutdown_timeout_ms, 30000);
    cr_expect_eq(cfg.max_record_bytes, 16 * 1024 * 1024);
    cr_expect_eq(cfg.log_level, LOG_LEVEL_INFO);
    config_free(&cfg);
}

Test(config, empty_sections_keep_their_defaults)
{
    struct config cfg = load_ok("spool: {dir: /s}\nlog:\njetstream: {}\n");
    cr_expect_eq(cfg.log_level, LOG_LEVEL_INFO);
    cr_expect_eq(cfg.max_in_flight, 4096);
    config_free(&cfg);
}

Test(config, nats_servers_as_a_single_string)
{
    struct config cfg = load_ok("spool: {dir: /s}\nnats:\n  servers: nats://10.0.0.1:4222\n");
    cr_assert_eq(cfg.nats_server_count, 1);
    cr_expect_str_eq(cfg.nats_servers[0], "nats://10.0.0.1:4222");
    config_free(&cfg);
}

Test(config, sizes_with_and_without_units)
{
    static const struct {
        const char *text;
        size_t bytes;
    } cases[] = {
        {"1048576", 1048576}, {"2048 B", 2048}, {"512KiB", 512 * 1024},       {"4 KB", 4000},
        {"16 MiB", 16 << 20}, {"3MB", 3000000}, {"1GiB", 1024 * 1024 * 1024}, {"1GB", 1000000000},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char yaml[128];
        snprintf(yaml, sizeof(yaml), "spool: {dir: /s}\nmax_record_bytes: %s\n", cases[i].text);
        struct config cfg = load_ok(yaml);
        cr_expect_eq(cfg.max_record_bytes, cases[i].bytes, "%s", cases[i].text);
        config_free(&cfg);
    }
}

Test(config, example_file_in_the_repository_loads)
{
    struct config cfg;
    char *errors = config_load(TEST_SOURCE_DIR "/../config/relay.yaml", &cfg);
    cr_assert_null(errors, "config/relay.yaml:\n%s", errors);
    cr_expect_str_eq(cfg.spools[0].dir, "/var/log/kumomta");
    cr_expect_str_eq(cfg.state_dir, "/var/lib/kumo-nats-relay");
    config_free(&cfg);
}

/* ---- Durations ------------------------------------------------------------------- */

Test(config, duration_parser)
{
    static const struct {
        const char *text;
        int64_t ms;
    } good[] = {
        {"200ms", 200},
        {"5s", 5000},
        {"10m", 600000},
        {"1h", 3600000},
        {"2d", 172800000},
        {"5 s", 5000},
        {"7", 7000},
        {"0", 0},
        {"250 milliseconds", 250},
        {"1 second", 1000},
        {"30 seconds", 30000},
        {"3sec", 3000},
        {"1min", 60000},
        {"10 minutes", 600000},
        {"2 hours", 7200000},
        {"1 day", 86400000},
        {"2 days", 172800000},
        {"106751991167d", INT64_C(106751991167) * 86400000},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        int64_t ms = -1;
        cr_expect_eq(config_parse_duration(good[i].text, &ms), 0, "%s", good[i].text);
        cr_expect_eq(ms, good[i].ms, "%s", good[i].text);
    }
    static const char *const bad[] = {
        "",
        "soon",
        "5x",
        "-5s",
        "+5s",
        "5.5s",
        " 5s",
        "5S",
        "5 M",
        "s",
        "5 s s",
        "5sec.",
        "1e3",
        "0x10",
        "99999999999999999999",
        "106751991168d", /* past INT64_MAX milliseconds */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int64_t ms = 42;
        cr_expect_eq(config_parse_duration(bad[i], &ms), -1, "\"%s\"", bad[i]);
        cr_expect_eq(ms, 42, "\"%s\" must leave *ms alone", bad[i]);
    }
}

/* ---- Errors, one kind each ------------------------------------------------------- */

Test(config, unknown_key_in_a_section)
{
    expect_errors("spool:\n"
                  "  dir: /var/log/kumomta\n"
                  "  spol: x\n",
                  "3:3: unknown key \"spol\" in spool (expected one of: dir, pattern, start_at, "
                  "segment_header)\n");
}

Test(config, unknown_key_at_the_top)
{
    expect_errors("spool: {dir: /s}\n"
                  "metricz: {listen: 127.0.0.1:9477}\n",
                  "2:1: unknown key \"metricz\" (expected one of: relay_id, spool, state_dir, "
                  "nats, jetstream, policy, checkpoint, shutdown_timeout, max_record_bytes, "
                  "log, metrics, expected_max_downtime)\n");
}

Test(config, several_spool_directories)
{
    struct config cfg;
    char *path = write_temp("spool:\n"
                            "  - dir: /var/log/kumomta\n"
                            "  - {dir: /var/log/kumomta-deliveries, pattern: \"*_deliv\"}\n");
    char *errors = config_load(path, &cfg);
    cr_assert_null(errors, "%s", errors);
    cr_assert_eq(cfg.spool_count, 2);
    cr_assert_str_eq(cfg.spools[0].dir, "/var/log/kumomta");
    cr_assert_str_eq(cfg.spools[0].pattern, "*");
    cr_assert_str_eq(cfg.spools[1].dir, "/var/log/kumomta-deliveries");
    cr_assert_str_eq(cfg.spools[1].pattern, "*_deliv");
    cr_assert_str_eq(cfg.spools[0].dir, "/var/log/kumomta");
    config_free(&cfg);
    unlink(path);
    free(path);
}

Test(config, spool_list_entry_without_dir)
{
    expect_errors("spool:\n"
                  "  - dir: /a\n"
                  "  - pattern: x\n",
                  "3:5: missing required key spool[1].dir\n");
}

Test(config, mapping_where_a_string_is_expected)
{
    expect_errors("spool:\n"
                  "  dir: {path: /x}\n",
                  "2:8: spool.dir: expected a string, got a mapping\n");
}

Test(config, scalar_where_a_section_is_expected)
{
    expect_errors("spool: /var/log/kumomta\n",
                  "1:8: spool: expected a mapping, got \"/var/log/kumomta\"\n");
}

Test(config, word_where_an_integer_is_expected)
{
    expect_errors("spool: {dir: /s}\n"
                  "jetstream:\n"
                  "  max_in_flight: lots\n",
                  "3:18: jetstream.max_in_flight: expected an integer from 1 to 1000000, got "
                  "\"lots\"\n");
}

Test(config, integer_out_of_range)
{
    expect_errors("spool: {dir: /s}\n"
                  "jetstream: {max_in_flight: 1000001}\n",
                  "2:28: jetstream.max_in_flight: expected an integer from 1 to 1000000, got "
                  "\"1000001\"\n");
}

Test(config, malformed_duration)
{
    expect_errors("spool: {dir: /s}\n"
                  "jetstream:\n"
                  "  ack_timeout: soon\n",
                  "3:16: jetstream.ack_timeout: expected a duration like 200ms, 5s, 10m, got "
                  "\"soon\"\n");
}

Test(config, duration_out_of_range)
{
    expect_errors("spool: {dir: /s}\n"
                  "checkpoint:\n"
                  "  interval: 0ms\n"
                  "shutdown_timeout: 2d\n",
                  "3:13: checkpoint.interval: expected a duration from 1ms to 1h, got \"0ms\"\n"
                  "4:19: shutdown_timeout: expected a duration from 0 to 1d, got \"2d\"\n");
}

Test(config, malformed_and_out_of_range_sizes)
{
    expect_errors("spool: {dir: /s}\n"
                  "max_record_bytes: 16M\n",
                  "2:19: max_record_bytes: expected a size like 512KiB, 16MiB, 1GB, got "
                  "\"16M\"\n");
    expect_errors("spool: {dir: /s}\n"
                  "max_record_bytes: 2 GiB\n",
                  "2:19: max_record_bytes: expected a size from 1KiB to 1GiB, got \"2 GiB\"\n");
}

Test(config, missing_required_key_in_its_section)
{
    expect_errors("# spool without its dir\n"
                  "spool:\n"
                  "  pattern: \"*\"\n",
                  "3:3: missing required key spool.dir\n");
}

Test(config, missing_required_key_and_its_section)
{
    expect_errors("# no spool at all\n"
                  "log:\n"
                  "  level: info\n",
                  "2:1: missing required key spool.dir\n");
}

Test(config, empty_file)
{
    expect_errors("", "1:1: missing required key spool.dir\n");
    expect_errors("# only a comment\n", "1:1: missing required key spool.dir\n");
}

Test(config, invalid_enum_values)
{
    expect_errors("spool:\n"
                  "  dir: /s\n"
                  "  start_at: middle\n"
                  "log: {level: loud}\n",
                  "3:13: spool.start_at: expected one of beginning, end, got \"middle\"\n"
                  "4:14: log.level: expected one of debug, info, warn, error, got \"loud\"\n");
}

Test(config, yaml_syntax_errors)
{
    expect_errors("spool:\n"
                  "  dir: /s\n"
                  " bad: 1\n",
                  "3:2: YAML syntax error: did not find expected key while parsing a block "
                  "mapping\n");
    expect_errors("spool: {dir: /s}\n"
                  "nats: {servers: [nats://a:4222\n",
                  "3:1: YAML syntax error: did not find expected ',' or ']' while parsing a "
                  "flow sequence\n");
    expect_errors("spool:\n"
                  "\tdir: /s\n",
                  "2:1: YAML syntax error: found character that cannot start any token while "
                  "scanning for the next token\n");
}

Test(config, invalid_utf8_is_placed_by_line_and_column)
{
    expect_errors("spool: {dir: /s}\n"
                  "# Gr\xfc\xdf"
                  "e\n",
                  "2:5: YAML syntax error: invalid leading UTF-8 octet 0xFC\n");
}

Test(config, duplicate_keys)
{
    expect_errors("spool:\n"
                  "  dir: /a\n"
                  "  dir: /b\n"
                  "spool: {dir: /c}\n",
                  "3:3: duplicate key \"dir\" in spool (first given at 2:3)\n"
                  "4:1: duplicate key \"spool\" (first given at 1:1)\n");
}

Test(config, bad_nats_servers)
{
    expect_errors("spool: {dir: /s}\n"
                  "nats:\n"
                  "  servers: []\n",
                  "3:12: nats.servers: expected at least one string, got an empty list\n");
    expect_errors("spool: {dir: /s}\n"
                  "nats:\n"
                  "  servers: [nats://a:4222, \"\", [b]]\n",
                  "3:28: nats.servers[1]: expected a non-empty string, got \"\"\n"
                  "3:32: nats.servers[2]: expected a string, got a list\n");
    expect_errors("spool: {dir: /s}\n"
                  "nats: {servers: {a: b}}\n",
                  "2:17: nats.servers: expected a string or a list of strings, got a mapping\n");
}

/* What nats.c would take silently and never connect with; the URL (it may hold a password)
 * is never quoted. */
Test(config, server_urls_nats_would_never_connect_with)
{
    expect_errors("spool: {dir: /s}\n"
                  "nats:\n"
                  "  servers:\n"
                  "    - http://u:secret@a:4222\n"
                  "    - ${NATS_URL}\n"
                  "    - nats://a:0\n"
                  "    - nats://a:4222x\n"
                  "    - tls://:4222\n"
                  "    - nats://[::1:4222\n",
                  "4:7: nats.servers[0]: the scheme must be nats:// or tls://, got http://\n"
                  "5:7: nats.servers[1]: ${NATS_URL} is not expanded in a server URL (only in "
                  "user, password and token): write the URL itself\n"
                  "6:7: nats.servers[2]: the port of a server URL is a number from 1 to 65535\n"
                  "7:7: nats.servers[3]: the port of a server URL is a number from 1 to 65535\n"
                  "8:7: nats.servers[4]: no host in the server URL\n"
                  "9:7: nats.servers[5]: no host in the server URL\n");
    struct config cfg = load_ok("spool: {dir: /s}\n"
                                "nats: {servers: [nats://u:p@a:4222, \"TLS://[::1]:4222\", a, "
                                "\"b:1\", nats://c/]}\n");
    cr_expect_eq(cfg.nats_server_count, 5);
    config_free(&cfg);
}

Test(config, metrics_listen_forms)
{
    const char *good[] = {"9477",          "\":9477\"",      "\"*:9477\"",     "\"[::1]:9477\"",
                          "\"[::]:9477\"", "localhost:9477", "127.0.0.1:9477", "0.0.0.0:9477"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char *yaml = NULL;
        cr_assert(asprintf(&yaml, "spool: {dir: /s}\nmetrics: {listen: %s}\n", good[i]) > 0);
        struct config cfg = load_ok(yaml);
        config_free(&cfg);
        free(yaml);
    }
    expect_errors("spool: {dir: /s}\n"
                  "metrics: {listen: \"a.example:9477\"}\n",
                  "2:19: metrics.listen: expected 127.0.0.1:9477, [::1]:9477, localhost:9477 or "
                  ":9477 (every interface), got \"a.example:9477\": a.example is not an IP "
                  "address (write an IPv6 one in brackets)\n");
    expect_errors("spool: {dir: /s}\n"
                  "metrics: {listen: \"127.0.0.1:65536\"}\n",
                  "2:19: metrics.listen: expected 127.0.0.1:9477, [::1]:9477, localhost:9477 or "
                  ":9477 (every interface), got \"127.0.0.1:65536\": no port from 1 to 65535\n");
}

Test(config, empty_and_null_strings)
{
    expect_errors("spool:\n"
                  "  dir: \"\"\n"
                  "relay_id:\n"
                  "state_dir: ~\n",
                  "2:8: spool.dir: expected a non-empty string, got \"\"\n"
                  "3:10: relay_id: expected a string, got nothing\n"
                  "4:12: state_dir: expected a string, got nothing\n");
}

Test(config, values_are_quoted_on_one_line)
{
    expect_errors("spool: {dir: /s}\n"
                  "log: \"a\\nb \\\"c\\\"\"\n",
                  "2:6: log: expected a mapping, got \"a\\nb \\\"c\\\"\"\n");
}

Test(config, top_level_must_be_a_mapping)
{
    expect_errors("- spool\n", "1:1: expected a mapping of settings, got a list\n");
}

Test(config, only_one_document)
{
    expect_errors("spool: {dir: /s}\n"
                  "---\n"
                  "spool: {dir: /t}\n",
                  "3:1: only one YAML document is allowed, found a second\n");
}

/* ---- Several errors at once ------------------------------------------------------ */

/* All problems come back together, in document order: the missing spool.dir is found
 * after its mapping was walked but is reported at the mapping's start, before 4:13. */
Test(config, several_errors_in_document_order)
{
    expect_errors("relay_id: [a, b]\n"
                  "spool:\n"
                  "  pattern: \"*\"\n"
                  "  start_at: later\n"
                  "nats:\n"
                  "  servers: []\n"
                  "jetstream:\n"
                  "  max_in_flight: lots\n"
                  "  ack_timeout: soon\n"
                  "  acks: 3\n"
                  "max_record_bytes: 0\n"
                  "log:\n"
                  "  level: loud\n",
                  "1:11: relay_id: expected a string, got a list\n"
                  "3:3: missing required key spool.dir\n"
                  "4:13: spool.start_at: expected one of beginning, end, got \"later\"\n"
                  "6:12: nats.servers: expected at least one string, got an empty list\n"
                  "8:18: jetstream.max_in_flight: expected an integer from 1 to 1000000, got "
                  "\"lots\"\n"
                  "9:16: jetstream.ack_timeout: expected a duration like 200ms, 5s, 10m, got "
                  "\"soon\"\n"
                  "10:3: unknown key \"acks\" in jetstream (expected one of: stream, create, "
                  "max_in_flight, ack_timeout, batch)\n"
                  "11:19: max_record_bytes: expected a size from 1KiB to 1GiB, got \"0\"\n"
                  "13:10: log.level: expected one of debug, info, warn, error, got \"loud\"\n");
}

Test(config, unreadable_file)
{
    struct config cfg;
    char *errors = config_load("/nonexistent/relay.yaml", &cfg);
    cr_assert_str_eq(errors, "/nonexistent/relay.yaml: cannot open: No such file or directory\n");
    cr_expect_null(cfg.path);
    free(errors);
    errors = config_load("/tmp", &cfg);
    cr_assert_str_eq(errors, "/tmp: cannot open: Is a directory\n");
    free(errors);
}
