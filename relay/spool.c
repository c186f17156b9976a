#include "spool.h"

#include "log.h"
#include "loop.h"
#include "msgid.h"
#include "config.h"
#include "segment.h"
#include "xalloc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct spool_dir {
    char *path;
    char *pattern;
    int wd; /* its inotify watch */
};

/* A name that went away, with the generation its next file gets. */
struct gone_name {
    char *name;
    uint32_t next_generation;
};

enum { GONE_NAMES = 1024 };

struct spool {
    struct gone_name gone[GONE_NAMES]; /* a ring: the most recent removals */
    size_t gone_next;
    struct spool_dir *dirs;
    size_t dir_count;
    struct loop *loop;
    struct spool_events events;
    int inotify_fd;
    struct segment **segments; /* sorted by name */
    size_t count, cap;
    uint64_t scan_generation;
};

bool spool_is_segment_name(const char *pattern, const char *name)
{
    /* Dot files are kumod's and ours to keep (kumod's start sweep chmods everything
     * else); never a segment. */
    if (name[0] == '.' || name[0] == '\0')
        return false;
    return fnmatch(pattern, name, FNM_PERIOD) == 0;
}

void spool_set_generation(struct segment *seg, uint32_t generation)
{
    seg->generation = generation;
    free(seg->id_name);
    seg->id_name = msgid_id_name(seg->name, generation);
}

size_t spool_dir_count(const struct spool *spool)
{
    return spool->dir_count;
}

const char *spool_dir_path(const struct spool *spool, size_t dir)
{
    return spool->dirs[dir].path;
}

/* Index of name, or of where it would be inserted (with *found false). */
static size_t find_index(const struct spool *spool, const char *name, bool *found)
{
    size_t lo = 0, hi = spool->count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(spool->segments[mid]->name, name);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

struct segment *spool_find(const struct spool *spool, const char *name)
{
    bool found;
    size_t i = find_index(spool, name, &found);
    return found ? spool->segments[i] : NULL;
}

size_t spool_segment_count(const struct spool *spool)
{
    return spool->count;
}

struct segment *spool_segment(const struct spool *spool, size_t index)
{
    return spool->segments[index];
}

bool spool_refresh_mode(struct segment *seg)
{
    struct stat st;
    if (stat(seg->path, &st) != 0 || (uint64_t)st.st_ino != seg->inode)
        return false;
    seg->done = (st.st_mode & 0222) == 0;
    return true;
}

/* A file's inode, size and first bytes. */
struct file_head {
    uint64_t inode, size;
    size_t len;
    unsigned char bytes[SEGMENT_FINGERPRINT_BYTES];
};

static bool read_head(const char *path, struct file_head *head)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return false;
    struct stat st = {0};
    bool ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    head->len = 0;
    while (ok && head->len < sizeof(head->bytes)) {
        ssize_t n =
            pread(fd, head->bytes + head->len, sizeof(head->bytes) - head->len, (off_t)head->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            ok = n == 0;
            break;
        }
        head->len += (size_t)n;
    }
    close(fd);
    head->inode = (uint64_t)st.st_ino;
    /* Read after the stat: a live file may have grown in between. */
    head->size = (uint64_t)st.st_size > head->len ? (uint64_t)st.st_size : head->len;
    return ok;
}

/* The checks, cheapest first. The inode alone is not enough: ext4 gives a file deleted
 * and made again at once the same number. A file only grows, so one smaller than it was,
 * or one that starts with other bytes, is another file. A plain segment's offsets are its
 * bytes; a zstd one's are checked when it is read to its end (relay.c). */
static const char *head_differs(const struct file_head *head, const struct checkpoint_entry *e)
{
    static const unsigned char zstd_magic[4] = {0x28, 0xB5, 0x2F, 0xFD};
    if (head->inode != e->inode)
        return "has a new inode since the checkpoint";
    if (head->size < e->size)
        return "is smaller than at the checkpoint";
    if (e->fp_len > 0 &&
        (e->fp_len > head->len || segment_fingerprint(head->bytes, e->fp_len) != e->fp_hash))
        return "starts with other bytes than at the checkpoint";
    bool zstd = head->len >= 4 && memcmp(head->bytes, zstd_magic, 4) == 0;
    if (!zstd && e->offset > head->size)
        return "ends before the checkpoint's offset";
    return NULL;
}

const char *spool_check_identity(struct segment *seg, const struct checkpoint_entry *e)
{
    struct file_head *head = xmalloc(sizeof(*head));
    const char *why = NULL;
    if (read_head(seg->path, head)) {
        why = head_differs(head, e);
        seg->fp_len = (uint32_t)head->len;
        seg->fp_hash = segment_fingerprint(head->bytes, head->len);
        if (head->size > seg->size)
            seg->size = head->size;
    } else if (seg->inode != e->inode) {
        why = "has a new inode since the checkpoint";
    } else {
        /* Unreadable now (its reader will say why): keep what the checkpoint knew. */
        seg->fp_len = e->fp_len;
        seg->fp_hash = e->fp_hash;
        if (e->size > seg->size)
            seg->size = e->size;
    }
    free(head);
    return why;
}

const char *spool_file_differs(const char *path, const struct checkpoint_entry *e)
{
    struct file_head *head = xmalloc(sizeof(*head));
    const char *why = read_head(path, head) ? head_differs(head, e) : NULL;
    free(head);
    return why;
}

static uint64_t wall_ms(const struct timespec *ts)
{
    return (uint64_t)ts->tv_sec * 1000 + (uint64_t)ts->tv_nsec / 1000000;
}

/* Bytes of the file not read yet: from the reader's position when it is open. Also dates
 * them: bytes that appear unread were written no later than the file's mtime, and stay
 * that old until the reader passes the size the file had then (while NATS is away the
 * reader stands still, so the age grows). */
static uint64_t unread_bytes(struct segment *seg)
{
    struct stat st;
    off_t pos = 0;
    if (!seg->reader) {
        if (stat(seg->path, &st) != 0)
            return 0;
    } else {
        int fd = segment_reader_fd(seg->reader);
        pos = lseek(fd, 0, SEEK_CUR);
        if (fstat(fd, &st) != 0 || pos < 0 || st.st_size < pos)
            return 0;
    }
    uint64_t unread = (uint64_t)(st.st_size - pos);
    if (unread == 0)
        seg->unread_since_ms = 0;
    else if (!seg->unread_since_ms || (uint64_t)pos >= seg->unread_mark) {
        seg->unread_since_ms = wall_ms(&st.st_mtim);
        seg->unread_mark = (uint64_t)st.st_size;
    }
    return unread;
}

void spool_stats(const struct spool *spool, size_t dir, struct spool_stats *stats)
{
    memset(stats, 0, sizeof(*stats));
    stats->dir = dir;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    uint64_t wall_now = wall_ms(&now);
    for (size_t i = 0; i < spool->count; i++) {
        struct segment *seg = spool->segments[i];
        if (seg->dir != dir)
            continue;
        if (seg->state == SEGMENT_STATE_FINISHED) {
            stats->finished++;
            continue;
        }
        if (seg->state == SEGMENT_STATE_READING && !seg->done)
            stats->live++;
        else
            stats->done_pending++;
        if (seg->state == SEGMENT_STATE_READING)
            stats->lag_bytes += unread_bytes(seg);
        if (seg->state == SEGMENT_STATE_READING && seg->unread_since_ms &&
            wall_now > seg->unread_since_ms &&
            wall_now - seg->unread_since_ms > stats->unread_age_ms)
            stats->unread_age_ms = wall_now - seg->unread_since_ms;
        if (seg->wm.head &&
            (stats->oldest_read_ms == 0 || seg->wm.head->read_at_ms < stats->oldest_read_ms))
            stats->oldest_read_ms = seg->wm.head->read_at_ms;
    }
}

static struct segment *add_segment(struct spool *spool, size_t dir, const char *name,
                                   const char *file, const struct stat *st)
{
    bool found;
    size_t i = find_index(spool, name, &found);
    if (spool->count == spool->cap) {
        spool->cap = spool->cap ? spool->cap * 2 : 64;
        spool->segments = xrealloc(spool->segments, spool->cap * sizeof(*spool->segments));
    }
    memmove(&spool->segments[i + 1], &spool->segments[i],
            (spool->count - i) * sizeof(*spool->segments));
    struct segment *seg = xcalloc(1, sizeof(*seg));
    seg->name = xstrdup(name);
    seg->file = xstrdup(file);
    for (size_t g = 0; g < GONE_NAMES; g++)
        if (spool->gone[g].name && strcmp(spool->gone[g].name, name) == 0 &&
            spool->gone[g].next_generation > seg->generation)
            seg->generation = spool->gone[g].next_generation;
    spool_set_generation(seg, seg->generation);
    seg->dir = dir;
    seg->path = xasprintf("%s/%s", spool->dirs[dir].path, file);
    seg->inode = (uint64_t)st->st_ino;
    seg->size = (uint64_t)st->st_size;
    seg->done = (st->st_mode & 0222) == 0;
    seg->scan_mark = spool->scan_generation;
    spool->segments[i] = seg;
    spool->count++;
    spool->events.added(spool->events.ctx, seg);
    return seg;
}

static void remove_segment(struct spool *spool, struct segment *seg)
{
    bool found;
    size_t i = find_index(spool, seg->name, &found);
    if (!found || spool->segments[i] != seg)
        return;
    memmove(&spool->segments[i], &spool->segments[i + 1],
            (spool->count - i - 1) * sizeof(*spool->segments));
    spool->count--;
    seg->gone = true;
    struct gone_name *g = &spool->gone[spool->gone_next++ % GONE_NAMES];
    free(g->name);
    g->name = xstrdup(seg->name);
    g->next_generation = seg->generation + 1;
    spool->events.removed(spool->events.ctx, seg);
}

void spool_segment_free(struct segment *seg)
{
    if (!seg)
        return;
    segment_reader_close(seg->reader);
    free(seg->name);
    free(seg->file);
    free(seg->id_name);
    free(seg->path);
    free(seg);
}

/* A file seen in a directory or in an event: add it, notice a replacement (same name,
 * new inode), or report a change. */
static void note_file(struct spool *spool, size_t dir, const char *file)
{
    if (!spool_is_segment_name(spool->dirs[dir].pattern, file))
        return;
    char *path = xasprintf("%s/%s", spool->dirs[dir].path, file);
    char *name = msgid_segment_name(spool->dirs[dir].path, dir, file);
    /* stat, not lstat: a symlink named like a segment is noted, so that its reader says it
     * will not follow it (O_NOFOLLOW) and --once reports it as not relayed, rather than
     * the spool passing over it in silence. */
    struct stat st;
    int rc = stat(path, &st);
    free(path);
    struct segment *seg = spool_find(spool, name);
    if (rc != 0 || !S_ISREG(st.st_mode)) {
        if (seg && rc != 0 && errno == ENOENT)
            remove_segment(spool, seg);
    } else {
        if (seg && seg->inode != (uint64_t)st.st_ino) {
            log_warn("segment replaced by another file of the same name segment=%s", name);
            remove_segment(spool, seg);
            seg = NULL;
        }
        if (!seg)
            seg = add_segment(spool, dir, name, file, &st);
        seg->scan_mark = spool->scan_generation;
        seg->done = (st.st_mode & 0222) == 0;
        if ((uint64_t)st.st_size > seg->size)
            seg->size = (uint64_t)st.st_size;
        spool->events.changed(spool->events.ctx, seg);
    }
    free(name);
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int spool_list_dir(const char *path, const char *pattern, char ***names_out, size_t *count_out)
{
    *names_out = NULL;
    *count_out = 0;
    DIR *d = opendir(path);
    if (!d)
        return -1;
    char **names = NULL;
    size_t count = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!spool_is_segment_name(pattern, de->d_name))
            continue;
        if (count == cap)
            names = xrealloc(names, (cap = cap ? cap * 2 : 64) * sizeof(*names));
        names[count++] = xstrdup(de->d_name);
    }
    closedir(d);
    if (count > 1) /* an empty directory leaves names NULL, which qsort must not get */
        qsort(names, count, sizeof(*names), compare_names);
    *names_out = names;
    *count_out = count;
    return 0;
}

static void scan_dir(struct spool *spool, size_t dir)
{
    char **names;
    size_t count;
    if (spool_list_dir(spool->dirs[dir].path, spool->dirs[dir].pattern, &names, &count) != 0) {
        log_error("cannot scan the spool dir=%s error=\"%s\"", spool->dirs[dir].path,
                  strerror(errno));
        return;
    }
    /* Noted in name order, so the oldest segments get the first turns to be read. */
    for (size_t i = 0; i < count; i++) {
        note_file(spool, dir, names[i]);
        free(names[i]);
    }
    free(names);
}

void spool_scan(struct spool *spool)
{
    spool->scan_generation++;
    for (size_t dir = 0; dir < spool->dir_count; dir++)
        scan_dir(spool, dir);
    /* What the scan did not see is gone. Walk backwards: removal shifts later entries. */
    for (size_t i = spool->count; i-- > 0;) {
        struct segment *seg = spool->segments[i];
        if (seg->scan_mark != spool->scan_generation)
            remove_segment(spool, seg);
    }
}

static void handle_inotify(struct loop *loop, int fd, uint32_t events, void *arg)
{
    struct spool *spool = arg;
    char buf[64 * 1024] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0)
            break;
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            p += sizeof(*ev) + ev->len;
            if (ev->mask & IN_Q_OVERFLOW) {
                log_warn("inotify queue overflowed, rescanning the spool");
                spool_scan(spool);
                continue;
            }
            size_t dir = 0;
            while (dir < spool->dir_count && spool->dirs[dir].wd != ev->wd)
                dir++;
            if (ev->len == 0 || dir == spool->dir_count)
                continue;
            char *name = msgid_segment_name(spool->dirs[dir].path, dir, ev->name);
            struct segment *seg = spool_find(spool, name);
            free(name);
            if ((ev->mask & (IN_DELETE | IN_MOVED_FROM)) && seg)
                remove_segment(spool, seg);
            else if (seg && !(ev->mask & (IN_CREATE | IN_MOVED_TO | IN_ATTRIB)))
                spool->events.changed(spool->events.ctx, seg); /* hot path: no stat */
            else if (!(ev->mask & (IN_DELETE | IN_MOVED_FROM)))
                note_file(spool, dir, ev->name);
        }
    }
}

static char *watch_dir(struct spool *spool, const struct spool_source *source)
{
    struct stat st;
    if (stat(source->dir, &st) != 0)
        return xasprintf("spool directory %s: %s", source->dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return xasprintf("spool directory %s: not a directory", source->dir);
    uint32_t mask = IN_CREATE | IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_DELETE | IN_MOVED_FROM |
                    IN_MOVED_TO | IN_DELETE_SELF | IN_ONLYDIR;
    int wd = inotify_add_watch(spool->inotify_fd, source->dir, mask);
    if (wd < 0)
        return xasprintf("cannot watch %s: %s", source->dir, strerror(errno));
    struct spool_dir *d = &spool->dirs[spool->dir_count++];
    d->path = xstrdup(source->dir);
    d->pattern = xstrdup(source->pattern);
    d->wd = wd;
    return NULL;
}

struct spool *spool_open(const struct spool_source *sources, size_t count, struct loop *loop,
                         const struct spool_events *events, char **err)
{
    struct spool *spool = xcalloc(1, sizeof(*spool));
    spool->loop = loop;
    spool->events = *events;
    spool->dirs = xcalloc(count, sizeof(*spool->dirs));
    spool->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (spool->inotify_fd < 0) {
        *err = xasprintf("inotify_init1: %s", strerror(errno));
        spool_close(spool);
        return NULL;
    }
    for (size_t i = 0; i < count; i++) {
        if ((*err = watch_dir(spool, &sources[i])) != NULL) {
            spool_close(spool);
            return NULL;
        }
    }
    if (loop_add_fd(loop, spool->inotify_fd, EPOLLIN, handle_inotify, spool) != 0) {
        *err = xasprintf("cannot watch the inotify fd: %s", strerror(errno));
        close(spool->inotify_fd);
        spool->inotify_fd = -1;
        spool_close(spool);
        return NULL;
    }
    return spool;
}

void spool_close(struct spool *spool)
{
    if (!spool)
        return;
    if (spool->inotify_fd >= 0) {
        loop_del_fd(spool->loop, spool->inotify_fd);
        close(spool->inotify_fd);
    }
    for (size_t i = 0; i < spool->count; i++)
        spool_segment_free(spool->segments[i]);
    for (size_t i = 0; i < spool->dir_count; i++) {
        free(spool->dirs[i].path);
        free(spool->dirs[i].pattern);
    }
    free(spool->dirs);
    free(spool->segments);
    for (size_t g = 0; g < GONE_NAMES; g++)
        free(spool->gone[g].name);
    free(spool);
}
