/* The connection half of the publisher: nats.c's connection events handed to the loop,
 * why a connection is down (for the log, /healthz and STATUS), and reopening one that
 * nats.c gave up on. The slots, sends and acks are in publish.c. */
#include "publish_internal.h"

#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "nats_options.h"
#include "nats_probe.h"
#include "url.h"
#include "xalloc.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static void on_connection_event(struct publisher *p, enum event_kind kind)
{
    struct event ev = {.kind = kind};
    publisher_enqueue(p, &ev);
}

static void on_connected(natsConnection *nc, void *closure)
{
    on_connection_event(closure, EVENT_CONNECTED);
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    on_connection_event(closure, EVENT_DISCONNECTED);
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    on_connection_event(closure, EVENT_RECONNECTED);
}

/* At shutdown on_closed is one of the last two callbacks nats.c makes with our closure
 * (publisher_final_callback). */
static void on_closed(natsConnection *nc, void *closure)
{
    struct publisher *p = closure;
    pthread_mutex_lock(&p->queue.lock);
    bool shutting_down = p->queue.shutting_down;
    pthread_mutex_unlock(&p->queue.lock);
    if (shutting_down)
        publisher_final_callback(p, &p->queue.connection_closed);
    else
        on_connection_event(p, EVENT_CLOSED);
}

static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    log_warn("nats asynchronous error: %s", natsStatus_GetText(err));
}

/* Why the connection failed, in nats.c's words ("Authorization Violation", a TLS
 * handshake error...): it names the problem, never the credentials. */
static void connection_error(struct publisher *p, char *buf, size_t size)
{
    const char *text = NULL;
    natsStatus st = p->conn ? natsConnection_GetLastError(p->conn, &text) : NATS_OK;
    if (!text || !*text)
        text = nats_GetLastError(&st);
    snprintf(buf, size, "%s", text && *text ? text : natsStatus_GetText(st));
}

/* nats.c reports a connection it gave up on as "No server available for connection",
 * whatever the servers answered. One direct attempt without retries gets the real
 * reason (Authorization Violation, a TLS error) on this thread. It blocks the loop for
 * at most the connect timeout per server, once per backoff period, and only while
 * nothing can be published anyway. */
static void probe_error(struct publisher *p, char *buf, size_t size)
{
    natsConnection *nc = NULL;
    natsStatus st = natsConnection_Connect(&nc, p->probe_opts);
    if (st == NATS_OK) {
        natsConnection_Destroy(nc);
        snprintf(buf, size, "closed (a new connection is accepted)");
        return;
    }
    const char *text = nats_GetLastError(NULL);
    snprintf(buf, size, "%s", text && *text ? text : natsStatus_GetText(st));
}

/* nats.c prefixes its texts with "(conn.c:1905): ": not for operators. */
static const char *without_source(const char *text)
{
    const char *end = text[0] == '(' ? strstr(text, "): ") : NULL;
    return end ? end + 3 : text;
}

/* The servers for the log: never the password or token a URL may carry. */
static void servers_text(const struct publisher *p, char *buf, size_t size)
{
    url_redact_list((const char *const *)p->servers, p->options.server_count, buf, size);
}

/* Not connected from now on, if it was: the first warning is due at once. */
static void mark_down(struct publisher *p)
{
    if (p->down_since)
        return;
    p->down_since = loop_now_ms();
    p->down_warn_due = p->down_since;
    snprintf(p->down_error, sizeof(p->down_error), "connecting");
}

/* Why nothing connects. nats.c only says "No server available for connection" while it
 * retries, so ask each server over TCP; when one accepts, a direct nats.c connect
 * (handshake) names what the server refuses: credentials, TLS. */
static void diagnose(struct publisher *p, bool handshake)
{
    char why[256];
    if (nats_probe_tcp((const char *const *)p->servers, p->options.server_count, why,
                       sizeof(why))) {
        if (handshake && p->probe_opts)
            probe_error(p, why, sizeof(why));
        else
            snprintf(why, sizeof(why),
                     "a server accepts TCP connections, the nats handshake "
                     "is not done yet");
    }
    url_redact_text(without_source(why), p->down_error, sizeof(p->down_error));
}

/* While nats.c retries in the background: warn at once, then every
 * PUBLISHER_DOWN_WARN_INTERVAL_MS, so that a relay waiting for NATS says so in the log. */
void publish_connection_warn_if_down(struct publisher *p)
{
    uint64_t now = loop_now_ms();
    if (p->connected || !p->conn || !p->down_since || now < p->down_warn_due)
        return;
    diagnose(p, true);
    char servers[512];
    servers_text(p, servers, sizeof(servers));
    log_warn("cannot connect to nats, retrying servers=%s auth=\"%s\" error=\"%s\" "
             "down_for=%" PRIu64 "s in_flight=%zu",
             servers, p->auth, p->down_error, (now - p->down_since) / 1000, publisher_in_flight(p));
    p->down_warn_due = now + PUBLISHER_DOWN_WARN_INTERVAL_MS;
}

/* The connection is gone for good (refused credentials or certificate, or closed by
 * nats.c): a new one is tried from publisher_tick after a backoff, forever. */
void publish_connection_failed(struct publisher *p)
{
    char why[256], servers[512];
    connection_error(p, why, sizeof(why));
    if (p->probe_opts && (strstr(why, "No server available") || strstr(why, "Connection Closed")))
        probe_error(p, why, sizeof(why));
    servers_text(p, servers, sizeof(servers));
    natsSubscription_Destroy(p->sub);
    natsSubscription_Destroy(p->await_sub);
    natsConnection_Destroy(p->conn);
    p->sub = NULL;
    p->await_sub = NULL;
    p->conn = NULL;
    p->connected = false;
    mark_down(p);
    uint64_t wait = publisher_backoff_ms(++p->reopen_attempts);
    p->reopen_due = loop_now_ms() + wait;
    bool refused = strcasestr(why, "authorization") || strcasestr(why, "authentication");
    if (strstr(why, "Expected 'PONG', got ''"))
        snprintf(why, sizeof(why),
                 "the server closed the connection during the handshake (does "
                 "it require a client certificate?)");
    char error[sizeof(why)];
    url_redact_text(without_source(why), error, sizeof(error));
    log_warn("%s, retrying in %" PRIu64 "ms servers=%s auth=\"%s\" error=\"%s\" in_flight=%zu",
             refused ? "nats refused the relay's credentials" : "cannot connect to nats", wait,
             servers, p->auth, error, publisher_in_flight(p));
    snprintf(p->down_error, sizeof(p->down_error), "%s", error);
    p->down_warn_due = loop_now_ms() + PUBLISHER_DOWN_WARN_INTERVAL_MS; /* just said */
}

static void reopen_if_due(struct publisher *p)
{
    if (p->conn || loop_now_ms() < p->reopen_due)
        return;
    if (publish_connection_open(p) != NATS_OK)
        publish_connection_failed(p);
}

void publish_connection_event(struct publisher *p, enum event_kind kind)
{
    if (kind == EVENT_CONNECTED || kind == EVENT_RECONNECTED) {
        char full[256] = "", shown[256];
        natsConnection_GetConnectedUrl(p->conn, full, sizeof(full));
        url_redact(full, shown, sizeof(shown));
        explicit_bzero(full, sizeof(full));
        METRIC_ADD(nats_reconnects, kind == EVENT_RECONNECTED);
        log_info("%s to nats server=%s auth=\"%s\" in_flight=%zu",
                 kind == EVENT_CONNECTED ? "connected" : "reconnected", shown, p->auth,
                 publisher_in_flight(p));
        p->connected = true;
        p->reopen_attempts = 0;
        p->down_since = 0;
        p->down_error[0] = '\0';
        publisher_resend_all(p);
    } else if (kind == EVENT_DISCONNECTED) {
        if (p->connected) {
            METRIC_ADD(nats_disconnects, 1);
            p->connected = false;
            mark_down(p);
            diagnose(p, false); /* for /healthz; a TCP connect each, no handshake */
            log_warn("disconnected from nats, reconnecting in_flight=%zu error=\"%s\"",
                     publisher_in_flight(p), p->down_error);
            p->down_warn_due = loop_now_ms() + PUBLISHER_DOWN_WARN_INTERVAL_MS;
        }
        p->connected = false;
    } else if (kind == EVENT_CLOSED && p->conn) {
        publish_connection_failed(p);
    }
}

natsStatus publish_connection_options(struct publisher *p, const struct nats_auth *auth, char **err)
{
    struct nats_options_spec spec = {.servers = (const char *const *)p->servers,
                                     .server_count = p->options.server_count,
                                     .name = p->name,
                                     .auth = auth};
    natsStatus st = nats_options_create(&p->opts, &spec, err);
    if (st == NATS_OK)
        st = natsOptions_SetRetryOnFailedConnect(p->opts, true, on_connected, p);
    if (st == NATS_OK)
        st = natsOptions_SetDisconnectedCB(p->opts, on_disconnected, p);
    if (st == NATS_OK)
        st = natsOptions_SetReconnectedCB(p->opts, on_reconnected, p);
    if (st == NATS_OK)
        st = natsOptions_SetClosedCB(p->opts, on_closed, p);
    if (st == NATS_OK)
        st = natsOptions_SetErrorHandler(p->opts, on_async_error, p);
    spec.once = true; /* the probe: the same servers and credentials, one attempt */
    if (st == NATS_OK)
        st = nats_options_create(&p->probe_opts, &spec, err);
    return st;
}

natsStatus publish_connection_open(struct publisher *p)
{
    natsStatus st = natsConnection_Connect(&p->conn, p->opts);
    bool pending = st == NATS_NOT_YET_CONNECTED; /* the first attempt failed: retrying */
    if (pending) {
        st = NATS_OK;
        mark_down(p);
    }
    if (st == NATS_OK)
        st = publisher_subscribe(p);
    if (st == NATS_OK && !pending)
        on_connection_event(p, EVENT_CONNECTED);
    return st;
}

/* nats.c ignores the password of nats://:password@host, and prints that URL without its
 * '@' (nats://:passwordhost:4222), where no redaction can find the password: refuse it. */
char *publish_connection_check_servers(const struct publisher_options *o)
{
    char user[8], shown[256];
    for (size_t i = 0; i < o->server_count; i++) {
        if (url_auth(o->servers[i], user, sizeof(user)) == URL_AUTH_PASSWORD_ONLY) {
            url_redact(o->servers[i], shown, sizeof(shown));
            return xasprintf("server %s has a password and no user name", shown);
        }
    }
    return NULL;
}

/* Closes the connection and waits until nats.c has made its last callback with p as the
 * closure: its threads must never touch a freed publisher. Returns false on timeout. */
bool publish_connection_close(struct publisher *p)
{
    struct event_queue *q = &p->queue;
    pthread_mutex_lock(&q->lock);
    q->shutting_down = true;
    /* The ack subscription is synchronous: no thread of nats.c holds p for it. */
    q->subscription_closed = p->await_sub == NULL;
    q->connection_closed = p->conn == NULL;
    pthread_mutex_unlock(&q->lock);
    if (p->conn && p->connected)
        natsConnection_FlushTimeout(p->conn, 2000);
    if (p->conn)
        natsConnection_Close(p->conn);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10;
    bool done = true;
    pthread_mutex_lock(&q->lock);
    while (!(q->connection_closed && q->subscription_closed) && done)
        done = pthread_cond_timedwait(&q->done, &q->lock, &deadline) == 0;
    done = q->connection_closed && q->subscription_closed;
    pthread_mutex_unlock(&q->lock);
    return done;
}

const char *publisher_set_down_reason(const struct publisher_set *set, uint64_t *since_ms)
{
    for (size_t i = 0; i < set->count; i++) {
        const struct publisher *p = set->items[i];
        if (!p->connected) {
            *since_ms = p->down_since;
            return p->down_error[0] ? p->down_error : "connecting";
        }
    }
    return NULL;
}

size_t publisher_set_disconnected(const struct publisher_set *set, size_t *total)
{
    size_t down = 0;
    for (size_t i = 0; i < set->count; i++)
        down += !set->items[i]->connected;
    if (total)
        *total = set->count;
    return down;
}

void publish_connection_tick(struct publisher *p)
{
    reopen_if_due(p);
    publish_connection_warn_if_down(p);
}
