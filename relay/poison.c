#include "poison.h"

#include "log.h"
#include "offsets.h"
#include "spool.h"
#include "xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

bool poison_armed;

/* The loop and the hook watchdog both write the marker. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int marker_fd = -1;
static char *marker_path, *running_path;
/* The record the previous run died on, until this run has handled it. */
static struct {
    bool set;
    char *segment;
    uint64_t start;
    unsigned count;
} last;
static size_t guard_left; /* records still to mark before the policy runs */
static bool stuck_marked; /* the marker holds the watchdog's mark (under lock) */
static bool write_failed; /* warned once */

static bool is_last(const char *segment, uint64_t start)
{
    return last.set && last.start == start && strcmp(last.segment, segment) == 0;
}

/* The marker's content: a record and its count, or none (segment NULL). fdatasync'd: it
 * must be on disk before the hook runs, or a power cut could blame the wrong record. */
static void write_marker(const char *segment, uint64_t start, unsigned count)
{
    char head[64];
    int n = segment ? snprintf(head, sizeof(head), "%u %" PRIu64 "\n", count, start) : 0;
    size_t len = segment ? strlen(segment) : 0;
    struct piece {
        const void *p;
        size_t n;
    } parts[] = {{head, (size_t)n}, {segment, len}};
    off_t at = 0;
    bool ok = marker_fd >= 0;
    for (size_t i = 0; ok && i < 2; i++) {
        ok = pwrite(marker_fd, parts[i].p, parts[i].n, at) == (ssize_t)parts[i].n;
        at += (off_t)parts[i].n;
    }
    ok = ok && ftruncate(marker_fd, at) == 0 && fdatasync(marker_fd) == 0;
    if (!ok && !write_failed) {
        write_failed = true;
        log_warn("cannot write the poison-record marker, a policy that hangs on a record will "
                 "not be stopped from doing it again file=%s error=\"%s\"",
                 marker_path, strerror(errno));
    }
}

/* Back to what the previous run left (until its record is handled), or none. */
static void clear_marker(void)
{
    write_marker(last.set ? last.segment : NULL, last.start, last.count);
}

static unsigned count_for(const char *segment, uint64_t start)
{
    return is_last(segment, start) ? last.count + 1 : 1;
}

static void read_marker(void)
{
    char buf[4096];
    ssize_t n = pread(marker_fd, buf, sizeof(buf) - 1, 0);
    if (n <= 0)
        return;
    buf[n] = '\0';
    unsigned count;
    uint64_t start;
    int used = 0;
    char *nl = memchr(buf, '\n', (size_t)n);
    if (!nl || sscanf(buf, "%u %" SCNu64 "%n", &count, &start, &used) != 2 || buf + used != nl ||
        !nl[1] || count == 0) {
        log_warn("poison-record marker unreadable, ignoring it file=%s", marker_path);
        return;
    }
    last.set = true;
    last.segment = xstrndup(nl + 1, (size_t)(buf + n - nl - 1));
    last.start = start;
    last.count = count;
}

static void update_armed(void)
{
    poison_armed = last.set || guard_left > 0;
}

char *poison_open(const char *state_dir, size_t guarded_records)
{
    marker_path = xasprintf("%s/hook-record", state_dir);
    running_path = xasprintf("%s/running", state_dir);
    marker_fd = open(marker_path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (marker_fd < 0)
        return xasprintf("cannot open %s: %s", marker_path, strerror(errno));
    read_marker();
    bool unclean = access(running_path, F_OK) == 0;
    int fd = open(running_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return xasprintf("cannot create %s: %s", running_path, strerror(errno));
    dprintf(fd, "%ld\n", (long)getpid());
    close(fd);
    if (unclean) {
        guard_left = guarded_records;
        log_info("the last run did not stop cleanly: the record being handled is noted before "
                 "the policy runs, for the next %zu records",
                 guarded_records);
    }
    if (last.set)
        log_warn("the last run died while the policy ran on a record segment=%s offset=%" PRIu64
                 " deaths_in_a_row=%u action=%s",
                 last.segment, last.start, last.count,
                 last.count >= 2 ? "dead-letter it" : "try it again");
    update_armed();
    return NULL;
}

void poison_close(void)
{
    if (running_path)
        unlink(running_path);
    if (marker_fd >= 0) {
        close(marker_fd);
        if (!last.set)
            unlink(marker_path);
    }
    marker_fd = -1;
    free(marker_path);
    free(running_path);
    free(last.segment);
    marker_path = running_path = NULL;
    last.segment = NULL;
    last.set = false;
    poison_armed = false;
}

static const char *segment_id(const struct inflight_record *rec)
{
    return ((const struct segment *)rec->segment)->id_name;
}

bool poison_before(const struct inflight_record *rec)
{
    const char *segment = segment_id(rec);
    pthread_mutex_lock(&lock);
    bool poisoned = is_last(segment, rec->start) && last.count >= 2;
    if (poisoned) {
        free(last.segment);
        last.segment = NULL;
        last.set = false;
        write_marker(NULL, 0, 0);
    } else if (guard_left > 0) {
        write_marker(segment, rec->start, count_for(segment, rec->start));
    }
    pthread_mutex_unlock(&lock);
    update_armed();
    return poisoned;
}

void poison_after(const struct inflight_record *rec)
{
    pthread_mutex_lock(&lock);
    bool was_last = is_last(segment_id(rec), rec->start);
    if (was_last) {
        free(last.segment);
        last.segment = NULL;
        last.set = false;
    }
    if (guard_left > 0 || was_last)
        clear_marker();
    if (guard_left > 0)
        guard_left--;
    pthread_mutex_unlock(&lock);
    update_armed();
}

void poison_mark_stuck(const char *segment, uint64_t start)
{
    pthread_mutex_lock(&lock);
    if (guard_left == 0) { /* else the loop marked it before the hook ran */
        write_marker(segment, start, count_for(segment, start));
        stuck_marked = true;
    }
    pthread_mutex_unlock(&lock);
}

void poison_unmark_stuck(void)
{
    pthread_mutex_lock(&lock);
    if (stuck_marked)
        clear_marker();
    stuck_marked = false;
    pthread_mutex_unlock(&lock);
}
