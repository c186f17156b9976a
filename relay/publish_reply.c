#include "publish_reply.h"

#include "decimal.h"
#include "jscan.h"
#include "publish_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The members any of JetStream's answers to a publish may need. */
static const char *const reply_keys[] = {"stream", "seq",  "duplicate", "domain",
                                         "error",  "type", "batch",     "count"};
enum { K_STREAM, K_SEQ, K_DUPLICATE, K_DOMAIN, K_ERROR, K_TYPE, K_BATCH, K_COUNT, K_KEYS };

static const char *const error_keys[] = {"description", "err_code"};
enum { E_DESCRIPTION, E_ERR_CODE, E_KEYS };

/* An unsigned integer member's value; 0 when absent or anything else (as jansson's
 * json_integer_value, which the batches read before, gives for a non-integer). */
static uint64_t unsigned_value(const struct jscan_value *v)
{
    uint64_t n;
    if (!v->raw || decimal_get(v->raw, &n) != v->raw + v->len)
        return 0;
    return n;
}

static bool is_literal(const struct jscan_value *v, const char *word)
{
    size_t n = strlen(word);
    return v->raw && v->len == n && memcmp(v->raw, word, n) == 0;
}

/* A string member decoded into out; "" when absent or not a string. */
static void string_value(const struct jscan_value *v, char *out, size_t cap)
{
    out[0] = '\0';
    if (!v->raw || v->raw[0] != '"')
        return;
    size_t n = v->len - 2;
    if (n < cap && !memchr(v->raw + 1, '\\', n)) { /* no escape: most often */
        memcpy(out, v->raw + 1, n);
        out[n] = '\0';
        return;
    }
    jscan_string(v, out, cap);
}

/* The error object's description and code; only refusals get here. */
static void read_error(const struct jscan_value *error, struct publish_reply *r)
{
    struct jscan_value v[E_KEYS];
    if (error->raw[0] != '{' || !jscan_object(error->raw, error->len, error_keys, E_KEYS, v))
        return;
    string_value(&v[E_DESCRIPTION], r->description, sizeof(r->description));
    r->err_code = (int64_t)unsigned_value(&v[E_ERR_CODE]);
}

/* ---- acks and flow acks: flat objects, read byte by byte ---- */

/* jscan_object costs ~900 instructions for an ack of 30 bytes (its set-up is made for
 * records of 1 KB); the acks, flow acks and final acks are flat objects of strings and
 * numbers, which this reads in ~200. A nested value (an error's object) is left to
 * jscan. Both accept the same JSON (tests/unit/test_publish_reply.c compares them). */

static bool is_ws(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r';
}

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && is_ws(*p))
        p++;
    return p;
}

static bool is_hex(char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

/* The end of the string opening at p (past its closing quote), or NULL if it is not one:
 * no control byte, only JSON's escapes. */
static const char *string_end(const char *p, const char *end)
{
    for (p++; p < end; p++) {
        if (*p == '"')
            return p + 1;
        if ((unsigned char)*p < 0x20)
            return NULL;
        if (*p != '\\')
            continue;
        if (++p >= end)
            return NULL;
        if (*p == 'u') {
            if (end - p < 5 || !is_hex(p[1]) || !is_hex(p[2]) || !is_hex(p[3]) || !is_hex(p[4]))
                return NULL;
            p += 4;
        } else if (!memchr("\"\\/bfnrt", *p, 8)) {
            return NULL;
        }
    }
    return NULL;
}

/* Which of reply_keys the raw key (quotes included) is, or K_KEYS. */
static int key_index(const char *key, size_t len)
{
#define IS(word) (len == sizeof(word) + 1 && memcmp(key + 1, word, sizeof(word) - 1) == 0)
    switch (len) {
    case 5:
        return IS("seq") ? K_SEQ : K_KEYS;
    case 6:
        return IS("type") ? K_TYPE : K_KEYS;
    case 7:
        return IS("error") ? K_ERROR : IS("batch") ? K_BATCH : IS("count") ? K_COUNT : K_KEYS;
    case 8:
        return IS("stream") ? K_STREAM : IS("domain") ? K_DOMAIN : K_KEYS;
    case 11:
        return IS("duplicate") ? K_DUPLICATE : K_KEYS;
    default:
        return K_KEYS;
    }
#undef IS
}

enum flat { FLAT_OK, FLAT_MALFORMED, FLAT_NESTED };

/* Reads a flat object into v (as jscan_object would: the first of duplicate members). */
static enum flat scan_flat(const char *p, const char *end, struct jscan_value *v)
{
    for (int i = 0; i < K_KEYS; i++)
        v[i] = (struct jscan_value){NULL, 0};
    p = skip_ws(p, end);
    if (p >= end || *p++ != '{')
        return FLAT_MALFORMED;
    p = skip_ws(p, end);
    if (p < end && *p == '}')
        return skip_ws(p + 1, end) == end ? FLAT_OK : FLAT_MALFORMED;
    for (;;) {
        const char *key = p, *value;
        if (p >= end || *p != '"' || !(p = string_end(p, end)))
            return FLAT_MALFORMED;
        size_t key_len = (size_t)(p - key);
        p = skip_ws(p, end);
        if (p >= end || *p++ != ':')
            return FLAT_MALFORMED;
        value = p = skip_ws(p, end);
        if (p >= end)
            return FLAT_MALFORMED;
        switch (*p) {
        case '"':
            p = string_end(p, end);
            break;
        case '{':
        case '[':
            return FLAT_NESTED;
        case 't':
            p = jscan_literal_end(p, end, "true", 4);
            break;
        case 'f':
            p = jscan_literal_end(p, end, "false", 5);
            break;
        case 'n':
            p = jscan_literal_end(p, end, "null", 4);
            break;
        default:
            p = jscan_number_end(p, end);
            break;
        }
        if (!p)
            return FLAT_MALFORMED;
        int k = key_index(key, key_len);
        if (k < K_KEYS && !v[k].raw)
            v[k] = (struct jscan_value){value, (size_t)(p - value)};
        p = skip_ws(p, end);
        if (p >= end)
            return FLAT_MALFORMED;
        if (*p == '}')
            return skip_ws(p + 1, end) == end ? FLAT_OK : FLAT_MALFORMED;
        if (*p++ != ',')
            return FLAT_MALFORMED;
        p = skip_ws(p, end);
    }
}

/* ---- what the members say ---- */

bool publish_reply_parse(const char *data, size_t len, struct publish_reply *r)
{
    struct jscan_value v[K_KEYS];
    if (!data)
        return false;
    enum flat flat = scan_flat(data, data + len, v);
    if (flat == FLAT_MALFORMED ||
        (flat == FLAT_NESTED && !jscan_object(data, len, reply_keys, K_KEYS, v)))
        return false;
    r->error = v[K_ERROR].raw && !is_literal(&v[K_ERROR], "null");
    r->description[0] = '\0';
    r->err_code = 0;
    if (r->error)
        read_error(&v[K_ERROR], r);
    string_value(&v[K_STREAM], r->stream, sizeof(r->stream));
    string_value(&v[K_DOMAIN], r->domain, sizeof(r->domain));
    r->seq = unsigned_value(&v[K_SEQ]);
    r->duplicate = is_literal(&v[K_DUPLICATE], "true");
    string_value(&v[K_TYPE], r->type, sizeof(r->type));
    r->batch = v[K_BATCH].raw != NULL;
    r->count = unsigned_value(&v[K_COUNT]);
    return true;
}

/* Copies the JSON string value of "key": from a small reply into out. */
static void reply_string(const char *data, size_t len, const char *key, char *out, size_t cap)
{
    out[0] = '\0';
    const char *at = memmem(data, len, key, strlen(key));
    if (!at)
        return;
    const char *v = at + strlen(key);
    const char *q = memchr(v, '"', (size_t)(data + len - v));
    size_t n = q ? (size_t)(q - v) : 0;
    if (n >= cap)
        n = cap - 1;
    memcpy(out, v, n);
    out[n] = '\0';
}

/* True when the reply has "key": true, with any JSON whitespace after the colon. */
static bool reply_true(const char *data, size_t len, const char *key)
{
    size_t klen = strlen(key);
    const char *at = memmem(data, len, key, klen);
    if (!at)
        return false;
    const char *v = at + klen, *end = data + len;
    while (v < end && (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r'))
        v++;
    return (size_t)(end - v) >= 4 && memcmp(v, "true", 4) == 0;
}

/* A reply that is not a JSON object, which JetStream does not send: read by substrings,
 * as every reply was before publish_reply_parse, so that it means what it always did
 * (any "error" refuses the publish; else it is an ack). */
static void classify_loose(const char *data, size_t len, struct reply *ev)
{
    if (len > 0 && memmem(data, len, "\"error\"", 7)) {
        ev->kind = REPLY_ERROR;
        reply_string(data, len, "\"description\":\"", ev->detail, sizeof(ev->detail));
        if (!ev->detail[0])
            snprintf(ev->detail, sizeof(ev->detail), "%.*s", len > 100 ? 100 : (int)len, data);
        return;
    }
    ev->kind = len > 0 && reply_true(data, len, "\"duplicate\":") ? REPLY_DUPLICATE : REPLY_ACK;
    reply_string(data, len, "\"stream\":\"", ev->detail, sizeof(ev->detail));
    reply_string(data, len, "\"domain\":\"", ev->domain, sizeof(ev->domain));
    const char *seq = len > 0 ? memmem(data, len, "\"seq\":", 6) : NULL;
    if (seq)
        ev->sequence = strtoull(seq + 6, NULL, 10);
}

_Static_assert(sizeof(((struct reply *)0)->detail) == sizeof(((struct publish_reply *)0)->stream) &&
                   sizeof(((struct reply *)0)->detail) ==
                       sizeof(((struct publish_reply *)0)->description) &&
                   sizeof(((struct reply *)0)->domain) ==
                       sizeof(((struct publish_reply *)0)->domain),
               "classify_reply copies these whole");

void publish_reply_classify(const char *data, size_t len, struct reply *ev)
{
    struct publish_reply r;
    if (!publish_reply_parse(data, len, &r)) {
        classify_loose(data, len, ev);
        return;
    }
    if (r.error) {
        ev->kind = REPLY_ERROR;
        if (r.description[0])
            memcpy(ev->detail, r.description, sizeof(ev->detail));
        else
            snprintf(ev->detail, sizeof(ev->detail), "%.*s", len > 100 ? 100 : (int)len, data);
        return;
    }
    ev->kind = r.duplicate ? REPLY_DUPLICATE : REPLY_ACK;
    ev->sequence = r.seq;
    memcpy(ev->detail, r.stream, sizeof(ev->detail));
    memcpy(ev->domain, r.domain, sizeof(ev->domain));
}
