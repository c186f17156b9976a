/* Offsets: which records of a segment are complete (their publishes acknowledged, or
 * dropped, or dead-lettered), the committed watermark that follows from that, and the
 * checkpoint file that makes the watermarks survive a crash. */
#ifndef RELAY_OFFSETS_H
#define RELAY_OFFSETS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A record read from a segment and not yet known complete. */
struct inflight_record {
    struct inflight_record *next; /* in its segment's watermark, in read order */
    void *segment;                /* owner (struct segment) */
    uint64_t start, end, ordinal;
    uint32_t outstanding; /* publishes not yet acknowledged, plus holds of the policy */
    uint32_t publishes;   /* publishes made for it */
    bool complete;
    uint64_t read_at_ms; /* for the age of the oldest unacknowledged record */
    /* The highest sequence jetstream.stream had acknowledged when the record was read: any
     * message published for it is stored above (the stream's sequence only grows). */
    uint64_t stream_floor;
};

/* Records of one segment in read order. The committed offset is the end of the longest
 * prefix of complete records: a record acknowledged out of order waits for those before
 * it, so a crash can only repeat records, never skip one. */
struct watermark {
    struct inflight_record *head, *tail;
    uint64_t committed_offset;
    uint64_t committed_ordinal; /* records in the committed prefix */
    size_t pending;             /* records in the list */
};

void offsets_watermark_push(struct watermark *wm, struct inflight_record *rec);
/* Mark rec complete and pop the complete prefix, handing each popped record to release.
 * Returns true when the committed offset moved. */
bool offsets_watermark_complete(struct watermark *wm, struct inflight_record *rec,
                                void (*release)(void *arg, struct inflight_record *rec), void *arg);

struct checkpoint_entry {
    char *name; /* segment file name */
    uint64_t inode;
    uint64_t offset;     /* committed decompressed offset */
    uint64_t ordinal;    /* records committed */
    bool finished;       /* done and every record committed */
    uint32_t generation; /* files seen under this name before this one (replacements) */
    /* What tells this file from a later one of the same name and inode (file systems reuse
     * inode numbers): its size when last seen, and a hash of its first fp_len bytes (see
     * segment_fingerprint). 0 when not known (checkpoints written before these were). */
    uint64_t size;
    uint32_t fp_len;
    uint64_t fp_hash;
};

struct checkpoint {
    char *spool_dir;
    /* jetstream.stream, and a sequence of it below every message this relay may have
     * stored for a record the checkpoint does not cover yet: where the read-back at the
     * next start begins. stream is NULL when the floor is not known. */
    char *stream;
    uint64_t stream_floor;
    struct checkpoint_entry *entries;
    size_t count;
};

/* Read state_dir/checkpoint. Returns NULL on success (*exists false when there is none),
 * or a malloc'd error naming the file and what is wrong with it. */
char *offsets_checkpoint_load(const char *state_dir, struct checkpoint *cp, bool *exists);
/* Parse checkpoint text (exposed for tests and the fuzzer). */
char *offsets_checkpoint_parse(const char *text, size_t len, struct checkpoint *cp);
/* Write atomically: temp file, fsync, rename, fsync the directory. NULL or a malloc'd
 * error. On error the previous checkpoint is untouched. */
char *offsets_checkpoint_write(const char *state_dir, const struct checkpoint *cp);
void offsets_checkpoint_add(struct checkpoint *cp, const struct checkpoint_entry *entry);
void offsets_checkpoint_free(struct checkpoint *cp);

#endif
