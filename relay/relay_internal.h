/* The relay's state, shared by the files that make up the relay: relay.c (the loop's
 * callbacks and the policy's environment), relay_reader.c (reading segments),
 * relay_inflight.c (records in flight), relay_deadletter.c, relay_checkpoint.c,
 * relay_lifecycle.c (start and stop), relay_health.c (metrics gauges, health, systemd
 * status) and relay_reload.c (SIGHUP). Each part keeps what only it uses in its own
 * struct (struct relay_reader, struct inflight_pool). Nothing outside them includes this. */
#ifndef RELAY_RELAY_INTERNAL_H
#define RELAY_RELAY_INTERNAL_H

#include "hook_watchdog.h"
#include "poison.h"
#include "offsets.h"
#include "policy.h"
#include "publish.h"
#include "relay_inflight.h"
#include "relay_reader.h"
#include "stream.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config;
struct deadletter;
struct loop;
struct publisher;
struct relay_options;
struct segment;
struct segment_record;
struct spool;

/* A policy (and its connection, and the configuration it was made from) replaced by a
 * reload, kept until its in-flight publishes are acknowledged. */
struct retired {
    struct policy *policy;
    struct publisher *pub;
    struct config *cfg; /* owned, or NULL */
    struct retired *next;
};

/* relay_health.c's counters for the rate in STATUS= and --once's progress bar. */
struct health_progress {
    unsigned long long first_lag, last_lag;
    uint64_t last_ms;
    double bytes_per_s; /* smoothed */
};

struct relay_health {
    /* The first health_update, at start (after the first scan): where --once's progress
     * and average rate count from. */
    uint64_t started_ms;
    unsigned long long started_lag;
    uint64_t report_ms; /* the last health_report, and records read by then */
    unsigned long long report_read;
    struct health_progress progress;
    uint64_t last_acked, last_progress_ms; /* for the stall check */
};

struct relay {
    const struct config *cfg;
    struct config *owned_cfg; /* cfg when a reload made it (else main owns cfg) */
    struct retired *retired;
    struct recovery *recovery;   /* this relay's ids found in the stream at start */
    struct stream_check streams; /* the duplicate_window of each stream published into */
    /* The highest sequence jetstream.stream acknowledged (its last one at start); known
     * once the stream was read at start or acknowledged a publish. */
    uint64_t stream_seq;
    bool stream_seq_known;
    const struct relay_options *options;
    struct loop *loop;
    struct spool *spool;
    struct publisher *pub;
    struct publisher_set publishers; /* pub and the Lua policy's connections */
    struct policy *policy;
    struct deadletter *deadletter;
    struct checkpoint checkpoint; /* as loaded at start; entries applied when segments appear */
    bool have_checkpoint;
    struct relay_reader reader;    /* relay_reader.c */
    struct inflight_pool inflight; /* relay_inflight.c */
    size_t publishes_in_flight;    /* through every connection: the window */
    bool dirty;                    /* offsets moved since the last checkpoint */
    bool draining;
    uint64_t drain_deadline_ms;
    bool started; /* the first scan is done */
    int exit_status;
    int signal_fd;
    uint64_t checkpoint_failures; /* in a row; 0 after a success */
    size_t deadletters_held;      /* records whose dead letter waits for room (deadletter.h) */
    uint64_t deadletter_retries;  /* in a row */
    bool ready_notified;
    struct relay_health health; /* relay_health.c */
    struct hook_watchdog watchdog;
    struct poison poison; /* poison.c */
};

void relay_apply_policy(struct relay *r, struct inflight_record *rec,
                        const struct segment_record *sr);
void relay_release_hold(struct relay *r, struct inflight_record *rec);
struct publisher *relay_open_default_publisher(struct relay *r, const struct config *cfg,
                                               char **err);
struct policy_env relay_policy_env(struct relay *r);

/* relay_health.c */
void health_update(struct relay *r);
void health_report(struct relay *r);
void health_report_done(struct relay *r); /* --once finished: the bar at 100 % */
void health_log_totals(const char *what);

/* relay_reload.c */
void reload_run(struct relay *r);
void reload_tick(struct relay *r);
void reload_release_all(struct relay *r);

#endif
