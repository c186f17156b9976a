/* The configuration's schema: one row per key, saying its name, its type, where it is
 * stored in struct config, its default and what it is for; storing values and their
 * defaults; numbers with units; and config_load, which sets the defaults, has
 * config_yaml.c read the file against the schema, and finishes what it read. */
#include "config.h"
#include "config_internal.h"

#include "log.h"
#include "secret.h"
#include "xalloc.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- Schema ---------------------------------------------------------------------- */

#define KIB    ((int64_t)1024)
#define MIB    (1024 * KIB)
#define GIB    (1024 * MIB)
#define SECOND ((int64_t)1000)
#define MINUTE (60 * SECOND)
#define HOUR   (60 * MINUTE)
#define DAY    (24 * HOUR)
/* KEY_ENUM stores the index of the word, so these lists follow the enums' order. */
static const char *const start_at_words[] = {"beginning", "end", NULL};
static const char *const log_level_words[] = {"debug", "info", "warn", "error", NULL};
static const char *const log_format_words[] = {"text", "json", NULL};
static const char *const log_target_words[] = {"auto", "journal", "stderr", NULL};
_Static_assert(LOG_FORMAT_TEXT == 0 && LOG_FORMAT_JSON == 1, "log_format_words follows the enum");
_Static_assert(LOG_TARGET_AUTO == 0 && LOG_TARGET_STDERR == 2, "log_target_words follows the enum");
_Static_assert(START_AT_BEGINNING == 0 && START_AT_END == 1, "start_at_words follows the enum");
_Static_assert(LOG_LEVEL_DEBUG == 0 && LOG_LEVEL_ERROR == 3, "log_level_words follows the enum");
_Static_assert(sizeof(enum start_at) == sizeof(int), "KEY_ENUM stores an int");

static const char *const bool_words[] = {"false", "true", NULL};

const struct key config_spool_keys[] = {
    {"dir", KEY_STRING, SPOOL_FIELD(dir), .required = true, .help = "where kumod writes logs"},
    {"pattern", KEY_STRING, SPOOL_FIELD(pattern), .text = "*", .help = "glob on segment names"},
    {"start_at", KEY_ENUM, FIELD(start_at), .words = start_at_words, .value = START_AT_BEGINNING,
     .help = "where to start when there is no checkpoint"},
    {"segment_header", KEY_STRING, SPOOL_FIELD(segment_header),
     .help = "kumod's segment_header, stripped from the start of each segment"},
    {.name = NULL},
};

static const struct key tls_keys[] = {
    {"ca", KEY_STRING, FIELD(nats_tls_ca), .file = true,
     .help = "PEM CAs the server's certificate must chain to (default: the system's)"},
    {"cert", KEY_STRING, FIELD(nats_tls_cert), .file = true, .help = "client certificate (PEM)"},
    {"key", KEY_STRING, FIELD(nats_tls_key), .file = true, .secret = true,
     .help = "the client certificate's private key (PEM)"},
    {.name = NULL},
};

static const struct key nats_keys[] = {
    {"servers", KEY_STRING_LIST, FIELD(nats_servers), .count_offset = FIELD(nats_server_count),
     .text = "nats://127.0.0.1:4222", .help = "server URLs of the default connection"},
    {"user", KEY_SECRET, FIELD(nats_user), .help = "user name, with password"},
    {"password", KEY_SECRET, FIELD(nats_password), .secret = true, .help = "password, with user"},
    {"token", KEY_SECRET, FIELD(nats_token), .secret = true, .help = "authentication token"},
    {"nkey_seed", KEY_STRING, FIELD(nats_nkey_seed), .file = true, .secret = true,
     .help = "file holding a user nkey seed (SU...)"},
    {"creds", KEY_STRING, FIELD(nats_creds), .file = true, .secret = true,
     .help = "a .creds file: user JWT and nkey seed"},
    {"tls", KEY_SECTION, .section = tls_keys},
    {"tls_required", KEY_ENUM, FIELD(nats_tls_required), .words = bool_words, .value = 0,
     .help = "refuse a server that does not speak TLS"},
    {.name = NULL},
};

static const char *const storage_words[] = {"file", "memory", NULL};

static const struct key create_keys[] = {
    {"subjects", KEY_STRING_LIST, FIELD(create_subjects),
     .count_offset = FIELD(create_subject_count),
     .help = "subjects the stream captures; unset: no stream is created"},
    {"storage", KEY_ENUM, FIELD(create_memory_storage), .words = storage_words, .value = 0,
     .help = "file or memory"},
    {"replicas", KEY_COUNT, FIELD(create_replicas), .min = 1, .max = 5, .value = 1,
     .help = "copies in a cluster"},
    {"duplicate_window", KEY_DURATION, FIELD(create_duplicate_window_ms), .min = 1000,
     .max = 7 * DAY, .value = 10 * MINUTE, .help = "how long JetStream remembers message ids"},
    {.name = NULL},
};

static const char *const batch_words[] = {"auto", "off", NULL};

static const struct key jetstream_keys[] = {
    {"stream", KEY_STRING, FIELD(jetstream_stream), .help = "stream checked at start, if set"},
    {"create", KEY_SECTION, .section = create_keys},
    {"max_in_flight", KEY_COUNT, FIELD(max_in_flight), .min = 1, .max = 1000000, .value = 4096,
     .help = "unacknowledged publishes at most"},
    {"ack_timeout", KEY_DURATION, FIELD(ack_timeout_ms), .min = 1, .max = HOUR, .value = 5 * SECOND,
     .help = "wait for an ack this long, then retry"},
    {"batch", KEY_ENUM, FIELD(jetstream_batch_off), .words = batch_words, .value = 0,
     .help = "auto: fast-ingest batches where the stream allows them; off: never"},
    {.name = NULL},
};

static const struct key policy_keys[] = {
    {"script", KEY_STRING, FIELD(policy_script), .help = "Lua policy; unset: the built-in one"},
    {"subject", KEY_STRING, FIELD(policy_subject), .text = "kumo.log.{type}",
     .help = "built-in policy: subject template"},
    {"queue", KEY_STRING, FIELD(policy_queue), .text = "nats", .help = "queue of a record"},
    {"hook_name", KEY_STRING, FIELD(policy_hook_name), .text = "nats", .help = "log hook name"},
    {"skip_log_hook_records", KEY_ENUM, FIELD(skip_log_hook_records), .words = bool_words,
     .value = 1, .help = "built-in policy: skip kumod's own log-hook deliveries"},
    {.name = NULL},
};

static const struct key checkpoint_keys[] = {
    {"interval", KEY_DURATION, FIELD(checkpoint_interval_ms), .min = 1, .max = HOUR, .value = 200,
     .help = "how often acknowledged offsets are saved"},
    {.name = NULL},
};

static const struct key metrics_keys[] = {
    {"listen", KEY_STRING, FIELD(metrics_listen), .help = "host:port of /metrics and /healthz"},
    {.name = NULL},
};

static const struct key log_keys[] = {
    {"level", KEY_ENUM, FIELD(log_level), .words = log_level_words, .value = LOG_LEVEL_INFO,
     .help = "least severe level logged"},
    {"format", KEY_ENUM, FIELD(log_format), .words = log_format_words, .value = LOG_FORMAT_TEXT,
     .help = "text (key=value) or json (one object per line)"},
    {"target", KEY_ENUM, FIELD(log_target), .words = log_target_words, .value = LOG_TARGET_AUTO,
     .help = "journal: <N> priority prefixes; auto: when stderr is journald's"},
    {.name = NULL},
};

/* relay_id has no default here: the hostname is looked up only when it is not given. */
const struct key config_top_keys[] = {
    {"relay_id", KEY_STRING, FIELD(relay_id), .help = "part of every Nats-Msg-Id"},
    {"spool", KEY_SECTION, .section = config_spool_keys},
    {"state_dir", KEY_STRING, FIELD(state_dir), .text = "/var/lib/kumo-nats-relay",
     .help = "where the checkpoint is kept"},
    {"nats", KEY_SECTION, .section = nats_keys},
    {"jetstream", KEY_SECTION, .section = jetstream_keys},
    {"policy", KEY_SECTION, .section = policy_keys},
    {"checkpoint", KEY_SECTION, .section = checkpoint_keys},
    {"shutdown_timeout", KEY_DURATION, FIELD(shutdown_timeout_ms), .max = DAY, .value = 30 * SECOND,
     .help = "how long SIGTERM waits for acks"},
    {"max_record_bytes", KEY_BYTES, FIELD(max_record_bytes), .min = KIB, .max = GIB,
     .value = 16 * MIB, .help = "longest log record the relay reads"},
    {"log", KEY_SECTION, .section = log_keys},
    {"metrics", KEY_SECTION, .section = metrics_keys},
    {"expected_max_downtime", KEY_DURATION, FIELD(expected_max_downtime_ms), .max = 365 * DAY,
     .value = 10 * MINUTE, .help = "warn when a stream's duplicate_window is shorter"},
    {.name = NULL},
};
/* ---- Storing values -------------------------------------------------------------- */

void *config_field(struct config_staging *st, const struct key *k)
{
    return (char *)st + k->offset;
}

void config_store_string(struct config_staging *st, const struct key *k, const char *text)
{
    char **slot = config_field(st, k);
    free(*slot); /* the default it replaces */
    *slot = text ? xstrdup(text) : NULL;
}

void config_free_strings(char **list, size_t count)
{
    for (size_t i = 0; i < count; i++)
        free(list[i]);
    free(list);
}

void config_store_list(struct config_staging *st, const struct key *k, char **list, size_t count)
{
    char ***slot = config_field(st, k);
    size_t *slot_count = (size_t *)((char *)st + k->count_offset);
    config_free_strings(*slot, *slot_count);
    *slot = list;
    *slot_count = count;
}

char **config_list_of_one(const char *text)
{
    char **list = xcalloc(1, sizeof(*list));
    list[0] = xstrdup(text);
    return list;
}

void config_store_number(struct config_staging *st, const struct key *k, int64_t value)
{
    if (k->type == KEY_DURATION)
        *(int64_t *)config_field(st, k) = value;
    else if (k->type == KEY_ENUM)
        *(int *)config_field(st, k) = (int)value;
    else
        *(size_t *)config_field(st, k) = (size_t)value;
}

void config_set_defaults(struct config_staging *st, const struct key *keys)
{
    for (const struct key *k = keys; k->name; k++) {
        if (k->type == KEY_SECTION)
            config_set_defaults(st, k->section);
        else if (k->type == KEY_STRING || k->type == KEY_SECRET)
            config_store_string(st, k, k->text);
        else if (k->type == KEY_STRING_LIST)
            config_store_list(st, k, k->text ? config_list_of_one(k->text) : NULL, k->text ? 1 : 0);
        else
            config_store_number(st, k, k->value);
    }
}

void config_add_spool(struct config *cfg, struct spool_source *from)
{
    cfg->spools = xrealloc(cfg->spools, (cfg->spool_count + 1) * sizeof(*cfg->spools));
    cfg->spools[cfg->spool_count++] = *from;
    *from = (struct spool_source){0};
}

static void free_spool(struct spool_source *s)
{
    free(s->dir);
    free(s->pattern);
    free(s->segment_header);
}

/* ---- Numbers with units ---------------------------------------------------------- */

/* Accepted suffixes; case matters: "m" is minutes, never months or megabytes. Largest
 * first, each factor's usual spelling first: config_format_with_unit prints with the first fit. */
const struct unit config_duration_units[] = {
    {"d", DAY},         {"day", DAY},        {"days", DAY},  {"h", HOUR},
    {"hour", HOUR},     {"hours", HOUR},     {"m", MINUTE},  {"min", MINUTE},
    {"minute", MINUTE}, {"minutes", MINUTE}, {"s", SECOND},  {"sec", SECOND},
    {"second", SECOND}, {"seconds", SECOND}, {"", SECOND},   {"ms", 1},
    {"millisecond", 1}, {"milliseconds", 1}, {.name = NULL},
};
const struct unit config_size_units[] = {
    {"GiB", GIB},   {"GB", 1000 * 1000 * 1000},
    {"MiB", MIB},   {"MB", 1000 * 1000},
    {"KiB", KIB},   {"KB", 1000},
    {"B", 1},       {"", 1},
    {.name = NULL},
};
const struct unit config_plain_units[] = {{"", 1}, {.name = NULL}};

/* Digits only: no sign, so "-5" is malformed rather than out of range. */
static bool parse_digits(const char **text, int64_t *out)
{
    const char *p = *text;
    int64_t n = 0;
    if (!isdigit((unsigned char)*p))
        return false;
    for (; isdigit((unsigned char)*p); p++) {
        int digit = *p - '0';
        if (n > (INT64_MAX - digit) / 10)
            return false;
        n = n * 10 + digit;
    }
    *text = p;
    *out = n;
    return true;
}

bool config_parse_with_unit(const char *text, const struct unit *units, int64_t *out)
{
    int64_t n;
    if (!parse_digits(&text, &n))
        return false;
    while (*text == ' ')
        text++;
    for (const struct unit *u = units; u->name; u++) {
        if (strcmp(text, u->name) != 0)
            continue;
        if (n > INT64_MAX / u->factor)
            return false;
        *out = n * u->factor;
        return true;
    }
    return false;
}

int config_parse_duration(const char *text, int64_t *ms)
{
    return config_parse_with_unit(text, config_duration_units, ms) ? 0 : -1;
}

void config_format_with_unit(int64_t n, const struct unit *units, char *buf, size_t size)
{
    const struct unit *u = units;
    while (u[1].name && n % u->factor != 0)
        u++;
    if (n == 0)
        snprintf(buf, size, "0");
    else
        snprintf(buf, size, "%lld%s", (long long)(n / u->factor), u->name);
}

/* ---- Defaults and the public functions ------------------------------------------- */

static char *default_relay_id(void)
{
    char name[HOST_NAME_MAX + 1];
    if (gethostname(name, sizeof(name)) != 0 || name[0] == '\0') {
        /* Two relays both called localhost would collide in Nats-Msg-Id: say so. */
        log_warn("cannot read the hostname (%s); relay_id defaults to localhost", strerror(errno));
        return xstrdup("localhost");
    }
    name[sizeof(name) - 1] = '\0'; /* a truncated name may lack its NUL */
    return xstrdup(name);
}

char *config_load(const char *path, struct config *cfg)
{
    struct config_staging st = {0};
    st.cfg.path = xstrdup(path);
    config_set_defaults(&st, config_top_keys);
    bool literal_secret = false;
    char *errors = config_yaml_read(path, &st, &literal_secret);
    if (!errors && st.cfg.spool_count == 0)
        config_add_spool(&st.cfg, &st.spool); /* `spool: {dir: ...}`: the one directory */
    free_spool(&st.spool);                    /* a list's entries were staged elsewhere */
    *cfg = st.cfg;
    if (errors) {
        config_free(cfg);
        return errors;
    }
    if (!cfg->relay_id)
        cfg->relay_id = default_relay_id();
    mode_t mode;
    if (literal_secret && secret_file_exposed(path, &mode))
        log_warn("%s holds a secret and every user may read it (mode %04o): chmod o-r it, or give "
                 "the secret as ${ENV_VAR} or { file: path }",
                 path, (unsigned)mode);
    return NULL;
}

void config_free(struct config *cfg)
{
    free(cfg->path);
    free(cfg->relay_id);
    free(cfg->state_dir);
    config_free_strings(cfg->nats_servers, cfg->nats_server_count);
    free(cfg->jetstream_stream);
    free(cfg->policy_script);
    free(cfg->policy_subject);
    free(cfg->policy_queue);
    free(cfg->policy_hook_name);
    free(cfg->metrics_listen);
    config_free_strings(cfg->create_subjects, cfg->create_subject_count);
    secret_free(cfg->nats_user);
    secret_free(cfg->nats_password);
    secret_free(cfg->nats_token);
    free(cfg->nats_nkey_seed);
    free(cfg->nats_creds);
    free(cfg->nats_tls_ca);
    free(cfg->nats_tls_cert);
    free(cfg->nats_tls_key);
    for (size_t i = 0; i < cfg->spool_count; i++)
        free_spool(&cfg->spools[i]);
    free(cfg->spools);
    memset(cfg, 0, sizeof(*cfg));
}