/* The built-in policy's subject template: "kumo.log.{type}" with placeholders filled from
 * the record's top-level fields, each made one valid NATS subject token. */
#ifndef RELAY_SUBJECT_H
#define RELAY_SUBJECT_H

#include <stdbool.h>
#include <stddef.h>

enum subject_field {
    SUBJECT_FIELD_TYPE,
    SUBJECT_FIELD_QUEUE,
    SUBJECT_FIELD_DOMAIN,
    SUBJECT_FIELD_TENANT,
    SUBJECT_FIELD_CAMPAIGN,
    SUBJECT_FIELD_ROUTING_DOMAIN,
    SUBJECT_FIELD_NODEID,
    SUBJECT_FIELD_RELAY_ID,
    SUBJECT_FIELD_COUNT
};

struct subject_part {
    bool is_field;
    enum subject_field field;
    char *literal;
};

struct subject_template {
    struct subject_part *parts;
    size_t part_count;
    bool needs_record; /* some placeholder reads the record (all but {relay_id}) */
};

/* Compile text; on error returns a malloc'd message (unknown placeholder, unbalanced
 * braces, empty template) and leaves *tpl empty. */
char *subject_compile(const char *text, struct subject_template *tpl);
void subject_free(struct subject_template *tpl);

/* Values for one record; NULL or "" for a missing field (rendered as "_"). */
struct subject_values {
    const char *field[SUBJECT_FIELD_COUNT];
};

/* Render into out (cap bytes). Returns the length, or -1 when it does not fit. */
long subject_render(const struct subject_template *tpl, const struct subject_values *values,
                    char *out, size_t cap);

/* Copy value into out as one subject token: '.', '*', '>', whitespace and control bytes
 * become '_'; empty becomes "_". Returns the length, or -1 when it does not fit. */
long subject_token(const char *value, char *out, size_t cap);

/* Split a KumoMTA queue name "campaign:tenant@domain!routing_domain" into its parts
 * (written into buf, which must be at least strlen(queue)+4 bytes); absent parts are "". */
struct queue_parts {
    const char *campaign, *tenant, *domain, *routing_domain;
};
void subject_parse_queue(const char *queue, char *buf, struct queue_parts *parts);

#endif
