/* spool: the directory scan, the inotify events driving added/changed/removed through
 * the loop, several directories with their tags, and the identity check of a file
 * against its checkpoint entry. */
#include "config.h"
#include "loop.h"
#include "offsets.h"
#include "segment.h"
#include "msgid.h"
#include "spool.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- temp dirs ---- */

static char tmpdir[64];

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    chmod(path, 0700); /* a done file or a read-only dir must still go */
    return remove(path);
}

static void setup(void)
{
    strcpy(tmpdir, "/tmp/relay-test-spool-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir), "mkdtemp: %s", strerror(errno));
}

static void teardown(void)
{
    nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(spool, .init = setup, .fini = teardown);

static char *in_tmp(const char *name)
{
    static char paths[8][256];
    static int next;
    char *p = paths[next++ % 8];
    snprintf(p, sizeof(paths[0]), "%s/%s", tmpdir, name);
    return p;
}

static void append(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
    size_t len = strlen(text);
    cr_assert_eq(write(fd, text, len), (ssize_t)len);
    close(fd);
}

static uint64_t inode_of(const char *path)
{
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "stat %s: %s", path, strerror(errno));
    return (uint64_t)st.st_ino;
}

/* ---- what the spool reported ---- */

struct recorder {
    char log[64][128]; /* "added a.log", "changed a.log", "removed a.log" */
    size_t count;
    size_t changes;
};

static struct recorder rec;

static void note(const char *what, const struct segment *seg)
{
    if (strcmp(what, "changed") == 0)
        rec.changes++;
    cr_assert_lt(rec.count, 64);
    snprintf(rec.log[rec.count++], sizeof(rec.log[0]), "%s %s", what, seg->id_name);
}

static void on_added(void *ctx, struct segment *seg)
{
    note("added", seg);
}

static void on_changed(void *ctx, struct segment *seg)
{
    note("changed", seg);
}

static void on_removed(void *ctx, struct segment *seg)
{
    note("removed", seg);
    cr_expect(seg->gone);
    spool_segment_free(seg); /* the spool has forgotten it */
}

static const struct spool_events events = {on_added, on_changed, on_removed, NULL};

/* The log without the "changed" lines, joined by ", ". */
static const char *structural(void)
{
    static char out[2048];
    out[0] = '\0';
    for (size_t i = 0; i < rec.count; i++) {
        if (strncmp(rec.log[i], "changed ", 8) == 0)
            continue;
        if (out[0])
            strcat(out, ", ");
        strcat(out, rec.log[i]);
    }
    return out;
}

static bool logged(const char *line)
{
    for (size_t i = 0; i < rec.count; i++)
        if (strcmp(rec.log[i], line) == 0)
            return true;
    return false;
}

static void reset_log(void)
{
    memset(&rec, 0, sizeof(rec));
}

/* ---- running the loop until something happened ---- */

struct until {
    bool (*cond)(void *arg);
    void *arg;
    uint64_t deadline;
    bool met;
};

static void check_until(struct loop *loop, void *arg)
{
    struct until *u = arg;
    if (u->cond(u->arg)) {
        u->met = true;
        loop_stop(loop);
    } else if (loop_now_ms() >= u->deadline) {
        loop_stop(loop);
    } else {
        loop_wake_within(loop, 5);
    }
}

/* Runs the loop until cond holds (true) or two seconds passed (false). */
static bool run_until(struct loop *loop, bool (*cond)(void *), void *arg)
{
    struct until u = {cond, arg, loop_now_ms() + 2000, false};
    loop_set_before_sleep(loop, check_until, &u);
    loop_run(loop);
    loop_set_before_sleep(loop, NULL, NULL);
    return u.met;
}

static bool has_line(void *line)
{
    return logged(line);
}

static bool changed_at_least(void *n)
{
    return rec.changes >= *(size_t *)n;
}

/* ---- one directory ---- */

struct fixture {
    struct loop *loop;
    struct spool *spool;
    struct spool_source sources[2];
};

static void open_spool(struct fixture *f, size_t count)
{
    reset_log();
    f->loop = loop_create();
    cr_assert_not_null(f->loop);
    char *err = NULL;
    f->spool = spool_open(f->sources, count, f->loop, &events, &err);
    cr_assert_not_null(f->spool, "spool_open: %s", err);
}

static void close_spool(struct fixture *f)
{
    spool_close(f->spool);
    loop_destroy(f->loop);
}

static struct fixture one_dir(const char *pattern)
{
    struct fixture f = {.sources = {{.dir = tmpdir, .pattern = (char *)pattern}}};
    return f;
}

Test(spool, scan_adds_matching_regular_files_in_name_order)
{
    append(in_tmp("20250101-000002.log"), "b");
    append(in_tmp("20250101-000001.log"), "a");
    append(in_tmp(".20250101-000000.log"), "dot file: kumod's or ours, never a segment");
    append(in_tmp("notes.txt"), "not the pattern");
    cr_assert_eq(mkdir(in_tmp("20250101-000003.log"), 0755), 0);
    cr_assert_eq(mkfifo(in_tmp("20250101-000004.log"), 0644), 0);
    struct fixture f = one_dir("*.log");
    open_spool(&f, 1);
    spool_scan(f.spool);

    cr_expect_str_eq(structural(), "added 20250101-000001.log, added 20250101-000002.log");
    cr_assert_eq(spool_segment_count(f.spool), 2);
    struct segment *a = spool_segment(f.spool, 0), *b = spool_segment(f.spool, 1);
    cr_expect_str_eq(a->name, "20250101-000001.log");
    cr_expect_str_eq(a->file, "20250101-000001.log");
    cr_expect_str_eq(a->path, in_tmp("20250101-000001.log"));
    cr_expect_eq(a->inode, inode_of(a->path));
    cr_expect_eq(a->size, 1);
    cr_expect_eq(a->dir, 0);
    cr_expect_eq(a->generation, 0);
    cr_expect_not(a->done);
    cr_expect_str_eq(b->name, "20250101-000002.log");
    cr_expect_eq(spool_find(f.spool, "20250101-000002.log"), b);
    cr_expect_null(spool_find(f.spool, "20250101-000003.log"));
    cr_expect_null(spool_find(f.spool, ".20250101-000000.log"));

    /* A second scan of an unchanged directory adds nothing and removes nothing. */
    reset_log();
    spool_scan(f.spool);
    cr_expect_str_eq(structural(), "");
    cr_expect_eq(rec.changes, 2);
    close_spool(&f);
}

Test(spool, dot_files_are_never_segments_even_for_a_pattern_of_dots)
{
    append(in_tmp(".checkpoint"), "x");
    append(in_tmp("seg"), "x");
    struct fixture f = one_dir(".*");
    open_spool(&f, 1);
    spool_scan(f.spool);
    cr_expect_str_eq(structural(), "");
    close_spool(&f);
}

/* A symlink named like a segment is a segment: its reader refuses to follow it (O_NOFOLLOW)
 * and says so, and --once counts it as not relayed (test_faults_ops.py). Passing over it
 * would skip whatever it was meant to hold without a word. */
Test(spool, a_symlink_is_noted_for_its_reader_to_refuse)
{
    append(in_tmp("real"), "record\n");
    cr_assert_eq(symlink(in_tmp("real"), in_tmp("link")), 0);
    struct fixture f = one_dir("*");
    open_spool(&f, 1);
    spool_scan(f.spool);
    cr_expect_str_eq(structural(), "added link, added real");

    /* Also when it appears while the relay runs. */
    cr_assert_eq(symlink(in_tmp("real"), in_tmp("link2")), 0);
    append(in_tmp("after"), "x");
    cr_assert(run_until(f.loop, has_line, "added after"));
    cr_expect_str_eq(structural(), "added link, added real, added link2, added after");
    close_spool(&f);
}

Test(spool, done_is_the_write_bits_cleared)
{
    append(in_tmp("live"), "x");
    append(in_tmp("done"), "x");
    cr_assert_eq(chmod(in_tmp("done"), 0444), 0);
    struct fixture f = one_dir("*");
    open_spool(&f, 1);
    spool_scan(f.spool);
    cr_expect(spool_find(f.spool, "done")->done);
    cr_expect_not(spool_find(f.spool, "live")->done);

    struct segment *live = spool_find(f.spool, "live");
    cr_assert_eq(chmod(in_tmp("live"), 0400), 0);
    cr_expect(spool_refresh_mode(live));
    cr_expect(live->done);
    cr_assert_eq(unlink(in_tmp("live")), 0);
    cr_expect_not(spool_refresh_mode(live), "a deleted file is gone");
    close_spool(&f);
}

Test(spool, a_scan_removes_what_went_away_unnoticed)
{
    append(in_tmp("a"), "x");
    append(in_tmp("b"), "x");
    struct fixture f = one_dir("*");
    open_spool(&f, 1);
    spool_scan(f.spool);
    cr_assert_eq(unlink(in_tmp("a")), 0);
    reset_log();
    spool_scan(f.spool); /* as on IN_Q_OVERFLOW or the periodic rescan */
    cr_expect_str_eq(structural(), "removed a");
    cr_assert_eq(spool_segment_count(f.spool), 1);
    cr_expect_str_eq(spool_segment(f.spool, 0)->name, "b");
    close_spool(&f);
}

/* ---- inotify events through the loop ---- */

Test(spool, events_drive_added_changed_and_removed)
{
    struct fixture f = one_dir("*.log");
    open_spool(&f, 1);
    spool_scan(f.spool);

    append(in_tmp("a.log"), "one\n");
    cr_assert(run_until(f.loop, has_line, "added a.log"), "log: %s", structural());
    struct segment *a = spool_find(f.spool, "a.log");
    cr_assert_not_null(a);
    cr_expect_not(a->done);

    size_t want = rec.changes + 1;
    append(in_tmp("a.log"), "two\n");
    cr_assert(run_until(f.loop, changed_at_least, &want), "no change for a write");

    cr_assert_eq(chmod(in_tmp("a.log"), 0444), 0);
    want = rec.changes + 1;
    cr_assert(run_until(f.loop, changed_at_least, &want), "no change for chmod");
    cr_expect(a->done, "chmod a-w: kumod closed it");

    cr_assert_eq(rename(in_tmp("a.log"), in_tmp("b.log")), 0);
    cr_assert(run_until(f.loop, has_line, "added b.log"), "log: %s", structural());
    cr_expect_str_eq(structural(), "added a.log, removed a.log, added b.log");
    cr_expect(spool_find(f.spool, "b.log")->done, "the mode moves with the file");

    cr_assert_eq(unlink(in_tmp("b.log")), 0);
    cr_assert(run_until(f.loop, has_line, "removed b.log"), "log: %s", structural());
    cr_expect_eq(spool_segment_count(f.spool), 0);

    /* Files that do not match, and a rename out of the pattern, are not segments. */
    append(in_tmp("c.txt"), "x");
    append(in_tmp("d.log"), "x");
    cr_assert(run_until(f.loop, has_line, "added d.log"));
    cr_assert_eq(rename(in_tmp("d.log"), in_tmp("d.old")), 0);
    cr_assert(run_until(f.loop, has_line, "removed d.log"));
    cr_expect_str_eq(structural(), "added a.log, removed a.log, added b.log, removed b.log, "
                                   "added d.log, removed d.log");
    close_spool(&f);
}

/* A name seen before gets the next generation: its message ids differ from the old
 * file's ("name~1"). */
Test(spool, a_name_made_again_gets_the_next_generation)
{
    append(in_tmp("s"), "old\n");
    struct fixture f = one_dir("*");
    open_spool(&f, 1);
    spool_scan(f.spool);
    cr_expect_str_eq(spool_find(f.spool, "s")->id_name, "s");

    cr_assert_eq(unlink(in_tmp("s")), 0);
    cr_assert(run_until(f.loop, has_line, "removed s"));
    append(in_tmp("s"), "new\n");
    cr_assert(run_until(f.loop, has_line, "added s~1"), "log: %s", structural());
    struct segment *s = spool_find(f.spool, "s");
    cr_expect_eq(s->generation, 1);
    cr_expect_str_eq(s->id_name, "s~1");

    /* Replaced under the same name without a delete event in between (rename over it):
     * a new inode, so another file, and the generation after that. */
    append(in_tmp("t"), "third\n");
    cr_assert(run_until(f.loop, has_line, "added t"));
    cr_assert_eq(rename(in_tmp("t"), in_tmp("s")), 0);
    cr_assert(run_until(f.loop, has_line, "added s~2"), "log: %s", structural());
    cr_expect_str_eq(structural(), "added s, removed s, added s~1, added t, removed t, "
                                   "removed s~1, added s~2");
    cr_expect_eq(spool_find(f.spool, "s")->inode, inode_of(in_tmp("s")));

    close_spool(&f);
}

Test(spool, a_scan_notices_a_replaced_file)
{
    append(in_tmp("s"), "old\n");
    struct fixture f = one_dir("*");
    open_spool(&f, 1);
    spool_scan(f.spool);
    /* Keep the old inode busy so that the new file cannot reuse its number. */
    int keep = open(in_tmp("s"), O_RDONLY);
    cr_assert_eq(unlink(in_tmp("s")), 0);
    append(in_tmp("s"), "new\n");
    reset_log();
    spool_scan(f.spool); /* before the loop ran: the events are still queued */
    cr_expect_str_eq(structural(), "removed s, added s~1");
    close(keep);
    close_spool(&f);
}

/* ---- several directories ---- */

Test(spool, several_directories_with_their_tags)
{
    char *d1 = strdup(in_tmp("one")), *d2 = strdup(in_tmp("two"));
    cr_assert_eq(mkdir(d1, 0755), 0);
    cr_assert_eq(mkdir(d2, 0755), 0);
    char p[300];
    snprintf(p, sizeof(p), "%s/seg", d1);
    append(p, "x");
    snprintf(p, sizeof(p), "%s/seg", d2);
    append(p, "x");
    snprintf(p, sizeof(p), "%s/other", d2);
    append(p, "x");
    struct fixture f = {.sources = {{.dir = d1, .pattern = "*"}, {.dir = d2, .pattern = "s*"}}};
    open_spool(&f, 2);
    spool_scan(f.spool);

    cr_expect_eq(spool_dir_count(f.spool), 2);
    cr_expect_str_eq(spool_dir_path(f.spool, 0), d1);
    cr_expect_str_eq(spool_dir_path(f.spool, 1), d2);
    char *tagged = msgid_segment_name(d2, 1, "seg");
    cr_expect_eq(strlen(tagged), 8 + 1 + 3, "8 hex digits, ':', the file: %s", tagged);
    cr_expect_eq(tagged[8], ':');
    char *first = msgid_segment_name(d1, 0, "seg");
    cr_expect_str_eq(first, "seg", "the first directory's names are plain");
    char *again = msgid_segment_name(d1, 1, "seg");
    cr_expect_str_neq(again, tagged, "the tag depends on the directory");

    cr_assert_eq(spool_segment_count(f.spool), 2, "log: %s", structural());
    struct segment *s1 = spool_find(f.spool, "seg"), *s2 = spool_find(f.spool, tagged);
    cr_assert_not_null(s1);
    cr_assert_not_null(s2);
    cr_expect_eq(s1->dir, 0);
    cr_expect_eq(s2->dir, 1);
    cr_expect_str_eq(s2->file, "seg");
    snprintf(p, sizeof(p), "%s/seg", d2);
    cr_expect_str_eq(s2->path, p);

    /* An event in the second directory names the second directory's segment. */
    snprintf(p, sizeof(p), "%s/seg2", d2);
    append(p, "x");
    char *tagged2 = msgid_segment_name(d2, 1, "seg2");
    char line[64];
    snprintf(line, sizeof(line), "added %s", tagged2);
    cr_assert(run_until(f.loop, has_line, line), "log: %s", structural());
    cr_expect_eq(spool_find(f.spool, tagged2)->dir, 1);
    snprintf(p, sizeof(p), "%s/seg", d2);
    cr_assert_eq(unlink(p), 0);
    snprintf(line, sizeof(line), "removed %s", tagged);
    cr_assert(run_until(f.loop, has_line, line), "log: %s", structural());
    cr_expect_not_null(spool_find(f.spool, "seg"), "the first directory's seg stays");

    struct spool_stats st;
    spool_stats(f.spool, 0, &st);
    cr_expect_eq(st.dir, 0);
    cr_expect_eq(st.live, 1);
    spool_stats(f.spool, 1, &st);
    cr_expect_eq(st.live, 1);
    free(tagged);
    free(tagged2);
    free(first);
    free(again);
    close_spool(&f);
    free(d1);
    free(d2);
}

Test(spool, open_refuses_a_missing_directory_or_a_file)
{
    struct loop *loop = loop_create();
    char *err = NULL;
    struct spool_source missing = {.dir = in_tmp("nope"), .pattern = "*"};
    cr_expect_null(spool_open(&missing, 1, loop, &events, &err));
    char want[300];
    snprintf(want, sizeof(want), "spool directory %s: No such file or directory", missing.dir);
    cr_expect_str_eq(err, want);
    free(err);

    append(in_tmp("file"), "x");
    struct spool_source file = {.dir = in_tmp("file"), .pattern = "*"};
    cr_expect_null(spool_open(&file, 1, loop, &events, &err));
    snprintf(want, sizeof(want), "spool directory %s: not a directory", file.dir);
    cr_expect_str_eq(err, want);
    free(err);
    loop_destroy(loop);
}

/* ---- stats ---- */

Test(spool, stats_count_live_done_and_finished_and_the_unread_bytes)
{
    append(in_tmp("live"), "12345");
    append(in_tmp("done"), "123");
    cr_assert_eq(chmod(in_tmp("done"), 0444), 0);
    append(in_tmp("finished"), "1");
    struct fixture f = one_dir("*");
    open_spool(&f, 1);
    spool_scan(f.spool);
    spool_find(f.spool, "finished")->state = SEGMENT_STATE_FINISHED;
    struct spool_stats st;
    spool_stats(f.spool, 0, &st);
    cr_expect_eq(st.live, 1);
    cr_expect_eq(st.done_pending, 1);
    cr_expect_eq(st.finished, 1);
    cr_expect_eq(st.lag_bytes, 8, "no reader open: every byte of the reading segments");
    cr_expect_eq(st.oldest_read_ms, 0);
    close_spool(&f);
}

/* ---- the identity check ---- */

struct identity {
    struct segment seg;
    struct checkpoint_entry e;
};

/* A segment for the file at path and the checkpoint entry that file would have now. */
static struct identity identity_of(const char *path, const char *head, uint64_t offset)
{
    struct identity id = {0};
    id.seg.path = (char *)path;
    id.seg.inode = inode_of(path);
    id.e.inode = id.seg.inode;
    id.e.offset = offset;
    struct stat st;
    stat(path, &st);
    id.e.size = (uint64_t)st.st_size;
    id.e.fp_len = (uint32_t)strlen(head);
    id.e.fp_hash = segment_fingerprint(head, strlen(head));
    return id;
}

Test(spool, identity_of_the_same_file_holds_and_takes_its_fingerprint)
{
    const char *path = in_tmp("seg");
    append(path, "first line\n");
    struct identity id = identity_of(path, "first line\n", 5);
    append(path, "grown since\n"); /* a live file grows: still the same one */
    cr_expect_null(spool_check_identity(&id.seg, &id.e));
    cr_expect_eq(id.seg.fp_len, 23);
    cr_expect_eq(id.seg.fp_hash, segment_fingerprint("first line\ngrown since\n", 23));
    cr_expect_eq(id.seg.size, 23);
    cr_expect_null(spool_file_differs(path, &id.e));

    /* A checkpoint from before fingerprints (fp_len 0) checks the rest only. */
    id.e.fp_len = 0;
    cr_expect_null(spool_check_identity(&id.seg, &id.e));
}

Test(spool, identity_refuses_another_file)
{
    const char *path = in_tmp("seg");
    append(path, "first line\n");
    struct identity id = identity_of(path, "first line\n", 5);

    struct checkpoint_entry e = id.e;
    e.inode++;
    cr_expect_str_eq(spool_check_identity(&id.seg, &e), "has a new inode since the checkpoint");
    cr_expect_str_eq(spool_file_differs(path, &e), "has a new inode since the checkpoint");

    e = id.e;
    e.size = 100;
    cr_expect_str_eq(spool_check_identity(&id.seg, &e), "is smaller than at the checkpoint");

    e = id.e;
    e.fp_hash = segment_fingerprint("other line\n", 11);
    cr_expect_str_eq(spool_check_identity(&id.seg, &e),
                     "starts with other bytes than at the checkpoint");
    e = id.e;
    e.fp_len = 200; /* the checkpoint saw more first bytes than the file has */
    e.size = 0;
    cr_expect_str_eq(spool_check_identity(&id.seg, &e),
                     "starts with other bytes than at the checkpoint");

    e = id.e;
    e.offset = 12; /* a plain file's offsets are its bytes */
    cr_expect_str_eq(spool_check_identity(&id.seg, &e), "ends before the checkpoint's offset");
}

Test(spool, identity_of_a_zstd_file_leaves_the_offset_to_the_reader)
{
    const char *path = in_tmp("seg");
    static const char zstd_head[] = "\x28\xb5\x2f\xfd"
                                    "frame";
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    cr_assert_eq(write(fd, zstd_head, 9), 9);
    close(fd);
    struct identity id = identity_of(path, "", 1000); /* decompressed offset past 9 bytes */
    cr_expect_null(spool_check_identity(&id.seg, &id.e));
}

Test(spool, identity_of_an_unreadable_file)
{
    const char *path = in_tmp("seg");
    append(path, "first line\n");
    struct identity id = identity_of(path, "first", 5);
    id.e.size = 50;
    cr_assert_eq(unlink(path), 0);
    /* Same inode as the checkpoint, file unreadable now: its reader will say why; keep
     * what the checkpoint knew. */
    cr_expect_null(spool_check_identity(&id.seg, &id.e));
    cr_expect_eq(id.seg.fp_len, 5);
    cr_expect_eq(id.seg.fp_hash, segment_fingerprint("first", 5));
    cr_expect_eq(id.seg.size, 50);
    cr_expect_null(spool_file_differs(path, &id.e), "nothing to compare: not another file");

    id.seg.inode++;
    cr_expect_str_eq(spool_check_identity(&id.seg, &id.e), "has a new inode since the checkpoint");
}
