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

struct deadletter {
    int fd;
    char *path;
    bool dirty;
};

struct deadletter *deadletter_open(const char *state_dir, char **err)
{
    char *dir = xasprintf("%s/deadletter", state_dir);
    if (mkdir(dir, 0750) != 0 && errno != EEXIST) {
        *err = xasprintf("cannot create %s: %s", dir, strerror(errno));
        free(dir);
        return NULL;
    }
    struct deadletter *dl = xcalloc(1, sizeof(*dl));
    dl->path = xasprintf("%s/deadletter.jsonl", dir);
    free(dir);
    dl->fd = open(dl->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
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
        if (ch == '"' || ch == '\\') {
            fputc('\\', f);
            fputc(ch, f);
        } else if (ch == '\n') {
            fputs("\\n", f);
        } else if (ch < 0x20 || ch == 0x7f) {
            fprintf(f, "\\u%04x", ch);
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
    if (n != (ssize_t)text_len)
        err =
            xasprintf("cannot append to %s: %s", dl->path, n < 0 ? strerror(errno) : "short write");
    else
        dl->dirty = true;
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

void deadletter_close(struct deadletter *dl)
{
    if (!dl)
        return;
    close(dl->fd);
    free(dl->path);
    free(dl);
}
