/* offsets: the watermark of complete records and the checkpoint file. */
#include "offsets.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- temp dir ---- */

static char tmpdir[64];

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void setup(void)
{
    strcpy(tmpdir, "/tmp/relay-test-offsets-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir), "mkdtemp: %s", strerror(errno));
}

static void teardown(void)
{
    nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static char *in_tmp(const char *name)
{
    static char paths[4][256];
    static int next;
    char *p = paths[next++ % 4];
    snprintf(p, sizeof(paths[0]), "%s/%s", tmpdir, name);
    return p;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "open %s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t cap = 0;
    *len = 0;
    for (;;) {
        if (cap - *len < 4096)
            buf = realloc(buf, cap = cap * 2 + 4096);
        size_t n = fread(buf + *len, 1, cap - *len - 1, f);
        *len += n;
        if (n == 0)
            break;
    }
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

static void write_file(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "create %s: %s", path, strerror(errno));
    cr_assert_eq(fwrite(data, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
}

/* ---- watermark ---- */

struct released {
    struct inflight_record *recs[16];
    size_t count;
};

static void on_release(void *arg, struct inflight_record *rec)
{
    struct released *r = arg;
    cr_assert_lt(r->count, 16);
    r->recs[r->count++] = rec;
}

Test(offsets, watermark_out_of_order)
{
    struct inflight_record recs[5] = {
        {.start = 0, .end = 10, .ordinal = 0},   {.start = 10, .end = 25, .ordinal = 1},
        {.start = 25, .end = 40, .ordinal = 2},  {.start = 40, .end = 41, .ordinal = 3},
        {.start = 41, .end = 100, .ordinal = 4},
    };
    struct watermark wm = {0};
    for (int i = 0; i < 5; i++)
        offsets_watermark_push(&wm, &recs[i]);
    cr_assert_eq(wm.pending, 5);
    cr_assert_eq(wm.head, &recs[0]);
    cr_assert_eq(wm.tail, &recs[4]);
    struct released rel = {0};

    /* 3rd acknowledged first: nothing can commit yet. */
    cr_assert_not(offsets_watermark_complete(&wm, &recs[2], on_release, &rel));
    cr_assert_eq(wm.committed_offset, 0);
    cr_assert_eq(wm.committed_ordinal, 0);
    cr_assert_eq(wm.pending, 5);
    cr_assert_eq(rel.count, 0);

    /* 1st: the watermark moves to its end, and stops at the 2nd. */
    cr_assert(offsets_watermark_complete(&wm, &recs[0], on_release, &rel));
    cr_assert_eq(wm.committed_offset, 10);
    cr_assert_eq(wm.committed_ordinal, 1);
    cr_assert_eq(wm.pending, 4);
    cr_assert_eq(rel.count, 1);
    cr_assert_eq(rel.recs[0], &recs[0]);
    cr_assert_eq(wm.head, &recs[1]);

    /* 2nd: jumps over the already complete 3rd. */
    cr_assert(offsets_watermark_complete(&wm, &recs[1], on_release, &rel));
    cr_assert_eq(wm.committed_offset, 40);
    cr_assert_eq(wm.committed_ordinal, 3);
    cr_assert_eq(wm.pending, 2);
    cr_assert_eq(rel.count, 3);
    cr_assert_eq(rel.recs[1], &recs[1]);
    cr_assert_eq(rel.recs[2], &recs[2]);

    /* 5th then 4th: everything is committed, the list is empty. */
    cr_assert_not(offsets_watermark_complete(&wm, &recs[4], on_release, &rel));
    cr_assert_eq(wm.committed_offset, 40);
    cr_assert(offsets_watermark_complete(&wm, &recs[3], on_release, &rel));
    cr_assert_eq(wm.committed_offset, 100);
    cr_assert_eq(wm.committed_ordinal, 5);
    cr_assert_eq(wm.pending, 0);
    cr_assert_null(wm.head);
    cr_assert_null(wm.tail);
    cr_assert_eq(rel.count, 5);
    cr_assert_eq(rel.recs[3], &recs[3]);
    cr_assert_eq(rel.recs[4], &recs[4]);

    /* The emptied watermark takes new records. */
    struct inflight_record more = {.start = 100, .end = 150, .ordinal = 5};
    offsets_watermark_push(&wm, &more);
    cr_assert_eq(wm.head, &more);
    cr_assert_eq(wm.tail, &more);
    cr_assert(offsets_watermark_complete(&wm, &more, on_release, &rel));
    cr_assert_eq(wm.committed_offset, 150);
    cr_assert_eq(wm.committed_ordinal, 6);
    cr_assert_eq(rel.count, 6);
    cr_assert_eq(rel.recs[5], &more);
}

static void free_release(void *arg, struct inflight_record *rec)
{
    (*(size_t *)arg)++;
    free(rec);
}

Test(offsets, watermark_release_may_free)
{
    /* The release callback owns the record: the watermark never touches it afterwards
     * (valgrind/ASan would see it). Completion order: reverse. */
    struct watermark wm = {0};
    struct inflight_record *recs[100];
    for (int i = 0; i < 100; i++) {
        recs[i] = calloc(1, sizeof(**recs));
        recs[i]->start = (uint64_t)i * 10;
        recs[i]->end = (uint64_t)i * 10 + 10;
        recs[i]->ordinal = (uint64_t)i;
        offsets_watermark_push(&wm, recs[i]);
    }
    size_t freed = 0;
    for (int i = 99; i > 0; i--)
        cr_assert_not(offsets_watermark_complete(&wm, recs[i], free_release, &freed));
    cr_assert_eq(freed, 0);
    cr_assert(offsets_watermark_complete(&wm, recs[0], free_release, &freed));
    cr_assert_eq(freed, 100);
    cr_assert_eq(wm.committed_offset, 1000);
    cr_assert_eq(wm.committed_ordinal, 100);
    cr_assert_eq(wm.pending, 0);
}

/* ---- checkpoint ---- */

/* An independent CRC-32 (IEEE, table driven) to check the file's end line. */
static uint32_t crc32_ref(const void *data, size_t len)
{
    static uint32_t table[256];
    if (!table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
    uint32_t crc = 0xFFFFFFFFu;
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++)
        crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return crc ^ 0xFFFFFFFFu;
}

Test(offsets, crc_reference)
{
    cr_assert_eq(crc32_ref("123456789", 9), 0xCBF43926u);
}

static const struct checkpoint_entry sample_entries[] = {
    {"20250912-110801.440526026", 1234567, 987654321, 1200, false, 0, 0, 0, 0},
    {"20250912-110801.440526026_recv", 42, 0, 0, false, 0, 0, 0, 0},
    {"name with space", UINT64_MAX, UINT64_MAX, UINT64_MAX, true, 0, 0, 0, 0},
    {"100%done%41", 1, 2, 3, true, 0, 0, 0, 0},
    {"new\nline\ttab\r\x7f\x01 \xc3\xa9", 5, 6, 7, false, 0, 0, 0, 0},
    {"20250912-110901_replaced", 8, 9, 10, false, 2, 0, 0, 0},
    /* With the identity that tells a file from a later one of the same inode. */
    {"20250912-111001_identity", 11, 12, 13, true, 0, 5000, 4096, 0xcbf29ce484222325ull},
    {"20250912-111101_both", 14, 15, 16, false, 3, UINT64_MAX, UINT32_MAX, UINT64_MAX},
    {"20250912-111201_small", 17, 0, 0, false, 0, 7, 7, 1},
};
enum { SAMPLE_COUNT = sizeof(sample_entries) / sizeof(sample_entries[0]) };

static void make_sample(struct checkpoint *cp, const char *spool_dir)
{
    memset(cp, 0, sizeof(*cp));
    cp->spool_dir = strdup(spool_dir);
    for (size_t i = 0; i < SAMPLE_COUNT; i++)
        offsets_checkpoint_add(cp, &sample_entries[i]);
}

static void expect_equal(const struct checkpoint *got, const struct checkpoint *want)
{
    cr_assert_str_eq(got->spool_dir, want->spool_dir);
    cr_assert_eq(got->count, want->count, "count %zu, want %zu", got->count, want->count);
    for (size_t i = 0; i < want->count; i++) {
        const struct checkpoint_entry *g = &got->entries[i], *w = &want->entries[i];
        cr_assert_str_eq(g->name, w->name, "entry %zu name", i);
        cr_assert_eq(g->inode, w->inode, "entry %zu inode", i);
        cr_assert_eq(g->offset, w->offset, "entry %zu offset", i);
        cr_assert_eq(g->ordinal, w->ordinal, "entry %zu ordinal", i);
        cr_assert_eq(g->finished, w->finished, "entry %zu finished", i);
        cr_assert_eq(g->generation, w->generation, "entry %zu generation", i);
        cr_assert_eq(g->size, w->size, "entry %zu size", i);
        cr_assert_eq(g->fp_len, w->fp_len, "entry %zu fp_len", i);
        cr_assert_eq(g->fp_hash, w->fp_hash, "entry %zu fp_hash", i);
    }
}

TestSuite(checkpoint, .init = setup, .fini = teardown);

Test(checkpoint, write_exact_bytes)
{
    struct checkpoint cp;
    make_sample(&cp, "/var/log/kumo mta/100%");
    cr_assert_null(offsets_checkpoint_write(tmpdir, &cp));
    size_t len;
    char *text = read_file(in_tmp("checkpoint"), &len);
    const char *body = "kumo-nats-relay checkpoint 1\n"
                       "spool /var/log/kumo%20mta/100%25\n"
                       "segment 20250912-110801.440526026 1234567 987654321 1200 0\n"
                       "segment 20250912-110801.440526026_recv 42 0 0 0\n"
                       "segment name%20with%20space 18446744073709551615 18446744073709551615 "
                       "18446744073709551615 1\n"
                       "segment 100%25done%2541 1 2 3 1\n"
                       "segment new%0Aline%09tab%0D%7F%01%20%C3%A9 5 6 7 0\n"
                       "segment 20250912-110901_replaced 8 9 10 0 2\n"
                       "segment 20250912-111001_identity 11 12 13 1 0 5000 4096 "
                       "cbf29ce484222325\n"
                       "segment 20250912-111101_both 14 15 16 0 3 18446744073709551615 "
                       "4294967295 ffffffffffffffff\n"
                       "segment 20250912-111201_small 17 0 0 0 0 7 7 0000000000000001\n";
    char want[2048];
    snprintf(want, sizeof(want), "%send 9 %08x\n", body, crc32_ref(body, strlen(body)));
    cr_assert_str_eq(text, want);
    cr_assert_eq(len, strlen(want));
    /* No temp file is left behind. */
    cr_assert_neq(access(in_tmp(".checkpoint.tmp"), F_OK), 0);
    struct stat st;
    cr_assert_eq(stat(in_tmp("checkpoint"), &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0640);
    free(text);
    offsets_checkpoint_free(&cp);
}

Test(checkpoint, round_trip)
{
    struct checkpoint cp;
    make_sample(&cp, "/var/log/kumo mta/100%\n");
    cr_assert_null(offsets_checkpoint_write(tmpdir, &cp));
    struct checkpoint loaded;
    bool exists = false;
    char *err = offsets_checkpoint_load(tmpdir, &loaded, &exists);
    cr_assert_null(err, "%s", err);
    cr_assert(exists);
    expect_equal(&loaded, &cp);
    offsets_checkpoint_free(&loaded);

    /* Rewriting replaces the whole file. */
    struct checkpoint small = {.spool_dir = strdup("/spool")};
    offsets_checkpoint_add(&small, &sample_entries[0]);
    cr_assert_null(offsets_checkpoint_write(tmpdir, &small));
    cr_assert_null(offsets_checkpoint_load(tmpdir, &loaded, &exists));
    cr_assert(exists);
    expect_equal(&loaded, &small);
    offsets_checkpoint_free(&loaded);
    offsets_checkpoint_free(&small);
    offsets_checkpoint_free(&cp);
}

Test(checkpoint, round_trip_no_entries)
{
    struct checkpoint cp = {.spool_dir = strdup("/var/log/kumomta")};
    cr_assert_null(offsets_checkpoint_write(tmpdir, &cp));
    size_t len;
    char *text = read_file(in_tmp("checkpoint"), &len);
    const char *body = "kumo-nats-relay checkpoint 1\nspool /var/log/kumomta\n";
    char want[256];
    snprintf(want, sizeof(want), "%send 0 %08x\n", body, crc32_ref(body, strlen(body)));
    cr_assert_str_eq(text, want);
    struct checkpoint loaded;
    bool exists;
    cr_assert_null(offsets_checkpoint_load(tmpdir, &loaded, &exists));
    cr_assert(exists);
    expect_equal(&loaded, &cp);
    offsets_checkpoint_free(&loaded);
    offsets_checkpoint_free(&cp);
    free(text);
}

Test(checkpoint, missing_is_not_an_error)
{
    struct checkpoint cp;
    bool exists = true;
    cr_assert_null(offsets_checkpoint_load(tmpdir, &cp, &exists));
    cr_assert_not(exists);
    cr_assert_eq(cp.count, 0);
    cr_assert_null(cp.entries);
    cr_assert_null(cp.spool_dir);
}

Test(checkpoint, failed_write_keeps_old_checkpoint)
{
    struct checkpoint old;
    make_sample(&old, "/var/log/kumomta");
    cr_assert_null(offsets_checkpoint_write(tmpdir, &old));
    size_t old_len;
    char *before = read_file(in_tmp("checkpoint"), &old_len);

    /* A directory where the temp file goes: creating the temp file fails even as root. */
    cr_assert_eq(mkdir(in_tmp(".checkpoint.tmp"), 0700), 0);
    struct checkpoint next = {.spool_dir = strdup("/var/log/kumomta")};
    offsets_checkpoint_add(&next, &(struct checkpoint_entry){.name = "other", 1, 2, 3});
    char *err = offsets_checkpoint_write(tmpdir, &next);
    char want[256];
    snprintf(want, sizeof(want), "cannot create %s/.checkpoint.tmp: Is a directory", tmpdir);
    cr_assert_not_null(err);
    cr_assert_str_eq(err, want);
    free(err);

    size_t after_len;
    char *after = read_file(in_tmp("checkpoint"), &after_len);
    cr_assert_eq(after_len, old_len);
    cr_assert(memcmp(after, before, old_len) == 0, "the old checkpoint changed");
    struct checkpoint loaded;
    bool exists;
    cr_assert_null(offsets_checkpoint_load(tmpdir, &loaded, &exists));
    expect_equal(&loaded, &old);
    offsets_checkpoint_free(&loaded);

    /* Once the obstacle is gone, the next write goes through. */
    cr_assert_eq(rmdir(in_tmp(".checkpoint.tmp")), 0);
    cr_assert_null(offsets_checkpoint_write(tmpdir, &next));
    cr_assert_null(offsets_checkpoint_load(tmpdir, &loaded, &exists));
    expect_equal(&loaded, &next);
    offsets_checkpoint_free(&loaded);

    offsets_checkpoint_free(&next);
    offsets_checkpoint_free(&old);
    free(before);
    free(after);
}

Test(checkpoint, failed_rename_removes_temp_file)
{
    /* "checkpoint" is a directory: the rename fails, and the temp file is cleaned up. */
    cr_assert_eq(mkdir(in_tmp("checkpoint"), 0700), 0);
    cr_assert_eq(mkdir(in_tmp("checkpoint/keep"), 0700), 0);
    struct checkpoint cp;
    make_sample(&cp, "/spool");
    char *err = offsets_checkpoint_write(tmpdir, &cp);
    char want[512];
    snprintf(want, sizeof(want),
             "cannot rename %s/.checkpoint.tmp to %s/checkpoint: Is a directory", tmpdir, tmpdir);
    cr_assert_not_null(err);
    cr_assert_str_eq(err, want);
    free(err);
    cr_assert_neq(access(in_tmp(".checkpoint.tmp"), F_OK), 0);
    cr_assert_eq(errno, ENOENT);
    offsets_checkpoint_free(&cp);
}

Test(checkpoint, missing_state_dir)
{
    struct checkpoint cp;
    make_sample(&cp, "/spool");
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/absent", tmpdir);
    char *err = offsets_checkpoint_write(dir, &cp);
    char want[256];
    snprintf(want, sizeof(want), "cannot create %s/.checkpoint.tmp: No such file or directory",
             dir);
    cr_assert_not_null(err);
    cr_assert_str_eq(err, want);
    free(err);
    offsets_checkpoint_free(&cp);
}

Test(checkpoint, unreadable_checkpoint)
{
    cr_assert_eq(mkdir(in_tmp("checkpoint"), 0700), 0);
    struct checkpoint cp;
    bool exists = false;
    char *err = offsets_checkpoint_load(tmpdir, &cp, &exists);
    char want[256];
    snprintf(want, sizeof(want), "cannot read checkpoint %s/checkpoint: Is a directory", tmpdir);
    cr_assert_not_null(err);
    cr_assert_str_eq(err, want);
    cr_assert(exists);
    free(err);
}

static char *sample_text(size_t *len)
{
    struct checkpoint cp;
    make_sample(&cp, "/var/log/kumo mta");
    cr_assert_null(offsets_checkpoint_write(tmpdir, &cp));
    offsets_checkpoint_free(&cp);
    return read_file(in_tmp("checkpoint"), len);
}

#define DAMAGED   "the checkpoint is incomplete or damaged (its end line or checksum does not match)"
#define BAD_MAGIC "not a kumo-nats-relay checkpoint (bad first line)"

/* Parse text: either rejected with one of the two messages (returns false), or accepted
 * and then equal to the sample (returns true). */
static bool parse_rejected_or_equal(const char *text, size_t len)
{
    struct checkpoint cp, want;
    char *err = offsets_checkpoint_parse(text, len, &cp);
    if (err) {
        cr_assert(strcmp(err, DAMAGED) == 0 || strcmp(err, BAD_MAGIC) == 0, "message: %s", err);
        cr_assert_eq(cp.count, 0);
        cr_assert_null(cp.entries);
        cr_assert_null(cp.spool_dir);
        free(err);
        return false;
    }
    make_sample(&want, "/var/log/kumo mta");
    expect_equal(&cp, &want);
    offsets_checkpoint_free(&want);
    offsets_checkpoint_free(&cp);
    return true;
}

Test(checkpoint, every_prefix_rejected)
{
    size_t len;
    char *text = sample_text(&len);
    for (size_t cut = 0; cut < len; cut++) {
        /* A heap copy of exactly cut bytes, so reading past it is caught. */
        char *prefix = malloc(cut ? cut : 1);
        memcpy(prefix, text, cut);
        cr_assert_not(parse_rejected_or_equal(prefix, cut), "prefix of %zu/%zu bytes accepted", cut,
                      len);
        free(prefix);
    }
    cr_assert(parse_rejected_or_equal(text, len));
    free(text);
}

Test(checkpoint, truncated_file_refused_with_message)
{
    size_t len;
    char *text = sample_text(&len);
    write_file(in_tmp("checkpoint"), text, len / 2);
    struct checkpoint cp;
    bool exists = false;
    char *err = offsets_checkpoint_load(tmpdir, &cp, &exists);
    char want[512];
    snprintf(want, sizeof(want),
             "checkpoint %s/checkpoint: " DAMAGED "; refusing to start rather than re-read or "
             "skip records (run with --reset-offsets to start over)",
             tmpdir);
    cr_assert_not_null(err);
    cr_assert_str_eq(err, want);
    cr_assert(exists);
    cr_assert_eq(cp.count, 0);
    free(err);

    /* Empty file. */
    write_file(in_tmp("checkpoint"), "", 0);
    err = offsets_checkpoint_load(tmpdir, &cp, &exists);
    snprintf(want, sizeof(want),
             "checkpoint %s/checkpoint: " BAD_MAGIC "; refusing to start rather than re-read or "
             "skip records (run with --reset-offsets to start over)",
             tmpdir);
    cr_assert_str_eq(err, want);
    cr_assert(exists);
    free(err);
    free(text);
}

Test(checkpoint, flipped_bytes_rejected)
{
    size_t len;
    char *text = sample_text(&len);
    for (size_t i = 0; i < len; i++) {
        char *copy = malloc(len);
        memcpy(copy, text, len);
        copy[i] = (char)(copy[i] ^ 0xFF);
        cr_assert_not(parse_rejected_or_equal(copy, len), "byte %zu flipped: accepted", i);
        /* Single bits: rejected, or (an 'a' that became 'A' in the checksum) the same. */
        for (int bit = 0; bit < 8; bit++) {
            memcpy(copy, text, len);
            copy[i] = (char)(copy[i] ^ (1 << bit));
            parse_rejected_or_equal(copy, len);
        }
        free(copy);
    }
    free(text);
}

Test(checkpoint, trailing_data_rejected)
{
    size_t len;
    char *text = sample_text(&len);
    char *more = malloc(len + 32);
    memcpy(more, text, len);
    memcpy(more + len, "segment x 1 2 3 0\n", 18);
    cr_assert_not(parse_rejected_or_equal(more, len + 18));
    memcpy(more + len, "\n", 1);
    cr_assert_not(parse_rejected_or_equal(more, len + 1));
    free(more);
    free(text);
}

Test(checkpoint, wrong_magic)
{
    const char *text = "kumo-nats-relay checkpoint 2\nspool /x\nend 0 00000000\n";
    struct checkpoint cp;
    char *err = offsets_checkpoint_parse(text, strlen(text), &cp);
    cr_assert_not_null(err);
    cr_assert_str_eq(err, BAD_MAGIC);
    free(err);
    write_file(in_tmp("checkpoint"), "{\"offsets\":{}}\n", 15);
    bool exists;
    err = offsets_checkpoint_load(tmpdir, &cp, &exists);
    char want[512];
    snprintf(want, sizeof(want),
             "checkpoint %s/checkpoint: " BAD_MAGIC "; refusing to start rather than re-read or "
             "skip records (run with --reset-offsets to start over)",
             tmpdir);
    cr_assert_str_eq(err, want);
    free(err);
}

/* Body plus an end line with the right checksum and the given count. */
static char *with_end(const char *body, size_t count)
{
    char *text = malloc(strlen(body) + 64);
    sprintf(text, "%send %zu %08x\n", body, count, crc32_ref(body, strlen(body)));
    return text;
}

static void expect_parse_error(const char *text, const char *why)
{
    struct checkpoint cp;
    char *err = offsets_checkpoint_parse(text, strlen(text), &cp);
    cr_assert_not_null(err, "accepted (%s): %s", why, text);
    cr_assert_str_eq(err, DAMAGED);
    free(err);
}

/* The stream line: the read-back's floor survives a round trip, is written only when
 * known, and a malformed one makes the checkpoint damaged. */
Test(checkpoint, stream_floor)
{
    struct checkpoint cp = {.spool_dir = strdup("/var/log/kumomta"),
                            .stream = strdup("KUMO LOGS"),
                            .stream_floor = 18446744073709551615ULL};
    offsets_checkpoint_add(&cp, &sample_entries[0]);
    cr_assert_null(offsets_checkpoint_write(tmpdir, &cp));
    size_t len;
    char *text = read_file(in_tmp("checkpoint"), &len);
    cr_assert(strstr(text, "\nspool /var/log/kumomta\nstream KUMO%20LOGS 18446744073709551615\n"
                           "segment "),
              "%s", text);
    free(text);
    struct checkpoint loaded;
    bool exists;
    cr_assert_null(offsets_checkpoint_load(tmpdir, &loaded, &exists));
    expect_equal(&loaded, &cp);
    cr_assert_str_eq(loaded.stream, "KUMO LOGS");
    cr_assert_eq(loaded.stream_floor, 18446744073709551615ULL);
    offsets_checkpoint_free(&loaded);

    free(cp.stream); /* unknown: no line, as before there was one */
    cp.stream = NULL;
    cr_assert_null(offsets_checkpoint_write(tmpdir, &cp));
    text = read_file(in_tmp("checkpoint"), &len);
    cr_assert_null(strstr(text, "stream "), "%s", text);
    free(text);
    cr_assert_null(offsets_checkpoint_load(tmpdir, &loaded, &exists));
    cr_assert_null(loaded.stream);
    cr_assert_eq(loaded.stream_floor, 0);
    offsets_checkpoint_free(&loaded);

    cp.stream = strdup("KUMO"); /* an empty stream: 0 is a floor like any other */
    cp.stream_floor = 0;
    cr_assert_null(offsets_checkpoint_write(tmpdir, &cp));
    cr_assert_null(offsets_checkpoint_load(tmpdir, &loaded, &exists));
    cr_assert_str_eq(loaded.stream, "KUMO");
    cr_assert_eq(loaded.stream_floor, 0);
    offsets_checkpoint_free(&loaded);
    offsets_checkpoint_free(&cp);

    const char *bad[] = {"stream KUMO\n",     "stream KUMO x\n",
                         "stream KUMO -1\n",  "stream  5\n",
                         "stream KUMO 5 6\n", "stream KUMO 18446744073709551616\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char body[256];
        snprintf(body, sizeof(body), "kumo-nats-relay checkpoint 1\nspool /s\n%s", bad[i]);
        char *t = with_end(body, 0);
        expect_parse_error(t, bad[i]);
        free(t);
    }
}

Test(checkpoint, well_checksummed_but_invalid)
{
    /* The checksum is right but the content is not what the relay writes. */
    const char *head = "kumo-nats-relay checkpoint 1\nspool /s\n";
    char body[512];
    char *text;

    snprintf(body, sizeof(body), "%ssegment a 1 2 3 0\n", head);
    text = with_end(body, 2);
    expect_parse_error(text, "count does not match");
    free(text);

    snprintf(body, sizeof(body), "%ssegment a 1 2 3 2\n", head);
    text = with_end(body, 1);
    expect_parse_error(text, "finished is 2");
    free(text);

    snprintf(body, sizeof(body), "%ssegment a 1 2 3\n", head);
    text = with_end(body, 1);
    expect_parse_error(text, "field missing");
    free(text);

    snprintf(body, sizeof(body), "%ssegment a 1 -2 3 0\n", head);
    text = with_end(body, 1);
    expect_parse_error(text, "negative offset");
    free(text);

    snprintf(body, sizeof(body), "%ssegment a 1 18446744073709551616 3 0\n", head);
    text = with_end(body, 1);
    expect_parse_error(text, "offset overflows");
    free(text);

    snprintf(body, sizeof(body), "%ssegment a 1 2 3 0 \n", head);
    text = with_end(body, 1);
    expect_parse_error(text, "trailing space");
    free(text);

    snprintf(body, sizeof(body), "%ssegment a 1 2 3 0 0\n", head);
    text = with_end(body, 1);
    expect_parse_error(text, "generation 0 without the identity");
    free(text);

    const char *bad_identity[] = {
        "0 5",
        "0 5 6",
        "0 5 6 abc",
        "0 5 6 0123456789abcdef0",
        "0 5 6 0123456789abcdeg",
        "0 5 4294967296 0123456789abcdef",
        "0 -5 6 0123456789abcdef",
        "0 5 6 0123456789abcdef ",
    };
    for (size_t i = 0; i < sizeof(bad_identity) / sizeof(bad_identity[0]); i++) {
        snprintf(body, sizeof(body), "%ssegment a 1 2 3 0 %s\n", head, bad_identity[i]);
        text = with_end(body, 1);
        expect_parse_error(text, bad_identity[i]);
        free(text);
    }

    snprintf(body, sizeof(body), "%swhat 1\n", head);
    text = with_end(body, 0);
    expect_parse_error(text, "unknown line");
    free(text);

    snprintf(body, sizeof(body), "%sspool /t\n", head);
    text = with_end(body, 0);
    expect_parse_error(text, "second spool line");
    free(text);

    /* And the well-formed version of the same is accepted. */
    snprintf(body, sizeof(body), "%ssegment a 1 2 3 1\n", head);
    text = with_end(body, 1);
    struct checkpoint cp;
    char *err = offsets_checkpoint_parse(text, strlen(text), &cp);
    cr_assert_null(err, "%s", err);
    cr_assert_str_eq(cp.spool_dir, "/s");
    cr_assert_eq(cp.count, 1);
    cr_assert_str_eq(cp.entries[0].name, "a");
    cr_assert_eq(cp.entries[0].inode, 1);
    cr_assert_eq(cp.entries[0].offset, 2);
    cr_assert_eq(cp.entries[0].ordinal, 3);
    cr_assert(cp.entries[0].finished);
    offsets_checkpoint_free(&cp);
    free(text);
}

Test(checkpoint, escapes_decoded_strictly)
{
    /* Only '%' and two hex digits is an escape; anything else is taken literally, and the
     * spool line (parsed in place, not NUL-terminated) is read no further than its end. */
    const char *body = "kumo-nats-relay checkpoint 1\n"
                       "spool /a%4g%zz%41%e9%4\n"
                       "segment b%2%41%2 1 2 3 0\n";
    char *text = with_end(body, 1);
    size_t len = strlen(text);
    char *exact = malloc(len);
    memcpy(exact, text, len);
    struct checkpoint cp;
    char *err = offsets_checkpoint_parse(exact, len, &cp);
    cr_assert_null(err, "%s", err);
    cr_assert_str_eq(cp.spool_dir, "/a%4g%zzA\xe9%4");
    cr_assert_eq(cp.count, 1);
    cr_assert_str_eq(cp.entries[0].name, "b%2A%2");
    offsets_checkpoint_free(&cp);
    free(exact);
    free(text);
}
