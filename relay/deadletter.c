#include "deadletter.h"

#include "utf8.h"
#include "xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { DEADLETTER_LINE_CAP = 1024 * 1024 };

/* A dead letter that could not be written (state_dir full), with a copy of its line. */
struct held {
    void *cookie;
    char *segment, *reason, *line;
    enum deadletter_reason kind;
    uint64_t start, end;
    size_t len;
    struct held *next;
};

struct deadletter {
    int fd;
    char *path;
    bool dirty;
    struct held *held, **held_tail;
    size_t held_count;
};

static int open_file(const char *path)
{
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
}

struct deadletter *deadletter_open(const char *state_dir, char **err)
{
    char *dir = xasprintf("%s/deadletter", state_dir);
    if (mkdir(dir, 0750) != 0 && errno != EEXIST) {
        *err = xasprintf("cannot create %s: %s", dir, strerror(errno));
        free(dir);
        return NULL;
    }
    struct deadletter *dl = xcalloc(1, sizeof(*dl));
    dl->held_tail = &dl->held;
    dl->path = xasprintf("%s/deadletter.jsonl", dir);
    free(dir);
    dl->fd = open_file(dl->path);
    if (dl->fd < 0) {
        *err = xasprintf("cannot open %s: %s", dl->path, strerror(errno));
        free(dl->path);
        free(dl);
        return NULL;
    }
    return dl;
}

/* JSON string body; bytes that are not UTF-8 become U+FFFD (the line is evidence for a
 * human, and its exact bytes are still in the segment at the offsets given). */
static void put_json_string(FILE *f, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    fputc('"', f);
    for (size_t i = 0; i < len;) {
        unsigned char ch = p[i];
        char esc[6];
        size_t n_esc = ch < 0x80 ? json_escape_ascii(ch, esc) : 0;
        if (n_esc) {
            fwrite(esc, 1, n_esc, f);
        } else if (ch >= 0x80) {
            size_t n = utf8_sequence(p + i, len - i);
            if (n == 0) {
                fputs("\\ufffd", f);
                i++;
                continue;
            }
            fwrite(p + i, 1, n, f);
            i += n;
            continue;
        } else {
            fputc(ch, f);
        }
        i++;
    }
    fputc('"', f);
}

/* A full disk can take part of a line: cut it off, or the retry's line would be glued to
 * it and neither could be read back (one writer: state_dir is locked). */
static void cut_partial_line(struct deadletter *dl, ssize_t written)
{
    if (written <= 0)
        return;
    off_t end = lseek(dl->fd, 0, SEEK_END);
    if (end >= written && ftruncate(dl->fd, end - written) != 0) {
        /* Nothing better to do: replay counts the glued line as unreadable. */
    }
}

char *deadletter_write(struct deadletter *dl, const char *segment, uint64_t start, uint64_t end,
                       const char *reason, const char *line, size_t len)
{
    char *text = NULL;
    size_t text_len = 0;
    FILE *f = open_memstream(&text, &text_len);
    if (!f)
        return xstrdup("out of memory");
    fprintf(f, "{\"time\":%lld,\"segment\":", (long long)time(NULL));
    put_json_string(f, segment, strlen(segment));
    fprintf(f, ",\"start\":%" PRIu64 ",\"end\":%" PRIu64 ",\"reason\":", start, end);
    put_json_string(f, reason, strlen(reason));
    /* The line is evidence for a human, capped so that a dead-lettered 16 MiB record does
     * not make a 16 MiB log line; the whole of it is still in the segment at its offsets. */
    size_t kept = len > DEADLETTER_LINE_CAP ? DEADLETTER_LINE_CAP : len;
    fputs(",\"line\":", f);
    if (line)
        put_json_string(f, line, kept);
    else
        fputs("null", f);
    if (line && kept < len)
        fprintf(f, ",\"line_truncated\":true,\"line_bytes\":%zu", len);
    fputs("}\n", f);
    fclose(f);
    char *err = NULL;
    /* O_APPEND and one write per line: a crash leaves whole lines. */
    ssize_t n = write(dl->fd, text, text_len);
    if (n != (ssize_t)text_len) {
        err =
            xasprintf("cannot append to %s: %s", dl->path, n < 0 ? strerror(errno) : "short write");
        cut_partial_line(dl, n);
    } else {
        dl->dirty = true;
    }
    free(text);
    return err;
}

char *deadletter_sync(struct deadletter *dl)
{
    if (!dl->dirty)
        return NULL;
    if (fdatasync(dl->fd) != 0)
        return xasprintf("cannot fsync %s: %s", dl->path, strerror(errno));
    dl->dirty = false;
    return NULL;
}

/* logrotate's create mode renamed the file and made a new one: append to that from now on.
 * What went to the old file is synced first (a checkpoint after this syncs only the new
 * one), then the old file is made read-only: the sign `deadletter replay` reads that the
 * relay will append no more to it, so its rest can be replayed and the new file started. */
char *deadletter_reopen(struct deadletter *dl, bool *rotated)
{
    *rotated = false;
    struct stat old_st, new_st;
    int fd = open_file(dl->path);
    if (fd < 0)
        return xasprintf("cannot open %s: %s", dl->path, strerror(errno));
    if (fstat(fd, &new_st) != 0 || fstat(dl->fd, &old_st) != 0) {
        char *err = xasprintf("cannot stat %s: %s", dl->path, strerror(errno));
        close(fd);
        return err;
    }
    if (new_st.st_ino == old_st.st_ino && new_st.st_dev == old_st.st_dev) {
        close(fd); /* not rotated: a plain reload */
        return NULL;
    }
    char *err = deadletter_sync(dl);
    if (err) {
        close(fd); /* keep appending to the old file: its unsynced lines stay dirty */
        return err;
    }
    if (fchmod(dl->fd, old_st.st_mode & 0444) != 0)
        err = xasprintf("cannot make the rotated dead-letter file read-only (deadletter replay "
                        "waits for that before it reads the new one): %s",
                        strerror(errno));
    close(dl->fd);
    dl->fd = fd;
    *rotated = true;
    return err;
}

uint64_t deadletter_file_bytes(const struct deadletter *dl)
{
    struct stat st;
    return dl && fstat(dl->fd, &st) == 0 ? (uint64_t)st.st_size : 0;
}

void deadletter_hold(struct deadletter *dl, void *cookie, const char *segment, uint64_t start,
                     uint64_t end, enum deadletter_reason kind, const char *reason,
                     const char *line, size_t len)
{
    struct held *h = xcalloc(1, sizeof(*h));
    h->cookie = cookie;
    h->kind = kind;
    h->segment = xstrdup(segment);
    h->reason = xstrdup(reason);
    if (line) {
        h->line = xmalloc(len + 1);
        memcpy(h->line, line, len);
        h->len = len;
    }
    h->start = start;
    h->end = end;
    *dl->held_tail = h;
    dl->held_tail = &h->next;
    dl->held_count++;
}

size_t deadletter_held(const struct deadletter *dl)
{
    return dl->held_count;
}

bool deadletter_holds(const struct deadletter *dl, const char *segment)
{
    for (const struct held *h = dl->held; h; h = h->next)
        if (strcmp(h->segment, segment) == 0)
            return true;
    return false;
}

static void free_held(struct held *h)
{
    free(h->segment);
    free(h->reason);
    free(h->line);
    free(h);
}

char *deadletter_retry(struct deadletter *dl, deadletter_written_fn *written, void *ctx)
{
    while (dl->held) {
        struct held *h = dl->held;
        char *err = deadletter_write(dl, h->segment, h->start, h->end, h->reason, h->line, h->len);
        if (err)
            return err; /* the next ones would fail alike */
        dl->held = h->next;
        if (!dl->held)
            dl->held_tail = &dl->held;
        dl->held_count--;
        written(ctx, h->cookie, h->kind, h->reason);
        free_held(h);
    }
    return NULL;
}

void deadletter_close(struct deadletter *dl)
{
    if (!dl)
        return;
    while (dl->held) {
        struct held *h = dl->held;
        dl->held = h->next;
        free_held(h);
    }
    close(dl->fd);
    free(dl->path);
    free(dl);
}
