/*
 * bare_publisher: the benchmark's reference points, written with nats.c and nothing of the
 * relay. It loads a file of record lines into memory, prepares a subject and a Nats-Msg-Id
 * for each (outside the timed part), then publishes them all to JetStream and waits for
 * every ack.
 *
 *   bare_publisher [-s URL] [--mode async|reply|sync] [--window N] [--limit N] FILE
 *
 * Modes:
 *   async  js_PublishMsgAsync with PublishAsync.MaxPending = window and an ack handler
 *          (nats.c's own pipelined JetStream publish).
 *   reply  core publish with a reply subject per in-flight slot (<inbox>.<slot>), acks taken
 *          by one async subscription on <inbox>.*: the JetStream publish protocol without
 *          nats.c's JetStream layer, which is what the relay speaks.
 *   sync   js_PublishMsg, waiting for each ack before the next publish (kumod's await_ack).
 *
 * Every message: subject "kumo.log.<type>" (the built-in policy's default template), the
 * line as payload (with its "\n"), and Nats-Msg-Id "bench:20250912-110801.440526026:<end
 * offset>", the shape and length of the relay's ids. Every ack is checked: an error or a
 * duplicate makes the run fail, so a fast number is an honest one.
 *
 * Prints one JSON line: mode, records, bytes, seconds (first publish to last ack),
 * cpu_user, cpu_sys (getrusage of the whole process over that same span, nats.c's threads
 * included), acked, duplicates, errors.
 */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include <nats/nats.h>

#define MSG_ID_HEADER  "Nats-Msg-Id"
#define SEGMENT_NAME   "20250912-110801.440526026"
#define ACK_WAIT_MS    60000
#define SUBJECT_PREFIX "kumo.log."

struct record {
    const char *data;
    int len;
    char subject[80];
    char msg_id[64];
};

struct records {
    char *buf;
    struct record *items;
    size_t count;
    uint64_t bytes;
};

/*
 * Shared with nats.c's callback thread. The counters and first_error are written by that
 * one thread only (under `lock` in async mode) and read after the last ack. In reply mode
 * the publishing thread and the ack callback meet through atomics; the mutex and condition
 * variable are used only when the window is full and the publisher has to sleep.
 */
struct acks {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    atomic_bool *busy; /* reply mode: slot awaiting its ack */
    size_t window;
    atomic_size_t in_flight;
    atomic_bool waiting;
    uint64_t acked, duplicates, errors;
    char first_error[256];
};

static struct acks acks = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static void fail(const char *what, natsStatus s)
{
    const char *last = nats_GetLastError(NULL);
    fprintf(stderr, "bare_publisher: %s: %s%s%s\n", what, natsStatus_GetText(s),
            last != NULL ? ": " : "", last != NULL ? last : "");
    exit(2);
}

static void die(const char *what)
{
    fprintf(stderr, "bare_publisher: %s\n", what);
    exit(2);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void cpu_now(double *user, double *sys)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
    *sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* The subject from the record's first "type" string; done while loading, so not timed. */
static void record_subject(struct record *r)
{
    static const char key[] = "\"type\":\"";
    const char *end = r->data + r->len;
    const char *p = memmem(r->data, (size_t)r->len, key, sizeof key - 1);
    char type[48] = "_";
    if (p != NULL) {
        size_t n = 0;
        p += sizeof key - 1;
        while (p + n < end && p[n] != '"' && n < sizeof type - 1)
            n++;
        memcpy(type, p, n);
        type[n] = '\0';
    }
    snprintf(r->subject, sizeof r->subject, SUBJECT_PREFIX "%s", type);
}

static void load(struct records *rs, const char *path, size_t limit)
{
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (f == NULL || fstat(fileno(f), &st) != 0)
        die(strerror(errno));
    rs->buf = malloc((size_t)st.st_size + 1);
    if (rs->buf == NULL || fread(rs->buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size)
        die("cannot read the records file");
    fclose(f);
    size_t cap = 1024;
    rs->items = malloc(cap * sizeof *rs->items);
    uint64_t offset = 0;
    char *p = rs->buf, *end = rs->buf + st.st_size;
    while (p < end && (limit == 0 || rs->count < limit)) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL)
            break;
        if (rs->count == cap) {
            cap *= 2;
            rs->items = realloc(rs->items, cap * sizeof *rs->items);
        }
        if (rs->items == NULL)
            die("out of memory");
        struct record *r = &rs->items[rs->count++];
        r->data = p;
        r->len = (int)(nl + 1 - p);
        offset += (uint64_t)r->len;
        rs->bytes += (uint64_t)r->len;
        record_subject(r);
        snprintf(r->msg_id, sizeof r->msg_id, "bench:" SEGMENT_NAME ":%" PRIu64, offset);
        p = nl + 1;
    }
}

static natsMsg *make_msg(const struct record *r, const char *reply)
{
    natsMsg *m = NULL;
    natsStatus s = natsMsg_Create(&m, r->subject, reply, r->data, r->len);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, MSG_ID_HEADER, r->msg_id);
    if (s != NATS_OK)
        fail("message", s);
    return m;
}

static void note_error(const char *text)
{
    acks.errors++;
    if (acks.first_error[0] == '\0')
        snprintf(acks.first_error, sizeof acks.first_error, "%s", text);
}

/* ---- async: js_PublishMsgAsync -------------------------------------------------------- */

static void on_js_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    pthread_mutex_lock(&acks.lock);
    if (pa != NULL) {
        acks.acked++;
        if (pa->Duplicate)
            acks.duplicates++;
    } else {
        note_error(pae != NULL && pae->ErrText != NULL ? pae->ErrText : "publish error");
    }
    pthread_mutex_unlock(&acks.lock);
    natsMsg_Destroy(msg);
}

static void run_async(natsConnection *nc, const struct records *rs, size_t window)
{
    jsOptions jo;
    jsCtx *js = NULL;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = (int64_t)window;
    jo.PublishAsync.AckHandler = on_js_ack;
    jo.PublishAsync.StallWait = ACK_WAIT_MS;
    natsStatus s = natsConnection_JetStream(&js, nc, &jo);
    if (s != NATS_OK)
        fail("JetStream context", s);
    for (size_t i = 0; i < rs->count; i++) {
        natsMsg *m = make_msg(&rs->items[i], NULL);
        s = js_PublishMsgAsync(js, &m, NULL);
        if (s != NATS_OK)
            fail("js_PublishMsgAsync", s);
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = ACK_WAIT_MS;
    s = js_PublishAsyncComplete(js, &po);
    if (s != NATS_OK)
        fail("js_PublishAsyncComplete", s);
    jsCtx_Destroy(js);
}

/* ---- reply: core publish, one reply subject per slot ---------------------------------- */

static void on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    const char *subj = natsMsg_GetSubject(msg);
    const char *dot = strrchr(subj, '.');
    size_t slot = dot != NULL ? strtoul(dot + 1, NULL, 10) : acks.window;
    const char *data = natsMsg_GetData(msg);
    int len = natsMsg_GetDataLength(msg);

    if (slot >= acks.window || !atomic_load(&acks.busy[slot])) {
        note_error("ack for an idle slot");
    } else {
        /* {"stream":"BENCH","seq":1} or {"error":{...}}; "duplicate":true on a copy. */
        if (len == 0 || memmem(data, (size_t)len, "\"error\"", 7) != NULL) {
            char text[200];
            snprintf(text, sizeof text, "%.*s", len < 180 ? len : 180, data);
            note_error(len == 0 ? "empty ack (no responders?)" : text);
        } else {
            acks.acked++;
            if (memmem(data, (size_t)len, "\"duplicate\":true", 16) != NULL)
                acks.duplicates++;
        }
        atomic_store(&acks.busy[slot], false);
        atomic_fetch_sub(&acks.in_flight, 1);
        /* The publisher sets `waiting` under the lock and then checks again, so either it
         * sees the slot free or this signal reaches it. */
        if (atomic_load(&acks.waiting)) {
            pthread_mutex_lock(&acks.lock);
            pthread_cond_signal(&acks.cond);
            pthread_mutex_unlock(&acks.lock);
        }
    }
    natsMsg_Destroy(msg);
}

/* Sleep until `done` holds; false after ACK_WAIT_MS. */
static bool wait_for(bool (*done)(size_t), size_t arg)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += ACK_WAIT_MS / 1000;
    bool ok = true;
    pthread_mutex_lock(&acks.lock);
    atomic_store(&acks.waiting, true);
    while (ok && !done(arg)) {
        if (pthread_cond_timedwait(&acks.cond, &acks.lock, &deadline) == ETIMEDOUT)
            ok = done(arg);
    }
    atomic_store(&acks.waiting, false);
    pthread_mutex_unlock(&acks.lock);
    return ok;
}

static bool slot_free(size_t slot)
{
    return !atomic_load(&acks.busy[slot]);
}
static bool all_acked(size_t unused)
{
    return atomic_load(&acks.in_flight) == 0;
}

static void run_reply(natsConnection *nc, const struct records *rs, size_t window)
{
    natsInbox *inbox = NULL;
    natsSubscription *sub = NULL;
    char wildcard[128], (*replies)[128] = malloc(window * sizeof *replies);
    acks.busy = calloc(window, sizeof *acks.busy);
    if (replies == NULL || acks.busy == NULL || natsInbox_Create(&inbox) != NATS_OK)
        die("out of memory");
    for (size_t i = 0; i < window; i++)
        snprintf(replies[i], sizeof replies[i], "%s.%zu", inbox, i);
    snprintf(wildcard, sizeof wildcard, "%s.*", inbox);
    natsStatus s = natsConnection_Subscribe(&sub, nc, wildcard, on_reply, NULL);
    if (s == NATS_OK) /* never drop an ack for a slow consumer limit */
        s = natsSubscription_SetPendingLimits(sub, -1, -1);
    if (s == NATS_OK)
        s = natsConnection_Flush(nc);
    if (s != NATS_OK)
        fail("subscribe", s);

    for (size_t i = 0; i < rs->count; i++) {
        size_t slot = i % window;
        if (!slot_free(slot) && !wait_for(slot_free, slot))
            die("no ack within 60 s");
        atomic_store(&acks.busy[slot], true);
        atomic_fetch_add(&acks.in_flight, 1);
        natsMsg *m = make_msg(&rs->items[i], replies[slot]);
        s = natsConnection_PublishMsg(nc, m);
        natsMsg_Destroy(m);
        if (s != NATS_OK)
            fail("publish", s);
    }
    s = natsConnection_Flush(nc);
    if (s != NATS_OK)
        fail("flush", s);
    if (!wait_for(all_acked, 0))
        die("acks missing after 60 s");
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    natsInbox_Destroy(inbox);
    free(replies);
}

/* ---- sync: js_PublishMsg, one at a time ---------------------------------------------- */

static void run_sync(natsConnection *nc, const struct records *rs)
{
    jsCtx *js = NULL;
    natsStatus s = natsConnection_JetStream(&js, nc, NULL);
    if (s != NATS_OK)
        fail("JetStream context", s);
    for (size_t i = 0; i < rs->count; i++) {
        natsMsg *m = make_msg(&rs->items[i], NULL);
        jsPubAck *pa = NULL;
        jsErrCode jerr = 0;
        s = js_PublishMsg(&pa, js, m, NULL, &jerr);
        natsMsg_Destroy(m);
        if (s != NATS_OK) {
            note_error(natsStatus_GetText(s));
            continue;
        }
        acks.acked++;
        if (pa->Duplicate)
            acks.duplicates++;
        jsPubAck_Destroy(pa);
    }
    jsCtx_Destroy(js);
}

int main(int argc, char **argv)
{
    const char *url = "nats://127.0.0.1:4222", *mode = "async", *path = NULL;
    size_t window = 4096, limit = 0;
    for (int i = 1; i < argc; i++) {
        bool more = i + 1 < argc;
        if (strcmp(argv[i], "-s") == 0 && more)
            url = argv[++i];
        else if (strcmp(argv[i], "--mode") == 0 && more)
            mode = argv[++i];
        else if (strcmp(argv[i], "--window") == 0 && more)
            window = strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--limit") == 0 && more)
            limit = strtoul(argv[++i], NULL, 10);
        else if (argv[i][0] != '-' && path == NULL)
            path = argv[i];
        else
            die("usage: bare_publisher [-s URL] [--mode async|reply|sync] [--window N] "
                "[--limit N] FILE");
    }
    if (path == NULL || window == 0)
        die("usage: bare_publisher [-s URL] [--mode async|reply|sync] [--window N] "
            "[--limit N] FILE");
    acks.window = window;

    struct records rs = {0};
    load(&rs, path, limit);

    natsOptions *opts = NULL;
    natsConnection *nc = NULL;
    natsStatus s = natsOptions_Create(&opts);
    if (s == NATS_OK)
        s = natsOptions_SetURL(opts, url);
    if (s == NATS_OK)
        s = natsOptions_SetName(opts, "bare_publisher");
    if (s == NATS_OK)
        s = natsConnection_Connect(&nc, opts);
    if (s != NATS_OK)
        fail("connect", s);

    double u0, s0, u1, s1;
    cpu_now(&u0, &s0);
    double t0 = now_s();
    if (strcmp(mode, "async") == 0)
        run_async(nc, &rs, window);
    else if (strcmp(mode, "reply") == 0)
        run_reply(nc, &rs, window);
    else if (strcmp(mode, "sync") == 0)
        run_sync(nc, &rs);
    else
        die("--mode: async, reply or sync");
    double t1 = now_s();
    cpu_now(&u1, &s1);

    printf("{\"mode\":\"%s\",\"window\":%zu,\"records\":%zu,\"bytes\":%" PRIu64
           ",\"seconds\":%.6f,\"cpu_user\":%.6f,\"cpu_sys\":%.6f,\"acked\":%" PRIu64
           ",\"duplicates\":%" PRIu64 ",\"errors\":%" PRIu64 "}\n",
           mode, strcmp(mode, "sync") == 0 ? (size_t)1 : window, rs.count, rs.bytes, t1 - t0,
           u1 - u0, s1 - s0, acks.acked, acks.duplicates, acks.errors);
    fflush(stdout);

    natsConnection_Destroy(nc);
    natsOptions_Destroy(opts);
    nats_Close();
    free(rs.items);
    free(rs.buf);
    free(acks.busy);
    if (acks.errors > 0 || acks.duplicates > 0 || acks.acked != rs.count) {
        fprintf(stderr,
                "bare_publisher: %" PRIu64 " acked of %zu, %" PRIu64 " duplicates, %" PRIu64
                " errors (first: %s)\n",
                acks.acked, rs.count, acks.duplicates, acks.errors, acks.first_error);
        return 1;
    }
    return 0;
}
