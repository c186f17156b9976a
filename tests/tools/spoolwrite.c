/*
 * spoolwrite: write one spool segment the way kumod does, for the integration tests.
 *
 *   spoolwrite [--plain] [--no-done] [--crash] [--chmod-after-close] PATH  < records
 *
 * kumod's log writer (KUMOMTA.md §1): the file is opened append+create, mode 0644, and holds
 * one zstd frame (level 3). Records are fed to the compressor with ZSTD_e_continue and never
 * flushed, so bytes reach the disk only when the compressor emits a block (~128 KiB of
 * records). Closing finishes the frame (ZSTD_e_end), clears every write bit (the done
 * marker) and closes the fd, in that order: inotify then shows IN_MODIFY, IN_ATTRIB,
 * IN_CLOSE_WRITE.
 *
 * Options:
 *   --plain   no compression; every record is written with one write() as it arrives.
 *   --crash   at EOF, do not finish the frame (kumod was killed: only the blocks already
 *             emitted are on disk), but still clear the write bits (kumod's restart sweep).
 *   --no-done finish the frame but leave the write bits.
 *   --chmod-after-close  clear the write bits after close(2) instead of before.
 *
 * stdin is read line by line (any length, trailing "\n" kept; a last line without "\n" is
 * written as is). These exact lines are control lines, not records:
 *   "#FLUSH\n"  make the compressor emit what it holds (ZSTD_e_flush; a no-op in --plain
 *               mode), then print "flushed <records> <decompressed bytes> <file bytes>\n" on
 *               stdout, so a caller knows that every record before it is on disk. kumod
 *               itself never flushes.
 *   "#CRASH\n"  stop reading and act as --crash does at EOF.
 *   "#DIE\n"    stop reading, leave the frame unfinished and the write bits set: kumod was
 *               killed and has not restarted yet.
 * At exit it prints "<closed|crashed|died> <records> <decompressed bytes> <file bytes>\n".
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#define ZSTD_LEVEL 3

struct writer {
    const char *path;
    int fd;
    bool plain;
    ZSTD_CCtx *cctx;
    void *out;
    size_t out_size;
    uint64_t records;
    uint64_t raw_bytes;  /* decompressed bytes accepted */
    uint64_t file_bytes; /* bytes written to the file */
};

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "spoolwrite: %s: %s\n", what, detail);
    exit(2);
}

static void write_all(struct writer *w, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(w->fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die(w->path, strerror(errno));
        }
        p += n;
        len -= (size_t)n;
        w->file_bytes += (uint64_t)n;
    }
}

/*
 * Feed `len` bytes to the compressor with `mode`, writing out whatever it emits. For
 * ZSTD_e_continue it returns once the input is consumed; for flush/end it loops until the
 * compressor reports nothing left.
 */
static void compress(struct writer *w, const void *data, size_t len, ZSTD_EndDirective mode)
{
    ZSTD_inBuffer in = {data, len, 0};
    for (;;) {
        ZSTD_outBuffer out = {w->out, w->out_size, 0};
        size_t left = ZSTD_compressStream2(w->cctx, &out, &in, mode);
        if (ZSTD_isError(left))
            die("ZSTD_compressStream2", ZSTD_getErrorName(left));
        if (out.pos > 0)
            write_all(w, w->out, out.pos);
        if (mode == ZSTD_e_continue ? in.pos == in.size : left == 0)
            break;
    }
}

static void report(const struct writer *w, const char *what)
{
    printf("%s %llu %llu %llu\n", what, (unsigned long long)w->records,
           (unsigned long long)w->raw_bytes, (unsigned long long)w->file_bytes);
    fflush(stdout);
}

static void mark_done(struct writer *w, bool by_fd)
{
    struct stat st;
    int rc;
    if (by_fd) {
        rc = fstat(w->fd, &st);
        if (rc == 0)
            rc = fchmod(w->fd, st.st_mode & 07555);
    } else {
        rc = stat(w->path, &st);
        if (rc == 0)
            rc = chmod(w->path, st.st_mode & 07555);
    }
    if (rc != 0)
        die(w->path, strerror(errno));
}

static void usage(void)
{
    fprintf(stderr, "usage: spoolwrite [--plain] [--no-done] [--crash] [--chmod-after-close] "
                    "PATH < records\n");
    exit(2);
}

int main(int argc, char **argv)
{
    struct writer w = {0};
    bool done = true, crash = false, die_now = false, chmod_after_close = false;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--plain") == 0)
            w.plain = true;
        else if (strcmp(argv[i], "--no-done") == 0)
            done = false;
        else if (strcmp(argv[i], "--crash") == 0)
            crash = true;
        else if (strcmp(argv[i], "--chmod-after-close") == 0)
            chmod_after_close = true;
        else if (argv[i][0] == '-' || w.path != NULL)
            usage();
        else
            w.path = argv[i];
    }
    if (w.path == NULL)
        usage();

    w.fd = open(w.path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (w.fd < 0)
        die(w.path, strerror(errno));
    if (!w.plain) {
        w.cctx = ZSTD_createCCtx();
        if (w.cctx == NULL)
            die("ZSTD_createCCtx", "out of memory");
        size_t rc = ZSTD_CCtx_setParameter(w.cctx, ZSTD_c_compressionLevel, ZSTD_LEVEL);
        if (ZSTD_isError(rc))
            die("ZSTD_c_compressionLevel", ZSTD_getErrorName(rc));
        w.out_size = ZSTD_CStreamOutSize();
        w.out = malloc(w.out_size);
        if (w.out == NULL)
            die("malloc", "out of memory");
    }

    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, stdin)) > 0) {
        if (len == 7 && memcmp(line, "#FLUSH\n", 7) == 0) {
            if (!w.plain)
                compress(&w, NULL, 0, ZSTD_e_flush);
            report(&w, "flushed");
            continue;
        }
        if (len == 7 && memcmp(line, "#CRASH\n", 7) == 0) {
            crash = true;
            break;
        }
        if (len == 5 && memcmp(line, "#DIE\n", 5) == 0) {
            die_now = true;
            break;
        }
        if (w.plain)
            write_all(&w, line, (size_t)len);
        else
            compress(&w, line, (size_t)len, ZSTD_e_continue);
        w.records++;
        w.raw_bytes += (uint64_t)len;
    }
    if (ferror(stdin))
        die("stdin", strerror(errno));
    free(line);

    /* A crash leaves the frame unfinished: whatever the compressor still holds is lost. */
    if (die_now) {
        crash = false;
        done = false;
    }
    if (!w.plain && !crash && !die_now)
        compress(&w, NULL, 0, ZSTD_e_end);
    if ((done || crash) && !chmod_after_close)
        mark_done(&w, true);
    if (close(w.fd) != 0)
        die(w.path, strerror(errno));
    if ((done || crash) && chmod_after_close)
        mark_done(&w, false);

    report(&w, die_now ? "died" : crash ? "crashed" : "closed");
    ZSTD_freeCCtx(w.cctx);
    free(w.out);
    return 0;
}
