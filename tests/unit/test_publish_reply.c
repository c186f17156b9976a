/* publish_reply: JetStream's answers to publishes (PubAcks, errors, fast-ingest batches'
 * flow and final acks) read from the top level of their JSON only, and
 * publish_reply_classify: what a single publish's reply means to the publisher. */
#include "jscan.h"
#include "publish_internal.h"
#include "publish_reply.h"

#include <criterion/criterion.h>

#include <string.h>

static struct publish_reply parse(const char *text)
{
    struct publish_reply r;
    cr_assert(publish_reply_parse(text, strlen(text), &r), "not read: %s", text);
    return r;
}

static struct reply classify(const char *text)
{
    struct reply ev = {0};
    publish_reply_classify(text, strlen(text), &ev);
    return ev;
}

Test(publish_reply, a_plain_ack)
{
    struct publish_reply r = parse("{\"stream\":\"KUMO\",\"seq\":42}");
    cr_expect_str_eq(r.stream, "KUMO");
    cr_expect_eq(r.seq, 42);
    cr_expect_not(r.duplicate);
    cr_expect_not(r.error);
    cr_expect_str_eq(r.domain, "");
    cr_expect_str_eq(r.type, "");
    cr_expect_not(r.batch);
}

Test(publish_reply, an_ack_with_a_domain_and_a_duplicate)
{
    struct publish_reply r =
        parse("{\"stream\":\"KUMO\",\"domain\":\"hub\",\"seq\":18446744073709551,"
              "\"duplicate\":true}");
    cr_expect_str_eq(r.stream, "KUMO");
    cr_expect_str_eq(r.domain, "hub");
    cr_expect_eq(r.seq, 18446744073709551ULL);
    cr_expect(r.duplicate);
}

/* nats-server writes a duplicate's ack by hand, with spaces after some separators. */
Test(publish_reply, the_servers_hand_written_duplicate_ack)
{
    struct publish_reply r = parse("{\"stream\":\"KUMO\", \"seq\":1,\"duplicate\": true}");
    cr_expect(r.duplicate);
    cr_expect_eq(r.seq, 1);
    cr_expect_str_eq(r.stream, "KUMO");
    cr_expect_not(parse("{\"stream\":\"KUMO\",\"seq\":1,\"duplicate\":false}").duplicate);
}

Test(publish_reply, any_key_order_and_whitespace)
{
    struct publish_reply r =
        parse(" {\n\t\"duplicate\" : true ,\r\n \"seq\" :\t7,\"stream\" : \"S\" } \n");
    cr_expect_str_eq(r.stream, "S");
    cr_expect_eq(r.seq, 7);
    cr_expect(r.duplicate);
}

/* Key-like text inside strings and nested objects is not a member. */
Test(publish_reply, key_like_text_in_values_is_not_a_member)
{
    struct publish_reply r = parse("{\"stream\":\"seq\",\"seq\":3}");
    cr_expect_str_eq(r.stream, "seq");
    cr_expect_eq(r.seq, 3);

    r = parse("{\"stream\":\"error\",\"seq\":4,\"domain\":\"\\\"duplicate\\\":true\"}");
    cr_expect_not(r.error);
    cr_expect_not(r.duplicate);
    cr_expect_str_eq(r.stream, "error");
    cr_expect_str_eq(r.domain, "\"duplicate\":true");

    r = parse("{\"meta\":{\"stream\":\"X\",\"seq\":9,\"duplicate\":true,\"error\":{}},"
              "\"stream\":\"S\",\"seq\":2}");
    cr_expect_str_eq(r.stream, "S");
    cr_expect_eq(r.seq, 2);
    cr_expect_not(r.duplicate);
    cr_expect_not(r.error);
}

Test(publish_reply, an_error)
{
    struct publish_reply r =
        parse("{\"error\":{\"code\":503,\"err_code\":10077,\"description\":\"maximum messages "
              "exceeded\"}}");
    cr_expect(r.error);
    cr_expect_eq(r.err_code, 10077);
    cr_expect_str_eq(r.description, "maximum messages exceeded");
}

Test(publish_reply, an_errors_description_that_looks_like_an_ack)
{
    struct publish_reply r =
        parse("{\"error\":{\"description\":\"bad \\\"seq\\\":5, \\\"duplicate\\\": true, "
              "\\\"stream\\\":\\\"X\\\"\",\"code\":400,\"err_code\":10071}}");
    cr_expect(r.error);
    cr_expect_str_eq(r.description, "bad \"seq\":5, \"duplicate\": true, \"stream\":\"X\"");
    cr_expect_eq(r.err_code, 10071);
    cr_expect_eq(r.seq, 0);
    cr_expect_not(r.duplicate);
    cr_expect_str_eq(r.stream, "");
}

Test(publish_reply, an_error_without_a_description_or_null)
{
    struct publish_reply r = parse("{\"error\":{\"code\":500}}");
    cr_expect(r.error);
    cr_expect_str_eq(r.description, "");
    cr_expect_eq(r.err_code, 0);
    cr_expect_not(parse("{\"stream\":\"S\",\"seq\":1,\"error\":null}").error);
}

Test(publish_reply, fast_batch_flow_and_final_acks)
{
    struct publish_reply r = parse("{\"type\":\"ack\",\"seq\":500,\"msgs\":500}");
    cr_expect_str_eq(r.type, "ack");
    cr_expect_eq(r.seq, 500);
    cr_expect_not(r.batch);

    r = parse("{\"type\":\"gap\",\"last_seq\":3,\"seq\":5}");
    cr_expect_str_eq(r.type, "gap");
    cr_expect_eq(r.seq, 5);

    r = parse("{\"type\":\"err\",\"seq\":4,\"error\":{\"code\":400,\"err_code\":10199,"
              "\"description\":\"batch failed\"}}");
    cr_expect_str_eq(r.type, "err");
    cr_expect(r.error);
    cr_expect_str_eq(r.description, "batch failed");

    r = parse("{\"stream\":\"KUMO\",\"seq\":1200,\"batch\":\"abcF1\",\"count\":100}");
    cr_expect(r.batch);
    cr_expect_eq(r.count, 100);
    cr_expect_eq(r.seq, 1200);
    cr_expect_str_eq(r.type, "");

    /* A type longer than any the server sends is not taken for a shorter one. */
    cr_expect_str_neq(parse("{\"type\":\"acknowledged\"}").type, "ack");
}

/* As jansson's json_integer_value, which the batches used: 0 for anything not an integer. */
Test(publish_reply, numbers_that_are_not_unsigned_integers_read_as_0)
{
    cr_expect_eq(parse("{\"seq\":1.5}").seq, 0);
    cr_expect_eq(parse("{\"seq\":-1}").seq, 0);
    cr_expect_eq(parse("{\"seq\":\"5\"}").seq, 0);
    cr_expect_eq(parse("{\"seq\":1e3}").seq, 0);
    cr_expect_eq(parse("{\"seq\":123456789012345678901}").seq, 0);
    cr_expect_eq(parse("{\"count\":true}").count, 0);
}

Test(publish_reply, not_one_json_object)
{
    static const char *const bad[] = {
        "",
        "not json",
        "{\"stream\":\"S\",\"seq\":5",
        "[1]",
        "\"x\"",
        "{\"stream\":\"S\",\"seq\":5} x",
        "{\"stream\":\"S\" \"seq\":5}",
        "{\"stream\":\"S\x01\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        struct publish_reply r;
        cr_expect_not(publish_reply_parse(bad[i], strlen(bad[i]), &r), "read: %s", bad[i]);
    }
    struct publish_reply r;
    cr_expect_not(publish_reply_parse(NULL, 0, &r));
}

Test(publish_reply, classify_acks_duplicates_and_errors)
{
    struct reply ev = classify("{\"stream\":\"KUMO\",\"domain\":\"hub\",\"seq\":9}");
    cr_expect_eq(ev.kind, REPLY_ACK);
    cr_expect_str_eq(ev.detail, "KUMO");
    cr_expect_str_eq(ev.domain, "hub");
    cr_expect_eq(ev.sequence, 9);

    ev = classify("{\"stream\":\"KUMO\", \"seq\":1,\"duplicate\": true}");
    cr_expect_eq(ev.kind, REPLY_DUPLICATE);
    cr_expect_eq(ev.sequence, 1);

    ev = classify("{\"error\":{\"code\":503,\"err_code\":10077,\"description\":\"maximum "
                  "messages exceeded\"}}");
    cr_expect_eq(ev.kind, REPLY_ERROR);
    cr_expect_str_eq(ev.detail, "maximum messages exceeded");

    /* Without a description the log shows the reply itself. */
    ev = classify("{\"error\":{\"code\":500}}");
    cr_expect_eq(ev.kind, REPLY_ERROR);
    cr_expect_str_eq(ev.detail, "{\"error\":{\"code\":500}}");

    /* A stream named "error" was a refusal when replies were read by substrings. */
    ev = classify("{\"stream\":\"error\",\"seq\":3}");
    cr_expect_eq(ev.kind, REPLY_ACK);
    cr_expect_str_eq(ev.detail, "error");
}

/* What a reply that is not a JSON object means is what it meant before: any "error"
 * refuses the publish, else it is an ack, with what substrings tell of it. */
Test(publish_reply, classify_replies_that_are_not_json_as_before)
{
    struct reply ev = classify("");
    cr_expect_eq(ev.kind, REPLY_ACK);
    cr_expect_str_eq(ev.detail, "");
    cr_expect_eq(ev.sequence, 0);

    ev = classify("{\"stream\":\"S\",\"seq\":5");
    cr_expect_eq(ev.kind, REPLY_ACK);
    cr_expect_str_eq(ev.detail, "S");
    cr_expect_eq(ev.sequence, 5);

    ev = classify("{\"stream\":\"S\",\"seq\":5,\"duplicate\": true");
    cr_expect_eq(ev.kind, REPLY_DUPLICATE);

    ev = classify("oops \"error\" \"description\":\"it broke\" and more");
    cr_expect_eq(ev.kind, REPLY_ERROR);
    cr_expect_str_eq(ev.detail, "it broke");

    ev = classify("\"error\" without a description");
    cr_expect_eq(ev.kind, REPLY_ERROR);
    cr_expect_str_eq(ev.detail, "\"error\" without a description");
}

/* Acks are read by a scanner of flat objects, anything nested by jscan: both must take
 * the same texts and find the same members. Mutations of real answers (bytes replaced,
 * dropped, doubled) probe the edges: escapes, numbers, literals, whitespace, ends. */
static void expect_same_as_jscan(const char *text, size_t len)
{
    static const char *const keys[] = {"stream", "seq", "duplicate", "domain", "type", "count"};
    struct jscan_value v[6];
    bool want = jscan_object(text, len, keys, 6, v);
    struct publish_reply r;
    bool got = publish_reply_parse(text, len, &r);
    cr_assert_eq(got, want, "read %d, jscan %d: %.*s", got, want, (int)len, text);
    if (!got)
        return;
    char stream[128] = "";
    if (v[0].raw && v[0].raw[0] == '"')
        jscan_string(&v[0], stream, sizeof(stream));
    cr_assert_str_eq(r.stream, stream, "%.*s", (int)len, text);
    cr_assert_eq(r.duplicate, v[2].raw && v[2].len == 4 && memcmp(v[2].raw, "true", 4) == 0, "%.*s",
                 (int)len, text);
}

Test(publish_reply, flat_replies_read_as_jscan_reads_them)
{
    static const char *const seeds[] = {
        "{\"stream\":\"KUMO\",\"seq\":42}",
        "{\"stream\":\"KUMO\",\"domain\":\"hub\",\"seq\":7,\"duplicate\":true}",
        "{\"stream\":\"KUMO\", \"seq\":1,\"duplicate\": true}",
        "{\"type\":\"ack\",\"seq\":500,\"msgs\":500}",
        "{\"stream\":\"K\\u00e9\\n\",\"seq\":-1.5e+3,\"batch\":\"aF1\",\"count\":100,\"x\":null,"
        "\"y\":false}",
        " {\r\n\t\"seq\" : 9 , \"stream\" : \"\\\"S\\\\\" }\n",
        "{}",
        "{\"error\":{\"code\":503,\"err_code\":10077,\"description\":\"x\"},\"seq\":[1,{}]}",
    };
    static const char bytes[] = "{}[]\":,\\ \n\t-+.eE0123456789tfnulrsu\x01";
    unsigned rng = 1;
    char buf[256];
    for (size_t s = 0; s < sizeof(seeds) / sizeof(*seeds); s++) {
        size_t n = strlen(seeds[s]);
        expect_same_as_jscan(seeds[s], n);
        for (size_t i = 0; i < n; i++) { /* every prefix */
            expect_same_as_jscan(seeds[s], i);
        }
        for (int round = 0; round < 20000; round++) {
            memcpy(buf, seeds[s], n);
            size_t len = n;
            for (int m = 0; m < 1 + round % 3; m++) {
                rng = rng * 1103515245u + 12345u;
                size_t at = (rng >> 8) % len;
                char ch = bytes[(rng >> 20) % (sizeof(bytes) - 1)];
                switch ((rng >> 16) % 3) {
                case 0:
                    buf[at] = ch;
                    break;
                case 1:
                    memmove(buf + at, buf + at + 1, len - at - 1);
                    len--;
                    break;
                default:
                    if (len + 1 < sizeof(buf)) {
                        memmove(buf + at + 1, buf + at, len - at);
                        buf[at] = ch;
                        len++;
                    }
                }
                if (len == 0)
                    break;
            }
            expect_same_as_jscan(buf, len);
        }
    }
}
