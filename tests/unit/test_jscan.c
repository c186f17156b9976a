/* jscan: the top-level scanner the built-in policy uses instead of a full JSON parse. */
#include "jscan.h"
#include "lua_json.h"

#include <lauxlib.h>

#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const record_keys[] = {"type", "queue", "nodeid"};
enum { K_TYPE, K_QUEUE, K_NODEID, K_COUNT };

static bool scan(const char *line, const char *const *keys, size_t n, struct jscan_value *v)
{
    return jscan_object(line, strlen(line), keys, n, v);
}

/* The decoded string value, or "<absent>" / "<not a string>". */
static const char *str(const struct jscan_value *v, char *buf, size_t cap)
{
    if (!v->raw)
        return "<absent>";
    if (jscan_string(v, buf, cap) < 0)
        return "<not a string>";
    return buf;
}

static void expect_raw(const struct jscan_value *v, const char *raw)
{
    cr_assert_not_null(v->raw, "expected raw %s, got absent", raw);
    cr_assert_eq(v->len, strlen(raw), "raw length %zu, want %zu (%.*s)", v->len, strlen(raw),
                 (int)v->len, v->raw);
    cr_assert(memcmp(v->raw, raw, v->len) == 0, "raw %.*s, want %s", (int)v->len, v->raw, raw);
}

Test(jscan, kumomta_samples)
{
    static const struct {
        const char *type, *queue, *nodeid;
    } want[] = {
        {"Reception", "example.com", "d8e014c7-eaeb-4683-a56e-61324e91b1fc"},
        {"Reception", "example.com.org", "4eb22880-dc03-44dc-a4d1-4d0e68ac7845"},
        {"Reception", "example.com", "<absent>"},
        {"Reception", "default@gmail.com", "dd2b41fd-78f0-4105-8cd9-01ac7114cada"},
        {"Delivery", "campaign:tenant@domain", "557f3ad4-2c8c-11ee-976e-782d7e12e173"},
        {"Delivery", "campaign:tenant@domain", "557f3ad4-2c8c-11ee-976e-782d7e12e173"},
        {"Feedback", "<absent>", "<absent>"},
    };
    FILE *f = fopen(SHARED_DIR "/kumomta/samples.jsonl", "r");
    cr_assert_not_null(f, "cannot open " SHARED_DIR "/kumomta/samples.jsonl");
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    size_t n = 0;
    while ((len = getline(&line, &cap, f)) > 0) {
        cr_assert_lt(n, sizeof(want) / sizeof(want[0]), "more sample lines than expected");
        cr_assert_eq(line[len - 1], '\n');
        struct jscan_value v[K_COUNT];
        cr_assert(jscan_object(line, (size_t)len, record_keys, K_COUNT, v), "sample %zu rejected",
                  n);
        char b1[128], b2[128], b3[128];
        cr_assert_str_eq(str(&v[K_TYPE], b1, sizeof(b1)), want[n].type, "sample %zu type", n);
        cr_assert_str_eq(str(&v[K_QUEUE], b2, sizeof(b2)), want[n].queue, "sample %zu queue", n);
        cr_assert_str_eq(str(&v[K_NODEID], b3, sizeof(b3)), want[n].nodeid, "sample %zu nodeid", n);
        /* Without the trailing newline as well. */
        cr_assert(jscan_object(line, (size_t)len - 1, record_keys, K_COUNT, v));
        n++;
    }
    cr_assert_eq(n, 7, "read %zu sample lines", n);
    free(line);
    fclose(f);
}

Test(jscan, sample_values_raw)
{
    /* Non-string and nested values are handed back as their exact JSON text. */
    FILE *f = fopen(SHARED_DIR "/kumomta/samples.jsonl", "r");
    cr_assert_not_null(f);
    char *line = NULL;
    size_t cap = 0;
    for (int i = 0; i < 5; i++)
        cr_assert_gt(getline(&line, &cap, f), 0);
    fclose(f);
    /* Line 5: a Delivery with nested response/peer_address, a null and an array. */
    static const char *const keys[] = {
        "size",       "response",    "feedback_report", "meta", "tls_peer_subject_name",
        "session_id", "peer_address"};
    struct jscan_value v[7];
    cr_assert(scan(line, keys, 7, v));
    expect_raw(&v[0], "1047");
    expect_raw(&v[1], "{\"code\":250,\"enhanced_code\":{\"class\":2,\"subject\":0,\"detail\":0},"
                      "\"content\":\"OK ids=8a5475ccbbc611eda12250ebf67f93bd\",\"command\":\".\"}");
    expect_raw(&v[2], "null");
    expect_raw(&v[3], "{}");
    expect_raw(&v[4], "[\"C=US\",\"ST=CA\",\"L=SanFrancisco\",\"O=Fort-Funston\","
                      "\"OU=MyOrganizationalUnit\",\"CN=do.havedane.net\",\"name=EasyRSA\","
                      "\"emailAddress=me@myhost.mydomain\"]");
    expect_raw(&v[5], "\"9bcd689e-23d9-41b7-a015-63a1382f8b57\"");
    expect_raw(&v[6], "{\"name\":\"gmail-smtp-in.l.google.com.\",\"addr\":\"142.251.2.27\"}");
    char buf[8];
    cr_assert_eq(jscan_string(&v[0], buf, sizeof(buf)), -1, "a number is not a string");
    cr_assert_eq(jscan_string(&v[2], buf, sizeof(buf)), -1, "null is not a string");
    free(line);
}

Test(jscan, nested_key_is_not_top_level)
{
    /* The Feedback sample has "recipient" only inside feedback_report.supplemental_trace. */
    FILE *f = fopen(SHARED_DIR "/kumomta/samples.jsonl", "r");
    cr_assert_not_null(f);
    char *line = NULL;
    size_t cap = 0;
    for (int i = 0; i < 7; i++)
        cr_assert_gt(getline(&line, &cap, f), 0);
    fclose(f);
    cr_assert_not_null(strstr(line, "\"recipient\":\"test@example.com\""));
    static const char *const keys[] = {"recipient", "type", "name", "code"};
    struct jscan_value v[4];
    cr_assert(scan(line, keys, 4, v));
    cr_assert_null(v[0].raw, "nested recipient reported at top level");
    expect_raw(&v[1], "\"Feedback\"");
    cr_assert_null(v[2].raw);
    cr_assert_null(v[3].raw);
    free(line);

    const char *crafted = "{\"a\":{\"type\":\"inner\",\"b\":[{\"type\":\"deeper\"}]},"
                          "\"c\":[\"type\",{\"queue\":1}],\"type\":\"outer\"}";
    struct jscan_value w[K_COUNT];
    cr_assert(scan(crafted, record_keys, K_COUNT, w));
    expect_raw(&w[K_TYPE], "\"outer\"");
    cr_assert_null(w[K_QUEUE].raw);
    cr_assert_null(w[K_NODEID].raw);

    /* A string value that looks like a key, and a key inside a string. */
    const char *tricky = "{\"x\":\"\\\"type\\\":\\\"fake\\\"\",\"y\":\"{\\\"queue\\\":2}\"}";
    cr_assert(scan(tricky, record_keys, K_COUNT, w));
    cr_assert_null(w[K_TYPE].raw);
    cr_assert_null(w[K_QUEUE].raw);
}

Test(jscan, nested_and_escapes_skipped)
{
    const char *line = "{ \"a\" : [1, -2.5e+3, 0.0, true, false, null, \"]}\\\"\", {\"k\": [[]]}],"
                       "\t\"b\\n\\\"q\\\\\":{\"x\":{}},\r\n\"type\" :\"T\\/1\" , \"queue\": []}\n";
    struct jscan_value v[K_COUNT];
    cr_assert(scan(line, record_keys, K_COUNT, v));
    expect_raw(&v[K_TYPE], "\"T\\/1\"");
    expect_raw(&v[K_QUEUE], "[]");
    char buf[16];
    cr_assert_eq(jscan_string(&v[K_TYPE], buf, sizeof(buf)), 3);
    cr_assert_str_eq(buf, "T/1");
}

Test(jscan, first_duplicate_wins)
{
    struct jscan_value v[K_COUNT];
    cr_assert(scan("{\"type\":\"first\",\"type\":\"second\"}", record_keys, K_COUNT, v));
    expect_raw(&v[K_TYPE], "\"first\"");
}

Test(jscan, escaped_key_does_not_match)
{
    struct jscan_value v[K_COUNT];
    cr_assert(scan("{\"typ\\u0065\":\"x\"}", record_keys, K_COUNT, v));
    cr_assert_null(v[K_TYPE].raw);
}

Test(jscan, empty_object_and_no_keys)
{
    struct jscan_value v[K_COUNT];
    v[0].raw = "stale";
    cr_assert(scan("{}", record_keys, K_COUNT, v));
    cr_assert_null(v[0].raw, "values are reset");
    cr_assert(scan("  {  }  \n", record_keys, K_COUNT, v));
    cr_assert(scan("{\"a\":1}", NULL, 0, NULL));
}

static void expect_decoded(const char *raw, const char *want, size_t want_len)
{
    struct jscan_value v = {raw, strlen(raw)};
    char buf[64];
    memset(buf, 'X', sizeof(buf));
    long n = jscan_string(&v, buf, sizeof(buf));
    cr_assert_eq(n, (long)want_len, "%s decoded to %ld bytes, want %zu", raw, n, want_len);
    cr_assert(memcmp(buf, want, want_len) == 0, "%s decoded wrongly", raw);
    cr_assert_eq(buf[want_len], '\0');
}

Test(jscan, string_escapes)
{
    expect_decoded("\"\"", "", 0);
    expect_decoded("\"plain\"", "plain", 5);
    expect_decoded("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\/\b\f\n\r\t", 8);
    expect_decoded("\"\\u0041\\u00e9\\u00E9\"", "A\xC3\xA9\xC3\xA9", 5);
    expect_decoded("\"\\u20ac\"", "\xE2\x82\xAC", 3);
    expect_decoded("\"\\u07ff\\u0800\\uffff\"", "\xDF\xBF\xE0\xA0\x80\xEF\xBF\xBF", 8);
    /* Surrogate pairs: U+1F600 and U+10FFFF. */
    expect_decoded("\"\\ud83d\\ude00\"", "\xF0\x9F\x98\x80", 4);
    expect_decoded("\"a\\uDBFF\\uDFFFb\"",
                   "a\xF4\x8F\xBF\xBF"
                   "b",
                   6);
    /* Raw UTF-8 passes through unchanged. */
    expect_decoded("\"\xC3\xA9\xF0\x9F\x98\x80\"", "\xC3\xA9\xF0\x9F\x98\x80", 6);
}

Test(jscan, lone_surrogates_become_replacement_character)
{
    /* A surrogate without its partner is not a character: U+FFFD, never CESU bytes. */
    expect_decoded("\"\\ud83d\"", "\xEF\xBF\xBD", 3);
    expect_decoded("\"\\ude00x\"",
                   "\xEF\xBF\xBD"
                   "x",
                   4);
    expect_decoded("\"\\ud83d\\u0041\"",
                   "\xEF\xBF\xBD"
                   "A",
                   4);
    expect_decoded("\"\\ud83d\\ud83d\\ude00\"", "\xEF\xBF\xBD\xF0\x9F\x98\x80", 7);
}

Test(jscan, string_scanned_then_decoded)
{
    const char *line = "{\"type\":\"Bounce \\u00e9\\ud83d\\ude00\\n\"}";
    struct jscan_value v[K_COUNT];
    cr_assert(scan(line, record_keys, K_COUNT, v));
    char buf[64];
    cr_assert_eq(jscan_string(&v[K_TYPE], buf, sizeof(buf)), 14);
    cr_assert_str_eq(buf, "Bounce \xC3\xA9\xF0\x9F\x98\x80\n");
}

Test(jscan, string_truncated_to_capacity)
{
    struct jscan_value v = {"\"abcdef\"", 8};
    char buf[4];
    cr_assert_eq(jscan_string(&v, buf, sizeof(buf)), 3);
    cr_assert_str_eq(buf, "abc");
    cr_assert_eq(jscan_string(&v, buf, 0), -1);
    struct jscan_value absent = {NULL, 0};
    cr_assert_eq(jscan_string(&absent, buf, sizeof(buf)), -1);
}

static void expect_rejected(const char *line, size_t len)
{
    struct jscan_value v[K_COUNT];
    cr_assert_not(jscan_object(line, len, record_keys, K_COUNT, v), "accepted: %.*s", (int)len,
                  line);
}

#define REJECT(s) expect_rejected(s, sizeof(s) - 1)

Test(jscan, malformed_rejected)
{
    REJECT("");
    REJECT("   \n");
    REJECT("{");
    REJECT("{\"type\"");
    REJECT("{\"type\":");
    REJECT("{\"type\":\"Delivery");
    REJECT("{\"type\":\"Delivery\"");
    REJECT("{\"type\":\"Delivery\",");
    REJECT("{\"type\":\"Delivery\",}");
    REJECT("{\"type\":\"x\"}}");
    REJECT("{\"type\":\"x\"} {}");
    REJECT("{\"type\":\"x\"}garbage");
    REJECT("{\"type\":\"x\"}\n{\"type\":\"y\"}\n");
    /* Bare values. */
    REJECT("\"Delivery\"");
    REJECT("42");
    REJECT("null");
    REJECT("true");
    REJECT("[{\"type\":\"x\"}]");
    /* A CSV line, as a per-record template might write. */
    REJECT("Delivery,d7ef132b5d7711eea8c8000c29c33806,test@example.com,250\n");
    /* Structure errors. */
    REJECT("{type:\"x\"}");
    REJECT("{\"type\" \"x\"}");
    REJECT("{\"a\":1 \"b\":2}");
    REJECT("{\"a\":[1,2}");
    REJECT("{\"a\":[1,]}");
    REJECT("{\"a\":{\"b\"}}");
    REJECT("{\"a\":tru}");
    REJECT("{\"a\":nul}");
    REJECT("{\"a\":-}");
    REJECT("{\"a\":1.}");
    REJECT("{\"a\":1e}");
    REJECT("{\"a\":.5}");
    REJECT("{\"a\":'x'}");
    /* String errors. */
    REJECT("{\"a\":\"\\x\"}");
    REJECT("{\"a\":\"\\u12\"}");
    REJECT("{\"a\":\"\\u12g4\"}");
    REJECT("{\"a\":\"tab\there\"}");
    REJECT("{\"a\":\"new\nline\"}");
    REJECT("{\"a\":\"ends in backslash\\");
    /* A NUL byte inside a string or after the object. */
    expect_rejected("{\"a\":\"x\0y\"}", 11);
    expect_rejected("{\"a\":1}\0", 8);
}

Test(jscan, truncated_sample_prefixes_rejected)
{
    /* Every proper prefix of a record (cut where kumod's block ended) is rejected. */
    FILE *f = fopen(SHARED_DIR "/kumomta/samples.jsonl", "r");
    cr_assert_not_null(f);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
        size_t full = (size_t)len - 1; /* without the newline */
        for (size_t cut = 0; cut < full; cut++)
            expect_rejected(line, cut);
    }
    free(line);
    fclose(f);
}

static char *nested(size_t depth, char open, char close, const char *inner)
{
    size_t inner_len = strlen(inner);
    char *s = malloc(2 * depth + inner_len + 32);
    size_t n = 0;
    n += (size_t)sprintf(s, "{\"type\":\"x\",\"deep\":");
    for (size_t i = 0; i < depth; i++)
        s[n++] = open;
    memcpy(s + n, inner, inner_len);
    n += inner_len;
    for (size_t i = 0; i < depth; i++)
        s[n++] = close;
    s[n++] = '}';
    s[n] = '\0';
    return s;
}

static void expect_too_deep(const char *line, size_t len, bool too_deep)
{
    struct jscan_value v[K_COUNT];
    bool deep = !too_deep;
    cr_assert_not(jscan_object_depth(line, len, record_keys, K_COUNT, v, &deep));
    cr_assert_eq(too_deep, deep, "too_deep %d, wanted %d", deep, too_deep);
}

Test(jscan, deep_nesting_bounded)
{
    /* jansson's limit: the record's object and 2047 levels in it are read... */
    char *ok = nested(JSCAN_MAX_DEPTH - 1, '[', ']', "1");
    struct jscan_value v[K_COUNT];
    bool too_deep = true;
    cr_assert(jscan_object_depth(ok, strlen(ok), record_keys, K_COUNT, v, &too_deep));
    cr_assert_not(too_deep);
    expect_raw(&v[K_TYPE], "\"x\"");
    free(ok);
    /* ... one more, and far more, are refused as too deep, not recursed into. */
    char *arrays = nested(JSCAN_MAX_DEPTH, '[', ']', "");
    expect_too_deep(arrays, strlen(arrays), true);
    free(arrays);
    char *huge = nested(200000, '[', ']', "");
    expect_too_deep(huge, strlen(huge), true);
    free(huge);
    /* Objects: {"a":{"a":...}} */
    size_t depth = 3000;
    char *objs = malloc(depth * 6 + 64);
    size_t n = 0;
    for (size_t i = 0; i < depth; i++)
        n += (size_t)sprintf(objs + n, "{\"a\":");
    n += (size_t)sprintf(objs + n, "1");
    for (size_t i = 0; i < depth; i++)
        objs[n++] = '}';
    objs[n] = '\0';
    expect_too_deep(objs, n, true);
    free(objs);
    /* An unterminated deep prefix is refused at the limit, before its end is seen. */
    char *open_only = malloc(5001);
    memset(open_only, '[', 5000);
    open_only[5000] = '\0';
    char *line = malloc(5100);
    sprintf(line, "{\"a\":%s", open_only);
    expect_too_deep(line, strlen(line), true);
    free(line);
    free(open_only);
    /* A syntax error before the limit is just that. */
    char *broken = nested(100, '[', ']', "1,");
    expect_too_deep(broken, strlen(broken), false);
    free(broken);
    expect_too_deep("not json", 8, false);
}

/* Both ways of reading strings (the map of quotes and backslashes, and byte by byte) find
 * the same values and the same verdict, here where the map has edges: strings across its
 * 64-byte words, escaped quotes and backslashes at a word's end, a line just at and past
 * the 16 KiB the map covers, and control bytes (which send a line to the bytewise read). */
static void expect_same(const char *line, size_t len, bool ok)
{
    /* The map drawn 32 bytes at a time (AVX2, when this CPU has it), then 16. */
    for (int avx2 = 1; avx2 >= 0; avx2--) {
        jscan_allow_avx2(avx2);
        struct jscan_value fast[K_COUNT], slow[K_COUNT];
        bool fast_deep, slow_deep;
        bool got = jscan_object_depth(line, len, record_keys, K_COUNT, fast, &fast_deep);
        cr_assert_eq(got, ok, "verdict %d, want %d (avx2 %d): %.*s", got, ok, avx2,
                     (int)(len < 200 ? len : 200), line);
        cr_assert_eq(jscan_object_bytewise(line, len, record_keys, K_COUNT, slow, &slow_deep), got);
        cr_assert_eq(fast_deep, slow_deep);
        for (int i = 0; ok && i < K_COUNT; i++)
            cr_assert(fast[i].raw == slow[i].raw && fast[i].len == slow[i].len,
                      "key %d differs (avx2 %d)", i, avx2);
    }
    jscan_allow_avx2(true);
}

Test(jscan, stop_map_edges)
{
    char line[20000];
    for (size_t pad = 0; pad < 70; pad++) {
        /* The queue's escapes land on every position of a map word in turn. */
        int n = snprintf(line, sizeof(line),
                         "{\"x\":\"%*s\",\"queue\":\"a\\\"b\\\\\",\"type\":\"t\"}\n", (int)pad, "");
        expect_same(line, (size_t)n, true);
        struct jscan_value v[K_COUNT];
        cr_assert(jscan_object(line, (size_t)n, record_keys, K_COUNT, v));
        expect_raw(&v[K_QUEUE], "\"a\\\"b\\\\\"");
        line[n - 3] = '\\'; /* "t\} : the last string never ends */
        expect_same(line, (size_t)n, false);
    }
    /* At the map's size and one byte past it (the newline is not counted). */
    for (size_t size = 16382; size <= 16386; size++) {
        size_t body = size - 1;
        memcpy(line, "{\"type\":\"", 9);
        memset(line + 9, 'a', body - 9 - 2);
        memcpy(line + body - 2, "\"}\n", 3);
        expect_same(line, size, true);
        line[body - 2] = 'a'; /* no closing quote */
        expect_same(line, size, false);
    }
    /* Control bytes: whitespace between members is fine, inside a string it is not. */
    expect_same("{\"type\":\r\n\t\"t\"}\n", 16, true);
    expect_same("{\"type\":\"t\tab\"}\n", 16, false);
    expect_same("{\"type\":\"t\"}\n\n", 14, true);
    expect_same("{\"type\":\"t\"} x\n", 15, false);
    expect_same("{\"type\":\"t\"}", 12, true);
    expect_same("{\"type\":\"t", 10, false);
    expect_same("{\"type\":\"t\\", 11, false);
    expect_same("{\"type\":\"\\u00e9\\uD83D\\uDE00\"}\n", 30, true);
    expect_same("{\"type\":\"\\u00g9\"}\n", 18, false);
}

/* The map's last word is read from the line's last 64 bytes and shifted (no copy), and
 * digits are read 16 at a time: lines of every length around a word's end, with an
 * escape, a number and a control byte at every position near it. */
Test(jscan, map_tail_and_digit_runs)
{
    char line[400];
    for (int pad = 0; pad < 140; pad++) {
        int n = snprintf(line, sizeof(line), "{\"x\":\"%*s\",\"type\":\"a\\\"b\"}\n", pad, "");
        expect_same(line, (size_t)n, true);
        expect_same(line, (size_t)n - 1, true);
        line[n - 4] = '\\'; /* "a\"\b": the last string never ends */
        expect_same(line, (size_t)n, false);
    }
    for (int pad = 0; pad < 100; pad++)
        for (int digits = 1; digits <= 40; digits += 3) {
            int n = snprintf(line, sizeof(line), "{\"x\":\"%*s\",\"type\":", pad, "");
            memset(line + n, '7', (size_t)digits);
            n += digits;
            n += snprintf(line + n, sizeof(line) - (size_t)n, ".5e-3}\n");
            expect_same(line, (size_t)n, true);
            line[n - 8] = 'x'; /* the number's last digit */
            expect_same(line, (size_t)n, false);
        }
    int accepted = 0;
    int n = snprintf(line, sizeof(line), "{\"x\":\"%140s\",\"type\":1}\n", "");
    for (int at = 0; at <= n; at++) {
        snprintf(line, sizeof(line), "{\"x\":\"%140s\",\"type\":1}\n", "");
        memmove(line + at + 1, line + at, (size_t)(n - at));
        line[at] = '\t'; /* fine between tokens, not inside a string */
        struct jscan_value v[K_COUNT];
        bool deep, ok = jscan_object_bytewise(line, (size_t)n + 1, record_keys, K_COUNT, v, &deep);
        accepted += ok;
        expect_same(line, (size_t)n + 1, ok);
    }
    cr_assert_eq(accepted, 11, "a tab fits in %d places", accepted);
}

/* ---- lua_json_scan_object, the check behind log_record (lua_json_check.c) ------------ */

/* Its verdict is the direct parser's (lua_json_push_direct) on every text, with the map
 * drawn either way, on the texts where the map and the byte-by-byte reads meet: strings
 * with UTF-8, escapes or control bytes just before and after a 64-byte word's end, and
 * the refusals the direct parser has beyond JSON's grammar. */
static void expect_check(const char *text, size_t len, bool ok)
{
    lua_State *L = luaL_newstate();
    bool direct =
        lua_json_push_direct(L, text, len) && lua_istable(L, -1) && !lua_json_is_array(L, -1);
    lua_close(L);
    cr_assert_eq(direct, ok, "direct parser %d, want %d: %.*s", direct, ok,
                 (int)(len < 200 ? len : 200), text);
    struct lua_json_member *members = NULL;
    size_t cap = 0, count;
    for (int avx2 = 1; avx2 >= 0; avx2--) {
        lua_json_check_allow_avx2(avx2);
        cr_assert_eq(lua_json_scan_object(text, len, &members, &cap, &count), ok,
                     "check, avx2 %d: %.*s", avx2, (int)(len < 200 ? len : 200), text);
    }
    lua_json_check_allow_avx2(true);
    free(members);
}

Test(lua_json_check, same_verdicts_as_the_direct_parser)
{
    static const struct {
        const char *text;
        bool ok;
    } cases[] = {
        {"{}", true},
        {" {\"a\" : [1, -0, 0.5e-3, true, false, null, {}, []] } \n", true},
        {"{\"a\":01}", false},
        {"{\"a\":-}", false},
        {"{\"a\":1.}", false},
        {"{\"a\":999999999999999999}", true},
        {"{\"a\":9223372036854775807}", true},
        {"{\"a\":9223372036854775808}", false},
        {"{\"a\":-9223372036854775808}", true},
        {"{\"a\":1e999}", false},
        {"{\"a\":1.00000000000000000000000000000000000000000000000000000000000000}", false},
        {"{\"a\":\"\\u0000\"}", true},
        {"{\"\\u0000\":1}", false},
        {"{\"\\u00e9\":1}", true},
        {"{\"a\":\"\\ud83d\\ude00\"}", true},
        {"{\"a\":\"\\ud83d\"}", false},
        {"{\"a\":\"\\ude00\"}", false},
        {"{\"a\":\"\\x\"}", false},
        {"{\"a\":\"Gr\xc3\xbc\xc3\x9f\x65\"}", true},
        {"{\"a\":\"\xc3\"}", false},
        {"{\"a\":\"\xed\xa0\x80\"}", false},
        {"{\"a\":\"tab\there\"}", false},
        {"{\"a\":1,}", false},
        {"{\"a\" 1}", false},
        {"[1]", false},
        {"{\"a\":1} x", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_check(cases[i].text, strlen(cases[i].text), cases[i].ok);
}

Test(lua_json_check, strings_across_the_map_words)
{
    static const char *const inserts[] = {"\xc3\xa9", "\\n",  "\\\"", "\\u00e9",
                                          "\xc3",     "\x01", "\\q"};
    static const bool good[] = {true, true, true, true, false, false, false};
    char text[400];
    for (size_t k = 0; k < sizeof(inserts) / sizeof(inserts[0]); k++)
        for (int pad = 40; pad < 140; pad++) {
            int n = snprintf(text, sizeof(text), "{\"k\":\"%.*s%s%.*s\",\"z\":[\"%s\"]}", pad,
                             "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                             "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                             inserts[k], pad % 7, "yyyyyyy", k % 2 ? "" : inserts[k]);
            expect_check(text, (size_t)n, good[k]);
        }
}

Test(lua_json_check, long_texts_and_deep_nesting)
{
    /* Past the 16 KiB the map covers, then 2048 levels (taken) and 2049 (refused). */
    size_t len = 20000;
    char *text = malloc(len + 8192);
    memset(text, 'x', len);
    memcpy(text, "{\"k\":\"", 6);
    memcpy(text + len - 2, "\"}", 2);
    expect_check(text, len, true);
    text[9000] = '\x01';
    expect_check(text, len, false);
    for (int levels = 2048; levels <= 2049; levels++) {
        size_t n = 0;
        text[n++] = '{';
        n += (size_t)sprintf(text + n, "\"a\":");
        for (int i = 1; i < levels; i++)
            text[n++] = '[';
        for (int i = 1; i < levels; i++)
            text[n++] = ']';
        text[n++] = '}';
        expect_check(text, n, levels == 2048);
    }
    free(text);
}

/* jscan and the check share one walk (json_walk.h) and differ only where their modes say:
 * the check refuses what the direct parser refuses beyond JSON's grammar, jscan reads the
 * grammar (and finds its keys around such values). Both refuse what neither reads. */
Test(lua_json_check, differs_from_jscan_only_by_its_strictness)
{
    static const struct {
        const char *text;
        bool jscan, check;
    } cases[] = {
        {"{\"type\":\"x\",\"a\":01}", true, false},
        {"{\"type\":\"x\",\"a\":9223372036854775808}", true, false},
        {"{\"type\":\"x\",\"a\":1e999}", true, false},
        {"{\"type\":\"x\",\"a\":\"\\ud83d\"}", true, false},
        {"{\"type\":\"x\",\"\\u0000\":1}", true, false},
        {"{\"type\":\"x\",\"a\":\"\xc3\"}", true, false},
        {"{\"type\":\"x\",\"a\":[1,{\"b\":\"\xc3\xa9\"}]}", true, true},
        {"{\"type\":\"x\",\"a\":\"\\q\"}", false, false},
        {"{\"type\":\"x\",\"a\":\"tab\there\"}", false, false},
        {"{\"type\":\"x\",\"a\":[1,]}", false, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *text = cases[i].text;
        struct jscan_value v[K_COUNT];
        char buf[16];
        bool deep;
        cr_assert_eq(jscan_object_depth(text, strlen(text), record_keys, K_COUNT, v, &deep),
                     cases[i].jscan, "jscan: %s", text);
        cr_assert_not(deep);
        if (cases[i].jscan)
            cr_assert_str_eq(str(&v[K_TYPE], buf, sizeof(buf)), "x", "%s", text);
        expect_check(text, strlen(text), cases[i].check);
    }
}
