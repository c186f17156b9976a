/* segment: the streaming reader. Segments are written the way kumod writes them (zstd
 * streaming, ZSTD_e_continue per record, ZSTD_e_end at close) and read while they grow. */
#include "segment.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

/* ---- temp dir ---- */

static char tmpdir[64];
static char seg_path[128];

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void setup(void)
{
    strcpy(tmpdir, "/tmp/relay-test-segment-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir), "mkdtemp: %s", strerror(errno));
    snprintf(seg_path, sizeof(seg_path), "%s/20250912-110801.440526026", tmpdir);
}

static void teardown(void)
{
    nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(segment, .init = setup, .fini = teardown);

static void append(const void *data, size_t len)
{
    int fd = open(seg_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    cr_assert_geq(fd, 0, "open %s: %s", seg_path, strerror(errno));
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        cr_assert_gt(n, 0, "write: %s", strerror(errno));
        p += n;
        len -= (size_t)n;
    }
    close(fd);
}

static void append_str(const char *s)
{
    append(s, strlen(s));
}

/* ---- record sets: one text buffer and each record's end offset ---- */

struct records {
    char *text;
    size_t len, cap;
    uint64_t *ends; /* ends[i] = end of record i; record i starts at ends[i-1] (or 0) */
    size_t count;
};

/* Arrays grow to the next power of two: growing by one element made the 20,000-record
 * tests quadratic, minutes under ASan, whose realloc always copies. */
static bool full(size_t count)
{
    return (count & (count - 1)) == 0;
}

static void records_add(struct records *rs, const char *line, size_t len)
{
    if (rs->len + len + 1 > rs->cap) {
        rs->cap = 2 * (rs->len + len + 1);
        rs->text = realloc(rs->text, rs->cap);
    }
    memcpy(rs->text + rs->len, line, len);
    rs->len += len;
    rs->text[rs->len] = '\0';
    if (full(rs->count))
        rs->ends = realloc(rs->ends, (rs->count ? 2 * rs->count : 1) * sizeof(*rs->ends));
    rs->ends[rs->count++] = rs->len;
}

/* A JSON record of exactly len bytes including its '\n' (len >= 64). */
static void records_add_sized(struct records *rs, size_t i, size_t len)
{
    char *line = malloc(len + 1);
    int head = snprintf(line, len, "{\"type\":\"Delivery\",\"n\":%zu,\"pad\":\"", i);
    for (size_t k = (size_t)head; k < len - 3; k++)
        line[k] = (char)('a' + (k * 7 + i * 13) % 26);
    memcpy(line + len - 3, "\"}\n", 3);
    records_add(rs, line, len);
    free(line);
}

/* n records of 300..1500 bytes, kumod-like. */
static struct records make_records(size_t n)
{
    struct records rs = {0};
    for (size_t i = 0; i < n; i++)
        records_add_sized(&rs, i, 300 + (i * 7919) % 1200);
    return rs;
}

static uint64_t rec_start(const struct records *rs, size_t i)
{
    return i == 0 ? 0 : rs->ends[i - 1];
}

static void records_free(struct records *rs)
{
    free(rs->text);
    free(rs->ends);
    memset(rs, 0, sizeof(*rs));
}

/* ---- zstd writer: kumod's way, into memory; synced to the file on demand ---- */

struct zwriter {
    ZSTD_CCtx *cctx;
    char *out;
    size_t len, cap;
    size_t synced; /* bytes of out already appended to the file */
};

static void zw_init(struct zwriter *z)
{
    memset(z, 0, sizeof(*z));
    z->cctx = ZSTD_createCCtx();
    cr_assert_not_null(z->cctx);
    cr_assert_not(ZSTD_isError(ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_compressionLevel, 3)));
}

static void zw_feed(struct zwriter *z, const void *data, size_t len, ZSTD_EndDirective mode)
{
    ZSTD_inBuffer in = {data, len, 0};
    for (;;) {
        if (z->cap - z->len < 65536) {
            z->cap = z->cap * 2 + 65536;
            z->out = realloc(z->out, z->cap);
        }
        ZSTD_outBuffer out = {z->out + z->len, z->cap - z->len, 0};
        size_t left = ZSTD_compressStream2(z->cctx, &out, &in, mode);
        cr_assert_not(ZSTD_isError(left), "compress: %s", ZSTD_getErrorName(left));
        z->len += out.pos;
        if (mode == ZSTD_e_continue ? in.pos == in.size : left == 0)
            break;
    }
}

/* Records [from, to) with ZSTD_e_continue, one call per record as kumod does. */
static void zw_records(struct zwriter *z, const struct records *rs, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        zw_feed(z, rs->text + rec_start(rs, i), rs->ends[i] - rec_start(rs, i), ZSTD_e_continue);
}

static void zw_sync(struct zwriter *z)
{
    append(z->out + z->synced, z->len - z->synced);
    z->synced = z->len;
}

static void zw_free(struct zwriter *z)
{
    ZSTD_freeCCtx(z->cctx);
    free(z->out);
}

/* One whole frame of rs written kumod's way, returned in memory. */
static char *compress_records(const struct records *rs, size_t *len)
{
    struct zwriter z;
    zw_init(&z);
    zw_records(&z, rs, 0, rs->count);
    zw_feed(&z, NULL, 0, ZSTD_e_end);
    ZSTD_freeCCtx(z.cctx);
    *len = z.len;
    return z.out;
}

/* How many decompressed bytes an independent streaming decoder gets out of src. */
static size_t decodable_bytes(const void *src, size_t len)
{
    ZSTD_DCtx *d = ZSTD_createDCtx();
    ZSTD_inBuffer in = {src, len, 0};
    static char out[1 << 17];
    size_t total = 0;
    for (;;) {
        ZSTD_outBuffer o = {out, sizeof(out), 0};
        size_t ret = ZSTD_decompressStream(d, &o, &in);
        cr_assert_not(ZSTD_isError(ret), "decode: %s", ZSTD_getErrorName(ret));
        total += o.pos;
        if (in.pos == in.size && o.pos < o.size)
            break;
    }
    ZSTD_freeDCtx(d);
    return total;
}

/* ---- reading ---- */

struct got {
    struct segment_record *recs; /* data points into datas[i] (NULL when oversize) */
    char **datas;
    size_t count;
};

static void got_free(struct got *g)
{
    for (size_t i = 0; i < g->count; i++)
        free(g->datas[i]);
    free(g->datas);
    free(g->recs);
    memset(g, 0, sizeof(*g));
}

/* Reads records until the reader says AGAIN or ERROR; returns which. */
static enum segment_read drain(struct segment_reader *r, struct got *g)
{
    for (;;) {
        struct segment_record rec;
        enum segment_read res = segment_reader_next(r, &rec);
        if (res != SEGMENT_RECORD)
            return res;
        if (full(g->count)) {
            size_t cap = g->count ? 2 * g->count : 1;
            g->recs = realloc(g->recs, cap * sizeof(*g->recs));
            g->datas = realloc(g->datas, cap * sizeof(*g->datas));
        }
        char *copy = NULL;
        if (rec.data) {
            copy = malloc(rec.len);
            memcpy(copy, rec.data, rec.len);
            rec.data = copy;
        }
        g->datas[g->count] = copy;
        g->recs[g->count++] = rec;
    }
}

/* g->recs[at + j] must be record first + j of rs, for j < n. */
static void expect_records(const struct got *g, size_t at, const struct records *rs, size_t first,
                           size_t n)
{
    cr_assert_geq(g->count, at + n, "got %zu records, want at least %zu", g->count, at + n);
    for (size_t j = 0; j < n; j++) {
        const struct segment_record *rec = &g->recs[at + j];
        size_t i = first + j;
        uint64_t start = rec_start(rs, i), end = rs->ends[i];
        cr_assert_eq(rec->ordinal, i, "record %zu: ordinal %lu", i, (unsigned long)rec->ordinal);
        cr_assert_eq(rec->start, start, "record %zu: start %lu, want %lu", i,
                     (unsigned long)rec->start, (unsigned long)start);
        cr_assert_eq(rec->end, end, "record %zu: end %lu, want %lu", i, (unsigned long)rec->end,
                     (unsigned long)end);
        cr_assert_eq(rec->len, end - start, "record %zu: len %zu", i, rec->len);
        cr_assert_not(rec->oversize, "record %zu: oversize", i);
        cr_assert_not_null(rec->data, "record %zu: no data", i);
        cr_assert(memcmp(rec->data, rs->text + start, rec->len) == 0, "record %zu: wrong bytes", i);
    }
}

static struct segment_reader *open_reader(uint64_t resume_offset, size_t max_record)
{
    char *err = NULL;
    struct segment_reader *r = segment_reader_open(seg_path, resume_offset, max_record, &err);
    cr_assert_not_null(r, "open: %s", err ? err : "?");
    cr_assert_null(err);
    return r;
}

static void expect_tail(const struct segment_reader *r, size_t partial, bool truncated)
{
    struct segment_tail tail;
    segment_reader_tail(r, &tail);
    cr_assert_eq(tail.partial_bytes, partial, "partial_bytes %zu, want %zu", tail.partial_bytes,
                 partial);
    cr_assert_eq(tail.frame_truncated, truncated, "frame_truncated %d, want %d",
                 tail.frame_truncated, truncated);
}

enum { MAX_RECORD = 1 << 20 };

/* ---- plain files ---- */

Test(segment, plain_framing)
{
    append_str("a\nbb\n\nccc\n");
    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(segment_reader_kind(r), SEGMENT_KIND_PLAIN);
    cr_assert_eq(g.count, 4);
    static const char *const want[] = {"a\n", "bb\n", "\n", "ccc\n"};
    static const uint64_t starts[] = {0, 2, 5, 6}, ends[] = {2, 5, 6, 10};
    for (size_t i = 0; i < 4; i++) {
        cr_assert_eq(g.recs[i].len, strlen(want[i]));
        cr_assert(memcmp(g.recs[i].data, want[i], g.recs[i].len) == 0);
        cr_assert_eq(g.recs[i].start, starts[i]);
        cr_assert_eq(g.recs[i].end, ends[i]);
        cr_assert_eq(g.recs[i].ordinal, i);
        cr_assert_not(g.recs[i].oversize);
    }
    cr_assert_eq(segment_reader_offset(r), 10);
    cr_assert_eq(segment_reader_ordinal(r), 4);
    expect_tail(r, 0, false);

    /* A line still being written is kept until its newline arrives. */
    append_str("dd");
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(g.count, 4);
    expect_tail(r, 2, false);
    append_str("d");
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    expect_tail(r, 3, false);
    append_str("\n{\"x\":1}\n");
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(g.count, 6);
    cr_assert(memcmp(g.datas[4], "ddd\n", 4) == 0);
    cr_assert_eq(g.recs[4].start, 10);
    cr_assert_eq(g.recs[4].end, 14);
    cr_assert_eq(g.recs[4].ordinal, 4);
    cr_assert(memcmp(g.datas[5], "{\"x\":1}\n", 8) == 0);
    cr_assert_eq(g.recs[5].start, 14);
    cr_assert_eq(g.recs[5].end, 22);
    cr_assert_eq(g.recs[5].ordinal, 5);
    cr_assert_eq(segment_reader_offset(r), 22);
    cr_assert_eq(segment_reader_ordinal(r), 6);
    expect_tail(r, 0, false);
    cr_assert_geq(segment_reader_fd(r), 0);
    segment_reader_close(r);
    got_free(&g);
}

Test(segment, plain_many_records)
{
    struct records rs = make_records(3000);
    append(rs.text, rs.len);
    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(g.count, rs.count);
    expect_records(&g, 0, &rs, 0, rs.count);
    cr_assert_eq(segment_reader_offset(r), rs.len);
    expect_tail(r, 0, false);
    segment_reader_close(r);
    got_free(&g);
    records_free(&rs);
}

Test(segment, plain_record_split_across_reads)
{
    /* A record longer than the initial 256 KiB buffer, arriving in pieces. */
    struct records rs = {0};
    records_add(&rs, "{\"first\":1}\n", 12);
    records_add_sized(&rs, 1, 300 * 1024);
    records_add_sized(&rs, 2, 700 * 1024);
    records_add(&rs, "{\"last\":1}\n", 11);
    append("", 0);
    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    size_t cut1 = rs.ends[0] + 200 * 1024, cut2 = rs.ends[1] + 500 * 1024;
    append(rs.text, cut1);
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(g.count, 1);
    expect_tail(r, 200 * 1024, false);
    append(rs.text + cut1, cut2 - cut1);
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(g.count, 2);
    expect_tail(r, 500 * 1024, false);
    append(rs.text + cut2, rs.len - cut2);
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(g.count, 4);
    expect_records(&g, 0, &rs, 0, 4);
    expect_tail(r, 0, false);
    segment_reader_close(r);
    got_free(&g);
    records_free(&rs);
}

/* Appends src in chunks of chunk bytes, draining the reader after each; all of rs must
 * arrive exactly once, in order. */
static void trickle(const char *src, size_t len, size_t chunk, const struct records *rs)
{
    append("", 0);
    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    for (size_t off = 0; off < len; off += chunk) {
        size_t n = len - off < chunk ? len - off : chunk;
        append(src + off, n);
        cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    }
    cr_assert_eq(g.count, rs->count, "got %zu records, want %zu", g.count, rs->count);
    expect_records(&g, 0, rs, 0, rs->count);
    expect_tail(r, 0, false);
    segment_reader_close(r);
    got_free(&g);
}

Test(segment, plain_trickle)
{
    struct records rs = make_records(100);
    trickle(rs.text, rs.len, 1, &rs);
    records_free(&rs);
}

Test(segment, plain_trickle_odd_chunks)
{
    struct records rs = make_records(2000);
    trickle(rs.text, rs.len, 7919, &rs);
    records_free(&rs);
}

/* ---- zstd ---- */

Test(segment, zstd_complete_frame)
{
    /* ~1.8 MB of records in one frame: many 128 KiB blocks, decoded through a 256 KiB
     * buffer. */
    struct records rs = make_records(2000);
    size_t zlen;
    char *z = compress_records(&rs, &zlen);
    append(z, zlen);
    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN, "error: %s", segment_reader_error(r));
    cr_assert_eq(segment_reader_kind(r), SEGMENT_KIND_ZSTD);
    cr_assert_eq(g.count, rs.count, "got %zu records, want %zu", g.count, rs.count);
    expect_records(&g, 0, &rs, 0, rs.count);
    cr_assert_eq(segment_reader_offset(r), rs.len);
    cr_assert_eq(segment_reader_ordinal(r), rs.count);
    expect_tail(r, 0, false);
    /* Nothing more arrives later. */
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(g.count, rs.count);
    segment_reader_close(r);
    got_free(&g);
    free(z);
    records_free(&rs);
}

Test(segment, zstd_record_longer_than_buffer)
{
    /* Records longer than the initial 256 KiB buffer, in a frame that arrives in pieces. */
    struct records rs = {0};
    records_add(&rs, "{\"first\":1}\n", 12);
    records_add_sized(&rs, 1, 300 * 1024);
    records_add_sized(&rs, 2, 900 * 1024);
    records_add(&rs, "{\"last\":1}\n", 11);
    size_t zlen;
    char *z = compress_records(&rs, &zlen);
    trickle(z, zlen, zlen / 5 + 1, &rs);
    free(z);
    records_free(&rs);
}

Test(segment, zstd_small_frame)
{
    struct records rs = make_records(3);
    size_t zlen;
    char *z = compress_records(&rs, &zlen);
    append(z, zlen);
    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(g.count, 3);
    expect_records(&g, 0, &rs, 0, 3);
    expect_tail(r, 0, false);
    segment_reader_close(r);
    got_free(&g);
    free(z);
    records_free(&rs);
}

Test(segment, zstd_highly_compressible)
{
    /* Identical records compress ~1000:1, so the whole frame is read at once and each
     * input chunk decodes to far more than the buffer holds. */
    struct records rs = {0};
    for (size_t i = 0; i < 20000; i++)
        records_add(&rs, "{\"type\":\"Delivery\",\"queue\":\"example.com\"}\n", 42);
    size_t zlen;
    char *z = compress_records(&rs, &zlen);
    cr_assert_lt(zlen, 16384);
    append(z, zlen);
    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN, "error: %s", segment_reader_error(r));
    cr_assert_eq(g.count, rs.count, "got %zu records, want %zu", g.count, rs.count);
    expect_records(&g, 0, &rs, 0, rs.count);
    expect_tail(r, 0, false);
    segment_reader_close(r);
    got_free(&g);
    free(z);
    records_free(&rs);
}

Test(segment, zstd_live_flushed)
{
    /* kumod's live segment after an explicit flush: every record so far is readable, the
     * frame is open. Then more records, then the frame ends. */
    struct records rs = make_records(1500);
    struct zwriter z;
    zw_init(&z);
    zw_records(&z, &rs, 0, 700);
    zw_feed(&z, NULL, 0, ZSTD_e_flush);
    zw_sync(&z);
    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN, "error: %s", segment_reader_error(r));
    cr_assert_eq(g.count, 700, "got %zu records, want 700", g.count);
    expect_records(&g, 0, &rs, 0, 700);
    expect_tail(r, 0, true);
    cr_assert_eq(segment_reader_offset(r), rs.ends[699]);

    zw_records(&z, &rs, 700, 1500);
    zw_feed(&z, NULL, 0, ZSTD_e_end);
    zw_sync(&z);
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN, "error: %s", segment_reader_error(r));
    cr_assert_eq(g.count, 1500, "got %zu records, want 1500", g.count);
    expect_records(&g, 0, &rs, 0, 1500);
    expect_tail(r, 0, false);
    segment_reader_close(r);
    got_free(&g);
    zw_free(&z);
    records_free(&rs);
}

Test(segment, zstd_live_flushed_any_size)
{
    /* After a flush every record written so far is on disk and must come out, however the
     * decoded blocks fall against the reader's buffer. Sizes around two and three blocks. */
    struct records rs = make_records(700);
    for (size_t n = 250; n <= 700; n += 9) {
        unlink(seg_path);
        struct zwriter z;
        zw_init(&z);
        zw_records(&z, &rs, 0, n);
        zw_feed(&z, NULL, 0, ZSTD_e_flush);
        zw_sync(&z);
        struct segment_reader *r = open_reader(0, MAX_RECORD);
        struct got g = {0};
        cr_assert_eq(drain(r, &g), SEGMENT_AGAIN, "error: %s", segment_reader_error(r));
        cr_assert_eq(g.count, n, "%zu records (%lu bytes) flushed, got %zu", n,
                     (unsigned long)rs.ends[n - 1], g.count);
        expect_records(&g, 0, &rs, 0, n);
        expect_tail(r, 0, true);
        segment_reader_close(r);
        got_free(&g);
        zw_free(&z);
    }
    records_free(&rs);
}

Test(segment, zstd_live_unflushed_blocks)
{
    /* No flush at all: only the blocks the compressor has emitted so far are on disk, and
     * they end mid-record. The reader returns exactly the records inside them. */
    struct records rs = make_records(1500);
    struct zwriter z;
    zw_init(&z);
    zw_records(&z, &rs, 0, 900);
    cr_assert_gt(z.len, 0, "the compressor emitted no block yet");
    zw_sync(&z);
    size_t decoded = decodable_bytes(z.out, z.len);
    cr_assert_gt(decoded, 0);
    cr_assert_lt(decoded, rs.ends[899]);
    size_t complete = 0;
    while (complete < rs.count && rs.ends[complete] <= decoded)
        complete++;
    cr_assert_gt(complete, 0);

    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN, "error: %s", segment_reader_error(r));
    cr_assert_eq(g.count, complete, "got %zu records, want %zu (decodable %zu bytes)", g.count,
                 complete, decoded);
    expect_records(&g, 0, &rs, 0, complete);
    expect_tail(r, decoded - rs.ends[complete - 1], true);

    /* Still live: more blocks, then the end of the frame. */
    zw_records(&z, &rs, 900, 1200);
    zw_sync(&z);
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN, "error: %s", segment_reader_error(r));
    cr_assert_geq(g.count, complete);
    zw_records(&z, &rs, 1200, 1500);
    zw_feed(&z, NULL, 0, ZSTD_e_end);
    zw_sync(&z);
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN, "error: %s", segment_reader_error(r));
    cr_assert_eq(g.count, 1500, "got %zu records, want 1500", g.count);
    expect_records(&g, 0, &rs, 0, 1500);
    expect_tail(r, 0, false);
    segment_reader_close(r);
    got_free(&g);
    zw_free(&z);
    records_free(&rs);
}

Test(segment, zstd_trickle)
{
    /* The compressed bytes land in arbitrary pieces (partial blocks, partial header). */
    struct records rs = make_records(1500);
    size_t zlen;
    char *z = compress_records(&rs, &zlen);
    trickle(z, zlen, 4093, &rs);
    free(z);
    records_free(&rs);
}

Test(segment, zstd_trickle_bytes)
{
    struct records rs = make_records(60);
    size_t zlen;
    char *z = compress_records(&rs, &zlen);
    trickle(z, zlen, 1, &rs);
    free(z);
    records_free(&rs);
}

Test(segment, zstd_truncated_frame_partial_line)
{
    /* kumod crashed: the frame never ended and the last line is half written. */
    struct records rs = make_records(500);
    const char *partial = "{\"type\":\"Delivery\",\"id\":\"d7ef132b5d77";
    struct zwriter z;
    zw_init(&z);
    zw_records(&z, &rs, 0, 500);
    zw_feed(&z, partial, strlen(partial), ZSTD_e_continue);
    zw_feed(&z, NULL, 0, ZSTD_e_flush);
    zw_sync(&z);
    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN, "error: %s", segment_reader_error(r));
    cr_assert_eq(g.count, 500);
    expect_records(&g, 0, &rs, 0, 500);
    expect_tail(r, strlen(partial), true);
    cr_assert_eq(segment_reader_offset(r), rs.len);
    segment_reader_close(r);
    got_free(&g);
    zw_free(&z);
    records_free(&rs);
}

Test(segment, zstd_truncated_mid_block)
{
    /* The file ends inside a compressed block: the records of the complete blocks are
     * returned, the decoded bytes after the last newline are the partial tail. */
    struct records rs = make_records(1500);
    size_t zlen;
    char *z = compress_records(&rs, &zlen);
    size_t cut = zlen * 2 / 3;
    append(z, cut);
    size_t decoded = decodable_bytes(z, cut);
    size_t complete = 0;
    while (complete < rs.count && rs.ends[complete] <= decoded)
        complete++;
    cr_assert_gt(complete, 0);
    cr_assert_lt(complete, rs.count);
    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN, "error: %s", segment_reader_error(r));
    cr_assert_eq(g.count, complete, "got %zu records, want %zu", g.count, complete);
    expect_records(&g, 0, &rs, 0, complete);
    expect_tail(r, decoded - rs.ends[complete - 1], true);
    segment_reader_close(r);
    got_free(&g);
    free(z);
    records_free(&rs);
}

Test(segment, zstd_frame_header_only)
{
    /* Only the first bytes of a frame (less than a block header). */
    struct records rs = make_records(5);
    size_t zlen;
    char *z = compress_records(&rs, &zlen);
    append(z, 6);
    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(g.count, 0);
    cr_assert_eq(segment_reader_kind(r), SEGMENT_KIND_ZSTD);
    expect_tail(r, 0, true);
    append(z + 6, zlen - 6);
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(g.count, 5);
    expect_records(&g, 0, &rs, 0, 5);
    expect_tail(r, 0, false);
    segment_reader_close(r);
    got_free(&g);
    free(z);
    records_free(&rs);
}

Test(segment, zstd_concatenated_frames)
{
    /* Two frames back to back; the first ends in the middle of a line. */
    struct records rs = make_records(600);
    size_t split_rec = 400, split_at = rec_start(&rs, split_rec) + 100;
    struct zwriter z;
    zw_init(&z);
    zw_feed(&z, rs.text, split_at, ZSTD_e_end);
    size_t first_len = z.len;
    cr_assert_not(ZSTD_isError(ZSTD_CCtx_reset(z.cctx, ZSTD_reset_session_only)));
    zw_feed(&z, rs.text + split_at, rs.len - split_at, ZSTD_e_end);
    cr_assert_gt(z.len, first_len);

    append(z.out, first_len);
    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN, "error: %s", segment_reader_error(r));
    cr_assert_eq(g.count, split_rec);
    expect_records(&g, 0, &rs, 0, split_rec);
    expect_tail(r, 100, false);
    append(z.out + first_len, z.len - first_len);
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN, "error: %s", segment_reader_error(r));
    cr_assert_eq(g.count, rs.count);
    expect_records(&g, 0, &rs, 0, rs.count);
    expect_tail(r, 0, false);
    segment_reader_close(r);
    got_free(&g);
    zw_free(&z);
    records_free(&rs);
}

Test(segment, zstd_many_small_frames)
{
    /* One frame per record, as a producer that closes a frame per write would make. */
    struct records rs = make_records(50);
    for (size_t i = 0; i < rs.count; i++) {
        size_t cap = ZSTD_compressBound(rs.ends[i] - rec_start(&rs, i));
        char *buf = malloc(cap);
        size_t n =
            ZSTD_compress(buf, cap, rs.text + rec_start(&rs, i), rs.ends[i] - rec_start(&rs, i), 3);
        cr_assert_not(ZSTD_isError(n));
        append(buf, n);
        free(buf);
    }
    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN, "error: %s", segment_reader_error(r));
    cr_assert_eq(g.count, rs.count);
    expect_records(&g, 0, &rs, 0, rs.count);
    expect_tail(r, 0, false);
    segment_reader_close(r);
    got_free(&g);
    records_free(&rs);
}

/* Offset of the n-th block header (0-based) of a single zstd frame. */
static size_t block_header_offset(const unsigned char *z, size_t zlen, int n)
{
    unsigned char fhd = z[4];
    int fcs_flag = fhd >> 6, single = (fhd >> 5) & 1, dict_flag = fhd & 3;
    static const int dict_size[] = {0, 1, 2, 4};
    static const int fcs_size[] = {0, 2, 4, 8};
    size_t off = 4 + 1 + (single ? 0 : 1) + (size_t)dict_size[dict_flag] +
                 (size_t)(fcs_flag == 0 ? single : fcs_size[fcs_flag]);
    for (int i = 0; i < n; i++) {
        cr_assert_lt(off + 3, zlen);
        uint32_t h = z[off] | (uint32_t)z[off + 1] << 8 | (uint32_t)z[off + 2] << 16;
        cr_assert_eq(h & 1, 0, "block %d is the last", i);
        int type = (h >> 1) & 3;
        off += 3 + (type == 1 ? 1 : (h >> 3));
    }
    return off;
}

Test(segment, zstd_corrupt_block)
{
    /* The eighth block's header says "reserved type": an error with zstd's reason, not a
     * hang and not garbage. Records decoded by earlier calls come out first, exactly. */
    struct records rs = make_records(1500);
    size_t zlen;
    unsigned char *z = (unsigned char *)compress_records(&rs, &zlen);
    size_t off = block_header_offset(z, zlen, 7);
    z[off] |= 0x06; /* block type 3: reserved */
    append(z, zlen);
    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_ERROR);
    cr_assert_str_eq(segment_reader_error(r), "zstd: Data corruption detected");
    cr_assert_gt(g.count, 0);
    cr_assert_lt(g.count, rs.count);
    expect_records(&g, 0, &rs, 0, g.count);
    cr_assert_leq(g.recs[g.count - 1].end, 7 * 128 * 1024);
    segment_reader_close(r);
    got_free(&g);
    free(z);
    records_free(&rs);
}

/* The records that end within the first `blocks` 128 KiB blocks. */
static size_t records_within(const struct records *rs, size_t blocks)
{
    size_t n = 0;
    while (n < rs->count && rs->ends[n] <= blocks * 128 * 1024)
        n++;
    return n;
}

Test(segment, zstd_corrupt_block_keeps_every_block_before_it)
{
    /* zstd gives no output for a call that meets an error, and one call decodes many
     * blocks: the reader decodes again so that every block before the bad one comes out,
     * from the start or from a resume offset, and says where it stopped. */
    struct records rs = make_records(1500);
    size_t zlen;
    unsigned char *z = (unsigned char *)compress_records(&rs, &zlen);
    size_t off = block_header_offset(z, zlen, 7);
    z[off] |= 0x06;
    append(z, zlen);
    size_t want = records_within(&rs, 7);
    for (size_t resume = 0; resume < want; resume += want / 3) {
        struct segment_reader *r = open_reader(resume ? rs.ends[resume - 1] : 0, MAX_RECORD);
        struct got g = {0};
        cr_assert_eq(drain(r, &g), SEGMENT_ERROR);
        cr_assert_eq(g.count, want - resume, "resume %zu: got %zu records, want %zu", resume,
                     g.count, want - resume);
        expect_records(&g, 0, &rs, resume, g.count);
        cr_assert_eq(segment_reader_offset(r), rs.ends[want - 1]);
        struct segment_damage d;
        segment_reader_damage(r, &d);
        cr_assert_eq(d.compressed_offset, off, "compressed offset %lu, want %zu",
                     (unsigned long)d.compressed_offset, off);
        cr_assert_eq(d.compressed_size, zlen);
        cr_assert_eq(d.decoded_offset, 7 * 128 * 1024);
        cr_assert_str_eq(segment_reader_error(r), "zstd: Data corruption detected");
        /* The error stays: nothing more, and no second salvage. */
        cr_assert_eq(drain(r, &g), SEGMENT_ERROR);
        cr_assert_eq(g.count, want - resume);
        /* The fingerprint is of the file's first bytes, read twice or not. */
        uint64_t hash;
        size_t len;
        segment_reader_fingerprint(r, &hash, &len);
        cr_assert_eq(len, SEGMENT_FINGERPRINT_BYTES);
        cr_assert_eq(hash, segment_fingerprint(z, SEGMENT_FINGERPRINT_BYTES));
        segment_reader_close(r);
        got_free(&g);
    }
    free(z);
    records_free(&rs);
}

Test(segment, fingerprint_and_decoded_bytes)
{
    append_str("{\"a\":1}\n{\"b\":2}\npartial");
    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    uint64_t hash;
    size_t len;
    segment_reader_fingerprint(r, &hash, &len);
    cr_assert_eq(len, 23, "len %zu", len);
    cr_assert_eq(hash, segment_fingerprint("{\"a\":1}\n{\"b\":2}\npartial", 23));
    cr_assert_eq(hash, segment_fingerprint_update(segment_fingerprint("{\"a\":1}\n", 8),
                                                  "{\"b\":2}\npartial", 15));
    cr_assert_eq(segment_reader_decoded(r), 23);
    cr_assert_eq(segment_reader_bytes_read(r), 23);
    cr_assert_eq(segment_reader_offset(r), 16);
    segment_reader_close(r);
    got_free(&g);
}

Test(segment, zstd_corrupt_first_block)
{
    struct records rs = make_records(100);
    size_t zlen;
    unsigned char *z = (unsigned char *)compress_records(&rs, &zlen);
    z[block_header_offset(z, zlen, 0)] |= 0x06;
    append(z, zlen);
    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_ERROR);
    cr_assert_eq(g.count, 0);
    cr_assert_str_eq(segment_reader_error(r), "zstd: Data corruption detected");
    segment_reader_close(r);
    free(z);
    records_free(&rs);
}

Test(segment, zstd_garbage_after_magic)
{
    /* A frame header with its reserved bit set. */
    unsigned char bad[32];
    memset(bad, 0xFF, sizeof(bad));
    memcpy(bad, "\x28\xB5\x2F\xFD", 4);
    append(bad, sizeof(bad));
    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_ERROR);
    cr_assert_eq(g.count, 0);
    cr_assert_str_eq(segment_reader_error(r), "zstd: Unsupported frame parameter");
    segment_reader_close(r);
}

/* ---- short and empty files ---- */

Test(segment, empty_file)
{
    append("", 0);
    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(g.count, 0);
    cr_assert_eq(segment_reader_kind(r), SEGMENT_KIND_UNKNOWN);
    cr_assert_eq(segment_reader_offset(r), 0);
    cr_assert_eq(segment_reader_ordinal(r), 0);
    expect_tail(r, 0, false);
    segment_reader_close(r);
}

Test(segment, short_live_zstd_file)
{
    /* Fewer than 4 bytes: not yet known to be zstd; then the frame arrives. */
    struct records rs = make_records(10);
    size_t zlen;
    char *z = compress_records(&rs, &zlen);
    append(z, 2);
    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(segment_reader_kind(r), SEGMENT_KIND_UNKNOWN);
    append(z + 2, 1);
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(segment_reader_kind(r), SEGMENT_KIND_UNKNOWN);
    cr_assert_eq(g.count, 0);
    append(z + 3, zlen - 3);
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(segment_reader_kind(r), SEGMENT_KIND_ZSTD);
    cr_assert_eq(g.count, 10);
    expect_records(&g, 0, &rs, 0, 10);
    expect_tail(r, 0, false);
    segment_reader_close(r);
    got_free(&g);
    free(z);
    records_free(&rs);
}

Test(segment, short_live_plain_file)
{
    /* Two bytes that cannot begin the zstd magic: plain at once. */
    append_str("{\"");
    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(segment_reader_kind(r), SEGMENT_KIND_PLAIN);
    cr_assert_eq(g.count, 0);
    expect_tail(r, 2, false);
    append_str("a\":1}\n{");
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(g.count, 1);
    cr_assert_eq(g.recs[0].len, 8);
    cr_assert(memcmp(g.datas[0], "{\"a\":1}\n", 8) == 0);
    cr_assert_eq(g.recs[0].start, 0);
    cr_assert_eq(g.recs[0].end, 8);
    expect_tail(r, 1, false);
    segment_reader_close(r);
    got_free(&g);
}

Test(segment, short_done_plain_files)
{
    /* Files of fewer than four bytes that are whole: their records come out. */
    static const char *const files[] = {"{}\n", "\n", "a\n", "\n\n\n"};
    static const size_t records[] = {1, 1, 1, 3};
    for (size_t i = 0; i < 4; i++) {
        unlink(seg_path);
        append_str(files[i]);
        struct segment_reader *r = open_reader(0, MAX_RECORD);
        struct got g = {0};
        cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
        cr_assert_eq(segment_reader_kind(r), SEGMENT_KIND_PLAIN, "file %zu", i);
        cr_assert_eq(g.count, records[i], "file %zu: %zu records", i, g.count);
        cr_assert_eq(g.recs[g.count - 1].end, strlen(files[i]));
        cr_assert(memcmp(g.datas[0], files[i], g.recs[0].len) == 0);
        expect_tail(r, 0, false);
        segment_reader_close(r);
        got_free(&g);
    }
}

Test(segment, magic_prefix_waits)
{
    /* "\x28\xB5\x2F" may still become a zstd frame: wait, and do not call it plain. */
    append("\x28\xB5\x2F", 3);
    struct segment_reader *r = open_reader(0, MAX_RECORD);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(segment_reader_kind(r), SEGMENT_KIND_UNKNOWN);
    /* A fourth byte that breaks the magic makes it a plain file after all. */
    append_str("x\n");
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(segment_reader_kind(r), SEGMENT_KIND_PLAIN);
    cr_assert_eq(g.count, 1);
    cr_assert_eq(g.recs[0].len, 5);
    cr_assert(memcmp(g.datas[0], "\x28\xB5\x2Fx\n", 5) == 0);
    segment_reader_close(r);
    got_free(&g);
}

Test(segment, open_missing_file)
{
    char *err = NULL;
    struct segment_reader *r = segment_reader_open(seg_path, 0, MAX_RECORD, &err);
    cr_assert_null(r);
    char want[256];
    snprintf(want, sizeof(want), "cannot open %s: No such file or directory", seg_path);
    cr_assert_str_eq(err, want);
    free(err);
}

/* ---- resume ---- */

static void expect_resume(size_t k, const struct records *rs)
{
    /* Resume after record k: the first record returned is k+1. */
    struct segment_reader *r = open_reader(rs->ends[k], MAX_RECORD);
    cr_assert_eq(segment_reader_offset(r), rs->ends[k]);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN, "error: %s", segment_reader_error(r));
    cr_assert_eq(g.count, rs->count - k - 1, "resume after %zu: got %zu records", k, g.count);
    if (g.count > 0) {
        cr_assert_eq(g.recs[0].ordinal, k + 1);
        cr_assert_eq(g.recs[0].start, rs->ends[k]);
        cr_assert_eq(g.recs[0].end, rs->ends[k + 1]);
    }
    expect_records(&g, 0, rs, k + 1, g.count);
    cr_assert_eq(segment_reader_offset(r), rs->len);
    cr_assert_eq(segment_reader_ordinal(r), rs->count);
    segment_reader_close(r);
    got_free(&g);
}

Test(segment, resume_plain)
{
    struct records rs = make_records(1000);
    append(rs.text, rs.len);
    expect_resume(0, &rs);
    expect_resume(3, &rs);
    expect_resume(500, &rs);
    expect_resume(998, &rs);
    expect_resume(999, &rs);
    records_free(&rs);
}

Test(segment, resume_zstd)
{
    struct records rs = make_records(1000);
    size_t zlen;
    char *z = compress_records(&rs, &zlen);
    append(z, zlen);
    expect_resume(0, &rs);
    expect_resume(3, &rs);
    expect_resume(500, &rs);
    expect_resume(998, &rs);
    expect_resume(999, &rs);
    free(z);
    records_free(&rs);
}

Test(segment, resume_zstd_live)
{
    /* Resume inside a live segment whose committed offset is not on disk yet. */
    struct records rs = make_records(600);
    struct zwriter z;
    zw_init(&z);
    zw_records(&z, &rs, 0, 200);
    zw_feed(&z, NULL, 0, ZSTD_e_flush);
    zw_sync(&z);
    struct segment_reader *r = open_reader(rs.ends[299], MAX_RECORD);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(g.count, 0);
    cr_assert_eq(segment_reader_offset(r), rs.ends[299]);
    zw_records(&z, &rs, 200, 600);
    zw_feed(&z, NULL, 0, ZSTD_e_end);
    zw_sync(&z);
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(g.count, 300);
    expect_records(&g, 0, &rs, 300, 300);
    segment_reader_close(r);
    got_free(&g);
    zw_free(&z);
    records_free(&rs);
}

/* ---- oversize records ---- */

struct line_spec {
    size_t len;
    bool oversize;
};

static const struct line_spec oversize_lines[] = {
    {64, false}, {1000, false}, {1001, true},  {64, false},  {4096, true},   {10000, true},
    {64, false}, {5000, true},  {20000, true}, {999, false}, {300000, true}, {64, false},
};

static struct records make_oversize_records(void)
{
    struct records rs = {0};
    for (size_t i = 0; i < sizeof(oversize_lines) / sizeof(oversize_lines[0]); i++)
        records_add_sized(&rs, i, oversize_lines[i].len);
    return rs;
}

static void expect_oversize_records(const struct got *g, const struct records *rs)
{
    size_t n = sizeof(oversize_lines) / sizeof(oversize_lines[0]);
    cr_assert_eq(g->count, n, "got %zu records, want %zu", g->count, n);
    for (size_t i = 0; i < n; i++) {
        const struct segment_record *rec = &g->recs[i];
        cr_assert_eq(rec->start, rec_start(rs, i), "record %zu: start %lu, want %lu", i,
                     (unsigned long)rec->start, (unsigned long)rec_start(rs, i));
        cr_assert_eq(rec->end, rs->ends[i], "record %zu: end", i);
        cr_assert_eq(rec->len, oversize_lines[i].len, "record %zu: len %zu", i, rec->len);
        cr_assert_eq(rec->ordinal, i, "record %zu: ordinal", i);
        cr_assert_eq(rec->oversize, oversize_lines[i].oversize, "record %zu (%zu bytes): oversize",
                     i, rec->len);
        if (oversize_lines[i].oversize) {
            cr_assert_null(rec->data, "record %zu: oversize data kept", i);
        } else {
            cr_assert_not_null(rec->data);
            cr_assert(memcmp(rec->data, rs->text + rec->start, rec->len) == 0);
        }
    }
}

Test(segment, oversize_plain)
{
    struct records rs = make_oversize_records();
    append(rs.text, rs.len);
    struct segment_reader *r = open_reader(0, 1000);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    expect_oversize_records(&g, &rs);
    expect_tail(r, 0, false);
    segment_reader_close(r);
    got_free(&g);
    records_free(&rs);
}

Test(segment, oversize_zstd)
{
    struct records rs = make_oversize_records();
    size_t zlen;
    char *z = compress_records(&rs, &zlen);
    append(z, zlen);
    struct segment_reader *r = open_reader(0, 1000);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    expect_oversize_records(&g, &rs);
    expect_tail(r, 0, false);
    segment_reader_close(r);
    got_free(&g);
    free(z);
    records_free(&rs);
}

Test(segment, oversize_trickle)
{
    struct records rs = make_oversize_records();
    append("", 0);
    struct segment_reader *r = open_reader(0, 1000);
    struct got g = {0};
    for (size_t off = 0; off < rs.len; off += 997) {
        append(rs.text + off, rs.len - off < 997 ? rs.len - off : 997);
        cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    }
    expect_oversize_records(&g, &rs);
    segment_reader_close(r);
    got_free(&g);
    records_free(&rs);
}

Test(segment, oversize_partial_tail)
{
    /* A long line still being written counts whole in the tail, discarded bytes included. */
    append_str("{\"a\":1}\n");
    char *big = malloc(9000);
    memset(big, 'x', 9000);
    append(big, 9000);
    struct segment_reader *r = open_reader(0, 1000);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(g.count, 1);
    expect_tail(r, 9000, false);
    append_str("\n{\"b\":2}\n");
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(g.count, 3);
    cr_assert(g.recs[1].oversize);
    cr_assert_null(g.recs[1].data);
    cr_assert_eq(g.recs[1].start, 8);
    cr_assert_eq(g.recs[1].end, 9009);
    cr_assert_eq(g.recs[1].len, 9001);
    cr_assert_eq(g.recs[2].start, 9009);
    cr_assert_eq(g.recs[2].end, 9017);
    cr_assert(memcmp(g.datas[2], "{\"b\":2}\n", 8) == 0);
    expect_tail(r, 0, false);
    segment_reader_close(r);
    got_free(&g);
    free(big);
}

Test(segment, resume_past_oversize)
{
    struct records rs = make_oversize_records();
    append(rs.text, rs.len);
    /* After record 5 (10000 bytes, oversize). */
    struct segment_reader *r = open_reader(rs.ends[5], 1000);
    struct got g = {0};
    cr_assert_eq(drain(r, &g), SEGMENT_AGAIN);
    cr_assert_eq(g.count, 6);
    cr_assert_eq(g.recs[0].ordinal, 6);
    cr_assert_eq(g.recs[0].start, rs.ends[5]);
    cr_assert_eq(g.recs[0].end, rs.ends[6]);
    segment_reader_close(r);
    got_free(&g);
    records_free(&rs);
}
