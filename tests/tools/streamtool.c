/*
 * streamtool: create, inspect and read JetStream streams for the integration tests.
 *
 *   streamtool [-s URL[,URL...]] COMMAND ARGS...
 *
 *   create NAME SUBJECT... [--storage file|memory] [--replicas N] [--dup-window SECONDS]
 *          [--max-msgs N] [--discard old|new] [--timeout SECONDS]
 *       Create the stream (idempotent for an identical config). Retries while JetStream is
 *       not ready or the cluster has no leader, up to --timeout (default 30 s).
 *   count NAME                   print the number of messages in the stream
 *   info NAME                    print one JSON line: messages, bytes, first_seq, last_seq,
 *                                num_deleted, duplicate_window, replicas, storage, leader...
 *   dump NAME [--slow] [--window N]
 *       One JSON line per stored message, in sequence order, deleted sequences skipped:
 *       {"seq":N,"subject":"...","msgid":"<Nats-Msg-Id>"|null,"data":"<base64 payload>"}
 *       Every sequence first_seq..last_seq is fetched individually with the stream's
 *       MSG.GET API (so the result is exact), N requests pipelined (default 256).
 *       --slow: one blocking js_GetMsg per sequence (for cross-checking).
 *   wait-count NAME N TIMEOUT    poll until the stream holds >= N messages (exit 0) or the
 *                                timeout passes (exit 1); prints the last count seen
 *   publish SUBJECT MSGID        js_Publish stdin as one message with Nats-Msg-Id MSGID
 *                                ("-" for none); prints {"stream","seq","duplicate"}
 *   publish-lines SUBJECT MSGID_PREFIX
 *                                every stdin line is one message (async publish), with
 *                                Nats-Msg-Id <prefix><line number> ("-" for none)
 *   ready [TIMEOUT]              wait until JetStream answers account info (default 30 s)
 *   delete NAME                  delete the stream
 *   delete-msg NAME SEQ          delete one message
 *
 * Errors go to stderr and exit with status 2.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <nats/nats.h>

#define DEFAULT_URL       "nats://127.0.0.1:4222"
#define API_WAIT_MS       5000
#define RESEND_AFTER_MS   3000
#define STALL_LIMIT_MS    60000
#define MAX_SLOT_ATTEMPTS 100
#define MSG_ID_HEADER     "Nats-Msg-Id"

struct args {
    const char *url;
    const char *cmd;
    const char *pos[64];
    int npos;
    const char *storage, *replicas, *dup_window, *max_msgs, *discard, *timeout, *window;
    bool slow;
};

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void fail(const char *fmt, ...)
{
    va_list ap;
    fputs("streamtool: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

/* The text of a nats.c failure: status, JetStream error code, last error of this thread. */
static const char *nats_err(natsStatus s, jsErrCode jerr)
{
    static char buf[512];
    const char *last = nats_GetLastError(NULL);
    snprintf(buf, sizeof buf, "%s (status %d, jerr %d)%s%s", natsStatus_GetText(s), (int)s,
             (int)jerr, last != NULL ? ": " : "", last != NULL ? last : "");
    return buf;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t parse_int(const char *what, const char *s, int64_t min)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min)
        fail("%s: expected an integer >= %" PRId64 ", got '%s'", what, min, s);
    return (int64_t)v;
}

static double parse_seconds(const char *what, const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || v < 0)
        fail("%s: expected a number of seconds, got '%s'", what, s);
    return v;
}

/* ---- connection ---------------------------------------------------------------------- */

/*
 * A secured server: TLS and credentials from the environment (credentials in the URL,
 * nats://user:password@host, work without this). KNR_NATS_TLS_CA, KNR_NATS_TLS_CERT and
 * KNR_NATS_TLS_KEY (PEM files), KNR_NATS_CREDS (a .creds file).
 */
static natsStatus secure_options(natsOptions *opts)
{
    const char *ca = getenv("KNR_NATS_TLS_CA"), *cert = getenv("KNR_NATS_TLS_CERT");
    const char *key = getenv("KNR_NATS_TLS_KEY"), *creds = getenv("KNR_NATS_CREDS");
    natsStatus s = NATS_OK;
    if (ca || cert)
        s = natsOptions_SetSecure(opts, true);
    if (s == NATS_OK && ca)
        s = natsOptions_LoadCATrustedCertificates(opts, ca);
    if (s == NATS_OK && cert)
        s = natsOptions_LoadCertificatesChain(opts, cert, key);
    if (s == NATS_OK && creds)
        s = natsOptions_SetUserCredentialsFromFiles(opts, creds, NULL);
    return s;
}

/*
 * Connect to the comma-separated server list, retrying until `deadline` (a now_ms() value;
 * 0 = one attempt); then fail, or with `soft` return NULL. The connection reconnects
 * forever, so a poller survives a server restart.
 */
static natsConnection *connect_nats_soft(const char *urls, int64_t deadline, bool soft)
{
    char *copy = strdup(urls), *save = NULL;
    const char *servers[16];
    int n = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok != NULL && n < 16;
         tok = strtok_r(NULL, ",", &save))
        servers[n++] = tok;
    if (n == 0)
        fail("no server URL given");

    natsOptions *opts = NULL;
    natsStatus s = natsOptions_Create(&opts);
    if (s == NATS_OK)
        s = natsOptions_SetServers(opts, servers, n);
    if (s == NATS_OK)
        s = natsOptions_SetName(opts, "streamtool");
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(opts, 2000);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(opts, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(opts, 100);
    if (s == NATS_OK)
        s = secure_options(opts);
    if (s != NATS_OK)
        fail("nats options: %s", nats_err(s, 0));

    natsConnection *nc = NULL;
    for (;;) {
        s = natsConnection_Connect(&nc, opts);
        if (s == NATS_OK)
            break;
        if (now_ms() >= deadline && soft) {
            fprintf(stderr, "streamtool: cannot connect to %s: %s\n", urls, nats_err(s, 0));
            nc = NULL;
            break;
        }
        if (now_ms() >= deadline)
            fail("cannot connect to %s: %s", urls, nats_err(s, 0));
        nats_Sleep(100);
    }
    natsOptions_Destroy(opts);
    free(copy);
    return nc;
}

static natsConnection *connect_nats(const char *urls, int64_t deadline)
{
    return connect_nats_soft(urls, deadline, false);
}

static jsCtx *jetstream(natsConnection *nc)
{
    jsOptions jo;
    jsCtx *js = NULL;
    jsOptions_Init(&jo);
    jo.Wait = API_WAIT_MS;
    natsStatus s = natsConnection_JetStream(&js, nc, &jo);
    if (s != NATS_OK)
        fail("JetStream context: %s", nats_err(s, 0));
    return js;
}

static jsStreamInfo *stream_info(jsCtx *js, const char *name)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, js, name, NULL, &jerr);
    if (s != NATS_OK)
        fail("stream info %s: %s", name, nats_err(s, jerr));
    return si;
}

/* ---- base64 ---------------------------------------------------------------------------- */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_encode(const unsigned char *in, size_t len)
{
    char *out = malloc(4 * ((len + 2) / 3) + 1), *p = out;
    if (out == NULL)
        fail("out of memory");
    size_t i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *p++ = B64[v >> 18];
        *p++ = B64[(v >> 12) & 63];
        *p++ = B64[(v >> 6) & 63];
        *p++ = B64[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0);
        *p++ = B64[v >> 18];
        *p++ = B64[(v >> 12) & 63];
        *p++ = i + 1 < len ? B64[(v >> 6) & 63] : (char)'=';
        *p++ = '=';
    }
    *p = '\0';
    return out;
}

/* Decode standard base64 (padding optional); returns NULL on invalid input. */
static unsigned char *b64_decode(const char *in, size_t *out_len)
{
    size_t len = strlen(in);
    unsigned char *out = malloc(len / 4 * 3 + 3), *p = out;
    uint32_t acc = 0;
    int bits = 0;
    if (out == NULL)
        fail("out of memory");
    for (size_t i = 0; i < len && in[i] != '='; i++) {
        const char *c = strchr(B64, in[i]);
        if (c == NULL || in[i] == '\0') {
            free(out);
            return NULL;
        }
        acc = acc << 6 | (uint32_t)(c - B64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            *p++ = (unsigned char)(acc >> bits);
        }
    }
    *out_len = (size_t)(p - out);
    return out;
}

/*
 * Find `key` in a raw NATS header block ("NATS/1.0\r\nKey: value\r\n...\r\n"); returns a
 * malloc'd value or NULL.
 */
static char *header_value(const unsigned char *hdr, size_t len, const char *key)
{
    size_t klen = strlen(key);
    const char *p = (const char *)hdr, *end = p + len;
    const char *eol = memmem(p, len, "\r\n", 2);
    while (eol != NULL && eol + 2 < end) {
        p = eol + 2;
        eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        const char *line_end = eol != NULL ? eol : end;
        if ((size_t)(line_end - p) > klen && strncasecmp(p, key, klen) == 0 && p[klen] == ':') {
            const char *v = p + klen + 1;
            while (v < line_end && (*v == ' ' || *v == '\t'))
                v++;
            return strndup(v, (size_t)(line_end - v));
        }
    }
    return NULL;
}

/* ---- output ---------------------------------------------------------------------------- */

static char *dump_line(uint64_t seq, const char *subject, const char *msgid, const char *b64)
{
    json_t *o = json_object();
    json_object_set_new(o, "seq", json_integer((json_int_t)seq));
    json_object_set_new(o, "subject", json_string(subject));
    json_object_set_new(o, "msgid", msgid != NULL ? json_string(msgid) : json_null());
    json_object_set_new(o, "data", json_string(b64));
    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (line == NULL)
        fail("cannot encode message %" PRIu64 " as JSON", seq);
    return line;
}

static void print_json(json_t *o)
{
    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    puts(line);
    free(line);
    json_decref(o);
}

/* ---- create ---------------------------------------------------------------------------- */

/* Errors that no amount of waiting fixes: the request itself is wrong. */
static bool create_error_is_final(natsStatus s, jsErrCode jerr)
{
    if (s == NATS_INVALID_ARG)
        return true;
    switch ((int)jerr) {
    case JSStreamInvalidConfig:
    case JSStreamNameExistErr:
    case JSStreamSubjectOverlapErr:
    case JSStreamReplicasNotSupportedErr:
    case JSStreamMaxBytesRequiredErr:
        return true;
    default:
        return false;
    }
}

static int cmd_create(const struct args *a)
{
    if (a->npos < 2)
        fail("usage: create NAME SUBJECT [SUBJECT...] [options]");
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    cfg.Name = a->pos[0];
    cfg.Subjects = (const char **)&a->pos[1];
    cfg.SubjectsLen = a->npos - 1;
    if (a->storage != NULL) {
        if (strcmp(a->storage, "file") == 0)
            cfg.Storage = js_FileStorage;
        else if (strcmp(a->storage, "memory") == 0)
            cfg.Storage = js_MemoryStorage;
        else
            fail("--storage: expected file or memory, got '%s'", a->storage);
    }
    if (a->replicas != NULL)
        cfg.Replicas = parse_int("--replicas", a->replicas, 1);
    if (a->dup_window != NULL)
        cfg.Duplicates = (int64_t)(parse_seconds("--dup-window", a->dup_window) * 1e9);
    if (a->max_msgs != NULL)
        cfg.MaxMsgs = parse_int("--max-msgs", a->max_msgs, -1);
    if (a->discard != NULL) {
        if (strcmp(a->discard, "old") == 0)
            cfg.Discard = js_DiscardOld;
        else if (strcmp(a->discard, "new") == 0)
            cfg.Discard = js_DiscardNew;
        else
            fail("--discard: expected old or new, got '%s'", a->discard);
    }
    double timeout = a->timeout != NULL ? parse_seconds("--timeout", a->timeout) : 30;
    int64_t deadline = now_ms() + (int64_t)(timeout * 1000);

    natsConnection *nc = connect_nats(a->url, deadline);
    jsCtx *js = jetstream(nc);
    for (;;) {
        jsStreamInfo *si = NULL;
        jsErrCode jerr = 0;
        natsStatus s = js_AddStream(&si, js, &cfg, NULL, &jerr);
        if (s == NATS_OK) {
            jsStreamInfo_Destroy(si);
            break;
        }
        if (create_error_is_final(s, jerr) || now_ms() >= deadline)
            fail("create stream %s: %s", cfg.Name, nats_err(s, jerr));
        nats_Sleep(200);
    }
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return 0;
}

/* ---- count, info, wait-count, ready, delete ------------------------------------------- */

static int cmd_count(const struct args *a)
{
    if (a->npos != 1)
        fail("usage: count NAME");
    natsConnection *nc = connect_nats(a->url, 0);
    jsCtx *js = jetstream(nc);
    jsStreamInfo *si = stream_info(js, a->pos[0]);
    printf("%" PRIu64 "\n", si->State.Msgs);
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return 0;
}

static json_t *cluster_json(const jsClusterInfo *ci)
{
    json_t *replicas = json_array();
    for (int i = 0; i < ci->ReplicasLen; i++) {
        const jsPeerInfo *p = ci->Replicas[i];
        json_array_append_new(replicas, json_pack("{s:s, s:b, s:b, s:I}", "name", p->Name,
                                                  "current", p->Current, "offline", p->Offline,
                                                  "lag", (json_int_t)p->Lag));
    }
    return replicas;
}

static int cmd_info(const struct args *a)
{
    if (a->npos != 1)
        fail("usage: info NAME");
    natsConnection *nc = connect_nats(a->url, 0);
    jsCtx *js = jetstream(nc);
    jsStreamInfo *si = stream_info(js, a->pos[0]);
    const jsStreamState *st = &si->State;
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(si->Config->Name));
    json_object_set_new(o, "messages", json_integer((json_int_t)st->Msgs));
    json_object_set_new(o, "bytes", json_integer((json_int_t)st->Bytes));
    json_object_set_new(o, "first_seq", json_integer((json_int_t)st->FirstSeq));
    json_object_set_new(o, "last_seq", json_integer((json_int_t)st->LastSeq));
    json_object_set_new(o, "num_deleted", json_integer((json_int_t)st->NumDeleted));
    json_object_set_new(o, "consumers", json_integer((json_int_t)st->Consumers));
    json_object_set_new(o, "duplicate_window", json_real((double)si->Config->Duplicates / 1e9));
    json_object_set_new(o, "replicas", json_integer((json_int_t)si->Config->Replicas));
    json_object_set_new(o, "storage",
                        json_string(si->Config->Storage == js_MemoryStorage ? "memory" : "file"));
    const jsClusterInfo *ci = si->Cluster;
    bool has_leader = ci != NULL && ci->Leader != NULL && ci->Leader[0] != '\0';
    json_object_set_new(o, "cluster",
                        ci != NULL && ci->Name != NULL ? json_string(ci->Name) : json_null());
    json_object_set_new(o, "leader", has_leader ? json_string(ci->Leader) : json_null());
    json_object_set_new(o, "peers", ci != NULL ? cluster_json(ci) : json_array());
    print_json(o);
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return 0;
}

static int cmd_wait_count(const struct args *a)
{
    if (a->npos != 3)
        fail("usage: wait-count NAME N TIMEOUT_SECONDS");
    uint64_t want = (uint64_t)parse_int("N", a->pos[1], 0);
    int64_t deadline = now_ms() + (int64_t)(parse_seconds("TIMEOUT", a->pos[2]) * 1000);
    natsConnection *nc = connect_nats_soft(a->url, deadline, true);
    if (nc == NULL) {
        printf("-1\n");
        return 1;
    }
    jsCtx *js = jetstream(nc);
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 1000;
    int64_t seen = -1;
    char last_err[512] = "";
    for (;;) {
        jsStreamInfo *si = NULL;
        jsErrCode jerr = 0;
        natsStatus s = js_GetStreamInfo(&si, js, a->pos[0], &jo, &jerr);
        if (s == NATS_OK) {
            seen = (int64_t)si->State.Msgs;
            jsStreamInfo_Destroy(si);
            if ((uint64_t)seen >= want)
                break;
        } else {
            snprintf(last_err, sizeof last_err, "%s", nats_err(s, jerr));
        }
        if (now_ms() >= deadline) {
            printf("%" PRId64 "\n", seen);
            fprintf(stderr,
                    "streamtool: stream %s holds %" PRId64 " messages, wanted %" PRIu64 "%s%s\n",
                    a->pos[0], seen, want, last_err[0] ? "; last error: " : "", last_err);
            jsCtx_Destroy(js);
            natsConnection_Destroy(nc);
            return 1;
        }
        nats_Sleep(50);
    }
    printf("%" PRId64 "\n", seen);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return 0;
}

static int cmd_ready(const struct args *a)
{
    if (a->npos > 1)
        fail("usage: ready [TIMEOUT_SECONDS]");
    double timeout = a->npos == 1 ? parse_seconds("TIMEOUT", a->pos[0]) : 30;
    int64_t deadline = now_ms() + (int64_t)(timeout * 1000);
    natsConnection *nc = connect_nats_soft(a->url, deadline, true);
    if (nc == NULL)
        return 1;
    jsCtx *js = jetstream(nc);
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = 1000;
    for (;;) {
        jsAccountInfo *ai = NULL;
        jsErrCode jerr = 0;
        natsStatus s = js_GetAccountInfo(&ai, js, &jo, &jerr);
        if (s == NATS_OK) {
            jsAccountInfo_Destroy(ai);
            break;
        }
        if (now_ms() >= deadline) {
            fprintf(stderr, "streamtool: JetStream not ready: %s\n", nats_err(s, jerr));
            return 1;
        }
        nats_Sleep(50);
    }
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return 0;
}

static int cmd_delete(const struct args *a)
{
    if (a->npos != 1)
        fail("usage: delete NAME");
    natsConnection *nc = connect_nats(a->url, 0);
    jsCtx *js = jetstream(nc);
    jsErrCode jerr = 0;
    natsStatus s = js_DeleteStream(js, a->pos[0], NULL, &jerr);
    if (s != NATS_OK)
        fail("delete stream %s: %s", a->pos[0], nats_err(s, jerr));
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return 0;
}

static int cmd_delete_msg(const struct args *a)
{
    if (a->npos != 2)
        fail("usage: delete-msg NAME SEQ");
    uint64_t seq = (uint64_t)parse_int("SEQ", a->pos[1], 1);
    natsConnection *nc = connect_nats(a->url, 0);
    jsCtx *js = jetstream(nc);
    jsErrCode jerr = 0;
    natsStatus s = js_DeleteMsg(js, a->pos[0], seq, NULL, &jerr);
    if (s != NATS_OK)
        fail("delete message %" PRIu64 " of %s: %s", seq, a->pos[0], nats_err(s, jerr));
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return 0;
}

/* ---- publish ----------------------------------------------------------------------------- */

static char *read_stdin(size_t *len)
{
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    if (buf == NULL)
        fail("out of memory");
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            if (buf == NULL)
                fail("out of memory");
        }
        size_t got = fread(buf + n, 1, cap - n, stdin);
        n += got;
        if (got == 0) {
            if (ferror(stdin))
                fail("stdin: %s", strerror(errno));
            break;
        }
    }
    *len = n;
    return buf;
}

static int cmd_publish(const struct args *a)
{
    if (a->npos != 2)
        fail("usage: publish SUBJECT MSGID < data   (MSGID '-' for none)");
    size_t len;
    char *data = read_stdin(&len);
    if (len > INT32_MAX)
        fail("payload too large");
    natsConnection *nc = connect_nats(a->url, 0);
    jsCtx *js = jetstream(nc);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    if (strcmp(a->pos[1], "-") != 0)
        po.MsgId = a->pos[1];
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_Publish(&pa, js, a->pos[0], data, (int)len, &po, &jerr);
    if (s != NATS_OK)
        fail("publish to %s: %s", a->pos[0], nats_err(s, jerr));
    print_json(json_pack("{s:s, s:I, s:b}", "stream", pa->Stream, "seq", (json_int_t)pa->Sequence,
                         "duplicate", pa->Duplicate));
    jsPubAck_Destroy(pa);
    free(data);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return 0;
}

/*
 * publish-lines: every stdin line (with its "\n") becomes one message, published async with
 * Nats-Msg-Id "<prefix><line number>" (1-based; prefix "-" for no id). For filling streams
 * quickly in tests; prints the number of lines published.
 */
static _Atomic long publish_errors;

static void publish_err_handler(jsCtx *js, jsPubAckErr *pae, void *closure)
{
    if (publish_errors++ == 0)
        fprintf(stderr, "streamtool: async publish failed: %s\n",
                pae->ErrText != NULL ? pae->ErrText : natsStatus_GetText(pae->Err));
}

static int cmd_publish_lines(const struct args *a)
{
    if (a->npos != 2)
        fail("usage: publish-lines SUBJECT MSGID_PREFIX < lines   (prefix '-' for none)");
    natsConnection *nc = connect_nats(a->url, 0);
    jsOptions jo;
    jsCtx *js = NULL;
    jsOptions_Init(&jo);
    jo.Wait = API_WAIT_MS;
    jo.PublishAsync.MaxPending = 4096;
    jo.PublishAsync.StallWait = 30000;
    jo.PublishAsync.ErrHandler = publish_err_handler;
    natsStatus s = natsConnection_JetStream(&js, nc, &jo);
    if (s != NATS_OK)
        fail("JetStream context: %s", nats_err(s, 0));
    bool with_id = strcmp(a->pos[1], "-") != 0;
    char *line = NULL, id[512];
    size_t cap = 0;
    ssize_t len;
    unsigned long long n = 0;
    while ((len = getline(&line, &cap, stdin)) > 0) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        n++;
        if (with_id) {
            snprintf(id, sizeof id, "%s%llu", a->pos[1], n);
            po.MsgId = id;
        }
        s = js_PublishAsync(js, a->pos[0], line, (int)len, &po);
        if (s != NATS_OK)
            fail("publish line %llu: %s", n, nats_err(s, 0));
    }
    free(line);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = 60000;
    s = js_PublishAsyncComplete(js, &po);
    if (s != NATS_OK)
        fail("waiting for publish acks: %s", nats_err(s, 0));
    if (publish_errors > 0)
        fail("%ld of %llu publishes failed", (long)publish_errors, n);
    printf("%llu\n", n);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return 0;
}

/* ---- dump ------------------------------------------------------------------------------- */

static void dump_slow(jsCtx *js, const char *name, uint64_t first, uint64_t last)
{
    for (uint64_t seq = first; seq <= last && seq != 0; seq++) {
        natsMsg *msg = NULL;
        jsErrCode jerr = 0;
        natsStatus s = js_GetMsg(&msg, js, name, seq, NULL, &jerr);
        if (s != NATS_OK && jerr == JSNoMessageFoundErr)
            continue;
        if (s != NATS_OK)
            fail("get message %" PRIu64 " of %s: %s", seq, name, nats_err(s, jerr));
        const char *msgid = NULL;
        if (natsMsgHeader_Get(msg, MSG_ID_HEADER, &msgid) != NATS_OK)
            msgid = NULL;
        char *b64 = b64_encode((const unsigned char *)natsMsg_GetData(msg),
                               (size_t)natsMsg_GetDataLength(msg));
        char *line = dump_line(seq, natsMsg_GetSubject(msg), msgid, b64);
        puts(line);
        free(line);
        free(b64);
        natsMsg_Destroy(msg);
    }
}

/*
 * The fast dump: a window of MSG.GET requests in flight, each with its own reply subject
 * "<inbox>.<seq>", so every answer (message or "no message found") is tied to the
 * sequence it was asked for. Lines are printed in sequence order as the window's front
 * completes. A request without an answer is sent again after RESEND_AFTER_MS.
 */
enum slot_state { SLOT_FREE, SLOT_WAIT, SLOT_READY, SLOT_DELETED };

struct slot {
    enum slot_state state;
    int attempts;
    int64_t sent_at;
    char *line;
};

struct dumper {
    natsConnection *nc;
    natsSubscription *sub;
    const char *name;
    char api_subject[512];
    char inbox[128];
    struct slot *slots;
    uint64_t window;
    uint64_t next_print, next_send, last;
    uint64_t printed;
};

static void dumper_request(struct dumper *d, uint64_t seq)
{
    struct slot *sl = &d->slots[seq % d->window];
    char reply[160], body[64];
    if (++sl->attempts > MAX_SLOT_ATTEMPTS)
        fail("message %" PRIu64 " of %s: no usable answer after %d requests", seq, d->name,
             MAX_SLOT_ATTEMPTS);
    snprintf(reply, sizeof reply, "%s.%" PRIu64, d->inbox, seq);
    int n = snprintf(body, sizeof body, "{\"seq\":%" PRIu64 "}", seq);
    natsStatus s = natsConnection_PublishRequest(d->nc, d->api_subject, reply, body, n);
    if (s != NATS_OK && s != NATS_CONNECTION_DISCONNECTED)
        fail("request message %" PRIu64 ": %s", seq, nats_err(s, 0));
    sl->state = SLOT_WAIT;
    sl->sent_at = now_ms();
}

/* Turn one MSG.GET answer into a dump line; false when the answer is a transient error. */
static bool dumper_take(struct dumper *d, uint64_t seq, natsMsg *msg)
{
    struct slot *sl = &d->slots[seq % d->window];
    json_error_t jerr;
    json_t *root = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, &jerr);
    if (root == NULL)
        return false; /* e.g. an empty status message: ask again */
    json_t *err = json_object_get(root, "error");
    if (err != NULL) {
        json_int_t code = json_integer_value(json_object_get(err, "err_code"));
        json_decref(root);
        if (code == JSNoMessageFoundErr) {
            sl->state = SLOT_DELETED;
            return true;
        }
        if (code == JSStreamNotFoundErr)
            fail("stream %s not found", d->name);
        return false;
    }
    json_t *m = json_object_get(root, "message");
    const char *subject = json_string_value(json_object_get(m, "subject"));
    const char *data = json_string_value(json_object_get(m, "data"));
    const char *hdrs = json_string_value(json_object_get(m, "hdrs"));
    uint64_t got = (uint64_t)json_integer_value(json_object_get(m, "seq"));
    if (subject == NULL || got != seq)
        fail("unexpected answer for message %" PRIu64 ": %.*s", seq, natsMsg_GetDataLength(msg),
             natsMsg_GetData(msg));
    char *msgid = NULL;
    if (hdrs != NULL) {
        size_t hlen;
        unsigned char *raw = b64_decode(hdrs, &hlen);
        if (raw == NULL)
            fail("message %" PRIu64 ": invalid base64 headers", seq);
        msgid = header_value(raw, hlen, MSG_ID_HEADER);
        free(raw);
    }
    sl->line = dump_line(seq, subject, msgid, data != NULL ? data : "");
    sl->state = SLOT_READY;
    free(msgid);
    json_decref(root);
    return true;
}

static void dumper_fill(struct dumper *d)
{
    while (d->next_send <= d->last && d->next_send < d->next_print + d->window) {
        d->slots[d->next_send % d->window].attempts = 0;
        dumper_request(d, d->next_send++);
    }
}

static void dumper_drain_front(struct dumper *d)
{
    while (d->next_print < d->next_send) {
        struct slot *sl = &d->slots[d->next_print % d->window];
        if (sl->state == SLOT_READY) {
            puts(sl->line);
            free(sl->line);
            sl->line = NULL;
            d->printed++;
        } else if (sl->state != SLOT_DELETED) {
            break;
        }
        sl->state = SLOT_FREE;
        d->next_print++;
    }
}

static void dumper_resend_stale(struct dumper *d)
{
    int64_t now = now_ms();
    for (uint64_t seq = d->next_print; seq < d->next_send; seq++) {
        struct slot *sl = &d->slots[seq % d->window];
        if (sl->state == SLOT_WAIT && now - sl->sent_at >= RESEND_AFTER_MS)
            dumper_request(d, seq);
    }
}

static uint64_t dump_fast(natsConnection *nc, const char *name, uint64_t first, uint64_t last,
                          uint64_t window)
{
    struct dumper d = {.nc = nc, .name = name, .window = window, .last = last};
    natsInbox *inbox = NULL;
    if (natsInbox_Create(&inbox) != NATS_OK)
        fail("cannot create an inbox");
    snprintf(d.inbox, sizeof d.inbox, "%s", inbox);
    natsInbox_Destroy(inbox);
    snprintf(d.api_subject, sizeof d.api_subject, "$JS.API.STREAM.MSG.GET.%s", name);
    char wildcard[160];
    snprintf(wildcard, sizeof wildcard, "%s.*", d.inbox);
    natsStatus s = natsConnection_SubscribeSync(&d.sub, nc, wildcard);
    if (s != NATS_OK)
        fail("subscribe %s: %s", wildcard, nats_err(s, 0));
    d.slots = calloc(window, sizeof *d.slots);
    if (d.slots == NULL)
        fail("out of memory");
    d.next_print = d.next_send = first;

    int64_t last_progress = now_ms();
    while (d.next_print <= last) {
        dumper_fill(&d);
        natsMsg *msg = NULL;
        s = natsSubscription_NextMsg(&msg, d.sub, 250);
        if (s == NATS_OK) {
            const char *subj = natsMsg_GetSubject(msg);
            const char *dot = strrchr(subj, '.');
            uint64_t seq = dot != NULL ? strtoull(dot + 1, NULL, 10) : 0;
            bool wanted = seq >= d.next_print && seq < d.next_send &&
                          d.slots[seq % window].state == SLOT_WAIT;
            if (wanted && !dumper_take(&d, seq, msg))
                dumper_request(&d, seq);
            natsMsg_Destroy(msg);
            uint64_t before = d.next_print;
            dumper_drain_front(&d);
            if (d.next_print != before)
                last_progress = now_ms();
        } else if (s != NATS_TIMEOUT && s != NATS_NO_RESPONDERS) {
            fail("dump %s: %s", name, nats_err(s, 0));
        }
        if (now_ms() - last_progress > STALL_LIMIT_MS)
            fail("dump %s: no progress for %d s at sequence %" PRIu64, name, STALL_LIMIT_MS / 1000,
                 d.next_print);
        dumper_resend_stale(&d);
    }
    natsSubscription_Unsubscribe(d.sub);
    natsSubscription_Destroy(d.sub);
    free(d.slots);
    return d.printed;
}

static int cmd_dump(const struct args *a)
{
    if (a->npos != 1)
        fail("usage: dump NAME [--slow] [--window N]");
    uint64_t window = a->window != NULL ? (uint64_t)parse_int("--window", a->window, 1) : 256;
    natsConnection *nc = connect_nats(a->url, 0);
    jsCtx *js = jetstream(nc);
    jsStreamInfo *si = stream_info(js, a->pos[0]);
    uint64_t first = si->State.FirstSeq, last = si->State.LastSeq, msgs = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    if (msgs > 0 && first == 0)
        first = 1;
    if (msgs > 0) {
        if (a->slow)
            dump_slow(js, a->pos[0], first, last);
        else
            dump_fast(nc, a->pos[0], first, last, window);
    }
    if (fflush(stdout) != 0)
        fail("stdout: %s", strerror(errno));
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return 0;
}

/* ---- command line ----------------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr,
            "usage: streamtool [-s URL[,URL...]] COMMAND ...\n"
            "  create NAME SUBJECT... [--storage file|memory] [--replicas N]\n"
            "         [--dup-window SECONDS] [--max-msgs N] [--discard old|new] [--timeout S]\n"
            "  count NAME | info NAME | dump NAME [--slow] [--window N]\n"
            "  delete NAME | delete-msg NAME SEQ\n"
            "  wait-count NAME N TIMEOUT_SECONDS | ready [TIMEOUT_SECONDS]\n"
            "  publish SUBJECT MSGID < data | publish-lines SUBJECT MSGID_PREFIX < lines\n");
    exit(2);
}

static void parse_args(struct args *a, int argc, char **argv)
{
    static const struct {
        const char *flag;
        size_t offset;
    } valued[] = {
        {"--storage", offsetof(struct args, storage)},
        {"--replicas", offsetof(struct args, replicas)},
        {"--dup-window", offsetof(struct args, dup_window)},
        {"--max-msgs", offsetof(struct args, max_msgs)},
        {"--discard", offsetof(struct args, discard)},
        {"--timeout", offsetof(struct args, timeout)},
        {"--window", offsetof(struct args, window)},
    };
    a->url = DEFAULT_URL;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        bool matched = false;
        if (strcmp(arg, "-s") == 0 || strcmp(arg, "--server") == 0) {
            if (++i >= argc)
                usage();
            a->url = argv[i];
            continue;
        }
        if (strcmp(arg, "--slow") == 0) {
            a->slow = true;
            continue;
        }
        for (size_t k = 0; k < sizeof valued / sizeof valued[0]; k++) {
            if (strcmp(arg, valued[k].flag) == 0) {
                if (++i >= argc)
                    fail("%s needs a value", arg);
                *(const char **)((char *)a + valued[k].offset) = argv[i];
                matched = true;
            }
        }
        if (matched)
            continue;
        if (arg[0] == '-' && arg[1] == '-')
            fail("unknown option %s", arg);
        if (a->cmd == NULL)
            a->cmd = arg;
        else if (a->npos < (int)(sizeof a->pos / sizeof a->pos[0]))
            a->pos[a->npos++] = arg;
        else
            fail("too many arguments");
    }
    if (a->cmd == NULL)
        usage();
}

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*run)(const struct args *);
    } commands[] = {
        {"create", cmd_create},
        {"count", cmd_count},
        {"info", cmd_info},
        {"dump", cmd_dump},
        {"wait-count", cmd_wait_count},
        {"publish", cmd_publish},
        {"publish-lines", cmd_publish_lines},
        {"ready", cmd_ready},
        {"delete", cmd_delete},
        {"delete-msg", cmd_delete_msg},
    };
    struct args a = {0};
    parse_args(&a, argc, argv);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(a.cmd, commands[i].name) == 0) {
            int rc = commands[i].run(&a);
            if (fflush(stdout) != 0)
                fail("stdout: %s", strerror(errno));
            /* Wait for nats.c's threads: an async publish's message is freed by its reply
             * thread after js_PublishAsyncComplete returns, and exiting first leaves it
             * to LeakSanitizer (tests/sanitize.sh) as a leak. */
            nats_CloseAndWait(5000);
            return rc;
        }
    }
    fail("unknown command '%s' (try create, count, info, dump, wait-count, publish, "
         "publish-lines, ready, delete, delete-msg)",
         a.cmd);
}
