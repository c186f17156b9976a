#include "subject.h"

#include "xalloc.h"

#include <stdlib.h>
#include <string.h>

static const char *const field_names[SUBJECT_FIELD_COUNT] = {
    "type", "queue", "domain", "tenant", "campaign", "routing_domain", "nodeid", "relay_id",
};

static void add_part(struct subject_template *tpl, struct subject_part part)
{
    tpl->parts = xrealloc(tpl->parts, (tpl->part_count + 1) * sizeof(*tpl->parts));
    tpl->parts[tpl->part_count++] = part;
}

static int field_by_name(const char *name, size_t len)
{
    for (int i = 0; i < SUBJECT_FIELD_COUNT; i++)
        if (strlen(field_names[i]) == len && memcmp(field_names[i], name, len) == 0)
            return i;
    return -1;
}

char *subject_compile(const char *text, struct subject_template *tpl)
{
    memset(tpl, 0, sizeof(*tpl));
    if (!*text)
        return xstrdup("the subject template is empty");
    const char *p = text;
    while (*p) {
        const char *open = strchr(p, '{');
        const char *stray = strchr(p, '}');
        if (stray && (!open || stray < open)) {
            subject_free(tpl);
            return xasprintf("unbalanced '}' in subject template \"%s\"", text);
        }
        if (!open) {
            add_part(tpl, (struct subject_part){.literal = xstrdup(p)});
            break;
        }
        if (open > p)
            add_part(tpl, (struct subject_part){.literal = xstrndup(p, (size_t)(open - p))});
        const char *close = strchr(open, '}');
        int field = close ? field_by_name(open + 1, (size_t)(close - open - 1)) : -1;
        if (field < 0) {
            subject_free(tpl);
            if (!close)
                return xasprintf("unclosed '{' in subject template \"%s\"", text);
            return xasprintf("unknown placeholder {%.*s} in subject template \"%s\" (known: "
                             "type, queue, domain, tenant, campaign, routing_domain, nodeid, "
                             "relay_id)",
                             (int)(close - open - 1), open + 1, text);
        }
        add_part(tpl, (struct subject_part){.is_field = true, .field = (enum subject_field)field});
        if (field != SUBJECT_FIELD_RELAY_ID)
            tpl->needs_record = true;
        p = close + 1;
    }
    return NULL;
}

void subject_free(struct subject_template *tpl)
{
    for (size_t i = 0; i < tpl->part_count; i++)
        free(tpl->parts[i].literal);
    free(tpl->parts);
    memset(tpl, 0, sizeof(*tpl));
}

long subject_token(const char *value, char *out, size_t cap)
{
    if (!value || !*value) {
        if (cap < 2)
            return -1;
        memcpy(out, "_", 2);
        return 1;
    }
    size_t n = strlen(value);
    if (n + 1 > cap)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)value[i];
        out[i] = (ch <= ' ' || ch == 0x7f || ch == '.' || ch == '*' || ch == '>') ? '_' : (char)ch;
    }
    out[n] = '\0';
    return (long)n;
}

long subject_render(const struct subject_template *tpl, const struct subject_values *values,
                    char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < tpl->part_count; i++) {
        const struct subject_part *part = &tpl->parts[i];
        long len;
        if (part->is_field) {
            len = subject_token(values->field[part->field], out + n, cap - n);
        } else {
            len = (long)strlen(part->literal);
            if ((size_t)len + 1 > cap - n)
                return -1;
            memcpy(out + n, part->literal, (size_t)len + 1);
        }
        if (len < 0)
            return -1;
        n += (size_t)len;
    }
    return (long)n;
}

void subject_parse_queue(const char *queue, char *buf, struct queue_parts *parts)
{
    static const char empty[] = "";
    size_t n = strlen(queue);
    memcpy(buf, queue, n + 1);
    *parts = (struct queue_parts){empty, empty, buf, empty};
    /* As KumoMTA's QueueNameComponents::parse: the first '@' ends "campaign:tenant" or
     * "tenant"; the first '!' after it starts the routing domain. */
    char *domain = buf;
    char *at = strchr(buf, '@');
    if (at) {
        *at = '\0';
        domain = at + 1;
        char *colon = strchr(buf, ':');
        if (colon) {
            *colon = '\0';
            parts->campaign = buf;
            parts->tenant = colon + 1;
        } else {
            parts->tenant = buf;
        }
    }
    parts->domain = domain;
    char *bang = strchr(domain, '!');
    if (bang) {
        *bang = '\0';
        parts->routing_domain = bang + 1;
    }
}
