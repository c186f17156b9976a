/* The Message object: every method against every KumoMTA sample record, the recipient
 * array, lines that are not JSON, meta, pinning and use after detach. */
#include "lua_kumo.h"
#include "lua_message.h"
#include "xalloc.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <lauxlib.h>
#include <lualib.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static lua_State *L;

static void setup(void)
{
    L = luaL_newstate();
    luaL_openlibs(L);
    lua_kumo_open(L);
    lua_setglobal(L, "kumo");
    lua_message_register(L);
}

static void teardown(void)
{
    lua_close(L);
}

TestSuite(lua_message, .init = setup, .fini = teardown);

/* Run code as the chunk "policy.lua"; its results stay on the stack. */
static int run(const char *code)
{
    int top = lua_gettop(L);
    int rc = luaL_loadbuffer(L, code, strlen(code), "@policy.lua");
    if (rc == LUA_OK)
        rc = lua_pcall(L, 0, LUA_MULTRET, 0);
    cr_assert_eq(rc, LUA_OK, "%s\nfailed: %s", code, lua_tostring(L, -1));
    return lua_gettop(L) - top;
}

static const char *eval(const char *code)
{
    cr_assert_eq(run(code), 1, "%s: expected one result", code);
    cr_assert_eq(lua_type(L, -1), LUA_TSTRING, "%s: got a %s", code, luaL_typename(L, -1));
    return lua_tostring(L, -1);
}

static bool eval_bool(const char *code)
{
    cr_assert_eq(run(code), 1, "%s: expected one result", code);
    cr_assert_eq(lua_type(L, -1), LUA_TBOOLEAN, "%s: got a %s", code, luaL_typename(L, -1));
    bool b = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return b;
}

static const char *eval_error(const char *code)
{
    int rc = luaL_loadbuffer(L, code, strlen(code), "@policy.lua");
    if (rc == LUA_OK)
        rc = lua_pcall(L, 0, 0, 0);
    cr_assert_neq(rc, LUA_OK, "%s: expected an error", code);
    return lua_tostring(L, -1);
}

/* The string at idx, or NULL when it is nil. */
static const char *opt_string(int idx)
{
    if (lua_isnil(L, idx))
        return NULL;
    cr_assert_eq(lua_type(L, idx), LUA_TSTRING, "got a %s", luaL_typename(L, idx));
    return lua_tostring(L, idx);
}

static void expect_opt_str(int idx, const char *want, const char *what, int record)
{
    const char *got = opt_string(idx);
    if (!want)
        cr_expect_null(got, "record %d: %s: expected nil, got %s", record, what, got);
    else
        cr_expect(got && strcmp(got, want) == 0, "record %d: %s: expected %s, got %s", record, what,
                  want, got ? got : "nil");
}

static struct message_source source_of(const char *line)
{
    return (struct message_source){
        .data = line,
        .len = strlen(line),
        .segment = "20250912-110801.440526026",
        .start = 0,
        .end = strlen(line),
        .relay_id = "relay-a",
        .default_queue = "nats",
    };
}

/* Push a message for src and bind it to the global `message`. */
static void bind_message(const struct message_source *src)
{
    lua_message_push(L, src);
    lua_setglobal(L, "message");
}

/* ---- the sample records ---- */

static char **read_samples(size_t *count)
{
    FILE *f = fopen(SHARED_DIR "/kumomta/samples.jsonl", "r");
    cr_assert_not_null(f);
    char **lines = NULL, *line = NULL;
    size_t cap = 0;
    *count = 0;
    while (getline(&line, &cap, f) > 0) {
        lines = xrealloc(lines, (*count + 1) * sizeof(*lines));
        lines[(*count)++] = xstrdup(line);
    }
    free(line);
    fclose(f);
    return lines;
}

static void free_samples(char **lines, size_t count)
{
    for (size_t i = 0; i < count; i++)
        free(lines[i]);
    free(lines);
}

/* Top-level members that are not null, counted by jansson: what pairs(log_record) sees. */
static int count_non_null(const char *line)
{
    json_t *root = json_loads(line, 0, NULL);
    cr_assert_not_null(root);
    const char *key;
    json_t *value;
    int n = 0;
    json_object_foreach(root, key, value) n += !json_is_null(value);
    json_decref(root);
    return n;
}

static const struct {
    const char *type, *sender, *sender_user, *sender_domain, *recipient, *queue;
    int code;
} expected[] = {
    {"Reception", "test@example.com", "test", "example.com", "test@example.com", "example.com",
     250},
    {"Reception", "wez@example.com", "wez", "example.com", "wez@example.com.org", "example.com.org",
     250},
    {"Reception", "noreply@example.com", "noreply", "example.com", "recipient@example.com",
     "example.com", 250},
    {"Reception", "test@test.com", "test", "test.com", "mmiihhww09@gmail.com", "default@gmail.com",
     250},
    {"Delivery", "user@sender.example.com", "user", "sender.example.com",
     "user@recipient.example.com", "campaign:tenant@domain", 250},
    {"Delivery", "user@sender.example.com", "user", "sender.example.com",
     "user@recipient.example.com", "campaign:tenant@domain", 250},
    {"Feedback", NULL, NULL, NULL, NULL, NULL, 0},
};

static const char *const per_record =
    "local r = message:get_meta('log_record')\n"
    "local s, rc = message:sender(), message:recipient()\n"
    "local keys = 0 for _ in pairs(r) do keys = keys + 1 end\n"
    "return r.type, s and s.email, s and s.user, s and s.domain, rc and rc.email,\n"
    "  rc and tostring(rc), r.queue, r.response and r.response.code,\n"
    "  r.response and math.type(r.response.code), #message:recipient_list(),\n"
    "  message:get_meta('reception_protocol'), message:queue_name(), message:num_attempts(),\n"
    "  message:get_data(), keys, message:get_meta('log_record') == r,\n"
    "  r.egress_pool == nil and r.response and r.response.enhanced_code == nil";

Test(lua_message, every_method_on_every_sample)
{
    size_t count;
    char **lines = read_samples(&count);
    cr_assert_eq(count, sizeof(expected) / sizeof(expected[0]));
    for (size_t i = 0; i < count; i++) {
        int rec = (int)i + 1;
        struct message_source src = source_of(lines[i]);
        bind_message(&src);
        cr_assert_eq(run(per_record), 17);
        expect_opt_str(-17, expected[i].type, "type", rec);
        expect_opt_str(-16, expected[i].sender, "sender().email", rec);
        expect_opt_str(-15, expected[i].sender_user, "sender().user", rec);
        expect_opt_str(-14, expected[i].sender_domain, "sender().domain", rec);
        expect_opt_str(-13, expected[i].recipient, "recipient().email", rec);
        expect_opt_str(-12, expected[i].recipient, "tostring(recipient())", rec);
        expect_opt_str(-11, expected[i].queue, "log_record.queue", rec);
        cr_expect_eq(lua_tointeger(L, -10), expected[i].code, "record %d: response.code", rec);
        expect_opt_str(-9, expected[i].code ? "integer" : NULL, "math.type(code)", rec);
        cr_expect_eq(lua_tointeger(L, -8), expected[i].recipient ? 1 : 0, "record %d", rec);
        expect_opt_str(-7, "LogRecord", "reception_protocol", rec);
        expect_opt_str(-6, "nats", "queue_name()", rec);
        cr_expect_eq(lua_tointeger(L, -5), 0, "record %d: num_attempts", rec);
        expect_opt_str(-4, lines[i], "get_data()", rec);
        cr_expect_eq(lua_tointeger(L, -3), count_non_null(lines[i]),
                     "record %d: null members are absent", rec);
        cr_expect(lua_toboolean(L, -2), "record %d: log_record is parsed once and cached", rec);
        /* Records 1-4 have egress_pool and enhanced_code null; 5-6 have both set. */
        cr_expect_eq(lua_toboolean(L, -1), i < 4, "record %d: null fields read as nil", rec);
        lua_settop(L, 0);
    }
    free_samples(lines, count);
}

Test(lua_message, nested_fields_of_samples)
{
    size_t count;
    char **lines = read_samples(&count);
    struct message_source src = source_of(lines[4]);
    bind_message(&src);
    cr_assert_eq(run("local r = message:get_meta('log_record')\n"
                     "return r.response.enhanced_code.class, r.peer_address.addr,\n"
                     "  r.tls_peer_subject_name[6], #r.tls_peer_subject_name, r.bogus == nil,\n"
                     "  r.source_address.protocol, next(r.meta) == nil"),
                 7);
    cr_expect_eq(lua_tointeger(L, -7), 2);
    cr_expect_str_eq(lua_tostring(L, -6), "142.251.2.27");
    cr_expect_str_eq(lua_tostring(L, -5), "CN=do.havedane.net");
    cr_expect_eq(lua_tointeger(L, -4), 8);
    cr_expect(lua_toboolean(L, -3), "\"bogus\":null is absent");
    cr_expect_str_eq(lua_tostring(L, -2), "socks5");
    cr_expect(lua_toboolean(L, -1), "meta {} is an empty table");
    lua_settop(L, 0);

    src = source_of(lines[6]);
    bind_message(&src);
    cr_assert_eq(run("local f = message:get_meta('log_record').feedback_report\n"
                     "return f.feedback_type, f.incidents == nil, f.reporting_mta.name,\n"
                     "  f.extensions['removal-recipient'][1], message:sender() == nil,\n"
                     "  message:recipient() == nil, f.original_message:sub(1, 31)"),
                 7);
    cr_expect_str_eq(lua_tostring(L, -7), "abuse");
    cr_expect(lua_toboolean(L, -6));
    cr_expect_str_eq(lua_tostring(L, -5), "mail.example.com");
    cr_expect_str_eq(lua_tostring(L, -4), "user@example.com");
    cr_expect(lua_toboolean(L, -3) && lua_toboolean(L, -2), "Feedback has no envelope");
    cr_expect_str_eq(lua_tostring(L, -1), "From: <somesender@example.net>\n");
    free_samples(lines, count);
}

/* ---- id ---- */

static char *id_of(const struct message_source *src)
{
    bind_message(src);
    char *id = xstrdup(eval("return message:id()"));
    lua_pop(L, 1);
    return id;
}

Test(lua_message, id_is_deterministic)
{
    const char *line = "{\"type\":\"Reception\"}\n";
    struct message_source src = source_of(line);
    char *id = id_of(&src);
    cr_expect_eq(strlen(id), 32);
    cr_expect_eq(strspn(id, "0123456789abcdef"), 32, "lowercase hex: %s", id);
    char *again = id_of(&src);
    cr_expect_str_eq(again, id, "same record, same id");
    src.end++;
    char *other_end = id_of(&src);
    src.end--;
    src.segment = "20250912-110801.440526027";
    char *other_segment = id_of(&src);
    src.segment = "20250912-110801.440526026";
    src.relay_id = "relay-b";
    char *other_relay = id_of(&src);
    cr_expect_str_neq(other_end, id);
    cr_expect_str_neq(other_segment, id);
    cr_expect_str_neq(other_relay, id);
    cr_expect_str_neq(other_end, other_segment);
    free(id);
    free(again);
    free(other_end);
    free(other_segment);
    free(other_relay);
}

/* ---- envelope ---- */

Test(lua_message, recipient_array)
{
    const char *line = "{\"type\":\"Delivery\",\"sender\":\"postmaster\","
                       "\"recipient\":[\"a@x.com\",5,\"b@y.org\"]}\n";
    struct message_source src = source_of(line);
    bind_message(&src);
    cr_assert_eq(run("local s, r, l = message:sender(), message:recipient(), "
                     "message:recipient_list()\n"
                     "return s.user, s.domain, tostring(s), r[2].email, #l, l[1].domain,\n"
                     "  tostring(l[2]), l[2].user"),
                 8);
    cr_expect_str_eq(lua_tostring(L, -8), "postmaster");
    cr_expect_str_eq(lua_tostring(L, -7), "", "no '@': the domain is empty");
    cr_expect_str_eq(lua_tostring(L, -6), "postmaster");
    /* kumod's Message:recipient() returns the list for several (crates/message/src/message.rs) */
    cr_expect_str_eq(lua_tostring(L, -5), "b@y.org", "recipient() is the list");
    cr_expect_eq(lua_tointeger(L, -4), 2, "non-string elements are skipped");
    cr_expect_str_eq(lua_tostring(L, -3), "x.com");
    cr_expect_str_eq(lua_tostring(L, -2), "b@y.org");
    cr_expect_str_eq(lua_tostring(L, -1), "b");
}

Test(lua_message, envelope_edge_cases)
{
    const char *line = "{\"sender\":\"\\\"a@b\\\"@ex.com\",\"recipient\":[]}\n";
    struct message_source src = source_of(line);
    bind_message(&src);
    cr_assert_eq(run("local s = message:sender()\n"
                     "return s.user, s.domain, message:recipient() == nil,"
                     " #message:recipient_list()"),
                 4);
    cr_expect_str_eq(lua_tostring(L, -4), "\"a@b\"", "the domain is after the last '@'");
    cr_expect_str_eq(lua_tostring(L, -3), "ex.com");
    cr_expect(lua_toboolean(L, -2));
    cr_expect_eq(lua_tointeger(L, -1), 0);
    lua_settop(L, 0);

    line = "{\"sender\":null,\"recipient\":42}\n";
    src = source_of(line);
    bind_message(&src);
    cr_expect(eval_bool("return message:sender() == nil and message:recipient() == nil and"
                        " #message:recipient_list() == 0"));
}

/* A per-record template can write anything: only the JSON parts come back nil. */
Test(lua_message, line_that_is_not_json)
{
    const char *line = "Delivery user@example.com 250 OK\n";
    struct message_source src = source_of(line);
    bind_message(&src);
    cr_assert_eq(run("return message:get_data(), message:get_meta('log_record') == nil,\n"
                     "  message:sender() == nil, #message:recipient_list(),\n"
                     "  message:get_meta('reception_protocol'), message:queue_name()"),
                 6);
    cr_expect_str_eq(lua_tostring(L, -6), line);
    cr_expect(lua_toboolean(L, -5));
    cr_expect(lua_toboolean(L, -4));
    cr_expect_eq(lua_tointeger(L, -3), 0);
    cr_expect_str_eq(lua_tostring(L, -2), "LogRecord");
    cr_expect_str_eq(lua_tostring(L, -1), "nats");
}

/* ---- meta, data, queue, attempts ---- */

Test(lua_message, meta_and_data)
{
    const char *line = "{\"type\":\"Reception\",\"queue\":\"example.com\"}\n";
    struct message_source src = source_of(line);
    src.default_queue = NULL;
    bind_message(&src);
    lua_getglobal(L, "message");
    size_t len;
    cr_expect_null(lua_message_queue(L, -1), "no queue meta yet");
    cr_expect_str_eq(lua_message_data(L, -1, &len), line);
    cr_expect_eq(len, strlen(line));
    cr_expect(eval_bool("return message:queue_name() == nil and message:get_meta('x') == nil"));

    cr_assert_eq(run("message:set_meta('queue', 'nats-q')\n"
                     "message:set_meta('list', {1, 2})\n"
                     "message:set_meta('reception_protocol', 'Mine')\n"
                     "message:set_data('new data')\n"
                     "return message:queue_name(), message:get_meta('list')[2],\n"
                     "  message:get_meta('reception_protocol'), message:get_data(),\n"
                     "  message:get_meta('log_record').queue"),
                 5);
    cr_expect_str_eq(lua_tostring(L, -5), "nats-q");
    cr_expect_eq(lua_tointeger(L, -4), 2);
    cr_expect_str_eq(lua_tostring(L, -3), "Mine");
    cr_expect_str_eq(lua_tostring(L, -2), "new data");
    cr_expect_str_eq(lua_tostring(L, -1), "example.com", "log_record is the original record");
    lua_pop(L, 5);
    cr_expect_str_eq(lua_message_queue(L, -1), "nats-q");
    cr_expect_str_eq(lua_message_data(L, -1, &len), "new data");
    cr_expect_eq(len, 8);

    lua_message_set_attempts(L, -1, 3);
    cr_expect(eval_bool("return message:num_attempts() == 3"));
    cr_expect(eval_bool("message:set_meta('log_record', 'replaced')\n"
                        "return message:get_meta('log_record') == 'replaced'"));
    cr_expect(eval_bool("message:set_meta('queue', nil) return message:queue_name() == nil"));
    cr_expect_null(lua_message_queue(L, -1));
}

/* kumod builds the hook's message from the record's meta (crates/kumod/src/logging/
 * hooks.rs: Message::new_dirty(..., record.meta, ...)), so get_meta reads it; set_meta
 * wins over it. */
Test(lua_message, get_meta_reads_the_record_meta)
{
    const char *line = "{\"type\":\"Delivery\",\"meta\":{\"tenant\":\"acme\",\"campaign\":"
                       "\"spring\",\"n\":3,\"list\":[1,[]],\"gone\":null}}\n";
    struct message_source src = source_of(line);
    bind_message(&src);
    cr_expect(
        eval_bool("return message:get_meta('tenant') == 'acme' and\n"
                  "  message:get_meta('campaign') == 'spring' and\n"
                  "  message:get_meta('n') == 3 and math.type(message:get_meta('n')) == "
                  "'integer' and\n"
                  "  message:get_meta('gone') == nil and message:get_meta('nope') == nil and\n"
                  "  kumo.serde.json_encode(message:get_meta('list')) == '[1,[]]'"));
    cr_expect(eval_bool("message:set_meta('tenant', 'other')\n"
                        "return message:get_meta('tenant') == 'other'"));
    lua_settop(L, 0);

    line = "{\"type\":\"Delivery\",\"meta\":\"not an object\"}\n";
    src = source_of(line);
    bind_message(&src);
    cr_expect(eval_bool("return message:get_meta('tenant') == nil"));
}

/* A member read is made raw in the lazy table: whatever the policy does to it afterwards
 * (change it, remove it, set it again, read it once removed, then see the table whole),
 * the lazy record reads as the table json_parse makes of the same line. Keys read: more
 * than the table makes raw, duplicates (the last wins; a null one removes), escaped. */
static const char *const changes =
    "local function trace(r)\n"
    "  local out = {}\n"
    "  local function see(...)\n"
    "    for i = 1, select('#', ...) do out[#out + 1] = tostring((select(i, ...))) end\n"
    "  end\n"
    "  see(r.type, r.a, r.b, r.type, r.c, r.d, r.e, r.f, r.g, r.h, r.a, r.h, r.dup, r.gone)\n"
    "  r.type = 'changed' see(r.type)\n"
    "  r.a = nil see(r.a, r.a, r.b)\n"
    "  r.b = nil r.b = 'again' see(r.b, r.type, r.a)\n"
    "  see(rawget(r, 'a'), rawget(r, 'type'), #r, kumo.serde.json_encode(r))\n"
    "  return table.concat(out, ' ')\n"
    "end\n"
    "local function trace2(r)\n"
    "  local out = {}\n"
    "  out[1] = tostring(r.type) .. tostring(r.e)\n"
    "  r.e = nil\n"
    "  for k, v in pairs(r) do out[#out + 1] = k .. '=' .. tostring(v) end\n"
    "  table.sort(out)\n"
    "  return table.concat(out, ' ')\n"
    "end\n"
    "local e1, e2 = kumo.serde.json_parse(message:get_data()), "
    "kumo.serde.json_parse(message:get_data())\n"
    "local lazy = trace(message:get_meta('log_record'))\n"
    "message:set_meta('log_record', nil)\n"
    "return lazy, trace(e1), trace2(kumo.serde.json_parse(message:get_data())), trace2(e2)";

Test(lua_message, member_read_then_changed)
{
    const char *line = "{\"type\":\"Delivery\",\"a\":1,\"b\":\"x\",\"c\":true,\"d\":1.5,"
                       "\"e\":\"e\",\"f\":\"f\",\"g\":\"g\",\"h\":\"h\",\"dup\":1,"
                       "\"d\\u0075p\":2,\"gone\":3,\"gone\":null,\"t\\u0079pe\":\"Last\"}\n";
    struct message_source src = source_of(line);
    bind_message(&src);
    cr_assert_eq(run(changes), 4);
    cr_log_info("%s | %s", lua_tostring(L, -4), lua_tostring(L, -2));
    cr_expect_str_eq(lua_tostring(L, -4), lua_tostring(L, -3));
    cr_expect_str_eq(lua_tostring(L, -2), lua_tostring(L, -1));
    lua_pop(L, 4);
    /* trace2 on the lazy table: a member read, removed, then the table walked. */
    bind_message(&src);
    cr_assert_eq(run("local r = message:get_meta('log_record')\n"
                     "local out = { tostring(r.type) .. tostring(r.e) }\n"
                     "r.e = nil\n"
                     "for k, v in pairs(r) do out[#out + 1] = k .. '=' .. tostring(v) end\n"
                     "table.sort(out)\n"
                     "return table.concat(out, ' ')"),
                 1);
    cr_expect_str_eq(lua_tostring(L, -1), "Laste a=1 b=x c=true d=1.5 dup=2 f=f g=g h=h type=Last");
}

/* 'queue' and 'log_record' are kept apart from the other meta (user values of the
 * message): unset, or set to nil, they read through to the record's meta as any key does;
 * any other value, false included, is what get_meta and queue_name give. */
Test(lua_message, queue_and_log_record_meta_read_as_any_meta)
{
    const char *line = "{\"type\":\"Delivery\",\"meta\":{\"queue\":\"from-meta\","
                       "\"log_record\":\"m\"}}\n";
    struct message_source src = source_of(line);
    src.default_queue = "default";
    bind_message(&src);
    cr_expect(eval_bool("return message:get_meta('queue') == 'from-meta' and\n"
                        "  message:queue_name() == 'default' and\n"
                        "  message:get_meta('log_record').type == 'Delivery'"));
    lua_getglobal(L, "message");
    cr_expect_null(lua_message_queue(L, -1));
    lua_pop(L, 1);
    cr_expect(eval_bool("message:set_meta('queue', false)\n"
                        "message:set_meta('log_record', nil)\n"
                        "return message:get_meta('queue') == false and\n"
                        "  message:queue_name() == false and\n"
                        "  message:get_meta('log_record') == 'm'"));
    lua_getglobal(L, "message");
    cr_expect_null(lua_message_queue(L, -1), "a queue that is not a string is no queue");
    lua_pop(L, 1);
    cr_expect(eval_bool("message:set_meta('queue', 'q')\n"
                        "local r = { type = 'mine' }\n"
                        "message:set_meta('log_record', r)\n"
                        "return message:get_meta('queue') == 'q' and message:queue_name() == 'q'\n"
                        "  and message:get_meta('log_record') == r"));
    lua_getglobal(L, "message");
    cr_expect_str_eq(lua_message_queue(L, -1), "q");
    lua_pop(L, 1);
    cr_expect(eval_bool("message:set_meta('queue', nil)\n"
                        "return message:get_meta('queue') == 'from-meta' and\n"
                        "  message:queue_name() == 'default'"));
}

/* set_meta('log_record', nil) before the first read: the record is not parsed behind it. */
Test(lua_message, log_record_set_before_read)
{
    const char *line = "{\"type\":\"Reception\"}\n";
    struct message_source src = source_of(line);
    bind_message(&src);
    cr_expect(eval_bool("message:set_meta('log_record', nil)\n"
                        "return message:get_meta('log_record') == nil"));
}

Test(lua_message, type_checks)
{
    const char *line = "{}\n";
    struct message_source src = source_of(line);
    lua_message_push(L, &src);
    cr_expect(lua_message_check(L, -1));
    lua_newtable(L);
    cr_expect(!lua_message_check(L, -1));
    lua_pushnil(L);
    cr_expect(!lua_message_check(L, -1));
    lua_getglobal(L, "io");
    lua_getfield(L, -1, "stdout");
    cr_expect(!lua_message_check(L, -1), "another userdata");
    lua_settop(L, 0);
    bind_message(&src);
    cr_expect(eval_bool("return getmetatable(message) == false"), "the metatable is private");
    cr_expect_str_eq(eval_error("message.get_data({})"),
                     "policy.lua:1: bad argument #1 to 'get_data' (kumo.Message expected, got "
                     "table)");
    cr_expect_str_eq(eval_error("message:get_meta()"),
                     "policy.lua:1: bad argument #1 to 'get_meta' (string expected, got no value)");
}

/* ---- lifetime ---- */

Test(lua_message, detached_message_refuses_use)
{
    const char *line = "{\"type\":\"Reception\",\"sender\":\"a@b.c\"}\n";
    struct message_source src = source_of(line);
    bind_message(&src);
    run("kept = message");
    lua_getglobal(L, "message");
    lua_message_detach(L, -1);
    size_t len = 99;
    cr_expect_null(lua_message_data(L, -1, &len));
    cr_expect_eq(len, 0);
    lua_pop(L, 1);
    static const char *const uses[] = {
        "kept:get_data()",
        "kept:set_data('x')",
        "kept:get_meta('log_record')",
        "kept:set_meta('a', 1)",
        "kept:id()",
        "kept:sender()",
        "kept:recipient()",
        "kept:recipient_list()",
        "kept:queue_name()",
        "kept:num_attempts()",
    };
    for (size_t i = 0; i < sizeof(uses) / sizeof(uses[0]); i++) {
        cr_expect_str_eq(eval_error(uses[i]), "policy.lua:1: message used after its hook returned",
                         "%s", uses[i]);
        lua_pop(L, 1);
    }
}

/* A pinned message owns its data: the record buffer and source strings can go away. */
Test(lua_message, pinned_message_outlives_its_buffer)
{
    const char *text = "{\"type\":\"Delivery\",\"sender\":\"s@x.org\",\"recipient\":\"r@y.org\"}\n";
    char *line = xstrdup(text);
    char *segment = xstrdup("20250912-110801.440526026");
    char *queue = xstrdup("nats");
    struct message_source src = source_of(line);
    src.segment = segment;
    src.default_queue = queue;
    char *id_before = id_of(&src);

    bind_message(&src);
    lua_getglobal(L, "message");
    lua_message_pin(L, -1);
    lua_message_pin(L, -1); /* twice is harmless */
    memset(line, 'X', strlen(line));
    memset(segment, 'X', strlen(segment));
    memset(queue, 'X', strlen(queue));
    free(line);
    free(segment);
    free(queue);
    lua_message_detach(L, -1); /* a pinned message is not detached */
    lua_pop(L, 1);

    cr_assert_eq(run("return message:get_data(), message:id(), message:queue_name(),\n"
                     "  message:recipient().email, message:get_meta('log_record').type"),
                 5);
    cr_expect_str_eq(lua_tostring(L, -5), text);
    cr_expect_str_eq(lua_tostring(L, -4), id_before, "pinning keeps the id");
    cr_expect_str_eq(lua_tostring(L, -3), "nats");
    cr_expect_str_eq(lua_tostring(L, -2), "r@y.org");
    cr_expect_str_eq(lua_tostring(L, -1), "Delivery");
    free(id_before);
}

/* Many messages, some pinned, all collected: valgrind sees no leak. */
Test(lua_message, garbage_collection)
{
    const char *line = "{\"type\":\"Reception\",\"recipient\":[\"a@b\",\"c@d\"]}\n";
    struct message_source src = source_of(line);
    for (int i = 0; i < 1000; i++) {
        src.end = (uint64_t)i;
        lua_message_push(L, &src);
        if (i % 2)
            lua_message_pin(L, -1);
        else
            lua_message_detach(L, -1);
        lua_setglobal(L, "message");
        if (i % 2)
            run("message:set_meta('x', message:recipient_list()) message:get_meta('log_record')");
    }
    lua_pushnil(L);
    lua_setglobal(L, "message");
    lua_gc(L, LUA_GCCOLLECT);
    cr_expect_eq(lua_gettop(L), 0);
}
