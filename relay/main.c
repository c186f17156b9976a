/* kumo-nats-relay: command line and startup order. */
#include "config.h"
#include "exit_codes.h"
#include "log.h"
#include "policy.h"
#include "preflight.h"
#include "relay.h"
#include "deadletter_replay.h"
#include "statelock.h"
#include "status.h"
#include "xalloc.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define DEFAULT_CONFIG "/etc/kumo-nats-relay/relay.yaml"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: kumo-nats-relay [OPTIONS]\n"
            "       kumo-nats-relay status [--json] [-c FILE]\n"
            "       kumo-nats-relay deadletter replay [-c FILE]\n"
            "\n"
            "Tails KumoMTA's log spool and publishes every record to NATS JetStream, exactly\n"
            "once: offsets advance only on JetStream's acknowledgement.\n"
            "\n"
            "Options:\n"
            "  -c, --config FILE    configuration file (default " DEFAULT_CONFIG ")\n"
            "      --check          validate the configuration and the policy, print\n"
            "                       \"configuration OK\" or every problem, exit 0 or 78\n"
            "      --once           relay what the spool holds now, wait for every ack,\n"
            "                       write the checkpoint and exit (backfills, cron)\n"
            "      --reset-offsets  set the checkpoint aside (state_dir/checkpoint.reset-TIME)\n"
            "                       and relay the spool from the start (or from the end with\n"
            "                       spool.start_at: end)\n"
            "  -l, --log-level LVL  override log.level: debug, info, warn, error\n"
            "      --log-format FMT text (default: one line per event, key=value fields)\n"
            "                       or json (one JSON object per line)\n"
            "      --json           with status: print JSON instead of a table\n"
            "  -V, --version        print the version and exit\n"
            "  -h, --help           print this help and exit\n"
            "\n"
            "Commands:\n"
            "  status               from the checkpoint and the spool: each segment's state,\n"
            "                       records and bytes committed, and how much is behind\n"
            "  deadletter replay    write the dead letters recorded since the last replay\n"
            "                       into the spool as a new done segment, for the running\n"
            "                       relay to publish again once their cause is fixed (run\n"
            "                       it as a user that can write the spool, e.g. root)\n"
            "\n"
            "Signals: SIGTERM and SIGINT stop reading, wait for in-flight acks (up to\n"
            "shutdown_timeout), write the checkpoint and exit 0. SIGHUP reloads the\n"
            "configuration and the policy; if they fail to load, the running ones stay.\n"
            "\n"
            "Exit status: 0 success; 1 runtime or startup failure (also: another relay holds\n"
            "state_dir); 2 bad usage; 3 --once stopped before it relayed the whole spool (a\n"
            "segment it cannot open, SIGTERM before every ack, a checkpoint it cannot\n"
            "write): the log says what is left, and the next run relays it; 78 configuration\n"
            "error (EX_CONFIG: systemd does not restart on it).\n");
}

/* One line saying what is wrong, then where to look: the full help would bury it. */
static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("kumo-nats-relay: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'kumo-nats-relay --help'.\n", stderr);
    return RELAY_EXIT_USAGE;
}

/* The directories a start needs (preflight.h), checked the same way before --check and
 * before the daemon starts: --check prints each problem after the file's name, the
 * daemon logs it as an error, in the same words. */
static bool preflight(const struct config *cfg, bool check)
{
    char *problems = preflight_check(cfg);
    if (!problems)
        return true;
    for (char *line = strtok(problems, "\n"); line; line = strtok(NULL, "\n")) {
        if (check)
            fprintf(stderr, "%s: %s\n", cfg->path, line);
        else
            log_error("%s", line);
    }
    free(problems);
    return false;
}

/* --check: what the start would refuse for configuration reasons, without connecting or
 * reading the spool. The policy is loaded and its init run as at the start (relay.c logs
 * the same error text when policy_create fails there). */
static int check_config(const struct config *cfg)
{
    char *err = NULL;
    bool ok = preflight(cfg, true);
    struct policy_env env = {.check_only = true};
    struct policy *policy = policy_create(cfg, &env, &err);
    if (!policy) {
        fprintf(stderr, "%s: %s\n", cfg->path, err);
        free(err);
        return RELAY_EXIT_CONFIG;
    }
    policy_destroy(policy);
    if (!ok)
        return RELAY_EXIT_CONFIG;
    printf("configuration OK\n");
    return 0;
}

/* One relay per state_dir: a second one would dead-letter the same records again (and a
 * replay would publish them twice) and write the same .checkpoint.tmp. `status` only
 * reads, and takes no lock. */
static int lock_state_dir(const struct config *cfg)
{
    if (mkdir(cfg->state_dir, 0750) != 0 && errno != EEXIST) {
        log_error("cannot create state_dir %s: %s", cfg->state_dir, strerror(errno));
        return -1;
    }
    char *path = xasprintf("%s/lock", cfg->state_dir);
    char *err = NULL;
    int rc = statelock_take(path, &err);
    if (rc > 0)
        log_error("%s: another relay runs on state_dir %s", err, cfg->state_dir);
    else if (rc < 0)
        log_error("%s", err);
    free(err);
    free(path);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"config", required_argument, NULL, 'c'},
        {"check", no_argument, NULL, 'k'},
        {"once", no_argument, NULL, 'o'},
        {"reset-offsets", no_argument, NULL, 'r'},
        {"log-level", required_argument, NULL, 'l'},
        {"log-format", required_argument, NULL, 'f'},
        {"json", no_argument, NULL, 'j'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = DEFAULT_CONFIG;
    const char *log_level = NULL;
    bool check = false, json = false;
    struct relay_options options = {0};
    int opt;
    opterr = 0; /* usage_error() words the message; ':' first reports a missing argument */
    while ((opt = getopt_long(argc, argv, ":c:l:Vh", long_options, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config_path = optarg;
            break;
        case 'k':
            check = true;
            break;
        case 'o':
            options.once = true;
            break;
        case 'r':
            options.reset_offsets = true;
            break;
        case 'l':
            log_level = optarg;
            break;
        case 'f':
            if (strcmp(optarg, "json") == 0) {
                log_set_json(true);
            } else if (strcmp(optarg, "text") != 0) {
                return usage_error("--log-format is text or json");
            }
            break;
        case 'j':
            json = true;
            break;
        case 'V':
            printf("kumo-nats-relay %s\n", RELAY_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        case ':':
            return usage_error("option '%s' requires an argument", argv[optind - 1]);
        default:
            if (optopt)
                return usage_error("unknown option '-%c'", optopt);
            return usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    bool status = optind < argc && strcmp(argv[optind], "status") == 0;
    if (status)
        optind++;
    bool replay = !status && optind + 1 < argc && strcmp(argv[optind], "deadletter") == 0 &&
                  strcmp(argv[optind + 1], "replay") == 0;
    if (replay)
        optind += 2;
    if (optind < argc)
        return usage_error("unexpected argument \"%s\"", argv[optind]);
    struct config cfg;
    char *errors = config_load(config_path, &cfg);
    if (errors) {
        log_error_lines(errors);
        free(errors);
        return RELAY_EXIT_CONFIG;
    }
    int level = log_level ? log_level_parse(log_level) : cfg.log_level;
    if (level < 0) {
        config_free(&cfg);
        return usage_error("unknown log level \"%s\"", log_level);
    }
    log_set_level((enum log_level)level);
    log_configure((enum log_format)cfg.log_format, (enum log_target)cfg.log_target);
    /* The daemon and --once: what --check would refuse first (a configuration error,
     * in the same words), then the lock, so a second relay never touches the state. */
    if (!status && !replay && !check) {
        if (!preflight(&cfg, false)) {
            config_free(&cfg);
            return RELAY_EXIT_CONFIG;
        }
        if (lock_state_dir(&cfg) != 0) {
            config_free(&cfg);
            return RELAY_EXIT_FAILURE;
        }
    }
    int rc = status   ? status_run(&cfg, json)
             : replay ? replay_deadletters(&cfg)
             : check  ? check_config(&cfg)
                      : relay_run(&cfg, &options);
    config_free(&cfg);
    return rc;
}
