/* The `kumo` module: serde round trips and edge cases, reject, make_queue_config and its
 * error texts, durations, the string helpers and the log prefix. */
#include "log.h"
#include "lua_json.h"
#include "lua_kumo.h"
#include "xalloc.h"

#include "../lua_same.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <lauxlib.h>
#include <lualib.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static lua_State *L;

static void setup(void)
{
    L = luaL_newstate();
    luaL_openlibs(L);
    lua_kumo_open(L);
    lua_setglobal(L, "kumo");
}

static void teardown(void)
{
    lua_close(L);
    log_set_level(LOG_LEVEL_INFO);
}

TestSuite(lua_kumo, .init = setup, .fini = teardown);

/* Run code as the chunk "policy.lua"; its results stay on the stack (so returned strings
 * stay valid for the test). Returns how many there are. */
static int run(const char *code)
{
    int top = lua_gettop(L);
    int rc = luaL_loadbuffer(L, code, strlen(code), "@policy.lua");
    if (rc == LUA_OK)
        rc = lua_pcall(L, 0, LUA_MULTRET, 0);
    cr_assert_eq(rc, LUA_OK, "%s\nfailed: %s", code, lua_tostring(L, -1));
    return lua_gettop(L) - top;
}

/* The one string result of code. */
static const char *eval(const char *code)
{
    cr_assert_eq(run(code), 1, "%s: expected one result", code);
    cr_assert_eq(lua_type(L, -1), LUA_TSTRING, "%s: got a %s", code, luaL_typename(L, -1));
    return lua_tostring(L, -1);
}

/* The error code raises, as text; the error value stays on the stack below the text. */
static const char *eval_error(const char *code)
{
    int rc = luaL_loadbuffer(L, code, strlen(code), "@policy.lua");
    if (rc == LUA_OK)
        rc = lua_pcall(L, 0, 0, 0);
    cr_assert_neq(rc, LUA_OK, "%s: expected an error", code);
    return luaL_tolstring(L, -1, NULL);
}

static void expect_error(const char *code, const char *message)
{
    cr_expect_str_eq(eval_error(code), message, "%s", code);
}

/* ---- json_encode ---- */

static void expect_encode(const char *lua_expr, const char *json)
{
    char *code = xasprintf("return kumo.serde.json_encode(%s)", lua_expr);
    cr_expect_str_eq(eval(code), json, "json_encode(%s)", lua_expr);
    free(code);
}

Test(lua_kumo, json_encode_scalars)
{
    expect_encode("nil", "null");
    expect_encode("true", "true");
    expect_encode("false", "false");
    expect_encode("42", "42");
    expect_encode("-7", "-7");
    expect_encode("math.maxinteger", "9223372036854775807");
    expect_encode("1.5", "1.5");
    expect_encode("1.0", "1.0");
    expect_encode("-0.0", "-0.0");
    expect_encode("0.1", "0.1");
    expect_encode("1/3", "0.33333333333333331");
    expect_encode("2^53", "9007199254740992.0");
    expect_encode("1e300", "1e+300");
    expect_encode("'plain'", "\"plain\"");
    expect_encode("'a\"b\\\\c\\n\\t\\r\\b\\f\\1\\31/'",
                  "\"a\\\"b\\\\c\\n\\t\\r\\b\\f\\u0001\\u001f/\"");
    expect_encode("'h\\195\\169 \\226\\130\\172 \\240\\159\\152\\128'",
                  "\"h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
    expect_encode("'nul\\0inside'", "\"nul\\u0000inside\"");
}

Test(lua_kumo, json_encode_tables)
{
    expect_encode("{}", "{}");
    /* Tables parsed from JSON arrays stay arrays, empty or with holes, as mlua marks them
     * (crates/mod-serde/src/lib.rs: lua.to_value_with) */
    expect_encode("kumo.serde.json_parse('[]')", "[]");
    expect_encode("kumo.serde.json_parse('{\"a\":[],\"b\":{},\"c\":[1,null,3],\"d\":[null]}')",
                  "{\"a\":[],\"b\":{},\"c\":[1,null,3],\"d\":[]}"); /* a Lua table keeps no
                                                                 trailing nil */
    expect_encode("kumo.serde.json_parse('[[],[[]]]')", "[[],[[]]]");
    expect_encode("(function() local t = kumo.serde.json_parse('[]') t.x = 1 return t end)()",
                  "{\"x\":1}");
    expect_encode("{1, 2, 3}", "[1,2,3]");
    expect_encode("{'a', {}, {'b'}}", "[\"a\",{},[\"b\"]]");
    expect_encode("{b = 1, a = {x = true, y = {}}}", "{\"a\":{\"x\":true,\"y\":{}},\"b\":1}");
    expect_encode("{1, 2, x = 3}", "{\"1\":1,\"2\":2,\"x\":3}");
    expect_encode("{[1] = 1, [3] = 3}", "{\"1\":1,\"3\":3}");
    expect_encode("{[0] = 'z', [1] = 'o'}", "{\"0\":\"z\",\"1\":\"o\"}");
    expect_encode("{[1.5] = 'f'}", "{\"1.5\":\"f\"}");
    expect_encode("{b = 1, B = 2, a = 3, ['10'] = 4, ['9'] = 5}",
                  "{\"10\":4,\"9\":5,\"B\":2,\"a\":3,\"b\":1}");
    /* The same table twice is not a cycle. */
    cr_expect_str_eq(eval("local t = {1} return kumo.serde.json_encode({t, t})"), "[[1],[1]]");
}

Test(lua_kumo, json_encode_errors)
{
    expect_error("return kumo.serde.json_encode('\\255')",
                 "policy.lua:1: json_encode: string is not valid UTF-8");
    expect_error("return kumo.serde.json_encode('\\192\\128')", /* overlong NUL */
                 "policy.lua:1: json_encode: string is not valid UTF-8");
    expect_error("return kumo.serde.json_encode('\\237\\160\\128')", /* a surrogate */
                 "policy.lua:1: json_encode: string is not valid UTF-8");
    expect_error("return kumo.serde.json_encode('\\226\\130')", /* truncated */
                 "policy.lua:1: json_encode: string is not valid UTF-8");
    expect_error("return kumo.serde.json_encode({['\\255'] = 1})",
                 "policy.lua:1: json_encode: string is not valid UTF-8");
    expect_error("local t = {} t.self = t return kumo.serde.json_encode(t)",
                 "policy.lua:1: json_encode: cycle in table");
    expect_error("local t = {} t[1] = {{t}} return kumo.serde.json_encode(t)",
                 "policy.lua:1: json_encode: cycle in table");
    expect_error("return kumo.serde.json_encode({f = print})",
                 "policy.lua:1: json_encode: cannot encode a function");
    expect_error("return kumo.serde.json_encode(0/0)",
                 "policy.lua:1: json_encode: cannot encode NaN or infinity");
    expect_error("return kumo.serde.json_encode({math.huge})",
                 "policy.lua:1: json_encode: cannot encode NaN or infinity");
    expect_error("return kumo.serde.json_encode({[true] = 1})",
                 "policy.lua:1: json_encode: cannot use a boolean as an object key");
}

Test(lua_kumo, json_encode_depth_limit)
{
    const char *nest =
        "local function nest(n) local t = {} for i = 2, n do t = {t} end return t end ";
    char *code = xasprintf("%s return kumo.serde.json_encode(nest(128))", nest);
    const char *json = eval(code);
    cr_expect_eq(strlen(json), 127 * 2 + 2, "127 arrays around one {}");
    free(code);
    code = xasprintf("%s return kumo.serde.json_encode(nest(129))", nest);
    cr_expect_str_eq(eval_error(code), "policy.lua:1: json_encode: tables nested deeper than 128");
    free(code);
}

/* ---- json_parse ---- */

Test(lua_kumo, json_parse_values)
{
    int n =
        run("local t = kumo.serde.json_parse("
            "'{\"a\":1,\"b\":1.5,\"c\":\"x\",\"d\":null,\"e\":[1,null,3],\"f\":{},\"g\":true}')\n"
            "local keys = 0 for _ in pairs(t) do keys = keys + 1 end\n"
            "return math.type(t.a), math.type(t.b), t.c, t.d == nil, t.e[1], t.e[2] == nil,\n"
            "  t.e[3], next(t.f) == nil, t.g, keys");
    cr_assert_eq(n, 10);
    cr_expect_str_eq(lua_tostring(L, -10), "integer");
    cr_expect_str_eq(lua_tostring(L, -9), "float");
    cr_expect_str_eq(lua_tostring(L, -8), "x");
    cr_expect(lua_toboolean(L, -7), "null member is nil");
    cr_expect_eq(lua_tointeger(L, -6), 1);
    cr_expect(lua_toboolean(L, -5), "null element is a hole");
    cr_expect_eq(lua_tointeger(L, -4), 3);
    cr_expect(lua_toboolean(L, -3), "{} is an empty table");
    cr_expect(lua_toboolean(L, -2));
    cr_expect_eq(lua_tointeger(L, -1), 6, "the null member is no key at all");
}

Test(lua_kumo, json_parse_scalars)
{
    cr_assert_eq(run("return kumo.serde.json_parse('123'), kumo.serde.json_parse('\"s\\\\u00e9\"'),"
                     " kumo.serde.json_parse('null'), kumo.serde.json_parse(' -2.5e3 ')"),
                 4);
    cr_expect(lua_isinteger(L, -4));
    cr_expect_eq(lua_tointeger(L, -4), 123);
    cr_expect_str_eq(lua_tostring(L, -3), "s\xc3\xa9");
    cr_expect(lua_isnil(L, -2));
    cr_expect_eq(lua_tonumber(L, -1), -2500.0);
    cr_expect_str_eq(eval("return kumo.serde.json_parse('\"a\\\\u0000b\"')"), "a");
    cr_expect_eq(lua_rawlen(L, -1), 3, "an escaped NUL stays in the string");
}

Test(lua_kumo, json_parse_errors)
{
    expect_error("return kumo.serde.json_parse('{\"a\":')",
                 "policy.lua:1: json_parse: unexpected token near end of file at line 1 column 5");
    expect_error("return kumo.serde.json_parse('[1,2')",
                 "policy.lua:1: json_parse: ']' expected near end of file at line 1 column 4");
    expect_error("return kumo.json_parse('{\"a\":1}\\nx')",
                 "policy.lua:1: json_parse: end of file expected near 'x' at line 2 column 1");
}

/* The direct parser against jansson's: the same values, or the same error text. */
static void expect_same_as_jansson(const char *text, size_t len)
{
    char *direct_err = NULL, *ref_err = NULL;
    int top = lua_gettop(L);
    int ref = lua_json_push_reference(L, text, len, &ref_err);
    int direct = lua_json_push(L, text, len, &direct_err);
    cr_expect_eq(direct, ref, "%.*s: direct %d, jansson %d", (int)len, text, direct, ref);
    if (direct == 0 && ref == 0)
        cr_expect(lua_same(L, -1, -2), "%.*s: other values than jansson's", (int)len, text);
    if (direct != 0 && ref != 0)
        cr_expect_str_eq(direct_err, ref_err, "%.*s", (int)len, text);
    free(direct_err);
    free(ref_err);
    lua_settop(L, top);
}

Test(lua_kumo, json_parse_direct_matches_jansson)
{
    static const char *const texts[] = {
        "{}",
        "[]",
        " {\"a\" : [ 1 , 2.5 , -0 , -0.0 , 1e3 , 1E-3 , 0.1 ] } ",
        "\"\"",
        "{\"a\":null,\"a\":1}",
        "{\"a\":1,\"a\":null}",
        "[null,null,3,null]",
        "{\"k\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\u20ac\\ud83d\\ude00\"}",
        "\"\\u0000x\"",
        "{\"\\u0000\":1}",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "\"\\ud800\\u0041\"",
        "\"\\u12\"",
        "\"\\x\"",
        "\"caf\xc3\xa9\"",
        "\"\xc3\"",
        "\"\xc0\xaf\"",
        "\"\xed\xa0\x80\"",
        "\"\xf4\x90\x80\x80\"",
        "\"tab\there\"",
        "9223372036854775807",
        "-9223372036854775808",
        "9223372036854775808",
        "-9223372036854775809",
        "123456789012345678901234567890",
        "1e400",
        "-1e400",
        "1e-400",
        "01",
        "1.",
        ".5",
        "-",
        "+1",
        "1e",
        "1e+",
        "--1",
        "tru",
        "true",
        "false",
        "null",
        "nul",
        "truex",
        "[1,]",
        "{\"a\":1,}",
        "{\"a\" 1}",
        "{1:2}",
        "[1 2]",
        "",
        "   ",
        "{} x",
        "\xef\xbb\xbf{}",
        "[[[[[[[[[[]]]]]]]]]]",
        "0.30000000000000004",
        "1.7976931348623157e308",
        "4.9e-324",
        "-1.5E+10",
    };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
        expect_same_as_jansson(texts[i], strlen(texts[i]));
    /* Escapes, surrogate pairs, UTF-8, the int64 range and duplicate keys are the direct
     * parser's own work, not jansson's. */
    for (size_t i = 0; i < 9; i++) {
        cr_expect(lua_json_push_direct(L, texts[i], strlen(texts[i])), "%s went to jansson",
                  texts[i]);
        lua_settop(L, 0);
    }
    expect_same_as_jansson("\"a\0b\"", 5); /* a raw NUL is a control character */

    char deep[2 * 2100 + 1];
    for (int depth = 2047; depth <= 2049; depth++) {
        memset(deep, '[', (size_t)depth);
        memset(deep + depth, ']', (size_t)depth);
        expect_same_as_jansson(deep, 2 * (size_t)depth);
    }

    FILE *f = fopen(SHARED_DIR "/kumomta/samples.jsonl", "r");
    cr_assert_not_null(f);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int records = 0;
    while ((n = getline(&line, &cap, f)) > 0) {
        expect_same_as_jansson(line, (size_t)n);
        /* A record must not need jansson: that is the point of the direct parser. */
        cr_expect(lua_json_push_direct(L, line, (size_t)n), "record %d went to jansson",
                  records + 1);
        lua_settop(L, 0);
        records++;
    }
    free(line);
    fclose(f);
    cr_expect_gt(records, 0);
}

Test(lua_kumo, json_deprecated_aliases)
{
    cr_assert_eq(run("return kumo.json_encode == kumo.serde.json_encode,"
                     " kumo.json_parse == kumo.serde.json_parse"),
                 2);
    cr_expect(lua_toboolean(L, -2) && lua_toboolean(L, -1));
}

/* Drop null object members, as json_parse does, so jansson can print the expected text. */
static void strip_nulls(json_t *value)
{
    const char *key;
    json_t *member;
    void *tmp;
    size_t i;
    if (json_is_object(value)) {
        json_object_foreach_safe(value, tmp, key, member)
        {
            if (json_is_null(member))
                json_object_del(value, key);
            else
                strip_nulls(member);
        }
    } else if (json_is_array(value)) {
        json_array_foreach(value, i, member) strip_nulls(member);
    }
}

static char *canonical_json(const char *line)
{
    json_t *root = json_loads(line, 0, NULL);
    cr_assert_not_null(root);
    strip_nulls(root);
    char *text = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(root);
    return text;
}

/* Every sample record: parse then encode gives jansson's sorted compact text (nulls
 * dropped), and encoding is a fixed point. */
Test(lua_kumo, json_round_trip_samples)
{
    FILE *f = fopen(SHARED_DIR "/kumomta/samples.jsonl", "r");
    cr_assert_not_null(f);
    run("function round_trip(line)\n"
        "  local once = kumo.serde.json_encode(kumo.serde.json_parse(line))\n"
        "  return once, kumo.serde.json_encode(kumo.serde.json_parse(once))\n"
        "end");
    char *line = NULL;
    size_t cap = 0;
    int records = 0;
    while (getline(&line, &cap, f) > 0) {
        lua_getglobal(L, "round_trip");
        lua_pushstring(L, line);
        cr_assert_eq(lua_pcall(L, 1, 2, 0), LUA_OK, "%s", lua_tostring(L, -1));
        char *want = canonical_json(line);
        cr_expect_str_eq(lua_tostring(L, -2), want, "record %d", records + 1);
        cr_expect_str_eq(lua_tostring(L, -1), want, "record %d, second round", records + 1);
        free(want);
        lua_pop(L, 2);
        records++;
    }
    cr_expect_eq(records, 7);
    free(line);
    fclose(f);
}

/* ---- reject ---- */

static void expect_reject(const char *code, int want_code, const char *want_message)
{
    eval_error(code);
    int got_code = 0;
    const char *got_message = NULL;
    cr_assert(lua_kumo_is_reject(L, -2, &got_code, &got_message), "%s", code);
    cr_expect_eq(got_code, want_code);
    cr_expect_str_eq(got_message, want_message);
    char *text = xasprintf("%d %s", want_code, want_message);
    cr_expect_str_eq(lua_tostring(L, -1), text, "tostring of the reject");
    free(text);
    lua_pop(L, 2);
}

Test(lua_kumo, reject_is_detected)
{
    expect_reject("kumo.reject(451, 'try again later')", 451, "try again later");
    expect_reject("local function send() kumo.reject(550, 'no such user') end send()", 550,
                  "no such user");
    cr_assert_eq(run("local ok, err = pcall(kumo.reject, 451, 'x')\n"
                     "return ok, getmetatable(err), tostring(err)"),
                 3);
    cr_expect(!lua_toboolean(L, -3));
    cr_expect(lua_isboolean(L, -2) && !lua_toboolean(L, -2), "the metatable is private");
    cr_expect_str_eq(lua_tostring(L, -1), "451 x");
}

Test(lua_kumo, other_errors_are_not_rejects)
{
    const char *codes[] = {"error('plain')", "error({code = 451, message = 'forged'})",
                           "error(setmetatable({}, {}))", "error(nil)", "error(451)"};
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        eval_error(codes[i]);
        cr_expect(!lua_kumo_is_reject(L, -2, NULL, NULL), "%s", codes[i]);
        lua_pop(L, 2);
    }
    expect_error("kumo.reject(42, 'x')", "policy.lua:1: bad argument #1 to 'reject' (an SMTP "
                                         "status code (100-599) expected)");
    expect_error("kumo.reject(451)",
                 "policy.lua:1: bad argument #2 to 'reject' (string expected, got no value)");
}

/* ---- make_queue_config ---- */

Test(lua_kumo, make_queue_config_unknown_keys)
{
    expect_error("kumo.make_queue_config { retry_intervals = '1m' }",
                 "policy.lua:1: make_queue_config: unknown key \"retry_intervals\"");
    expect_error("kumo.make_queue_config { protocol = { custom_lua = { constructor = 'make.nats',"
                 " batchsize = 2 } } }",
                 "policy.lua:1: make_queue_config: unknown key \"protocol.custom_lua.batchsize\"");
    expect_error("kumo.make_queue_config { protocol = { lua = {} } }",
                 "policy.lua:1: make_queue_config: unknown key \"protocol.lua\"");
    expect_error("kumo.make_queue_config { 'positional' }",
                 "policy.lua:1: make_queue_config: unknown key \"1\"");
}

Test(lua_kumo, make_queue_config_type_errors)
{
    static const char *const cases[][2] = {
        {"retry_interval = 'soon'", "retry_interval: expected a duration, got \"soon\""},
        {"max_age = true", "max_age: expected a duration, got boolean"},
        {"egress_pool = 1", "egress_pool: expected a string, got number"},
        {"max_message_rate = {}", "max_message_rate: expected a string, got table"},
        {"shrink_policy = 'x'", "shrink_policy: expected a table, got \"x\""},
        {"protocol = 'smtp'", "protocol: expected a table, got \"smtp\""},
        {"protocol = {}", "protocol: expected exactly one of smtp, custom_lua, maildir_path"},
        {"protocol = { smtp = {}, custom_lua = { constructor = 'x' } }",
         "protocol: expected exactly one of smtp, custom_lua, maildir_path"},
        {"protocol = { custom_lua = {} }", "protocol.custom_lua.constructor is required"},
        {"protocol = { custom_lua = 'make.nats' }",
         "protocol.custom_lua: expected a table, got \"make.nats\""},
        {"protocol = { custom_lua = { constructor = 'c', batch_size = 0 } }",
         "protocol.custom_lua.batch_size: expected a positive integer, got number"},
        {"protocol = { custom_lua = { constructor = 'c', batch_size = 1.5 } }",
         "protocol.custom_lua.batch_size: expected a positive integer, got number"},
        {"protocol = { custom_lua = { constructor = 'c', batch_size = '4' } }",
         "protocol.custom_lua.batch_size: expected a positive integer, got \"4\""},
        {"protocol = { custom_lua = { constructor = 'c', min_batch_size = 2 } }",
         "protocol.custom_lua.min_batch_size (2) is larger than batch_size (1)"},
        {"protocol = { custom_lua = { constructor = 'c', max_batch_latency = '1 fortnight' } }",
         "protocol.custom_lua.max_batch_latency: expected a duration, got \"1 fortnight\""},
        {"protocol = { maildir_path = '/m', dir_mode = -1 }",
         "protocol.dir_mode: expected a non-negative integer, got number"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *code = xasprintf("kumo.make_queue_config { %s }", cases[i][0]);
        char *want = xasprintf("policy.lua:1: make_queue_config: %s", cases[i][1]);
        expect_error(code, want);
        free(code);
        free(want);
    }
    expect_error("kumo.make_queue_config()", "policy.lua:1: bad argument #1 to "
                                             "'make_queue_config' (table expected, got no value)");
}

Test(lua_kumo, make_queue_config_accepts_every_key)
{
    cr_assert_eq(
        run("local input = {\n"
            "  protocol = { custom_lua = { constructor = 'make.nats', batch_size = 100,\n"
            "    min_batch_size = 10, max_batch_latency = '500ms' } },\n"
            "  retry_interval = '1m', max_retry_interval = '1h', max_age = '2 days',\n"
            "  egress_pool = 'pool0', max_message_rate = '100/s', reap_interval = '10m',\n"
            "  refresh_interval = 60, refresh_strategy = 'Ttl', strategy = 'TimerWheel',\n"
            "  timezone = 'UTC', provider_name = 'nats', max_connection_rate = '10/s',\n"
            "  shrink_policy = {}, timerwheel_tick_interval = '1s',\n"
            "}\n"
            "local qc = kumo.make_queue_config(input)\n"
            "input.retry_interval = 'garbage'\n"
            "return qc, qc ~= input, qc.retry_interval, qc.protocol.custom_lua.constructor"),
        4);
    cr_expect(lua_toboolean(L, -3), "make_queue_config returns a copy");
    cr_expect_str_eq(lua_tostring(L, -2), "1m");
    cr_expect_str_eq(lua_tostring(L, -1), "make.nats");
    struct queue_config qc;
    char *err = lua_kumo_queue_config(L, -4, &qc);
    cr_assert_null(err, "%s", err);
    cr_expect_str_eq(qc.constructor, "make.nats");
    cr_expect_eq(qc.batch_size, 100);
    cr_expect_eq(qc.min_batch_size, 10);
    cr_expect_eq(qc.max_batch_latency_ms, 500);
    cr_expect_eq(qc.retry_interval_ms, 60000);
    cr_expect_eq(qc.max_retry_interval_ms, 3600000);
    cr_expect_eq(qc.max_age_ms, 2 * 86400000LL);
    lua_kumo_queue_config_free(&qc);
    cr_expect_null(qc.constructor);
}

Test(lua_kumo, queue_config_defaults)
{
    static const char *const configs[] = {
        "return kumo.make_queue_config {}",
        "return {}", /* a plain table is read the same way */
        "return kumo.make_queue_config { protocol = { smtp = { connect_timeout = '60s' } } }",
        "return kumo.make_queue_config { protocol = 'Null' }",
        "return kumo.make_queue_config { protocol = { maildir_path = '/var/mail' } }",
    };
    for (size_t i = 0; i < sizeof(configs) / sizeof(configs[0]); i++) {
        cr_assert_eq(run(configs[i]), 1);
        struct queue_config qc;
        char *err = lua_kumo_queue_config(L, -1, &qc);
        cr_assert_null(err, "%s: %s", configs[i], err);
        cr_expect_null(qc.constructor, "%s", configs[i]);
        cr_expect_eq(qc.batch_size, 1);
        cr_expect_eq(qc.min_batch_size, 1);
        cr_expect_eq(qc.max_batch_latency_ms, 0);
        cr_expect_eq(qc.retry_interval_ms, 20 * 60 * 1000);
        cr_expect_eq(qc.max_retry_interval_ms, 0);
        cr_expect_eq(qc.max_age_ms, 7 * 86400 * 1000LL);
        lua_kumo_queue_config_free(&qc);
        lua_pop(L, 1);
    }
}

/* The seed document's shape: only the constructor is given. */
Test(lua_kumo, queue_config_seed_shape)
{
    run("return kumo.make_queue_config { protocol = { custom_lua = { constructor = 'make.nats' }"
        " } }");
    struct queue_config qc;
    cr_assert_null(lua_kumo_queue_config(L, -1, &qc));
    cr_expect_str_eq(qc.constructor, "make.nats");
    cr_expect_eq(qc.batch_size, 1);
    lua_kumo_queue_config_free(&qc);
}

Test(lua_kumo, queue_config_errors_from_c)
{
    struct queue_config qc;
    lua_pushnil(L);
    char *err = lua_kumo_queue_config(L, -1, &qc);
    cr_expect_str_eq(err, "make_queue_config: queue config: expected a table, got nil");
    free(err);
    /* An error after the constructor was read must not leak it. */
    run("return { protocol = { custom_lua = { constructor = 'c', batch_size = 0 } } }");
    err = lua_kumo_queue_config(L, -1, &qc);
    cr_expect_str_eq(err, "make_queue_config: protocol.custom_lua.batch_size: expected a positive "
                          "integer, got number");
    cr_expect_null(qc.constructor);
    free(err);
    cr_expect_eq(lua_gettop(L), 2, "the stack is left as it was");
}

/* ---- durations ---- */

Test(lua_kumo, durations)
{
    static const struct {
        const char *lua;
        int64_t ms;
    } good[] = {
        {"'20m'", 1200000},
        {"'7 days'", 604800000},
        {"'1h 30m'", 5400000},
        {"'1h30m'", 5400000},
        {"'500ms'", 500},
        {"'0s'", 0},
        {"' 5s '", 5000},
        {"'10 seconds'", 10000},
        {"'1 minute 1 second'", 61000},
        {"'3hrs 5min'", 11100000},
        {"'2 weeks'", 1209600000},
        {"'1M'", 2630016000},
        {"'1y'", 31557600000},
        {"'1500us'", 1},
        {"'1500000ns 1ms'", 2},
        {"90", 90000},
        {"0", 0},
        {"1.5", 1500},
        {"0.25", 250},
    };
    static const char *const bad[] = {
        "''",
        "'   '",
        "'abc'",
        "'10'",
        "'1.5h'",
        "'-5s'",
        "'5 parsecs'",
        "'5s x'",
        "'s5'",
        "-1",
        "-0.5",
        "math.huge",
        "0/0",
        "true",
        "{}",
        "nil",
        "'99999999999999999999s'",
        "'9999999999999999y'",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char *code = xasprintf("return %s", good[i].lua);
        run(code);
        int64_t ms = -1;
        cr_expect_eq(lua_kumo_duration(L, -1, &ms), 0, "%s", good[i].lua);
        cr_expect_eq(ms, good[i].ms, "%s: %lld ms", good[i].lua, (long long)ms);
        lua_pop(L, 1);
        free(code);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *code = xasprintf("return %s", bad[i]);
        run(code);
        int64_t ms;
        cr_expect_eq(lua_kumo_duration(L, -1, &ms), -1, "%s should be refused", bad[i]);
        lua_pop(L, 1);
        free(code);
    }
}

/* ---- kumo.string ---- */

Test(lua_kumo, string_split)
{
    run("function show(t) return #t .. ':' .. table.concat(t, '|') end");
    cr_expect_str_eq(eval("return show(kumo.string.split('a,b,,c', ','))"), "4:a|b||c");
    cr_expect_str_eq(eval("return show(kumo.string.split('', ','))"), "1:");
    cr_expect_str_eq(eval("return show(kumo.string.split(',', ','))"), "2:|");
    cr_expect_str_eq(eval("return show(kumo.string.split('no sep', ','))"), "1:no sep");
    cr_expect_str_eq(eval("return show(kumo.string.split('a::b:c::', '::'))"), "3:a|b:c|");
    cr_expect_str_eq(eval("return show(kumo.string.split('a.b', '.'))"), "2:a|b");
    expect_error("kumo.string.split('abc', '')",
                 "policy.lua:1: bad argument #2 to 'split' (pattern must not be empty)");
}

Test(lua_kumo, string_helpers)
{
    cr_expect_str_eq(eval("return '[' .. kumo.string.trim('  x y \\t\\r\\n') .. ']'"), "[x y]");
    cr_expect_str_eq(eval("return '[' .. kumo.string.trim(' \\t ') .. ']'"), "[]");
    cr_expect_str_eq(eval("return '[' .. kumo.string.trim('') .. ']'"), "[]");
    cr_assert_eq(run("local s = kumo.string\n"
                     "return s.starts_with('hello', 'he'), s.starts_with('he', 'hello'),\n"
                     "  s.starts_with('x', ''), s.ends_with('hello', 'llo'),\n"
                     "  s.ends_with('lo', 'hello'), s.ends_with('hello', 'hel')"),
                 6);
    cr_expect(lua_toboolean(L, -6));
    cr_expect(!lua_toboolean(L, -5));
    cr_expect(lua_toboolean(L, -4));
    cr_expect(lua_toboolean(L, -3));
    cr_expect(!lua_toboolean(L, -2));
    cr_expect(!lua_toboolean(L, -1));
    cr_expect_str_eq(eval("return kumo.string.replace('a.b.c', '.', '::')"), "a::b::c");
    cr_expect_str_eq(eval("return kumo.string.replace('aaa', 'aa', 'b')"), "ba");
    cr_expect_str_eq(eval("return kumo.string.replace('abc', 'x', 'y')"), "abc");
    cr_expect_str_eq(eval("return kumo.string.replace('%d', '%', '%%')"), "%%d");
    cr_expect_str_eq(eval("return kumo.string.replace('abc', 'b', '')"), "ac");
    expect_error("kumo.string.replace('abc', '', 'x')",
                 "policy.lua:1: bad argument #2 to 'replace' (pattern must not be empty)");
}

/* ---- logging ---- */

/* Run code with stderr (where log_msg writes) captured; returns what was written. */
static char *capture_stderr(const char *code)
{
    char path[] = "/tmp/test_lua_kumo_XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    int saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    run(code);
    dup2(saved, STDERR_FILENO);
    close(saved);
    off_t size = lseek(fd, 0, SEEK_END);
    char *text = xcalloc(1, (size_t)size + 1);
    cr_assert_eq(pread(fd, text, (size_t)size, 0), size);
    close(fd);
    unlink(path);
    return text;
}

static void expect_contains(const char *text, const char *part)
{
    cr_expect_not_null(strstr(text, part), "expected \"%s\" in \"%s\"", part, text);
}

Test(lua_kumo, log_prefix_and_levels)
{
    char *out = capture_stderr("kumo.log_info('hello', 42, nil, true, 1.5)\n"
                               "local function f()\n"
                               "  kumo.log_warn('inside')\n"
                               "end\n"
                               "f()\n"
                               "kumo.log_error()\n"
                               "kumo.log_debug('hidden')\n");
    expect_contains(out, " info policy.lua:1: hello 42 nil true 1.5\n");
    expect_contains(out, " warn policy.lua:3: inside\n");
    expect_contains(out, " error policy.lua:6: \n");
    cr_expect_null(strstr(out, "hidden"), "debug is below the default level");
    free(out);
    log_set_level(LOG_LEVEL_DEBUG);
    out = capture_stderr("kumo.log_debug('shown', {1} ~= nil)");
    expect_contains(out, " debug policy.lua:1: shown true\n");
    free(out);
}
