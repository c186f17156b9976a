#include "deadletter_replay.h"

#include "atomicfile.h"
#include "config.h"
#include "statelock.h"
#include "xalloc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* How far deadletter.jsonl was replayed: "<inode> <offset>\n" in state_dir/deadletter. */
struct mark {
    uint64_t inode, offset;
};

static struct mark read_mark(const char *path)
{
    struct mark m = {0, 0};
    FILE *f = fopen(path, "r");
    if (!f)
        return m;
    if (fscanf(f, "%" SCNu64 " %" SCNu64, &m.inode, &m.offset) != 2)
        m.inode = m.offset = 0;
    fclose(f);
    return m;
}

/* The replay segment, written as the dead letters are read: a dot file first (the relay
 * ignores those), fsynced and made read-only, then renamed into place, so the relay never
 * sees it half written. */
struct segment_out {
    char *tmp, *path;
    FILE *f;
};

static char *segment_begin(struct segment_out *s, const char *dir, const char *name)
{
    s->tmp = xasprintf("%s/.%s", dir, name);
    s->path = xasprintf("%s/%s", dir, name);
    int fd = open(s->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 || !(s->f = fdopen(fd, "w"))) {
        char *err = xasprintf("cannot create %s: %s", s->tmp, strerror(errno));
        if (fd >= 0)
            close(fd);
        return err;
    }
    setvbuf(s->f, NULL, _IOFBF, 1 << 20);
    return NULL;
}

static char *segment_commit(struct segment_out *s, const char *dir)
{
    char *err = NULL;
    if (fflush(s->f) != 0 || ferror(s->f))
        err = xasprintf("cannot write %s: %s", s->tmp, strerror(errno));
    else if (fsync(fileno(s->f)) != 0 || fchmod(fileno(s->f), 0444) != 0)
        err = xasprintf("cannot finish %s: %s", s->tmp, strerror(errno));
    fclose(s->f);
    s->f = NULL;
    if (!err && rename(s->tmp, s->path) != 0)
        err = xasprintf("cannot rename %s to %s: %s", s->tmp, s->path, strerror(errno));
    if (!err && atomicfile_fsync_dir(dir) != 0)
        err = xasprintf("cannot fsync %s: %s", dir, strerror(errno));
    return err;
}

/* Nothing to hand back, or a failure: no segment. */
static void segment_abandon(struct segment_out *s)
{
    if (s->f) {
        fclose(s->f);
        s->f = NULL;
    }
    if (s->tmp)
        unlink(s->tmp);
}

static void segment_free(struct segment_out *s)
{
    free(s->tmp);
    free(s->path);
}

static char *write_mark(const char *dir, const struct mark *m)
{
    char text[64];
    int len = snprintf(text, sizeof(text), "%" PRIu64 " %" PRIu64 "\n", m->inode, m->offset);
    const struct atomicfile f = {
        .dir = dir, .name = "replayed", .tmp_name = ".replayed.tmp", .mode = 0666};
    return atomicfile_write(&f, text, (size_t)len);
}

struct counts {
    size_t taken, truncated, unreadable;
};

/* One dead letter (without its newline): its record goes to out, or is counted as one
 * that could not be taken (a line capped at 1 MiB, or one that is not a dead letter). */
static void take_line(const char *text, size_t len, FILE *out, struct counts *c)
{
    json_t *dl = json_loadb(text, len, JSON_ALLOW_NUL, NULL);
    json_t *line = json_object_get(dl, "line");
    if (json_is_true(json_object_get(dl, "line_truncated")) || json_is_null(line))
        c->truncated++;
    else if (!json_is_string(line))
        c->unreadable++;
    else {
        fwrite(json_string_value(line), 1, json_string_length(line), out);
        c->taken++;
    }
    json_decref(dl);
}

/* Streams the dead letters of fd from byte from to out, one line in memory at a time;
 * *to is where it stopped. A last line without its newline is left for the next replay
 * (the relay may be writing it), unless the file is finished (rotated, and the relay lets
 * go of it): then it is counted as unreadable. */
static char *take_lines(int fd, const char *path, uint64_t from, bool finished, FILE *out,
                        struct counts *c, uint64_t *to)
{
    *to = from;
    int copy = dup(fd);
    FILE *in = copy >= 0 ? fdopen(copy, "r") : NULL;
    if (!in) {
        if (copy >= 0)
            close(copy);
        return xasprintf("cannot read %s: %s", path, strerror(errno));
    }
    setvbuf(in, NULL, _IOFBF, 1 << 20);
    char *err = NULL, *buf = NULL;
    size_t cap = 0;
    ssize_t n;
    if (fseeko(in, (off_t)from, SEEK_SET) != 0)
        err = xasprintf("cannot read %s: %s", path, strerror(errno));
    while (!err && (n = getline(&buf, &cap, in)) > 0) {
        if (buf[n - 1] != '\n') {
            if (finished) {
                c->unreadable++;
                *to += (uint64_t)n;
            }
            break;
        }
        take_line(buf, (size_t)n - 1, out, c);
        *to += (uint64_t)n;
    }
    if (!err && ferror(in))
        err = xasprintf("cannot read %s: %s", path, strerror(errno));
    free(buf);
    fclose(in);
    return err;
}

/* Two replays at once would both read the lines after the same mark and hand them back
 * twice. The running relay holds state_dir/lock, and a replay must run beside it, so
 * replays take a lock of their own. */
static char *lock_replays(const char *dir)
{
    char *path = xasprintf("%s/replay.lock", dir);
    char *err = NULL;
    if (statelock_take(path, &err) > 0) {
        char *held = xasprintf("%s: another deadletter replay is running", err);
        free(err);
        err = held;
    }
    free(path);
    return err;
}

/* A file read by this replay, from where the last one stopped. */
struct source {
    char *path;
    int fd;
    uint64_t inode, from, to;
    struct timespec mtime;
    bool finished; /* the relay appends no more to it */
};

struct sources {
    struct source *v;
    size_t count;
};

static struct source *push(struct sources *s, struct source src)
{
    s->v = xrealloc(s->v, (s->count + 1) * sizeof(*s->v));
    s->v[s->count] = src;
    return &s->v[s->count++];
}

static struct source *add_source(struct sources *s, char *path, const struct stat *st,
                                 uint64_t from)
{
    return push(s, (struct source){
                       .path = path,
                       .fd = -1,
                       .inode = (uint64_t)st->st_ino,
                       .from = from,
                       .to = from,
                       .mtime = st->st_mtim,
                       /* read-only: the relay let go of it on SIGHUP (deadletter_reopen) */
                       .finished = !(st->st_mode & 0222),
                   });
}

static int by_mtime(const void *a, const void *b)
{
    const struct timespec *x = &((const struct source *)a)->mtime;
    const struct timespec *y = &((const struct source *)b)->mtime;
    if (x->tv_sec != y->tv_sec)
        return x->tv_sec < y->tv_sec ? -1 : 1;
    return x->tv_nsec < y->tv_nsec ? -1 : x->tv_nsec > y->tv_nsec;
}

/* An uncompressed dead-letter file (a compressed one is the operator's to read). */
static bool plain_dead_letters(int dirfd, const char *name)
{
    char first = 0;
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    bool plain = read(fd, &first, 1) == 1 && first == '{';
    close(fd);
    return plain;
}

/* deadletter.jsonl was rotated since the last replay (or was never replayed): the rotated
 * files (deadletter.jsonl.N) still to read, oldest first. The one holding the marked inode
 * is read on from the mark, then every uncompressed one written after it (all of them
 * without a mark). A marked file no longer there (compressed, removed) would mean its
 * later lines skipped: refused, with what to do. */
static char *rotated_sources(const char *dir, const struct mark *m, struct sources *out)
{
    static const char prefix[] = "deadletter.jsonl.";
    DIR *d = opendir(dir);
    if (!d)
        return xasprintf("cannot read %s: %s", dir, strerror(errno));
    struct stat st;
    bool marked = false;
    size_t marked_at = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (strncmp(e->d_name, prefix, sizeof(prefix) - 1) != 0 ||
            fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
            continue;
        char *path = xasprintf("%s/%s", dir, e->d_name);
        if (m->inode && (uint64_t)st.st_ino == m->inode) {
            marked_at = out->count;
            marked = add_source(out, path, &st, m->offset) != NULL;
        } else if (plain_dead_letters(dirfd(d), e->d_name))
            add_source(out, path, &st, 0);
        else
            free(path);
    }
    closedir(d);
    if (m->inode && !marked)
        return xasprintf("deadletter.jsonl was rotated since the last replay, and the file it "
                         "was replayed from (inode %" PRIu64 ", up to byte %" PRIu64
                         ") is no longer in %s (compressed or removed): its later dead letters "
                         "would be skipped. Replay them by hand, then remove %s/replayed to "
                         "replay the uncompressed files from their start",
                         m->inode, m->offset, dir, dir);
    if (marked) { /* the ones written before it were replayed already */
        struct source first = out->v[marked_at];
        size_t kept = 0;
        for (size_t i = 0; i < out->count; i++) {
            if (i != marked_at && by_mtime(&out->v[i], &first) > 0)
                out->v[kept++] = out->v[i];
            else if (i != marked_at)
                free(out->v[i].path);
        }
        out->count = kept;
        push(out, first);
    }
    if (out->count > 1) /* none leaves v NULL, which qsort must not get */
        qsort(out->v, out->count, sizeof(*out->v), by_mtime);
    return NULL;
}

/* The files of this replay, in order: the rotated ones not replayed yet, then
 * deadletter.jsonl, whose fd (cur_fd, or -1 when it does not exist) is already open. */
static char *plan(const char *dir, const char *path, int cur_fd, const struct mark *m,
                  struct sources *out)
{
    struct stat st = {0};
    if (cur_fd >= 0 && fstat(cur_fd, &st) != 0)
        return xasprintf("cannot read %s: %s", path, strerror(errno));
    if (cur_fd < 0 || m->inode != (uint64_t)st.st_ino) {
        char *err = rotated_sources(dir, m, out);
        if (err)
            return err;
        /* The relay appends to one file: the newest rotated one until it reopens, and
         * after that only to deadletter.jsonl (a line there says it has). */
        for (size_t i = 0; i + 1 < out->count; i++)
            out->v[i].finished = true;
        if (out->count && st.st_size > 0)
            out->v[out->count - 1].finished = true;
        for (size_t i = 0; i < out->count; i++)
            if ((out->v[i].fd = open(out->v[i].path, O_RDONLY | O_CLOEXEC)) < 0)
                return xasprintf("cannot read %s: %s", out->v[i].path, strerror(errno));
        if (out->count && !out->v[out->count - 1].finished)
            return NULL; /* deadletter.jsonl waits until the relay appends to it */
    }
    if (cur_fd >= 0) {
        uint64_t from = m->inode == (uint64_t)st.st_ino && m->offset <= (uint64_t)st.st_size
                            ? m->offset
                            : 0; /* a new file, or one truncated */
        struct source *s = add_source(out, xstrdup(path), &st, from);
        s->fd = dup(cur_fd);
        s->finished = false; /* the relay appends to it */
    }
    return NULL;
}

static bool anything_new(const struct source *src, size_t count)
{
    struct stat st;
    for (size_t i = 0; i < count; i++)
        if (fstat(src[i].fd, &st) == 0 && (uint64_t)st.st_size > src[i].from)
            return true;
    return false;
}

static char *replay_name(const struct spool_source *spool)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    char stamp[32];
    strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", &tm);
    return xasprintf("%s.%09ld_replay", stamp, now.tv_nsec);
}

/* Streams every source into one replay segment; the mark moves to where the last one
 * stopped only once the segment is in place. */
static char *replay_sources(const struct config *cfg, const char *dir, struct source *src,
                            size_t count, struct counts *c, char **name)
{
    const struct spool_source *spool = &cfg->spools[0];
    *name = replay_name(spool);
    if (fnmatch(spool->pattern, *name, FNM_PERIOD) != 0)
        return xasprintf("spool.pattern \"%s\" does not match a replay segment's name (%s): the "
                         "relay would not read it",
                         spool->pattern, *name);
    struct segment_out seg = {0};
    char *err = segment_begin(&seg, spool->dir, *name);
    for (size_t i = 0; !err && i < count; i++)
        err =
            take_lines(src[i].fd, src[i].path, src[i].from, src[i].finished, seg.f, c, &src[i].to);
    if (!err && c->taken > 0)
        err = segment_commit(&seg, spool->dir);
    else
        segment_abandon(&seg);
    segment_free(&seg);
    if (err)
        return err;
    struct mark m = {src[count - 1].inode, src[count - 1].to};
    return write_mark(dir, &m);
}

static void report(const struct config *cfg, const char *path, const struct counts *c,
                   const char *name, const struct source *src, size_t count)
{
    if (c->taken > 0)
        printf("replayed %zu dead letters as segment %s/%s\n", c->taken, cfg->spools[0].dir, name);
    if (c->truncated > 0)
        printf("%zu dead letters were not replayed: their line was not kept whole (over 1 MiB "
               "or over max_record_bytes); each names the segment and offsets that hold it\n",
               c->truncated);
    if (c->unreadable > 0)
        printf("%zu lines of %s are not dead letters and were skipped\n", c->unreadable, path);
    if (!src[count - 1].finished && strcmp(src[count - 1].path, path) != 0)
        printf("%s was rotated but the relay still appends to %s: reload it (SIGHUP); the "
               "dead letters of the new file are replayed next time\n",
               path, src[count - 1].path);
}

int replay_deadletters(const struct config *cfg)
{
    char *dir = xasprintf("%s/deadletter", cfg->state_dir);
    char *path = xasprintf("%s/deadletter.jsonl", dir);
    char *mark_path = xasprintf("%s/replayed", dir);
    char *name = NULL, *err = NULL;
    struct sources all = {NULL, 0};
    struct source *src;
    size_t count;
    struct counts c = {0, 0, 0};
    int rc = 1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && access(dir, F_OK) != 0) {
        printf("no dead letters to replay (%s does not exist)\n", path);
        rc = 0;
        goto out;
    }
    if (fd < 0 && errno != ENOENT) {
        err = xasprintf("cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    if ((err = lock_replays(dir)) != NULL)
        goto out;
    struct mark mark = read_mark(mark_path);
    if ((err = plan(dir, path, fd, &mark, &all)) != NULL)
        goto out;
    src = all.v;
    count = all.count;
    if (count == 0 || !anything_new(src, count)) {
        struct mark now = count ? (struct mark){src[count - 1].inode, src[count - 1].from} : mark;
        if (now.inode != mark.inode && (err = write_mark(dir, &now)) != NULL)
            goto out;
        if (fd < 0 && count == 0)
            printf("no dead letters to replay (%s does not exist)\n", path);
        else
            printf("no dead letters to replay since the last replay (%s)\n", path);
        rc = 0;
        goto out;
    }
    if ((err = replay_sources(cfg, dir, src, count, &c, &name)) != NULL)
        goto out;
    report(cfg, path, &c, name, src, count);
    rc = 0;
out:
    if (err) {
        fprintf(stderr, "kumo-nats-relay: deadletter replay: %s\n", err);
        free(err);
    }
    if (fd >= 0)
        close(fd);
    for (size_t i = 0; i < all.count; i++) {
        if (all.v[i].fd >= 0)
            close(all.v[i].fd);
        free(all.v[i].path);
    }
    free(all.v);
    free(name);
    free(mark_path);
    free(path);
    free(dir);
    return rc;
}
