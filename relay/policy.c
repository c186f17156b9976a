#include "policy.h"

#include "config.h"
#include "jscan.h"
#include "segment.h"
#include "subject.h"
#include "xalloc.h"

#include <stdlib.h>
#include <string.h>

/* The built-in policy: every record to one subject template. */
struct policy {
    struct subject_template subject;
    char *relay_id;
};

enum { KEY_TYPE, KEY_QUEUE, KEY_NODEID, KEY_COUNT };
static const char *const record_keys[KEY_COUNT] = {"type", "queue", "nodeid"};

struct policy *policy_create(const struct config *cfg, char **err)
{
    if (cfg->policy_script) {
        *err = xasprintf("policy.script %s: Lua policies are not supported by this build yet",
                         cfg->policy_script);
        return NULL;
    }
    struct policy *policy = xcalloc(1, sizeof(*policy));
    char *why = subject_compile(cfg->policy_subject, &policy->subject);
    if (why) {
        *err = xasprintf("policy.subject: %s", why);
        free(why);
        free(policy);
        return NULL;
    }
    policy->relay_id = xstrdup(cfg->relay_id);
    return policy;
}

void policy_destroy(struct policy *policy)
{
    if (!policy)
        return;
    subject_free(&policy->subject);
    free(policy->relay_id);
    free(policy);
}

/* Decoded top-level string fields of one record, each bounded: subjects are short. */
struct record_fields {
    char type[128], queue[512], nodeid[128];
    char queue_parts_buf[520];
};

static bool read_fields(const struct segment_record *rec, struct record_fields *f)
{
    struct jscan_value values[KEY_COUNT];
    if (!jscan_object(rec->data, rec->len, record_keys, KEY_COUNT, values))
        return false;
    /* A missing or non-string field renders as "_". */
    if (jscan_string(&values[KEY_TYPE], f->type, sizeof(f->type)) < 0)
        f->type[0] = '\0';
    if (jscan_string(&values[KEY_QUEUE], f->queue, sizeof(f->queue)) < 0)
        f->queue[0] = '\0';
    if (jscan_string(&values[KEY_NODEID], f->nodeid, sizeof(f->nodeid)) < 0)
        f->nodeid[0] = '\0';
    return true;
}

enum policy_verdict policy_handle(struct policy *policy, const struct segment_record *rec,
                                  const struct policy_sink *sink, char **reason)
{
    if (rec->oversize) {
        *reason = xasprintf("record of %zu bytes is larger than max_record_bytes", rec->len);
        return POLICY_DEADLETTER;
    }
    struct subject_values values = {0};
    values.field[SUBJECT_FIELD_RELAY_ID] = policy->relay_id;
    struct record_fields fields;
    if (policy->subject.needs_record) {
        if (!read_fields(rec, &fields)) {
            *reason = xstrdup("not JSON");
            return POLICY_DEADLETTER;
        }
        struct queue_parts q;
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
    if (subject_render(&policy->subject, &values, subject, sizeof(subject)) < 0) {
        *reason = xstrdup("subject longer than 1023 bytes");
        return POLICY_DEADLETTER;
    }
    char *err = NULL;
    if (sink->publish(sink->ctx, subject, rec->data, rec->len, NULL, &err) != 0) {
        *reason = err;
        return POLICY_DEADLETTER;
    }
    return POLICY_PUBLISHED;
}
