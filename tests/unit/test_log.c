/* log: the format string shapes the line; what conversions expand to is data, escaped in
 * text and typed in JSON. */
#include "log.h"

#include <criterion/criterion.h>

#include <inttypes.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define expect_text(want, level, ...)                                                              \
    do {                                                                                           \
        char *got_ = log_format_line(LOG_FORMAT_TEXT, level, __VA_ARGS__);                         \
        cr_assert_str_eq(got_, want);                                                              \
        free(got_);                                                                                \
    } while (0)

Test(log, text_escapes_values)
{
    expect_text("warn policy failed segment=a.zst error=\"say \\\"hi\\\" \\\\ bye\\nnext\"",
                LOG_LEVEL_WARN, "policy failed segment=%s error=\"%s\"", "a.zst",
                "say \"hi\" \\ bye\nnext");
    /* a bare value that needs quoting gets quotes */
    expect_text("info reloaded policy=\"/etc/my policy.lua\" n=3", LOG_LEVEL_INFO,
                "reloaded policy=%s n=%d", "/etc/my policy.lua", 3);
    expect_text("info empty value=\"\"", LOG_LEVEL_INFO, "empty value=%s", "");
    /* control characters, and a message that cannot end the line early */
    expect_text("error lua error:\\n  stack\\ttab bell=\"\\x07\"", LOG_LEVEL_ERROR,
                "lua error:\n  stack\ttab bell=%s", "\a");
    /* " key=" inside a value is data, not a field */
    expect_text("info from lua: a=b c=\"d\"", LOG_LEVEL_INFO, "%s", "from lua: a=b c=\"d\"");
}

Test(log, text_keeps_the_plain_line)
{
    expect_text("info connected to nats server=nats://127.0.0.1:4222 in_flight=0", LOG_LEVEL_INFO,
                "connected to nats server=%s in_flight=%zu", "nats://127.0.0.1:4222", (size_t)0);
    expect_text("info 100% done", LOG_LEVEL_INFO, "100%% done");
}

static json_t *parse(char *text)
{
    json_error_t err;
    json_t *j = json_loads(text, 0, &err);
    cr_assert_not_null(j, "not JSON (%s): %s", err.text, text);
    cr_assert(json_is_object(j));
    cr_assert_null(strchr(text, '\n'));
    free(text);
    return j;
}

Test(log, json_types_and_fields)
{
    char *text = log_format_line(LOG_FORMAT_JSON, LOG_LEVEL_INFO,
                                 "stopped records=%" PRIu64 " rate=%.1f mode=%04o id=%s "
                                 "lag=%llu/%llu error=\"%s\"",
                                 (uint64_t)10, 2.5, 0640, "42", 1ULL, 2ULL, "a \"b\"\n");
    json_t *j = parse(text);
    cr_assert_str_eq(json_string_value(json_object_get(j, "level")), "info");
    cr_assert_str_eq(json_string_value(json_object_get(j, "msg")), "stopped");
    cr_assert(json_is_string(json_object_get(j, "time")));
    cr_assert(json_is_integer(json_object_get(j, "records")));
    cr_assert_eq(json_integer_value(json_object_get(j, "records")), 10);
    cr_assert(json_is_real(json_object_get(j, "rate")));
    cr_assert_str_eq(json_string_value(json_object_get(j, "mode")), "0640");
    cr_assert_str_eq(json_string_value(json_object_get(j, "id")), "42", "%%s stays a string");
    cr_assert_str_eq(json_string_value(json_object_get(j, "lag")), "1/2");
    cr_assert_str_eq(json_string_value(json_object_get(j, "error")), "a \"b\"\n");
    json_decref(j);
}

Test(log, json_whatever_the_bytes)
{
    /* invalid UTF-8, a lone continuation byte, a surrogate, control characters */
    char *text = log_format_line(LOG_FORMAT_JSON, LOG_LEVEL_ERROR, "bad \xff msg value=\"%s\"",
                                 "a\x80\xed\xa0\x80z\x01\x1b");
    json_t *j = parse(text);
    cr_assert_str_eq(json_string_value(json_object_get(j, "msg")), "bad \xef\xbf\xbd msg");
    cr_assert_str_eq(json_string_value(json_object_get(j, "value")),
                     "a\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdz\x01\x1b");
    json_decref(j);
    /* a field named like a header key does not replace it */
    j = parse(log_format_line(LOG_FORMAT_JSON, LOG_LEVEL_WARN, "x level=%d msg=%s", 1, "m"));
    cr_assert_str_eq(json_string_value(json_object_get(j, "level")), "warn");
    cr_assert_eq(json_integer_value(json_object_get(j, "level_")), 1);
    cr_assert_str_eq(json_string_value(json_object_get(j, "msg_")), "m");
    json_decref(j);
    /* past int64: still a number */
    j = parse(
        log_format_line(LOG_FORMAT_JSON, LOG_LEVEL_INFO, "big n=%llu", 18446744073709551615ULL));
    cr_assert(json_is_number(json_object_get(j, "n")));
    json_decref(j);
}
