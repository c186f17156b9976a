#include "policy_builtin.h"

#include "config.h"
#include "jscan.h"
#include "metrics.h"
#include "segment.h"
#include "subject.h"
#include "xalloc.h"

#include <stdlib.h>
#include <string.h>

struct builtin {
    struct subject_template subject;
    bool uses[SUBJECT_FIELD_COUNT]; /* the placeholders the template has */
    bool uses_queue;                /* {queue} or one of its parts */
    char *relay_id;
    bool skip_log_hook_records;
    struct policy_env env;
};

enum { KEY_TYPE, KEY_QUEUE, KEY_NODEID, KEY_RECEPTION_PROTOCOL, KEY_COUNT };
static const char *const record_keys[KEY_COUNT] = {"type", "queue", "nodeid", "reception_protocol"};

struct builtin *builtin_create(const struct config *cfg, const struct policy_env *env, char **err)
{
    struct builtin *b = xcalloc(1, sizeof(*b));
    b->env = *env;
    char *why = subject_compile(cfg->policy_subject, &b->subject);
    if (why) {
        *err = xasprintf("policy.subject: %s", why);
        free(why);
        free(b);
        return NULL;
    }
    for (size_t i = 0; i < b->subject.part_count; i++)
        if (b->subject.parts[i].is_field)
            b->uses[b->subject.parts[i].field] = true;
    b->uses_queue = b->uses[SUBJECT_FIELD_QUEUE] || b->uses[SUBJECT_FIELD_DOMAIN] ||
                    b->uses[SUBJECT_FIELD_TENANT] || b->uses[SUBJECT_FIELD_CAMPAIGN] ||
                    b->uses[SUBJECT_FIELD_ROUTING_DOMAIN];
    b->relay_id = xstrdup(cfg->relay_id);
    b->skip_log_hook_records = cfg->skip_log_hook_records != 0;
    return b;
}

void builtin_destroy(struct builtin *b)
{
    if (!b)
        return;
    subject_free(&b->subject);
    free(b->relay_id);
    free(b);
}

/* Decoded top-level string fields of one record, each bounded: subjects are short. */
struct record_fields {
    char type[128], queue[512], nodeid[128];
    char queue_parts_buf[520];
    bool log_hook; /* reception_protocol "LogRecord": kumod logged its own log hook */
    bool too_deep; /* not read: nested deeper than JSCAN_MAX_DEPTH */
};

/* A missing or non-string field, or one the subject does not use, renders as "_". */
static void decode(const struct jscan_value *value, bool used, char *out, size_t cap)
{
    if (!used || jscan_string(value, out, cap) < 0)
        out[0] = '\0';
}

static bool read_fields(const struct builtin *b, const struct segment_record *rec,
                        struct record_fields *f)
{
    struct jscan_value values[KEY_COUNT];
    if (!jscan_object_depth(rec->data, rec->len, record_keys, KEY_COUNT, values, &f->too_deep))
        return false;
    decode(&values[KEY_TYPE], b->uses[SUBJECT_FIELD_TYPE], f->type, sizeof(f->type));
    decode(&values[KEY_QUEUE], b->uses_queue, f->queue, sizeof(f->queue));
    decode(&values[KEY_NODEID], b->uses[SUBJECT_FIELD_NODEID], f->nodeid, sizeof(f->nodeid));
    const struct jscan_value *proto = &values[KEY_RECEPTION_PROTOCOL];
    f->log_hook = proto->raw && proto->len == 11 && memcmp(proto->raw, "\"LogRecord\"", 11) == 0;
    return true;
}

enum policy_verdict builtin_handle(struct builtin *b, struct inflight_record *record,
                                   const struct segment_record *rec, struct policy_reason *reason)
{
    if (rec->oversize) {
        reason->kind = DEADLETTER_OVERSIZE;
        reason->text = xasprintf("record of %zu bytes is larger than max_record_bytes", rec->len);
        return POLICY_DEADLETTER;
    }
    struct subject_values values = {0};
    values.field[SUBJECT_FIELD_RELAY_ID] = b->relay_id;
    struct record_fields fields;
    bool is_json =
        (b->subject.needs_record || b->skip_log_hook_records) && read_fields(b, rec, &fields);
    /* kumod logs the deliveries of its own log hooks with reception_protocol LogRecord;
     * its hooks never see those, and neither does this policy by default. */
    if (is_json && fields.log_hook && b->skip_log_hook_records) {
        METRIC_ADD(records_log_hook_skipped, 1);
        return POLICY_DROPPED;
    }
    if (b->subject.needs_record) {
        if (!is_json) {
            /* Too deep to read counts as the policy's, as it always has. */
            reason->kind = fields.too_deep ? DEADLETTER_POLICY : DEADLETTER_NOT_JSON;
            reason->text = fields.too_deep ? xstrdup(JSCAN_TOO_DEEP) : xstrdup("not JSON");
            return POLICY_DEADLETTER;
        }
        struct queue_parts q = {"", "", "", ""};
        if (b->uses_queue)
            subject_parse_queue(fields.queue, fields.queue_parts_buf, &q);
        values.field[SUBJECT_FIELD_TYPE] = fields.type;
        values.field[SUBJECT_FIELD_QUEUE] = fields.queue;
        values.field[SUBJECT_FIELD_DOMAIN] = q.domain;
        values.field[SUBJECT_FIELD_TENANT] = q.tenant;
        values.field[SUBJECT_FIELD_CAMPAIGN] = q.campaign;
        values.field[SUBJECT_FIELD_ROUTING_DOMAIN] = q.routing_domain;
        values.field[SUBJECT_FIELD_NODEID] = fields.nodeid;
    }
    char subject[1024];
    if (subject_render(&b->subject, &values, subject, sizeof(subject)) < 0) {
        reason->kind = DEADLETTER_POLICY;
        reason->text = xstrdup("subject longer than 1023 bytes");
        return POLICY_DEADLETTER;
    }
    char *err = NULL;
    struct policy_publish msg = {.subject = subject, .data = rec->data, .len = rec->len};
    if (b->env.publish(b->env.ctx, &record, 1, &msg, &err) != 0) {
        reason->kind = DEADLETTER_PUBLISH; /* larger than max_payload: never publishable */
        reason->text = err;
        return POLICY_DEADLETTER;
    }
    return POLICY_PUBLISHED;
}
