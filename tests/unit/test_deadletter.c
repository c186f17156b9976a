/* deadletter: one JSON line per record the relay gives up on. */
#include "deadletter.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char tmpdir[64];

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void setup(void)
{
    strcpy(tmpdir, "/tmp/relay-test-deadletter-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir), "mkdtemp: %s", strerror(errno));
}

static void teardown(void)
{
    nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(deadletter, .init = setup, .fini = teardown);

static struct deadletter *open_dl(void)
{
    char *err = NULL;
    struct deadletter *dl = deadletter_open(tmpdir, &err);
    cr_assert_not_null(dl, "open: %s", err ? err : "?");
    return dl;
}

/* All lines of the dead-letter file, each parsed strictly; returns the count. */
static size_t read_lines(json_t **out, size_t max)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/deadletter/deadletter.jsonl", tmpdir);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "open %s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0, n = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
        cr_assert_lt(n, max);
        cr_assert_eq(line[len - 1], '\n', "line %zu does not end in a newline", n);
        cr_assert_null(memchr(line, '\n', (size_t)len - 1), "line %zu has a raw newline", n);
        json_error_t jerr;
        json_t *j = json_loadb(line, (size_t)len, JSON_ALLOW_NUL, &jerr);
        cr_assert_not_null(j, "line %zu is not JSON (%s at %d): %s", n, jerr.text, jerr.position,
                           line);
        cr_assert(json_is_object(j));
        out[n++] = j;
    }
    free(line);
    fclose(f);
    return n;
}

static void expect_fields(json_t *j, const char *segment, json_int_t start, json_int_t end,
                          const char *reason)
{
    cr_assert_str_eq(json_string_value(json_object_get(j, "segment")), segment);
    cr_assert(json_is_integer(json_object_get(j, "start")));
    cr_assert_eq(json_integer_value(json_object_get(j, "start")), start);
    cr_assert_eq(json_integer_value(json_object_get(j, "end")), end);
    cr_assert_str_eq(json_string_value(json_object_get(j, "reason")), reason);
    json_t *t = json_object_get(j, "time");
    cr_assert(json_is_integer(t));
    json_int_t now = (json_int_t)time(NULL);
    cr_assert(json_integer_value(t) <= now && json_integer_value(t) >= now - 60);
    cr_assert_eq(json_object_size(j), 6, "unexpected keys");
}

static void expect_line(json_t *j, const char *want, size_t want_len)
{
    json_t *line = json_object_get(j, "line");
    cr_assert(json_is_string(line));
    cr_assert_eq(json_string_length(line), want_len, "line length %zu, want %zu",
                 json_string_length(line), want_len);
    cr_assert(memcmp(json_string_value(line), want, want_len) == 0, "line: %s",
              json_string_value(line));
}

Test(deadletter, record_line)
{
    struct deadletter *dl = open_dl();
    const char *rec = "{\"type\":\"Delivery\",\"queue\":\"a\\\"b\",\"x\":\"\\\\\"}\n";
    char *err = deadletter_write(dl, "20250912-110801.440526026", 1024, 1024 + strlen(rec),
                                 "permanent: 554 5.7.1 rejected \"spam\"", rec, strlen(rec));
    cr_assert_null(err, "%s", err);
    cr_assert_null(deadletter_sync(dl));
    cr_assert_null(deadletter_sync(dl), "nothing to sync twice");
    deadletter_close(dl);

    json_t *lines[4];
    cr_assert_eq(read_lines(lines, 4), 1);
    expect_fields(lines[0], "20250912-110801.440526026", 1024, 1024 + (json_int_t)strlen(rec),
                  "permanent: 554 5.7.1 rejected \"spam\"");
    expect_line(lines[0], rec, strlen(rec));
    json_decref(lines[0]);
}

Test(deadletter, oversize_line_is_null)
{
    struct deadletter *dl = open_dl();
    cr_assert_null(deadletter_write(dl, "seg", 0, 5000000,
                                    "record of 5000000 bytes is larger than "
                                    "max_record_bytes",
                                    NULL, 0));
    deadletter_close(dl);
    json_t *lines[2];
    cr_assert_eq(read_lines(lines, 2), 1);
    expect_fields(lines[0], "seg", 0, 5000000,
                  "record of 5000000 bytes is larger than max_record_bytes");
    cr_assert(json_is_null(json_object_get(lines[0], "line")));
    json_decref(lines[0]);
}

Test(deadletter, control_bytes_escaped)
{
    struct deadletter *dl = open_dl();
    const char rec[] = "a\tb\rc\x01\x1f\x7f\\\"/\0z\n";
    size_t len = sizeof(rec) - 1;
    cr_assert_null(deadletter_write(dl, "seg\n1", 1, 2, "why\tnot", rec, len));
    deadletter_close(dl);
    json_t *lines[2];
    cr_assert_eq(read_lines(lines, 2), 1);
    expect_fields(lines[0], "seg\n1", 1, 2, "why\tnot");
    expect_line(lines[0], rec, len);
    json_decref(lines[0]);
}

Test(deadletter, valid_utf8_kept)
{
    struct deadletter *dl = open_dl();
    const char *rec = "{\"s\":\"caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \xF4\x8F\xBF\xBF "
                      "\xED\x9F\xBF \xEE\x80\x80\"}\n";
    cr_assert_null(deadletter_write(dl, "seg", 0, strlen(rec), "r", rec, strlen(rec)));
    deadletter_close(dl);
    json_t *lines[2];
    cr_assert_eq(read_lines(lines, 2), 1);
    expect_line(lines[0], rec, strlen(rec));
    json_decref(lines[0]);
}

static void expect_replaced(const char *raw, size_t raw_len, const char *want, size_t want_len)
{
    struct deadletter *dl = open_dl();
    cr_assert_null(deadletter_write(dl, "seg", 0, raw_len, "r", raw, raw_len));
    deadletter_close(dl);
    json_t *lines[2];
    cr_assert_eq(read_lines(lines, 2), 1);
    expect_line(lines[0], want, want_len);
    json_decref(lines[0]);
    char path[256];
    snprintf(path, sizeof(path), "%s/deadletter/deadletter.jsonl", tmpdir);
    cr_assert_eq(unlink(path), 0);
}

#define FFFD                "\xEF\xBF\xBD"
#define REPLACED(raw, want) expect_replaced(raw, sizeof(raw) - 1, want, sizeof(want) - 1)

Test(deadletter, invalid_utf8_replaced)
{
    REPLACED("a\xFF"
             "b",
             "a" FFFD "b");
    REPLACED("\x80", FFFD);
    REPLACED("\xC3", FFFD); /* lead byte at the end */
    REPLACED("\xC3("
             "x",
             FFFD "(x");                               /* bad continuation */
    REPLACED("\xC0\xAF", FFFD FFFD);                   /* overlong '/' */
    REPLACED("\xC1\xBF", FFFD FFFD);                   /* overlong */
    REPLACED("\xE0\x80\xAF", FFFD FFFD FFFD);          /* overlong, 3 bytes */
    REPLACED("\xF0\x80\x80\xAF", FFFD FFFD FFFD FFFD); /* overlong, 4 bytes */
    REPLACED("\xED\xA0\x80", FFFD FFFD FFFD);          /* a UTF-16 surrogate (CESU-8) */
    REPLACED("\xED\xBF\xBF", FFFD FFFD FFFD);
    REPLACED("\xF4\x90\x80\x80", FFFD FFFD FFFD FFFD); /* beyond U+10FFFF */
    REPLACED("\xF5\x80\x80\x80", FFFD FFFD FFFD FFFD);
    REPLACED("\xF7\xBF\xBF", FFFD FFFD FFFD);
    REPLACED("\xF8\x88\x80\x80\x80", FFFD FFFD FFFD FFFD FFFD);
    REPLACED("\xFE\xFF", FFFD FFFD);
    REPLACED("\xE2\x82", FFFD FFFD); /* truncated sequence */
    REPLACED("\xF0\x9F\x98", FFFD FFFD FFFD);
    REPLACED("ok\xE2\x82\xAC\xE2\x82", "ok\xE2\x82\xAC" FFFD FFFD);
}

Test(deadletter, every_byte_pair_is_valid_json)
{
    /* Whatever bytes a line holds, the dead-letter line parses. */
    struct deadletter *dl = open_dl();
    char rec[4];
    size_t written = 0;
    for (unsigned a = 0x80; a < 0x100; a++) {
        for (unsigned b = 0; b < 0x100; b += 3) {
            rec[0] = (char)a;
            rec[1] = (char)b;
            rec[2] = (char)0xA0;
            rec[3] = (char)0x80;
            cr_assert_null(deadletter_write(dl, "seg", 0, 4, "r", rec, 4));
            written++;
        }
    }
    deadletter_close(dl);
    json_t **lines = malloc(written * sizeof(*lines));
    cr_assert_eq(read_lines(lines, written), written);
    for (size_t i = 0; i < written; i++)
        json_decref(lines[i]);
    free(lines);
}

Test(deadletter, appends_across_opens)
{
    struct deadletter *dl = open_dl();
    cr_assert_null(deadletter_write(dl, "s1", 0, 3, "first", "ab\n", 3));
    cr_assert_null(deadletter_write(dl, "s1", 3, 6, "second", "cd\n", 3));
    cr_assert_null(deadletter_sync(dl));
    deadletter_close(dl);
    dl = open_dl();
    cr_assert_null(deadletter_write(dl, "s2", 0, 3, "third", "ef\n", 3));
    deadletter_close(dl);
    json_t *lines[4];
    cr_assert_eq(read_lines(lines, 4), 3);
    expect_fields(lines[0], "s1", 0, 3, "first");
    expect_line(lines[0], "ab\n", 3);
    expect_fields(lines[1], "s1", 3, 6, "second");
    expect_fields(lines[2], "s2", 0, 3, "third");
    expect_line(lines[2], "ef\n", 3);
    for (int i = 0; i < 3; i++)
        json_decref(lines[i]);
    struct stat st;
    char path[256];
    snprintf(path, sizeof(path), "%s/deadletter", tmpdir);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert(S_ISDIR(st.st_mode));
    cr_assert_eq(st.st_mode & 0777, 0750);
}

Test(deadletter, open_fails_with_message)
{
    /* state_dir/deadletter exists as a file. */
    char path[256];
    snprintf(path, sizeof(path), "%s/deadletter", tmpdir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fclose(f);
    char *err = NULL;
    cr_assert_null(deadletter_open(tmpdir, &err));
    char want[512];
    snprintf(want, sizeof(want), "cannot open %s/deadletter/deadletter.jsonl: Not a directory",
             tmpdir);
    cr_assert_str_eq(err, want);
    free(err);

    /* A missing state_dir. */
    snprintf(path, sizeof(path), "%s/absent", tmpdir);
    cr_assert_null(deadletter_open(path, &err));
    snprintf(want, sizeof(want), "cannot create %s/absent/deadletter: No such file or directory",
             tmpdir);
    cr_assert_str_eq(err, want);
    free(err);
}
