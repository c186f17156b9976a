/* One segment file: a streaming reader (zstd detected by magic, or plain lines) that frames
 * records and knows each one's decompressed start/end offset and ordinal. */
#ifndef RELAY_SEGMENT_H
#define RELAY_SEGMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum segment_kind { SEGMENT_KIND_UNKNOWN, SEGMENT_KIND_ZSTD, SEGMENT_KIND_PLAIN };

enum segment_read {
    SEGMENT_RECORD, /* *rec is filled */
    SEGMENT_AGAIN,  /* no complete record until the file grows */
    SEGMENT_ERROR,  /* undecodable data; segment_reader_error() says what */
};

struct segment_record {
    const char *data; /* the line with its '\n'; valid until the next call. NULL if oversize */
    size_t len;       /* bytes of the line, also when oversize */
    uint64_t start;   /* decompressed offset of its first byte */
    uint64_t end;     /* decompressed offset just past its '\n' */
    uint64_t ordinal; /* 0-based position in the segment */
    bool oversize;    /* longer than max_record_bytes: data was not kept */
};

/* What was left at the end of a finished segment (kumod crashed mid-frame, or a last line
 * without a newline). */
struct segment_tail {
    size_t partial_bytes; /* bytes after the last '\n' that were dropped */
    bool frame_truncated; /* the zstd frame did not end */
};

/* Where a segment stopped decoding (SEGMENT_ERROR). Every record that ended before
 * decoded_offset was returned; the bytes from compressed_offset on could not be decoded. */
struct segment_damage {
    uint64_t compressed_offset; /* file offset after the last block that decoded */
    uint64_t compressed_size;   /* the file's size now */
    uint64_t decoded_offset;    /* decompressed bytes that came out */
};

/* A segment's identity beyond its inode (which a file system reuses): a hash of its first
 * bytes, up to this many. The same file always starts with the same bytes; kumod's zstd
 * frame header is the same in every segment, but its first block is not. */
enum { SEGMENT_FINGERPRINT_BYTES = 4096 };
uint64_t segment_fingerprint(const void *data, size_t len);
uint64_t segment_fingerprint_update(uint64_t hash, const void *data, size_t len);

struct segment_reader;

/* Open path and prepare to return records ending after resume_offset (those before it
 * were committed earlier and are decoded and skipped; their ordinals are counted again as
 * they are skipped). Returns NULL with *err set (malloc'd) on failure. */
struct segment_reader *segment_reader_open(const char *path, uint64_t resume_offset,
                                           size_t max_record_bytes, char **err);
/* Strip header (kept by the caller) from the start of the segment when it is there. */
void segment_reader_set_header(struct segment_reader *r, const char *header);
enum segment_read segment_reader_next(struct segment_reader *r, struct segment_record *rec);
void segment_reader_tail(const struct segment_reader *r, struct segment_tail *tail);
enum segment_kind segment_reader_kind(const struct segment_reader *r);
const char *segment_reader_error(const struct segment_reader *r);
uint64_t segment_reader_offset(const struct segment_reader *r); /* end of the last record */
/* Decompressed bytes decoded so far (at SEGMENT_AGAIN: the whole file as it is now). */
uint64_t segment_reader_decoded(const struct segment_reader *r);
/* The fingerprint of the bytes read so far (the first *len of the file, *len at most
 * SEGMENT_FINGERPRINT_BYTES). */
void segment_reader_fingerprint(const struct segment_reader *r, uint64_t *hash, size_t *len);
/* Bytes read from the file: it is at least this long. */
uint64_t segment_reader_bytes_read(const struct segment_reader *r);
/* After SEGMENT_ERROR: where decoding stopped. */
void segment_reader_damage(const struct segment_reader *r, struct segment_damage *damage);
uint64_t segment_reader_ordinal(const struct segment_reader *r); /* ordinal of the next */
int segment_reader_fd(const struct segment_reader *r);
void segment_reader_close(struct segment_reader *r);

#endif
