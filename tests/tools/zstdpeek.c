/*
 * zstdpeek: decode as much of a zstd file as a streaming reader can, like the relay does
 * with a live or crashed segment, for the integration tests.
 *
 *   zstdpeek FILE > decoded
 *   zstdpeek --bytewise FILE > decoded
 *
 * Writes every byte ZSTD_decompressStream can produce (every complete block) to stdout.
 * Exit status: 0 the frame(s) are complete, 3 the data ends inside a frame or the file is
 * empty (a live segment, or one kumod left behind when it was killed), 2 an error
 * (unreadable file, corrupt data).
 * `zstd -dc` is no substitute: on a truncated frame it may not write the last blocks it
 * decoded.
 * --bytewise feeds the decoder one byte per call and writes each call's output at once, so
 * on corrupt data it writes every block before the bad one (a call that meets an error
 * gives no output); the tests' reference for what a damaged segment still holds.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "zstdpeek: %s: %s\n", what, detail);
    exit(2);
}

static void put(const void *buf, size_t len)
{
    if (len > 0 && fwrite(buf, 1, len, stdout) != len)
        die("stdout", strerror(errno));
}

/* One byte per call: nothing decoded before a bad block can be lost with it. */
static int bytewise(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        die(path, strerror(errno));
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    size_t out_size = ZSTD_DStreamOutSize() * 8;
    void *out = malloc(out_size);
    if (dctx == NULL || out == NULL)
        die("setup", "out of memory");
    size_t hint = 0, total = 0;
    int ch;
    while ((ch = fgetc(f)) != EOF) {
        unsigned char byte = (unsigned char)ch;
        ZSTD_inBuffer ib = {&byte, 1, 0};
        total++;
        while (ib.pos < ib.size) {
            ZSTD_outBuffer ob = {out, out_size, 0};
            hint = ZSTD_decompressStream(dctx, &ob, &ib);
            if (ZSTD_isError(hint)) {
                fflush(stdout);
                die(path, ZSTD_getErrorName(hint));
            }
            put(out, ob.pos);
        }
    }
    fflush(stdout);
    fclose(f);
    ZSTD_freeDCtx(dctx);
    free(out);
    return hint == 0 && total > 0 ? 0 : 3;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--bytewise") == 0)
        return bytewise(argv[2]);
    if (argc != 2) {
        fprintf(stderr, "usage: zstdpeek [--bytewise] FILE > decoded\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (f == NULL)
        die(argv[1], strerror(errno));
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    size_t in_size = ZSTD_DStreamInSize(), out_size = ZSTD_DStreamOutSize();
    void *in = malloc(in_size), *out = malloc(out_size);
    if (dctx == NULL || in == NULL || out == NULL)
        die("setup", "out of memory");

    size_t hint = 0; /* 0 once a frame is complete and nothing more is buffered */
    size_t n, total = 0;
    while ((n = fread(in, 1, in_size, f)) > 0) {
        total += n;
        ZSTD_inBuffer ib = {in, n, 0};
        while (ib.pos < ib.size) {
            ZSTD_outBuffer ob = {out, out_size, 0};
            hint = ZSTD_decompressStream(dctx, &ob, &ib);
            if (ZSTD_isError(hint))
                die(argv[1], ZSTD_getErrorName(hint));
            put(out, ob.pos);
        }
    }
    if (ferror(f))
        die(argv[1], strerror(errno));
    /* Drain what the decoder still holds for the output side. */
    for (;;) {
        ZSTD_inBuffer ib = {in, 0, 0};
        ZSTD_outBuffer ob = {out, out_size, 0};
        size_t r = ZSTD_decompressStream(dctx, &ob, &ib);
        if (ZSTD_isError(r))
            die(argv[1], ZSTD_getErrorName(r));
        put(out, ob.pos);
        if (ob.pos < ob.size)
            break;
        hint = r;
    }
    if (fflush(stdout) != 0)
        die("stdout", strerror(errno));
    fclose(f);
    ZSTD_freeDCtx(dctx);
    free(in);
    free(out);
    return hint == 0 && total > 0 ? 0 : 3;
}
