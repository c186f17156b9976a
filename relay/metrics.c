#include "metrics.h"

#include "hook_watchdog.h"
#include "listen.h"
#include "log.h"
#include "xalloc.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct metrics metrics;

static struct MHD_Daemon *daemon_handle;
static char *dir_names[METRICS_MAX_DIRS]; /* set before the HTTP thread starts */
static size_t dir_name_count;
/* Why the connection is down, for /healthz: set by the loop once a second at most. */
static pthread_mutex_t health_detail_lock = PTHREAD_MUTEX_INITIALIZER;
static char health_detail[256];

void metrics_set_health_detail(const char *text)
{
    pthread_mutex_lock(&health_detail_lock);
    snprintf(health_detail, sizeof(health_detail), "%s", text ? text : "");
    pthread_mutex_unlock(&health_detail_lock);
}

/* The body of /healthz: the state, and for a connection that is down, why. */
static char *health_body(enum health_state state)
{
    pthread_mutex_lock(&health_detail_lock);
    char *body = state == HEALTH_DISCONNECTED && health_detail[0]
                     ? xasprintf("%s: %s\n", metrics_health_text(state), health_detail)
                     : xasprintf("%s\n", metrics_health_text(state));
    pthread_mutex_unlock(&health_detail_lock);
    return body;
}

void metrics_set_dirs(const char *const *paths, size_t count)
{
    for (size_t i = 0; i < dir_name_count; i++)
        free(dir_names[i]);
    dir_name_count = count < METRICS_MAX_DIRS ? count : METRICS_MAX_DIRS;
    for (size_t i = 0; i < dir_name_count; i++)
        dir_names[i] = xstrdup(paths[i]);
}

/* Upper bounds in microseconds: 1 ms to 10 s. */
static const uint64_t bucket_us[ACK_LATENCY_BUCKETS] = {
    1000,   2500,   5000,    10000,   25000,   50000,   100000,
    250000, 500000, 1000000, 2500000, 5000000, 7500000, 10000000,
};

static const char *const deadletter_names[DEADLETTER_REASON_COUNT] = {
    [DEADLETTER_NOT_JSON] = "not_json",
    [DEADLETTER_OVERSIZE] = "oversize",
    [DEADLETTER_REJECTED] = "rejected",
    [DEADLETTER_MAX_AGE] = "max_age",
    [DEADLETTER_NO_PROTOCOL] = "no_custom_lua",
    [DEADLETTER_PUBLISH] = "publish_refused",
    [DEADLETTER_POLICY] = "policy",
    [DEADLETTER_UNDECODABLE] = "undecodable",
};

/* The order of /metrics, as before the enum gave the policy's reason zero. */
static const enum deadletter_reason deadletter_shown[DEADLETTER_REASON_COUNT] = {
    DEADLETTER_NOT_JSON,    DEADLETTER_OVERSIZE, DEADLETTER_REJECTED, DEADLETTER_MAX_AGE,
    DEADLETTER_NO_PROTOCOL, DEADLETTER_PUBLISH,  DEADLETTER_POLICY,   DEADLETTER_UNDECODABLE,
};

void metrics_policy_error(void)
{
    METRIC_ADD(policy_errors, 1);
}

void metrics_observe_ack_latency(uint64_t us)
{
    int i = 0;
    while (i < ACK_LATENCY_BUCKETS && us > bucket_us[i])
        i++;
    METRIC_ADD(ack_latency_bucket[i], 1);
    METRIC_ADD(ack_latency_sum_us, us);
    METRIC_ADD(ack_latency_count, 1);
}

const char *metrics_health_text(enum health_state state)
{
    switch (state) {
    case HEALTH_OK:
        return "ok";
    case HEALTH_STARTING:
        return "starting";
    case HEALTH_DISCONNECTED:
        return "not connected to nats";
    case HEALTH_STALLED:
        return "stalled: records are waiting and no acknowledgement came for a while";
    case HEALTH_CHECKPOINT_FAILING:
        return "checkpoint writes are failing";
    case HEALTH_DEADLETTER_FAILING:
        return "dead letters cannot be written: their records are held and retried";
    }
    return "unknown";
}

#define LOAD(field) ((unsigned long long)atomic_load_explicit(&metrics.field, memory_order_relaxed))

static void put_metric(FILE *f, const char *name, const char *type, const char *help,
                       unsigned long long value)
{
    fprintf(f, "# HELP kumo_nats_relay_%s %s\n# TYPE kumo_nats_relay_%s %s\n", name, help, name,
            type);
    fprintf(f, "kumo_nats_relay_%s %llu\n", name, value);
}

static void put_counters(FILE *f)
{
    put_metric(f, "records_read_total", "counter", "Records read from the spool.",
               LOAD(records_read));
    put_metric(f, "records_committed_total", "counter",
               "Records complete (acknowledged, dropped or dead-lettered).",
               LOAD(records_committed));
    put_metric(f, "records_dropped_total", "counter", "Records the policy chose not to relay.",
               LOAD(records_dropped));
    put_metric(f, "records_log_hook_skipped_total", "counter",
               "Records of kumod's own log hooks (reception_protocol LogRecord) the built-in "
               "policy skipped; counted in records_dropped_total too.",
               LOAD(records_log_hook_skipped));
    fputs("# HELP kumo_nats_relay_records_deadlettered_total Records written to the dead-letter "
          "file, by reason.\n# TYPE kumo_nats_relay_records_deadlettered_total counter\n",
          f);
    for (int i = 0; i < DEADLETTER_REASON_COUNT; i++)
        fprintf(f, "kumo_nats_relay_records_deadlettered_total{reason=\"%s\"} %llu\n",
                deadletter_names[deadletter_shown[i]], LOAD(deadlettered[deadletter_shown[i]]));
    put_metric(f, "publishes_total", "counter", "Messages published (first sends).",
               LOAD(publishes));
    put_metric(f, "publishes_acked_total", "counter", "Publishes acknowledged by JetStream.",
               LOAD(publishes_acked));
    put_metric(f, "publishes_batched_total", "counter",
               "Publishes stored through fast-ingest batches (counted in publishes_acked_total "
               "too).",
               LOAD(publishes_batched));
    put_metric(f, "publish_duplicates_total", "counter",
               "Acks with duplicate set: JetStream already had the Nats-Msg-Id.",
               LOAD(publish_duplicates));
    put_metric(f, "publishes_skipped_total", "counter",
               "Publishes not made: read back from the stream's tail at start, already stored.",
               LOAD(publishes_skipped));
    put_metric(f, "publish_resends_total", "counter",
               "Messages sent again after a timeout, an error or a reconnect.",
               LOAD(publish_resends));
    fputs("# HELP kumo_nats_relay_publish_errors_total Failed publish attempts, by kind.\n"
          "# TYPE kumo_nats_relay_publish_errors_total counter\n",
          f);
    fprintf(f, "kumo_nats_relay_publish_errors_total{kind=\"ack_timeout\"} %llu\n",
            LOAD(publish_timeouts));
    fprintf(f, "kumo_nats_relay_publish_errors_total{kind=\"jetstream_error\"} %llu\n",
            LOAD(publish_errors));
    fprintf(f, "kumo_nats_relay_publish_errors_total{kind=\"no_responders\"} %llu\n",
            LOAD(publish_no_responders));
    put_metric(f, "nats_reconnects_total", "counter", "Reconnections to NATS.",
               LOAD(nats_reconnects));
    put_metric(f, "nats_disconnects_total", "counter", "Losses of the NATS connection.",
               LOAD(nats_disconnects));
    put_metric(f, "policy_errors_total", "counter", "Lua errors raised by the policy.",
               LOAD(policy_errors));
    put_metric(f, "checkpoint_writes_total", "counter", "Checkpoints written.",
               LOAD(checkpoint_writes));
    put_metric(f, "checkpoint_failures_total", "counter", "Checkpoint writes that failed.",
               LOAD(checkpoint_failures));
    put_metric(f, "segments_truncated_total", "counter",
               "Done segments that ended mid-record (kumod crashed).", LOAD(segments_truncated));
    put_metric(f, "segments_corrupt_total", "counter", "Segments that could not be decoded.",
               LOAD(segments_corrupt));
    put_metric(f, "segments_lost_total", "counter",
               "Segments deleted before they were relayed completely.", LOAD(segments_lost));
}

static void put_gauges(FILE *f)
{
    put_metric(f, "in_flight", "gauge", "Publishes awaiting an ack.", LOAD(in_flight));
    put_metric(f, "nats_connected", "gauge", "1 while every NATS connection is up.",
               LOAD(nats_connected));
    fputs("# HELP kumo_nats_relay_segments Segments known, by state.\n"
          "# TYPE kumo_nats_relay_segments gauge\n",
          f);
    fprintf(f, "kumo_nats_relay_segments{state=\"live\"} %llu\n", LOAD(segments_live));
    fprintf(f, "kumo_nats_relay_segments{state=\"done_pending\"} %llu\n",
            LOAD(segments_done_pending));
    fprintf(f, "kumo_nats_relay_segments{state=\"finished\"} %llu\n", LOAD(segments_finished));
    put_metric(f, "lag_file_bytes", "gauge",
               "Bytes of segment files (as on disk: zstd-compressed) not read yet; status's "
               "BEHIND_BYTES counts decompressed record bytes instead.",
               LOAD(lag_bytes));
    put_metric(f, "deadletter_file_bytes", "gauge",
               "Size of the dead-letter file the relay appends to (deadletter.jsonl; after a "
               "rotation and SIGHUP, the new one).",
               LOAD(deadletter_file_bytes));
    put_metric(f, "lag_segments", "gauge", "Segments not yet completely relayed.",
               LOAD(lag_segments));
    fputs("# HELP kumo_nats_relay_dir_lag_file_bytes Bytes of segment files not read yet, by "
          "spool directory.\n# TYPE kumo_nats_relay_dir_lag_file_bytes gauge\n",
          f);
    for (size_t i = 0; i < dir_name_count; i++)
        fprintf(f, "kumo_nats_relay_dir_lag_file_bytes{dir=\"%s\"} %llu\n", dir_names[i],
                LOAD(dir_lag_bytes[i]));
    fputs("# HELP kumo_nats_relay_dir_lag_segments Segments not relayed yet, by spool "
          "directory.\n# TYPE kumo_nats_relay_dir_lag_segments gauge\n",
          f);
    for (size_t i = 0; i < dir_name_count; i++)
        fprintf(f, "kumo_nats_relay_dir_lag_segments{dir=\"%s\"} %llu\n", dir_names[i],
                LOAD(dir_lag_segments[i]));
    fprintf(f,
            "# HELP kumo_nats_relay_oldest_unacked_age_seconds Age of the oldest record read "
            "and not yet complete.\n# TYPE kumo_nats_relay_oldest_unacked_age_seconds gauge\n"
            "kumo_nats_relay_oldest_unacked_age_seconds %.3f\n",
            (double)LOAD(oldest_unacked_ms) / 1000.0);
    fprintf(f,
            "# HELP kumo_nats_relay_lag_seconds Age of the oldest record not acknowledged yet: "
            "since it was read, or, not read yet, since its segment file was written.\n"
            "# TYPE kumo_nats_relay_lag_seconds gauge\nkumo_nats_relay_lag_seconds %.3f\n",
            (double)LOAD(lag_ms) / 1000.0);
}

/* /proc/self/stat fields 14 (utime), 15 (stime), 22 (starttime, ticks after boot) and
 * 24 (rss, pages); false if unreadable. */
static bool read_proc_stat(unsigned long long *ticks, unsigned long long *start_ticks,
                           long long *rss_pages)
{
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the command name may hold spaces and ')' */
    unsigned long long utime, stime;
    if (!p || sscanf(p + 2,
                     "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d "
                     "%*d %*d %llu %*u %lld",
                     &utime, &stime, start_ticks, rss_pages) != 4)
        return false;
    *ticks = utime + stime;
    return true;
}

static unsigned long long boot_time(void)
{
    char line[256];
    unsigned long long btime = 0;
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "btime %llu", &btime) == 1)
            break;
    fclose(f);
    return btime;
}

static long open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    long n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

static void put_process_metric(FILE *f, const char *name, const char *type, const char *help,
                               double value)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, value);
}

/* Prometheus' standard process_* metrics, read at scrape time. */
static void put_process(FILE *f)
{
    unsigned long long ticks, start_ticks;
    long long rss_pages;
    double hz = (double)sysconf(_SC_CLK_TCK);
    if (read_proc_stat(&ticks, &start_ticks, &rss_pages)) {
        put_process_metric(f, "process_cpu_seconds_total", "counter",
                           "Total user and system CPU time spent in seconds.", (double)ticks / hz);
        put_process_metric(f, "process_resident_memory_bytes", "gauge",
                           "Resident memory size in bytes.",
                           (double)rss_pages * (double)sysconf(_SC_PAGESIZE));
        put_process_metric(f, "process_start_time_seconds", "gauge",
                           "Start time of the process since unix epoch in seconds.",
                           (double)boot_time() + (double)start_ticks / hz);
    }
    long fds = open_fds();
    if (fds >= 0)
        put_process_metric(f, "process_open_fds", "gauge", "Number of open file descriptors.",
                           (double)fds);
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0)
        put_process_metric(f, "process_max_fds", "gauge",
                           "Maximum number of open file descriptors.",
                           lim.rlim_cur == RLIM_INFINITY ? -1.0 : (double)lim.rlim_cur);
}

static void put_histogram(FILE *f)
{
    fputs("# HELP kumo_nats_relay_ack_latency_seconds From reading a record to its last ack.\n"
          "# TYPE kumo_nats_relay_ack_latency_seconds histogram\n",
          f);
    unsigned long long cumulative = 0;
    for (int i = 0; i < ACK_LATENCY_BUCKETS; i++) {
        cumulative += LOAD(ack_latency_bucket[i]);
        fprintf(f, "kumo_nats_relay_ack_latency_seconds_bucket{le=\"%g\"} %llu\n",
                (double)bucket_us[i] / 1e6, cumulative);
    }
    cumulative += LOAD(ack_latency_bucket[ACK_LATENCY_BUCKETS]);
    fprintf(f, "kumo_nats_relay_ack_latency_seconds_bucket{le=\"+Inf\"} %llu\n", cumulative);
    fprintf(f, "kumo_nats_relay_ack_latency_seconds_sum %.6f\n",
            (double)LOAD(ack_latency_sum_us) / 1e6);
    fprintf(f, "kumo_nats_relay_ack_latency_seconds_count %llu\n", cumulative);
}

char *metrics_render(void)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return NULL;
    fprintf(f,
            "# HELP kumo_nats_relay_build_info The relay's version.\n"
            "# TYPE kumo_nats_relay_build_info gauge\n"
            "kumo_nats_relay_build_info{version=\"%s\"} 1\n",
            RELAY_VERSION);
    put_counters(f);
    put_gauges(f);
    put_histogram(f);
    put_process(f);
    int health = atomic_load(&metrics.health);
    fprintf(f,
            "# HELP kumo_nats_relay_healthy 1 when /healthz answers 200.\n"
            "# TYPE kumo_nats_relay_healthy gauge\nkumo_nats_relay_healthy %d\n",
            health == HEALTH_OK);
    fclose(f);
    return text;
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, char *body,
                             const char *type)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(resp, "Content-Type", type);
    enum MHD_Result rc = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return rc;
}

/* ---- Bounds of the HTTP server: a probe always gets its answer ----------------------
 *
 * A client that connects and sends nothing, or a byte now and then, holds one of the
 * server's connection slots; enough of them and every probe is turned away (16 idle
 * sockets did it). So: many slots (the requests are tiny), no more than half of them for
 * one address, an idle socket closed after HTTP_IDLE_TIMEOUT_S, and a request that has not
 * arrived whole HTTP_REQUEST_DEADLINE_MS after the connection opened (or after its last
 * answer) cut by the reaper thread, however slowly its bytes keep coming. */
enum {
    HTTP_MAX_CONNECTIONS = 256,
    HTTP_MIN_CONNECTIONS = 16,
    HTTP_IDLE_TIMEOUT_S = 5,
    HTTP_REQUEST_DEADLINE_MS = 10000,
    HTTP_REAP_INTERVAL_MS = 500,
};

struct http_conn {
    struct http_conn *prev, *next;
    int fd;
    uint64_t waiting_since_ms; /* 0: a request is being answered */
};

static struct {
    pthread_mutex_t lock; /* guards the list, and each fd against its close by libmicrohttpd */
    pthread_cond_t wake;
    pthread_t thread;
    bool running, stopping;
    struct http_conn *head;
} reaper = {.lock = PTHREAD_MUTEX_INITIALIZER};

static uint64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static struct http_conn *conn_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return info ? info->socket_context : NULL;
}

static void set_waiting(struct MHD_Connection *conn, uint64_t since_ms)
{
    struct http_conn *c = conn_of(conn);
    if (!c)
        return;
    pthread_mutex_lock(&reaper.lock);
    c->waiting_since_ms = since_ms;
    pthread_mutex_unlock(&reaper.lock);
}

/* libmicrohttpd calls this with CLOSED before it closes the socket, so under the lock the
 * reaper never touches an fd that is closed, or reused by the relay. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct http_conn *c = *socket_context;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *info =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!info)
            return;
        c = xcalloc(1, sizeof(*c));
        c->fd = info->connect_fd;
        c->waiting_since_ms = monotonic_ms();
        pthread_mutex_lock(&reaper.lock);
        c->next = reaper.head;
        if (reaper.head)
            reaper.head->prev = c;
        reaper.head = c;
        pthread_mutex_unlock(&reaper.lock);
        *socket_context = c;
    } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED && c) {
        pthread_mutex_lock(&reaper.lock);
        if (c->prev)
            c->prev->next = c->next;
        else
            reaper.head = c->next;
        if (c->next)
            c->next->prev = c->prev;
        pthread_mutex_unlock(&reaper.lock);
        free(c);
        *socket_context = NULL;
    }
}

/* An answer sent: the connection may wait for its next request, from now. */
static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    set_waiting(conn, monotonic_ms());
}

/* Shuts the socket down rather than closing it: libmicrohttpd sees the end of the stream,
 * closes the connection itself and frees its slot. */
static void *reap(void *arg)
{
    pthread_mutex_lock(&reaper.lock);
    while (!reaper.stopping) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += HTTP_REAP_INTERVAL_MS * 1000000L;
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&reaper.wake, &reaper.lock, &until);
        uint64_t now = monotonic_ms();
        for (struct http_conn *c = reaper.head; c; c = c->next) {
            if (c->waiting_since_ms && now - c->waiting_since_ms > HTTP_REQUEST_DEADLINE_MS) {
                shutdown(c->fd, SHUT_RDWR);
                c->waiting_since_ms = 0;
            }
        }
    }
    pthread_mutex_unlock(&reaper.lock);
    return NULL;
}

static char *reaper_start(void)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&reaper.wake, &attr);
    pthread_condattr_destroy(&attr);
    reaper.stopping = false;
    int rc = pthread_create(&reaper.thread, NULL, reap, NULL);
    if (rc != 0)
        return xasprintf("cannot start the metrics connection reaper: %s", strerror(rc));
    reaper.running = true;
    return NULL;
}

static void reaper_stop(void)
{
    if (!reaper.running)
        return;
    pthread_mutex_lock(&reaper.lock);
    reaper.stopping = true;
    pthread_cond_signal(&reaper.wake);
    pthread_mutex_unlock(&reaper.lock);
    pthread_join(reaper.thread, NULL);
    pthread_cond_destroy(&reaper.wake);
    reaper.running = false;
}

/* libmicrohttpd speaks once per refused connection ("Server reached connection limit"):
 * a flood of clients must not flood the log as well. One message a minute, with the
 * number of those left out since the last. */
__attribute__((format(printf, 2, 0))) static void http_log(void *cls, const char *fmt, va_list ap)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static uint64_t last_ms;
    static unsigned long left_out;
    char text[256];
    vsnprintf(text, sizeof(text), fmt, ap);
    text[strcspn(text, "\n")] = '\0';
    uint64_t now = monotonic_ms();
    pthread_mutex_lock(&lock);
    bool show = !last_ms || now - last_ms >= 60000;
    unsigned long before = left_out;
    if (show) {
        last_ms = now;
        left_out = 0;
    } else {
        left_out++;
    }
    pthread_mutex_unlock(&lock);
    if (show)
        log_warn("metrics server: %s messages_left_out=%lu", text, before);
}

/* Every slot is a file descriptor: leave three quarters of the process's to the relay. */
static unsigned connection_limit(void)
{
    struct rlimit rl;
    rlim_t limit = HTTP_MAX_CONNECTIONS;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur / 4 < limit)
        limit = rl.rlim_cur / 4;
    return limit < HTTP_MIN_CONNECTIONS ? HTTP_MIN_CONNECTIONS : (unsigned)limit;
}

static enum MHD_Result handle_request(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_data_size,
                                      void **con_cls)
{
    set_waiting(conn, 0); /* the request is here: answered at once */
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return reply(conn, 405, xstrdup("method not allowed\n"), "text/plain");
    if (strcmp(url, "/metrics") == 0) {
        char *text = metrics_render();
        return text ? reply(conn, 200, text, "text/plain; version=0.0.4; charset=utf-8")
                    : reply(conn, 500, xstrdup("out of memory\n"), "text/plain");
    }
    if (strcmp(url, "/healthz") == 0) {
        char *stuck = hook_watchdog_health(cls); /* the loop cannot judge while it is stuck */
        if (stuck) {
            char *body = xasprintf("%s\n", stuck);
            free(stuck);
            return reply(conn, 503, body, "text/plain");
        }
        enum health_state state = (enum health_state)atomic_load(&metrics.health);
        return reply(conn, state == HEALTH_OK ? 200 : 503, health_body(state), "text/plain");
    }
    return reply(conn, 404, xstrdup("not found: try /metrics or /healthz\n"), "text/plain");
}

static struct MHD_Daemon *start_daemon(const struct listen_addr *la, unsigned flags, unsigned limit,
                                       struct hook_watchdog *watchdog)
{
    const struct sockaddr *sa = (const struct sockaddr *)&la->addr;
    in_port_t port = sa->sa_family == AF_INET6 ? ((const struct sockaddr_in6 *)sa)->sin6_port
                                               : ((const struct sockaddr_in *)sa)->sin_port;
    return MHD_start_daemon(
        MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG | flags, ntohs(port), NULL, NULL,
        handle_request, watchdog, MHD_OPTION_EXTERNAL_LOGGER, http_log, NULL, MHD_OPTION_SOCK_ADDR,
        sa, MHD_OPTION_CONNECTION_LIMIT, limit, MHD_OPTION_PER_IP_CONNECTION_LIMIT, limit / 2,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_IDLE_TIMEOUT_S, MHD_OPTION_NOTIFY_CONNECTION,
        on_connection, NULL, MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_END);
}

char *metrics_start(const char *listen, struct hook_watchdog *watchdog)
{
    struct listen_addr la;
    char *err = listen_parse(listen, &la);
    if (err) {
        char *full = xasprintf("metrics.listen: %s", err);
        free(err);
        return full;
    }
    if ((err = reaper_start()))
        return err;
    unsigned limit = connection_limit();
    unsigned flags = la.addr.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0;
    daemon_handle =
        start_daemon(&la, la.every_interface ? MHD_USE_DUAL_STACK : flags, limit, watchdog);
    if (!daemon_handle && la.every_interface && errno == EAFNOSUPPORT) {
        /* A host without IPv6: every interface is every IPv4 one. */
        in_port_t port = ((struct sockaddr_in6 *)&la.addr)->sin6_port;
        struct sockaddr_in *in = (struct sockaddr_in *)&la.addr;
        memset(&la.addr, 0, sizeof(la.addr));
        in->sin_family = AF_INET;
        in->sin_addr.s_addr = htonl(INADDR_ANY);
        in->sin_port = port;
        la.len = sizeof(*in);
        daemon_handle = start_daemon(&la, 0, limit, watchdog);
    }
    if (!daemon_handle) {
        int saved = errno;
        reaper_stop();
        errno = saved;
        return xasprintf("cannot serve metrics on %s: %s", listen, strerror(errno));
    }
    log_info("serving /metrics and /healthz listen=%s max_connections=%u", listen, limit);
    return NULL;
}

void metrics_stop(void)
{
    if (daemon_handle)
        MHD_stop_daemon(daemon_handle);
    daemon_handle = NULL;
    reaper_stop();
}
