/* YAML configuration (one file) → struct config. Every error names file:line:column. */
#ifndef RELAY_CONFIG_H
#define RELAY_CONFIG_H

#include <stddef.h>
#include <stdint.h>

enum start_at { START_AT_BEGINNING, START_AT_END };

/* One spool directory: `spool: {dir: ...}`, or each entry of `spool: [{dir: ...}, ...]`. */
struct spool_source {
    char *dir;            /* required */
    char *pattern;        /* default "*" (fnmatch glob on names) */
    char *segment_header; /* kumod's segment_header; NULL: none */
};

struct config {
    char *path;                  /* the file it was loaded from */
    char *relay_id;              /* default: the hostname */
    enum start_at start_at;      /* default beginning */
    struct spool_source *spools; /* every spool directory, at least one */
    size_t spool_count;
    char *state_dir;     /* default /var/lib/kumo-nats-relay */
    char **nats_servers; /* default { "nats://127.0.0.1:4222" } */
    size_t nats_server_count;
    /* Authentication of the default connection: at most one of user+password, token,
     * nkey_seed, creds. user, password and token are the values themselves, resolved at
     * load from a literal, ${ENV_VAR} or { file: path }; never log them. */
    char *nats_user;
    char *nats_password;
    char *nats_token;
    char *nats_nkey_seed; /* path of a file holding a user nkey seed (SU...) */
    char *nats_creds;     /* path of a .creds file (user JWT and seed) */
    char *nats_tls_ca;    /* PEM file of the CAs the server's certificate must chain to */
    char *nats_tls_cert;  /* client certificate (PEM), with nats_tls_key */
    char *nats_tls_key;
    int nats_tls_required;       /* refuse a server that does not speak TLS (KEY_ENUM: 0 or 1) */
    char *jetstream_stream;      /* optional: verified at start when set */
    int jetstream_batch_off;     /* jetstream.batch: 0 auto (fast-ingest batches), 1 off */
    char **create_subjects;      /* jetstream.create: make the stream if it is missing */
    size_t create_subject_count; /* 0: do not create */
    int create_memory_storage;   /* 0 file, 1 memory */
    size_t create_replicas;
    int64_t create_duplicate_window_ms;
    size_t max_in_flight;             /* default 4096, 1..1000000 */
    int64_t ack_timeout_ms;           /* default 5s */
    char *policy_script;              /* optional: Lua policy; NULL = built-in policy */
    char *policy_subject;             /* default "kumo.log.{type}" */
    char *policy_queue;               /* default "nats" */
    char *policy_hook_name;           /* default "nats" */
    int skip_log_hook_records;        /* built-in policy: drop reception_protocol LogRecord (1) */
    int64_t checkpoint_interval_ms;   /* default 200ms */
    int64_t shutdown_timeout_ms;      /* default 30s: how long SIGTERM waits for acks */
    size_t max_record_bytes;          /* default 16 MiB */
    int log_level;                    /* enum log_level, default info */
    int log_format;                   /* enum log_format, default text */
    int log_target;                   /* enum log_target, default auto */
    char *metrics_listen;             /* "127.0.0.1:9477"; NULL: no HTTP endpoint */
    int64_t expected_max_downtime_ms; /* default 10m */
};

/* Fill *cfg from the YAML file at path. Returns NULL on success, or a malloc'd text of
 * one or more lines "path:line:column: message\n" naming every problem found. */
char *config_load(const char *path, struct config *cfg);

/* Parse a duration: "200ms", "5s", "10m", "1h", "2d", or a bare number of seconds.
 * Returns 0 and sets *ms, or -1. */
int config_parse_duration(const char *text, int64_t *ms);

void config_free(struct config *cfg);

#endif
