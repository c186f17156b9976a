/*
 * latency_probe: how long a record takes from being appended to the spool to being in
 * JetStream, for the benchmark's latency run.
 *
 *   latency_probe [-s URL] --subject SUBJ --stream NAME --count N [--idle SECONDS]
 *                 [--raw FILE]
 *
 * The benchmark's writer puts the wall-clock time of the append (CLOCK_REALTIME, ns) into
 * each record as "bench_append_ns":<digits>. Two measures per record:
 *
 *   delivered  a core NATS subscription on SUBJ (taken before the writer starts) notes when
 *              the message reaches it: append -> relay read, published, routed by the server.
 *   stored     afterwards, an ordered consumer reads the stream back; every message's
 *              JetStream timestamp is the moment the stream stored it, just before the server
 *              sent the ack: append -> stored (= acknowledged).
 *
 * Protocol on stdout: "ready" once subscribed; "warm" at the first message without a
 * timestamp (the writer's warm-up record: the relay is up and publishing); at the end one
 * JSON line {"delivered":{count,p50_ms,p90_ms,p99_ms,p999_ms,max_ms,mean_ms},"stored":{...}}.
 * The live phase ends after N timed messages or SECONDS (default 10) without any message.
 * --raw FILE: also write "<append ns> <delivered latency ns>" per timed message, in the order
 * received, to look for stalls over time.
 */
#define _GNU_SOURCE /* memmem */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nats/nats.h>

#define STAMP_KEY "\"bench_append_ns\":"

struct samples {
    int64_t *ns;
    size_t count, cap;
};

static void fail(const char *what, natsStatus s)
{
    const char *last = nats_GetLastError(NULL);
    fprintf(stderr, "latency_probe: %s: %s%s%s\n", what, natsStatus_GetText(s),
            last != NULL ? ": " : "", last != NULL ? last : "");
    exit(2);
}

static int64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The append time embedded in the record, or -1 when it has none. */
static int64_t stamp(natsMsg *msg)
{
    const char *data = natsMsg_GetData(msg);
    int len = natsMsg_GetDataLength(msg);
    const char *p = memmem(data, (size_t)len, STAMP_KEY, sizeof STAMP_KEY - 1);
    if (p == NULL)
        return -1;
    return strtoll(p + sizeof STAMP_KEY - 1, NULL, 10);
}

static void add(struct samples *s, int64_t v)
{
    if (s->count == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 65536;
        s->ns = realloc(s->ns, s->cap * sizeof *s->ns);
        if (s->ns == NULL) {
            fputs("latency_probe: out of memory\n", stderr);
            exit(2);
        }
    }
    s->ns[s->count++] = v;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct_ms(const struct samples *s, double q)
{
    size_t i = (size_t)(q * (double)(s->count - 1) + 0.5);
    return (double)s->ns[i] / 1e6;
}

static void summary(const char *name, struct samples *s, bool last)
{
    printf("\"%s\":{\"count\":%zu", name, s->count);
    if (s->count > 0) {
        qsort(s->ns, s->count, sizeof *s->ns, cmp64);
        double sum = 0;
        for (size_t i = 0; i < s->count; i++)
            sum += (double)s->ns[i];
        printf(",\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"p999_ms\":%.3f,\"max_ms\":%.3f,"
               "\"min_ms\":%.3f,\"mean_ms\":%.3f",
               pct_ms(s, 0.5), pct_ms(s, 0.9), pct_ms(s, 0.99), pct_ms(s, 0.999),
               (double)s->ns[s->count - 1] / 1e6, (double)s->ns[0] / 1e6,
               sum / (double)s->count / 1e6);
    }
    printf("}%s", last ? "" : ",");
}

int main(int argc, char **argv)
{
    const char *url = "nats://127.0.0.1:4222", *subject = NULL, *stream = NULL, *raw = NULL;
    size_t want = 0;
    int64_t idle_ms = 10000;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "-s") == 0)
            url = argv[i + 1];
        else if (strcmp(argv[i], "--subject") == 0)
            subject = argv[i + 1];
        else if (strcmp(argv[i], "--stream") == 0)
            stream = argv[i + 1];
        else if (strcmp(argv[i], "--count") == 0)
            want = strtoul(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--raw") == 0)
            raw = argv[i + 1];
        else if (strcmp(argv[i], "--idle") == 0)
            idle_ms = (int64_t)(atof(argv[i + 1]) * 1000);
    }
    if (subject == NULL || stream == NULL || want == 0) {
        fputs("usage: latency_probe [-s URL] --subject SUBJ --stream NAME --count N "
              "[--idle SECONDS]\n",
              stderr);
        return 2;
    }

    natsConnection *nc = NULL;
    natsSubscription *sub = NULL;
    natsStatus s = natsConnection_ConnectTo(&nc, url);
    if (s == NATS_OK)
        s = natsConnection_SubscribeSync(&sub, nc, subject);
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(sub, -1, -1);
    if (s == NATS_OK)
        s = natsConnection_Flush(nc);
    if (s != NATS_OK)
        fail("subscribe", s);
    puts("ready");
    fflush(stdout);

    /* Live phase: receive time minus append time. */
    struct samples delivered = {0}, stored = {0};
    FILE *raw_out = raw != NULL ? fopen(raw, "w") : NULL;
    if (raw != NULL && raw_out == NULL) {
        perror(raw);
        return 2;
    }
    bool warm = false;
    while (delivered.count < want) {
        natsMsg *msg = NULL;
        s = natsSubscription_NextMsg(&msg, sub, idle_ms);
        if (s == NATS_TIMEOUT)
            break;
        if (s != NATS_OK)
            fail("next message", s);
        int64_t now = realtime_ns(), t = stamp(msg);
        if (t < 0 && !warm) {
            warm = true;
            puts("warm");
            fflush(stdout);
        } else if (t >= 0) {
            add(&delivered, now - t);
            if (raw_out != NULL)
                fprintf(raw_out, "%" PRId64 " %" PRId64 "\n", t, now - t);
        }
        natsMsg_Destroy(msg);
    }
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    if (raw_out != NULL)
        fclose(raw_out);

    /* Stored phase: JetStream's own timestamp of each message minus append time. */
    jsCtx *js = NULL;
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = stream;
    so.Ordered = true;
    s = natsConnection_JetStream(&js, nc, NULL);
    if (s == NATS_OK)
        s = js_SubscribeSync(&sub, js, subject, NULL, &so, NULL);
    if (s != NATS_OK)
        fail("ordered consumer", s);
    for (;;) {
        natsMsg *msg = NULL;
        jsMsgMetaData *meta = NULL;
        s = natsSubscription_NextMsg(&msg, sub, 2000);
        if (s == NATS_TIMEOUT)
            break;
        if (s != NATS_OK)
            fail("read back", s);
        int64_t t = stamp(msg);
        uint64_t pending = 1;
        if (natsMsg_GetMetaData(&meta, msg) == NATS_OK) {
            if (t >= 0)
                add(&stored, meta->Timestamp - t);
            pending = meta->NumPending;
            jsMsgMetaData_Destroy(meta);
        }
        natsMsg_Destroy(msg);
        if (pending == 0)
            break;
    }
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    jsCtx_Destroy(js);

    putchar('{');
    summary("delivered", &delivered, false);
    summary("stored", &stored, true);
    puts("}");
    fflush(stdout);
    natsConnection_Destroy(nc);
    nats_Close();
    free(delivered.ns);
    free(stored.ns);
    return 0;
}
