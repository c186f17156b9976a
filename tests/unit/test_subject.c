/* subject: the built-in policy's template, token sanitising and queue name parsing. */
#include "subject.h"

#include <criterion/criterion.h>

#include <stdlib.h>
#include <string.h>

static void expect_compile_error(const char *text, const char *want)
{
    struct subject_template tpl;
    char *err = subject_compile(text, &tpl);
    cr_assert_not_null(err, "template \"%s\" compiled", text);
    cr_assert_str_eq(err, want);
    cr_assert_eq(tpl.part_count, 0, "a failed compile leaves the template empty");
    cr_assert_null(tpl.parts);
    cr_assert_not(tpl.needs_record);
    free(err);
}

#define KNOWN "(known: type, queue, domain, tenant, campaign, routing_domain, nodeid, relay_id)"

Test(subject, compile_errors)
{
    expect_compile_error("", "the subject template is empty");
    expect_compile_error("kumo.log.{typ}",
                         "unknown placeholder {typ} in subject template \"kumo.log.{typ}\" " KNOWN);
    expect_compile_error("kumo.{type}.{Type}",
                         "unknown placeholder {Type} in subject template \"kumo.{type}.{Type}\" "
                         "" KNOWN);
    expect_compile_error("kumo.{}",
                         "unknown placeholder {} in subject template \"kumo.{}\" " KNOWN);
    expect_compile_error("kumo.log.{type", "unclosed '{' in subject template \"kumo.log.{type\"");
    expect_compile_error("{type}.{", "unclosed '{' in subject template \"{type}.{\"");
    expect_compile_error("kumo.log.type}", "unbalanced '}' in subject template \"kumo.log.type}\"");
    expect_compile_error("kumo.{type}}", "unbalanced '}' in subject template \"kumo.{type}}\"");
    expect_compile_error("}{type}", "unbalanced '}' in subject template \"}{type}\"");
    /* A brace inside a placeholder is part of its (unknown) name. */
    expect_compile_error("kumo.{ty{pe}",
                         "unknown placeholder {ty{pe} in subject template \"kumo.{ty{pe}\" " KNOWN);
}

Test(subject, compile_parts)
{
    struct subject_template tpl;
    cr_assert_null(subject_compile("kumo.log.{type}", &tpl));
    cr_assert_eq(tpl.part_count, 2);
    cr_assert_not(tpl.parts[0].is_field);
    cr_assert_str_eq(tpl.parts[0].literal, "kumo.log.");
    cr_assert(tpl.parts[1].is_field);
    cr_assert_eq(tpl.parts[1].field, SUBJECT_FIELD_TYPE);
    cr_assert(tpl.needs_record);
    subject_free(&tpl);
    cr_assert_eq(tpl.part_count, 0);
    cr_assert_null(tpl.parts);

    cr_assert_null(subject_compile("relay.{relay_id}", &tpl));
    cr_assert_not(tpl.needs_record, "{relay_id} alone does not read the record");
    subject_free(&tpl);

    cr_assert_null(subject_compile("static.subject", &tpl));
    cr_assert_eq(tpl.part_count, 1);
    cr_assert_not(tpl.needs_record);
    subject_free(&tpl);

    cr_assert_null(subject_compile("{type}{queue}{domain}{tenant}{campaign}{routing_domain}"
                                   "{nodeid}{relay_id}",
                                   &tpl));
    cr_assert_eq(tpl.part_count, SUBJECT_FIELD_COUNT);
    for (size_t i = 0; i < tpl.part_count; i++) {
        cr_assert(tpl.parts[i].is_field);
        cr_assert_eq(tpl.parts[i].field, (enum subject_field)i);
    }
    subject_free(&tpl);
}

static long render(const char *text, const struct subject_values *v, char *out, size_t cap)
{
    struct subject_template tpl;
    char *err = subject_compile(text, &tpl);
    cr_assert_null(err, "%s", err);
    long n = subject_render(&tpl, v, out, cap);
    subject_free(&tpl);
    return n;
}

static void expect_render(const char *text, const struct subject_values *v, const char *want)
{
    char out[256];
    long n = render(text, v, out, sizeof(out));
    cr_assert_eq(n, (long)strlen(want), "%s rendered %ld bytes, want %zu", text, n, strlen(want));
    cr_assert_str_eq(out, want);
}

Test(subject, render_fields)
{
    struct subject_values v = {{0}};
    v.field[SUBJECT_FIELD_TYPE] = "Delivery";
    v.field[SUBJECT_FIELD_QUEUE] = "campaign:tenant@example.com!mx.example.net";
    v.field[SUBJECT_FIELD_DOMAIN] = "example.com";
    v.field[SUBJECT_FIELD_TENANT] = "tenant";
    v.field[SUBJECT_FIELD_CAMPAIGN] = "campaign";
    v.field[SUBJECT_FIELD_ROUTING_DOMAIN] = "mx.example.net";
    v.field[SUBJECT_FIELD_NODEID] = "557f3ad4-2c8c-11ee-976e-782d7e12e173";
    v.field[SUBJECT_FIELD_RELAY_ID] = "mta1";
    expect_render("kumo.log.{type}", &v, "kumo.log.Delivery");
    expect_render("{relay_id}.{type}.{domain}", &v, "mta1.Delivery.example_com");
    expect_render("q.{queue}", &v, "q.campaign:tenant@example_com!mx_example_net");
    expect_render("{campaign}-{tenant}.{routing_domain}.{nodeid}", &v,
                  "campaign-tenant.mx_example_net.557f3ad4-2c8c-11ee-976e-782d7e12e173");
    expect_render("no.placeholders", &v, "no.placeholders");
}

Test(subject, render_sanitises_tokens)
{
    struct subject_values v = {{0}};
    v.field[SUBJECT_FIELD_TYPE] = "a.b*c>d e\tf\ng\rh\x01i\x7fj";
    expect_render("kumo.{type}.x", &v, "kumo.a_b_c_d_e_f_g_h_i_j.x");
    v.field[SUBJECT_FIELD_TYPE] = "...";
    expect_render("kumo.{type}", &v, "kumo.___");
    v.field[SUBJECT_FIELD_TYPE] = ">";
    expect_render("kumo.{type}", &v, "kumo._");
    /* UTF-8 and other printable ASCII are kept as they are. */
    v.field[SUBJECT_FIELD_TYPE] = "D\xC3\xA9livr\xC3\xA9-_~!@#$%^&()";
    expect_render("kumo.{type}", &v, "kumo.D\xC3\xA9livr\xC3\xA9-_~!@#$%^&()");
}

Test(subject, render_missing_fields)
{
    struct subject_values v = {{0}};
    v.field[SUBJECT_FIELD_QUEUE] = "";
    expect_render("kumo.{type}.{queue}.{nodeid}", &v, "kumo._._._");
}

Test(subject, render_too_small)
{
    struct subject_values v = {{0}};
    v.field[SUBJECT_FIELD_TYPE] = "Delivery";
    char out[32];
    /* "kumo.log.Delivery" is 17 bytes and needs 18 with its NUL. */
    cr_assert_eq(render("kumo.log.{type}", &v, out, 18), 17);
    cr_assert_str_eq(out, "kumo.log.Delivery");
    cr_assert_eq(render("kumo.log.{type}", &v, out, 17), -1, "the field does not fit");
    cr_assert_eq(render("kumo.log.{type}", &v, out, 9), -1, "the literal fits, the NUL does not");
    cr_assert_eq(render("kumo.log.{type}", &v, out, 5), -1, "the literal does not fit");
    cr_assert_eq(render("kumo.log.{type}", &v, out, 0), -1);
    cr_assert_eq(render("{type}.x", &v, out, 10), -1, "the trailing literal does not fit");
    cr_assert_eq(render("{type}.x", &v, out, 11), 10);
    cr_assert_str_eq(out, "Delivery.x");
    /* An empty field renders as "_" and needs two bytes. */
    v.field[SUBJECT_FIELD_TYPE] = NULL;
    cr_assert_eq(render("{type}", &v, out, 1), -1);
    cr_assert_eq(render("{type}", &v, out, 2), 1);
    cr_assert_str_eq(out, "_");
}

Test(subject, token)
{
    char out[16];
    cr_assert_eq(subject_token("abc", out, sizeof(out)), 3);
    cr_assert_str_eq(out, "abc");
    cr_assert_eq(subject_token("", out, sizeof(out)), 1);
    cr_assert_str_eq(out, "_");
    cr_assert_eq(subject_token(NULL, out, sizeof(out)), 1);
    cr_assert_str_eq(out, "_");
    cr_assert_eq(subject_token("a b.c", out, sizeof(out)), 5);
    cr_assert_str_eq(out, "a_b_c");
    cr_assert_eq(subject_token("abc", out, 4), 3);
    cr_assert_eq(subject_token("abc", out, 3), -1);
    cr_assert_eq(subject_token("", out, 1), -1);
    cr_assert_eq(subject_token(NULL, out, 0), -1);
}

struct want_queue {
    const char *campaign, *tenant, *domain, *routing_domain;
};

static void expect_queue(const char *queue, struct want_queue want)
{
    char buf[128];
    memset(buf, 'X', sizeof(buf));
    struct queue_parts q;
    subject_parse_queue(queue, buf, &q);
    cr_assert_str_eq(q.campaign, want.campaign, "%s: campaign", queue);
    cr_assert_str_eq(q.tenant, want.tenant, "%s: tenant", queue);
    cr_assert_str_eq(q.domain, want.domain, "%s: domain", queue);
    cr_assert_str_eq(q.routing_domain, want.routing_domain, "%s: routing_domain", queue);
}

Test(subject, parse_queue)
{
    expect_queue("example.com", (struct want_queue){"", "", "example.com", ""});
    expect_queue("tenant@example.com", (struct want_queue){"", "tenant", "example.com", ""});
    expect_queue("campaign:tenant@example.com",
                 (struct want_queue){"campaign", "tenant", "example.com", ""});
    expect_queue("campaign:tenant@example.com!mx.example.net",
                 (struct want_queue){"campaign", "tenant", "example.com", "mx.example.net"});
    expect_queue("example.com!mx.example.net",
                 (struct want_queue){"", "", "example.com", "mx.example.net"});
    expect_queue("tenant@example.com!mx.example.net",
                 (struct want_queue){"", "tenant", "example.com", "mx.example.net"});
    expect_queue("campaign:@example.com", (struct want_queue){"campaign", "", "example.com", ""});
    expect_queue("", (struct want_queue){"", "", "", ""});
    expect_queue("default@gmail.com", (struct want_queue){"", "default", "gmail.com", ""});
}

Test(subject, parse_queue_like_kumomta)
{
    /* KumoMTA's QueueNameComponents::parse: split at the first '@', then the campaign at
     * the first ':' of what precedes it and the routing domain at the first '!' of what
     * follows it. A '!' or ':' before the '@' belongs to the tenant or campaign. */
    expect_queue("ten!ant@example.com", (struct want_queue){"", "ten!ant", "example.com", ""});
    expect_queue("camp:ten!ant@example.com!mx",
                 (struct want_queue){"camp", "ten!ant", "example.com", "mx"});
    expect_queue("a:b:c@example.com", (struct want_queue){"a", "b:c", "example.com", ""});
    expect_queue("example.com!mx!x", (struct want_queue){"", "", "example.com", "mx!x"});
    expect_queue("campaign:example.com", (struct want_queue){"", "", "campaign:example.com", ""});
    expect_queue("a@b@example.com", (struct want_queue){"", "a", "b@example.com", ""});
}
