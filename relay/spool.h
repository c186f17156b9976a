/* The spool directory: one inotify watch, a scan on start, on IN_Q_OVERFLOW and every
 * so often as a safety net, and the list of segments in name (= time) order. The spool
 * finds segments and tells the relay when one changed or went away; reading them is the
 * relay's business. */
#ifndef RELAY_SPOOL_H
#define RELAY_SPOOL_H

#include "offsets.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct loop;
struct segment_reader;

enum segment_state {
    SEGMENT_STATE_READING,  /* records may still come */
    SEGMENT_STATE_DRAINING, /* done and read to the end; waiting for completions */
    SEGMENT_STATE_FINISHED, /* done and every record committed */
};

struct segment {
    char *name; /* the file name; "<dir tag>:<file name>" after the first directory (msgid.h) */
    char *file; /* the file name */
    /* Files seen under this name before (replaced, or deleted and made again): part of
     * the message ids, so the new file's records never collide with the old one's. */
    uint32_t generation;
    char *id_name; /* name, or "name~generation": what message ids are made of (msgid.h) */
    size_t dir;    /* index of its spool directory */
    char *path;
    uint64_t inode;
    /* Its size when last seen and the fingerprint of its first bytes: with the inode, what
     * the checkpoint keeps to know the file again (see checkpoint_entry). */
    uint64_t size;
    uint64_t fp_hash;
    uint32_t fp_len;
    enum segment_state state;
    bool done;          /* write bits cleared: kumod closed it */
    bool gone;          /* deleted or replaced; kept only while records reference it */
    bool ready;         /* in the relay's ready queue */
    bool skip_existing; /* start_at: end, no checkpoint: skip what is there now */
    struct segment *ready_next;
    struct segment_reader *reader; /* open while READING */
    bool awaiting_reader;          /* done, backlog: waits for a free done-reader slot */
    bool holds_done_slot;          /* its reader was opened while it was done */
    struct watermark wm;
    uint64_t resume_offset; /* from the checkpoint */
    uint64_t records_read;
    size_t in_flight_records; /* records of this segment not yet released */
    /* For the lag's age (spool_stats): since when (wall clock, ms) bytes of the file wait
     * unread, and the file size then; once the reader passes that size, what waits is
     * newer. */
    uint64_t unread_since_ms, unread_mark;
    uint64_t scan_mark;
};

struct spool_events {
    /* A new segment appeared (also at start). The relay applies the checkpoint here. */
    void (*added)(void *ctx, struct segment *seg);
    /* It may have grown or changed mode: read on. */
    void (*changed)(void *ctx, struct segment *seg);
    /* It was deleted or replaced; the spool forgets it after this returns. */
    void (*removed)(void *ctx, struct segment *seg);
    void *ctx;
};

struct spool;

struct spool_source;

/* Watch every directory with one inotify instance. */
struct spool *spool_open(const struct spool_source *sources, size_t count, struct loop *loop,
                         const struct spool_events *events, char **err);
void spool_close(struct spool *spool);
/* Compare the directory with what we know: add, change, remove. */
void spool_scan(struct spool *spool);
/* Segments in name order. */
size_t spool_segment_count(const struct spool *spool);
struct segment *spool_segment(const struct spool *spool, size_t index);
/* By name (see struct segment). */
struct segment *spool_find(const struct spool *spool, const char *name);
/* Whether a file name of a spool directory is a segment's: it matches the pattern and is
 * not a dot file. */
bool spool_is_segment_name(const char *pattern, const char *name);
/* The segment file names of directory path, in name order (an array of strings, all
 * malloc'd). -1 with errno if the directory cannot be read. */
int spool_list_dir(const char *path, const char *pattern, char ***names, size_t *count);
/* Set the generation (from the checkpoint, or one more than a replaced file's). */
void spool_set_generation(struct segment *seg, uint32_t generation);
/* Free a segment the spool has already forgotten (after removed()). */
void spool_segment_free(struct segment *seg);
/* What the metrics and health need, computed on demand (once a second). */
struct spool_stats {
    size_t dir;          /* the directory these numbers are for */
    size_t live;         /* still written by kumod */
    size_t done_pending; /* done, not every record committed yet */
    size_t finished;
    uint64_t lag_bytes;      /* bytes of segment files not read yet */
    uint64_t oldest_read_ms; /* loop_now_ms() when the oldest incomplete record was read; 0 */
    uint64_t unread_age_ms;  /* how long the oldest unread bytes have waited */
};
/* Also ages each segment's unread bytes: call it regularly (every second). */
void spool_stats(const struct spool *spool, size_t dir, struct spool_stats *stats);
size_t spool_dir_count(const struct spool *spool);
const char *spool_dir_path(const struct spool *spool, size_t dir);

/* Why the file now at seg->path is not the one the checkpoint entry e was written for
 * ("has a new inode since the checkpoint", ...), or NULL when it is. Takes the fingerprint
 * of the file's first bytes into seg either way (or e's, when the file cannot be read). */
const char *spool_check_identity(struct segment *seg, const struct checkpoint_entry *e);
/* The same for a file the relay does not have open (status): NULL when it is e's file. */
const char *spool_file_differs(const char *path, const struct checkpoint_entry *e);

/* stat the segment: sets seg->done from the write bits. Returns false if it is gone. */
bool spool_refresh_mode(struct segment *seg);

#endif
