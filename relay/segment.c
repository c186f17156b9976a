#include "segment.h"

#include "xalloc.h"

#include <stdlib.h>
#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

enum { MIN_BUFFER = 256 * 1024 };

static const unsigned char zstd_magic[4] = {0x28, 0xB5, 0x2F, 0xFD};

struct segment_reader {
    int fd;
    enum segment_kind kind;
    ZSTD_DCtx *dctx;
    size_t last_zstd_hint; /* last ZSTD_decompressStream result: 0 = at a frame end */
    bool zstd_started;     /* some compressed input was fed to the decoder */
    bool zstd_out_full;    /* the last call filled its output: decoded bytes may wait inside */

    unsigned char *in; /* compressed input (zstd) or the first bytes while sniffing */
    size_t in_cap, in_len, in_pos;

    char *buf; /* decoded bytes; buf[start..end) not yet framed */
    size_t cap, start, end, scanned;
    uint64_t base; /* decompressed offset of buf[0] */

    size_t max_record;
    bool discarding;        /* inside an oversize line, looking for its end */
    uint64_t discard_start; /* its start offset */
    uint64_t skip_to;       /* records ending at or before this were committed */
    uint64_t ordinal;       /* of the next record */
    uint64_t offset;        /* end of the last record returned or skipped */
    const char *header;     /* spool.segment_header: stripped when the segment starts with it */
    size_t header_len;
    bool header_checked;
    char error[256];
};

void segment_reader_set_header(struct segment_reader *r, const char *header)
{
    r->header = header;
    r->header_len = header ? strlen(header) : 0;
    r->header_checked = r->header_len == 0;
}

/* kumod's segment_header: a fixed text at the very start, without a newline after it.
 * Returns false while too few bytes are decoded to tell. */
static bool check_header(struct segment_reader *r)
{
    if (r->header_len == 0) { /* no header set: memcmp must not see a NULL header */
        r->header_checked = true;
        return true;
    }
    size_t have = r->end - r->start;
    size_t n = have < r->header_len ? have : r->header_len;
    if (memcmp(r->buf + r->start, r->header, n) != 0) {
        r->header_checked = true; /* not this segment's start: read it as is */
        return true;
    }
    if (have < r->header_len)
        return false;
    r->start = r->scanned = r->header_len;
    r->offset = r->header_len;
    r->header_checked = true;
    return true;
}

struct segment_reader *segment_reader_open(const char *path, uint64_t resume_offset,
                                           uint64_t resume_ordinal, size_t max_record_bytes,
                                           char **err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        *err = xasprintf("cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    struct segment_reader *r = xcalloc(1, sizeof(*r));
    r->fd = fd;
    r->max_record = max_record_bytes;
    r->cap = max_record_bytes + 1 < MIN_BUFFER ? max_record_bytes + 1 : MIN_BUFFER;
    if (r->cap < 4096)
        r->cap = 4096;
    r->buf = xmalloc(r->cap);
    r->in_cap = ZSTD_DStreamInSize();
    r->in = xmalloc(r->in_cap);
    r->skip_to = resume_offset;
    /* Skipped records are counted again from 0; the ordinal given is only a cross-check
     * for callers and is what the first record after the skip must carry. */
    (void)resume_ordinal;
    return r;
}

void segment_reader_close(struct segment_reader *r)
{
    if (!r)
        return;
    close(r->fd);
    ZSTD_freeDCtx(r->dctx);
    free(r->in);
    free(r->buf);
    free(r);
}

/* Reads more raw bytes into r->in. Returns bytes read, 0 at EOF, -1 on error. */
static ssize_t read_input(struct segment_reader *r)
{
    if (r->in_pos == r->in_len)
        r->in_pos = r->in_len = 0;
    ssize_t n;
    do {
        n = read(r->fd, r->in + r->in_len, r->in_cap - r->in_len);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        snprintf(r->error, sizeof(r->error), "read failed: %s", strerror(errno));
        return -1;
    }
    r->in_len += (size_t)n;
    return n;
}

/* Decides zstd or plain from the first four bytes. Returns false while the bytes so far
 * could still begin the magic (a live segment may still be empty); a short file that
 * cannot ("{}\n") is plain now, or its records would never come out. */
static bool sniff_kind(struct segment_reader *r, bool *failed)
{
    while (r->in_len < sizeof(zstd_magic) && memcmp(r->in, zstd_magic, r->in_len) == 0) {
        ssize_t n = read_input(r);
        if (n < 0)
            *failed = true;
        if (n <= 0)
            return false;
    }
    if (r->in_len >= sizeof(zstd_magic) && memcmp(r->in, zstd_magic, sizeof(zstd_magic)) == 0) {
        r->kind = SEGMENT_KIND_ZSTD;
        r->dctx = ZSTD_createDCtx();
        if (!r->dctx)
            *failed = true;
        return r->dctx != NULL;
    }
    r->kind = SEGMENT_KIND_PLAIN;
    return true;
}

/* Appends decoded bytes at buf[end..cap). Returns bytes added, 0 when nothing more is on
 * disk now, -1 on a read or decode error. */
static ssize_t decode_more(struct segment_reader *r)
{
    if (r->kind == SEGMENT_KIND_PLAIN) {
        /* Sniffing left some bytes in r->in; hand them over first. */
        if (r->in_pos < r->in_len) {
            size_t n = r->in_len - r->in_pos;
            if (n > r->cap - r->end)
                n = r->cap - r->end;
            memcpy(r->buf + r->end, r->in + r->in_pos, n);
            r->in_pos += n;
            return (ssize_t)n;
        }
        ssize_t n;
        do {
            n = read(r->fd, r->buf + r->end, r->cap - r->end);
        } while (n < 0 && errno == EINTR);
        if (n < 0)
            snprintf(r->error, sizeof(r->error), "read failed: %s", strerror(errno));
        return n;
    }
    for (;;) {
        /* The decoder can consume a whole block and still hold part of its output when the
         * buffer filled: drain it before asking the file for more, or a live segment's last
         * block (and a crashed one's records) waits for bytes that may never come. */
        if (r->in_pos == r->in_len && !r->zstd_out_full) {
            ssize_t n = read_input(r);
            if (n <= 0)
                return n;
        }
        ZSTD_inBuffer in = {r->in, r->in_len, r->in_pos};
        ZSTD_outBuffer out = {r->buf + r->end, r->cap - r->end, 0};
        size_t ret = ZSTD_decompressStream(r->dctx, &out, &in);
        if (ZSTD_isError(ret)) {
            snprintf(r->error, sizeof(r->error), "zstd: %s", ZSTD_getErrorName(ret));
            return -1;
        }
        r->zstd_started = true;
        r->in_pos = in.pos;
        r->last_zstd_hint = ret;
        r->zstd_out_full = out.pos == out.size;
        if (out.pos > 0)
            return (ssize_t)out.pos;
    }
}

/* Makes room at the end of buf: moves the unframed bytes to the front, then grows up to
 * the record limit so that one whole record always fits. */
static void make_room(struct segment_reader *r)
{
    if (r->start > 0) {
        memmove(r->buf, r->buf + r->start, r->end - r->start);
        r->base += r->start;
        r->end -= r->start;
        r->scanned -= r->start;
        r->start = 0;
    }
    if (r->end == r->cap && r->cap < r->max_record + 1) {
        size_t cap = r->cap * 2;
        if (cap > r->max_record + 1)
            cap = r->max_record + 1;
        r->buf = xrealloc(r->buf, cap);
        r->cap = cap;
    }
}

/* Called when buf is full with no newline: the line is longer than max_record_bytes. Its
 * bytes are dropped; framing resumes after its newline. */
static void start_discarding(struct segment_reader *r)
{
    /* A line longer than two buffers gets here again: it still starts where it started. */
    if (!r->discarding)
        r->discard_start = r->base + r->start;
    r->discarding = true;
    r->base += r->end;
    r->start = r->end = r->scanned = 0;
}

static bool frame_line(struct segment_reader *r, struct segment_record *rec)
{
    char *nl = memchr(r->buf + r->scanned, '\n', r->end - r->scanned);
    if (!nl) {
        r->scanned = r->end;
        return false;
    }
    size_t line_end = (size_t)(nl - r->buf) + 1;
    rec->start = r->discarding ? r->discard_start : r->base + r->start;
    rec->end = r->base + line_end;
    rec->len = (size_t)(rec->end - rec->start);
    /* The buffer is never smaller than 4 KiB, so a line can fit in it and still be longer
     * than the limit. */
    rec->oversize = r->discarding || rec->len > r->max_record;
    rec->data = rec->oversize ? NULL : r->buf + r->start;
    rec->ordinal = r->ordinal++;
    r->discarding = false;
    r->start = r->scanned = line_end;
    r->offset = rec->end;
    return true;
}

enum segment_read segment_reader_next(struct segment_reader *r, struct segment_record *rec)
{
    if (r->kind == SEGMENT_KIND_UNKNOWN) {
        bool failed = false;
        if (!sniff_kind(r, &failed))
            return failed ? SEGMENT_ERROR : SEGMENT_AGAIN;
    }
    for (;;) {
        while ((r->header_checked || check_header(r)) && frame_line(r, rec)) {
            if (rec->end > r->skip_to)
                return SEGMENT_RECORD;
        }
        if (r->end == r->cap) {
            make_room(r);
            if (r->end == r->cap)
                start_discarding(r);
        }
        ssize_t n = decode_more(r);
        if (n < 0)
            return SEGMENT_ERROR;
        if (n == 0)
            return SEGMENT_AGAIN;
        r->end += (size_t)n;
    }
}

void segment_reader_tail(const struct segment_reader *r, struct segment_tail *tail)
{
    tail->partial_bytes = r->end - r->start;
    if (r->discarding)
        tail->partial_bytes += (size_t)(r->base - r->discard_start);
    tail->frame_truncated = r->kind == SEGMENT_KIND_ZSTD &&
                            ((r->zstd_started && r->last_zstd_hint != 0) || r->in_pos < r->in_len);
}

enum segment_kind segment_reader_kind(const struct segment_reader *r)
{
    return r->kind;
}

const char *segment_reader_error(const struct segment_reader *r)
{
    return r->error;
}

uint64_t segment_reader_offset(const struct segment_reader *r)
{
    return r->offset > r->skip_to ? r->offset : r->skip_to;
}

uint64_t segment_reader_ordinal(const struct segment_reader *r)
{
    return r->ordinal;
}

int segment_reader_fd(const struct segment_reader *r)
{
    return r->fd;
}
