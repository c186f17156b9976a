/* Prometheus metrics and /healthz. The loop writes these atomics; the HTTP thread of
 * libmicrohttpd only reads them, so no lock is shared with the hot path. */
#ifndef RELAY_METRICS_H
#define RELAY_METRICS_H

#include "deadletter.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

struct hook_watchdog;

enum health_state {
    HEALTH_STARTING,
    HEALTH_OK,
    HEALTH_DISCONNECTED,
    HEALTH_STALLED,
    HEALTH_CHECKPOINT_FAILING,
    HEALTH_DEADLETTER_FAILING,
};

enum { ACK_LATENCY_BUCKETS = 14, METRICS_MAX_DIRS = 16 };

struct metrics {
    /* counters */
    atomic_uint_fast64_t records_read, records_committed, records_dropped;
    atomic_uint_fast64_t records_log_hook_skipped; /* part of records_dropped */
    atomic_uint_fast64_t deadlettered[DEADLETTER_REASON_COUNT];
    atomic_uint_fast64_t publishes, publishes_acked, publish_duplicates, publish_resends;
    atomic_uint_fast64_t publishes_skipped; /* found stored at the stream's tail at start */
    atomic_uint_fast64_t publishes_batched; /* acked by a fast-ingest batch's flow or final ack */
    atomic_uint_fast64_t publish_timeouts, publish_errors, publish_no_responders;
    atomic_uint_fast64_t nats_reconnects, nats_disconnects;
    atomic_uint_fast64_t policy_errors;
    atomic_uint_fast64_t checkpoint_writes, checkpoint_failures;
    atomic_uint_fast64_t segments_truncated, segments_corrupt, segments_lost;
    /* gauges */
    atomic_uint_fast64_t in_flight, nats_connected;
    atomic_uint_fast64_t segments_live, segments_done_pending, segments_finished;
    atomic_uint_fast64_t lag_bytes, lag_segments, oldest_unacked_ms;
    atomic_uint_fast64_t deadletter_file_bytes; /* of the file appended to, once a second */
    atomic_uint_fast64_t lag_ms; /* age of the oldest record not yet acknowledged, read or not */
    /* per spool directory (the first METRICS_MAX_DIRS), named by metrics_set_dirs */
    atomic_uint_fast64_t dir_lag_bytes[METRICS_MAX_DIRS], dir_lag_segments[METRICS_MAX_DIRS];
    /* ack latency: from reading a record to its last ack */
    atomic_uint_fast64_t ack_latency_bucket[ACK_LATENCY_BUCKETS + 1];
    atomic_uint_fast64_t ack_latency_sum_us, ack_latency_count;
    /* health, as judged by the loop */
    atomic_int health;
};

extern struct metrics metrics;

#define METRIC_ADD(field, n) atomic_fetch_add_explicit(&metrics.field, (n), memory_order_relaxed)
#define METRIC_SET(field, v) atomic_store_explicit(&metrics.field, (v), memory_order_relaxed)

/* Serve /metrics and /healthz on "host:port". NULL or a malloc'd error. */
/* watchdog answers /healthz while a policy hook keeps the loop away; it must outlive
 * metrics_stop. */
char *metrics_start(const char *listen, struct hook_watchdog *watchdog);
void metrics_stop(void);
void metrics_observe_ack_latency(uint64_t us);
/* A Lua error in a policy hook (not a kumo.reject: that is an answer, not an error). A
 * function, so that the policy needs only this and not the whole metrics struct. */
void metrics_policy_error(void);
/* Name the spool directories for the per-directory gauges (before metrics_start). */
void metrics_set_dirs(const char *const *paths, size_t count);
/* The text of /metrics and of /healthz's body (malloc'd); exposed for tests. */
char *metrics_render(void);
const char *metrics_health_text(enum health_state state);
/* What /healthz adds after "not connected to nats: " (copied; NULL or "" for nothing). */
void metrics_set_health_detail(const char *text);

#endif
