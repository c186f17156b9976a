#include "segment.h"

#include "fnv.h"
#include "xalloc.h"

#include <stdlib.h>
#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
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
    bool failed;           /* undecodable data was met: every later call says so again */

    /* A decode error loses the output of the call that met it (zstd reports no partial
     * output), which may be many blocks of good records. Salvage decodes the file again
     * from its start with a fresh decoder, drops the output given out before, and feeds
     * the bytes of the failed call one at a time, so every block before the bad one comes
     * out. Only the error path pays for this. */
    bool salvaging;
    uint64_t salvage_in_from;  /* compressed offset where the failed call began */
    uint64_t salvage_in_to;    /* ... and the end of the input it had */
    uint64_t salvage_out_from; /* decompressed bytes given out before the failed call */
    uint64_t salvage_out;      /* decompressed bytes of the salvage decode so far */
    uint64_t good_in;          /* compressed offset after the last block that decoded */
    uint64_t error_in, error_out;

    uint64_t file_pos; /* bytes read from the file (its next read offset) */
    uint64_t fp_hash;  /* fingerprint of the file's first fp_len bytes */
    size_t fp_len;

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
                                           size_t max_record_bytes, char **err)
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
    r->fp_hash = FNV64_OFFSET;
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

/* FNV-1a, 64 bits: the fingerprint of a segment's first bytes (see segment.h). */
uint64_t segment_fingerprint_update(uint64_t hash, const void *data, size_t len)
{
    return fnv64_update(hash, data, len);
}

uint64_t segment_fingerprint(const void *data, size_t len)
{
    return segment_fingerprint_update(FNV64_OFFSET, data, len);
}

/* n bytes were read at r->file_pos: the fingerprint takes those of the first
 * SEGMENT_FINGERPRINT_BYTES it has not seen (a salvage reads them again). */
static void note_read(struct segment_reader *r, const char *data, size_t n)
{
    uint64_t at = r->file_pos;
    r->file_pos += (uint64_t)n;
    if (r->fp_len >= SEGMENT_FINGERPRINT_BYTES || r->fp_len < at || r->fp_len >= r->file_pos)
        return;
    size_t from = (size_t)(r->fp_len - at);
    size_t upto = n;
    if (at + upto > SEGMENT_FINGERPRINT_BYTES)
        upto = (size_t)(SEGMENT_FINGERPRINT_BYTES - at);
    r->fp_hash = segment_fingerprint_update(r->fp_hash, data + from, upto - from);
    r->fp_len = (size_t)at + upto;
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
    note_read(r, (const char *)r->in + r->in_len, (size_t)n);
    r->in_len += (size_t)n;
    return n;
}

/* The compressed offset of r->in[pos]. */
static uint64_t input_offset(const struct segment_reader *r, size_t pos)
{
    return r->file_pos - r->in_len + pos;
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

/* The first decode error: start the salvage decode (see struct segment_reader). */
static bool start_salvage(struct segment_reader *r)
{
    r->salvage_in_from = input_offset(r, r->in_pos);
    r->salvage_in_to = r->file_pos;
    r->salvage_out_from = r->base + r->end;
    r->salvage_out = 0;
    r->good_in = 0;
    if (lseek(r->fd, 0, SEEK_SET) != 0) {
        snprintf(r->error, sizeof(r->error), "cannot seek to decode again: %s", strerror(errno));
        return false;
    }
    ZSTD_DCtx_reset(r->dctx, ZSTD_reset_session_only);
    r->file_pos = 0;
    r->in_pos = r->in_len = 0;
    r->zstd_out_full = false;
    r->salvaging = true;
    return true;
}

/* How much of r->in the next salvage call may take: everything the failed call's decoder
 * had taken without error, then one byte at a time through that call's input. */
static size_t salvage_input_end(const struct segment_reader *r)
{
    uint64_t at = input_offset(r, r->in_pos);
    uint64_t step = at < r->salvage_in_from ? r->salvage_in_from - at
                    : at < r->salvage_in_to ? 1
                                            : r->in_len - r->in_pos;
    return r->in_len - r->in_pos < step ? r->in_len : r->in_pos + (size_t)step;
}

/* Drops the part of n decoded bytes at buf[end..) that was given out before the salvage
 * began. Returns the bytes left. */
static size_t drop_given_out(struct segment_reader *r, size_t n)
{
    uint64_t at = r->salvage_out;
    r->salvage_out += n;
    if (at >= r->salvage_out_from)
        return n;
    size_t skip = r->salvage_out_from - at < n ? (size_t)(r->salvage_out_from - at) : n;
    memmove(r->buf + r->end, r->buf + r->end + skip, n - skip);
    return n - skip;
}

static void note_decode_error(struct segment_reader *r, size_t ret)
{
    r->failed = true;
    r->error_in = r->good_in;
    r->error_out = r->base + r->end;
    snprintf(r->error, sizeof(r->error), "zstd: %s", ZSTD_getErrorName(ret));
}

static ssize_t decode_zstd(struct segment_reader *r)
{
    for (;;) {
        /* The decoder can consume a whole block and still hold part of its output when the
         * buffer filled: drain it before asking the file for more, or a live segment's last
         * block (and a crashed one's records) waits for bytes that may never come. */
        if (r->in_pos == r->in_len && !r->zstd_out_full) {
            ssize_t n = read_input(r);
            if (n <= 0)
                return n;
        }
        size_t in_end = r->salvaging ? salvage_input_end(r) : r->in_len;
        ZSTD_inBuffer in = {r->in, in_end, r->in_pos};
        ZSTD_outBuffer out = {r->buf + r->end, r->cap - r->end, 0};
        size_t ret = ZSTD_decompressStream(r->dctx, &out, &in);
        if (ZSTD_isError(ret)) {
            if (!r->salvaging && start_salvage(r))
                continue;
            if (r->salvaging)
                note_decode_error(r, ret);
            r->failed = true;
            r->error_out = r->base + r->end;
            return -1;
        }
        r->zstd_started = true;
        r->in_pos = in.pos;
        r->last_zstd_hint = ret;
        r->zstd_out_full = out.pos == out.size;
        size_t n = out.pos;
        if (r->salvaging && (n > 0 || ret == 0))
            r->good_in = input_offset(r, r->in_pos);
        if (r->salvaging)
            n = drop_given_out(r, n);
        if (n > 0)
            return (ssize_t)n;
    }
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
        else
            note_read(r, r->buf + r->end, (size_t)n);
        return n;
    }
    return decode_zstd(r);
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
    if (r->failed)
        return SEGMENT_ERROR;
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

void segment_reader_damage(const struct segment_reader *r, struct segment_damage *damage)
{
    damage->compressed_offset = r->error_in;
    damage->decoded_offset = r->error_out;
    struct stat st;
    damage->compressed_size = fstat(r->fd, &st) == 0 ? (uint64_t)st.st_size : 0;
}

uint64_t segment_reader_bytes_read(const struct segment_reader *r)
{
    return r->file_pos;
}

uint64_t segment_reader_decoded(const struct segment_reader *r)
{
    return r->base + r->end;
}

void segment_reader_fingerprint(const struct segment_reader *r, uint64_t *hash, size_t *len)
{
    *hash = r->fp_hash;
    *len = r->fp_len;
}

uint64_t segment_reader_ordinal(const struct segment_reader *r)
{
    return r->ordinal;
}

int segment_reader_fd(const struct segment_reader *r)
{
    return r->fd;
}
