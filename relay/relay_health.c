#include "config.h"
#include "deadletter.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "notify.h"
#include "publish.h"
#include "relay.h"
#include "relay_internal.h"
#include "spool.h"

#include <stdbool.h>
#include <stdio.h>
#include <unistd.h>

#define LOADM(field)                                                                               \
    ((unsigned long long)atomic_load_explicit(&metrics.field, memory_order_relaxed))

static unsigned long long deadlettered_total(void)
{
    unsigned long long n = 0;
    for (int i = 0; i < DEADLETTER_REASON_COUNT; i++)
        n += LOADM(deadlettered[i]);
    return n;
}

void health_log_totals(const char *what)
{
    log_info("%s records=%llu published=%llu acked=%llu duplicates=%llu dropped=%llu "
             "deadlettered=%llu policy_errors=%llu",
             what, LOADM(records_read), LOADM(publishes), LOADM(publishes_acked),
             LOADM(publish_duplicates), LOADM(records_dropped), deadlettered_total(),
             LOADM(policy_errors));
}

/* A stall: records wait and no ack came for this long. */
static uint64_t stall_after_ms(const struct config *cfg)
{
    uint64_t ms = (uint64_t)cfg->ack_timeout_ms * 3;
    return ms < 30000 ? 30000 : ms;
}

static enum health_state judge_health(struct relay *r, size_t disconnected, size_t total)
{
    uint64_t now = loop_now_ms();
    uint64_t acked = LOADM(publishes_acked);
    if (acked != r->health.last_acked || r->publishes_in_flight == 0) {
        r->health.last_acked = acked;
        r->health.last_progress_ms = now;
    }
    if (!r->ready_notified)
        return HEALTH_STARTING;
    if (disconnected > 0 || (total == 0 && policy_uses_default_connection(r->policy)))
        return HEALTH_DISCONNECTED;
    if (r->deadletters_held > 0)
        return HEALTH_DEADLETTER_FAILING;
    if (r->checkpoint_failures > 0)
        return HEALTH_CHECKPOINT_FAILING;
    if (r->publishes_in_flight > 0 && now - r->health.last_progress_ms > stall_after_ms(r->cfg))
        return HEALTH_STALLED;
    return HEALTH_OK;
}

/* "not connected to nats for 12s: 127.0.0.1:4222: Connection refused; " for STATUS=, or
 * "" while every connection is up. */
static void nats_status(const struct relay *r, char *buf, size_t size)
{
    uint64_t since = 0;
    const char *why = publisher_set_down_reason(&r->publishers, &since);
    buf[0] = '\0';
    if (why && since)
        snprintf(buf, size, "not connected to nats for %llus: %s; ",
                 (unsigned long long)((loop_now_ms() - since) / 1000), why);
    else if (why)
        snprintf(buf, size, "not connected to nats: %s; ", why);
}

/* READY=1 once the configuration and policy are loaded, the checkpoint read and the spool
 * scanned. Not gated on NATS: a mail host must boot, and its package upgrades restart,
 * while NATS is away; STATUS= (within a second), /healthz and
 * kumo_nats_relay_nats_connected say so. */
static void maybe_ready(struct relay *r)
{
    if (r->ready_notified || !r->started)
        return;
    r->ready_notified = true;
    notify_ready();
}

void health_update(struct relay *r)
{
    struct relay_health *h = &r->health;
    bool first = !h->started_ms;
    if (first)
        h->started_ms = loop_now_ms();
    struct spool_stats st = {0};
    size_t dirs = spool_dir_count(r->spool);
    for (size_t dir = 0; dir < dirs; dir++) {
        struct spool_stats one;
        spool_stats(r->spool, dir, &one);
        if (dir < METRICS_MAX_DIRS) {
            METRIC_SET(dir_lag_bytes[dir], one.lag_bytes);
            METRIC_SET(dir_lag_segments[dir], one.live + one.done_pending);
        }
        st.live += one.live;
        st.done_pending += one.done_pending;
        st.finished += one.finished;
        st.lag_bytes += one.lag_bytes;
        if (one.oldest_read_ms && (!st.oldest_read_ms || one.oldest_read_ms < st.oldest_read_ms))
            st.oldest_read_ms = one.oldest_read_ms;
        if (one.unread_age_ms > st.unread_age_ms)
            st.unread_age_ms = one.unread_age_ms;
    }
    METRIC_SET(in_flight, r->publishes_in_flight);
    METRIC_SET(segments_live, st.live);
    METRIC_SET(segments_done_pending, st.done_pending);
    METRIC_SET(segments_finished, st.finished);
    METRIC_SET(lag_bytes, st.lag_bytes);
    if (first)
        h->started_lag = st.lag_bytes;
    METRIC_SET(lag_segments, st.live + st.done_pending);
    uint64_t read_age_ms = st.oldest_read_ms ? loop_now_ms() - st.oldest_read_ms : 0;
    METRIC_SET(oldest_unacked_ms, read_age_ms);
    /* Read and unacknowledged, or not read at all (nothing is read while disconnected). */
    METRIC_SET(lag_ms, read_age_ms > st.unread_age_ms ? read_age_ms : st.unread_age_ms);
    size_t total = 0, disconnected = publisher_set_disconnected(&r->publishers, &total);
    METRIC_SET(nats_connected, disconnected == 0 && total > 0);
    METRIC_SET(deadletter_file_bytes, deadletter_file_bytes(r->deadletter));
    uint64_t since = 0;
    metrics_set_health_detail(publisher_set_down_reason(&r->publishers, &since));
    maybe_ready(r);
    atomic_store(&metrics.health, judge_health(r, disconnected, total));
}

/* --once on a terminal: a bar over the bytes that were behind at start, the
 * rate, and the time left at the rate the lag has been shrinking. */
static void show_progress(struct relay_health *h, uint64_t now, unsigned long long committed,
                          double rate, unsigned long long lag, bool final)
{
    struct health_progress *p = &h->progress;
    enum { WIDTH = 20 };
    if (!p->last_ms) {
        p->first_lag = p->last_lag = h->started_lag;
        p->last_ms = h->started_ms;
    }
    if (lag > p->first_lag)
        p->first_lag = lag; /* a live segment grew past what was behind at start */
    if (p->last_ms && now > p->last_ms && p->last_lag >= lag) {
        double sample = (double)(p->last_lag - lag) * 1000.0 / (double)(now - p->last_ms);
        p->bytes_per_s = p->bytes_per_s > 0 ? 0.7 * p->bytes_per_s + 0.3 * sample : sample;
    }
    p->last_lag = lag;
    p->last_ms = now;
    double done = final || p->first_lag == 0 ? 1.0 : 1.0 - (double)lag / (double)p->first_lag;
    char bar[WIDTH + 1];
    for (int i = 0; i < WIDTH; i++)
        bar[i] = i < (int)(done * WIDTH + 0.5) ? '#' : '-';
    bar[WIDTH] = '\0';
    char eta[32] = "--:--";
    if (final || lag == 0) {
        snprintf(eta, sizeof(eta), "0:00");
    } else if (p->bytes_per_s > 0) {
        unsigned long long left = (unsigned long long)((double)lag / p->bytes_per_s + 0.5);
        snprintf(eta, sizeof(eta), "%llu:%02llu", left / 60, left % 60);
    }
    fprintf(stderr,
            "\r[%s] %3.0f%%  %llu records relayed  %.0f records/s  %.1f MB behind  "
            "ETA %s   %s",
            bar, done * 100.0, committed, rate, (double)lag / 1e6, eta, final ? "\n" : "");
}

/* STATUS= for systemctl status, and the --once progress bar on a terminal. */
void health_report(struct relay *r)
{
    struct relay_health *h = &r->health;
    uint64_t now = loop_now_ms();
    if (!h->report_ms)
        h->report_ms = h->started_ms;
    unsigned long long read = LOADM(records_read);
    double secs = h->report_ms ? (double)(now - h->report_ms) / 1000.0 : 0;
    double rate = secs > 0 ? (double)(read - h->report_read) / secs : 0;
    h->report_read = read;
    h->report_ms = now;
    unsigned long long lag = LOADM(lag_bytes);
    char nats[320];
    nats_status(r, nats, sizeof(nats));
    notify_status("%s%.0f records/s, %llu records relayed, %llu in flight, %llu bytes behind in "
                  "%llu segments",
                  nats, rate, LOADM(records_committed), LOADM(in_flight), lag, LOADM(lag_segments));
    if (r->options->once && isatty(STDERR_FILENO))
        show_progress(h, now, LOADM(records_committed), rate, lag, false);
}

void health_report_done(struct relay *r)
{
    if (!r->options->once || !isatty(STDERR_FILENO))
        return;
    uint64_t now = loop_now_ms();
    unsigned long long committed = LOADM(records_committed);
    uint64_t started = r->health.started_ms;
    double average = now > started ? (double)committed * 1000.0 / (double)(now - started) : 0;
    show_progress(&r->health, now, committed, average, 0, true);
}
