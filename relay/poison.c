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

static bool is_last(const struct poison *p, const char *segment, uint64_t start)
{
    return p->last.set && p->last.start == start && strcmp(p->last.segment, segment) == 0;
}

/* The marker's content: a record and its count, or none (segment NULL). fdatasync'd: it
 * must be on disk before the hook runs, or a power cut could blame the wrong record. */
static void write_marker(struct poison *p, const char *segment, uint64_t start, unsigned count)
{
    char head[64];
    int n = segment ? snprintf(head, sizeof(head), "%u %" PRIu64 "\n", count, start) : 0;
    size_t len = segment ? strlen(segment) : 0;
    struct piece {
        const void *data;
        size_t n;
    } parts[] = {{head, (size_t)n}, {segment, len}};
    off_t at = 0;
    bool ok = p->marker_fd >= 0;
    for (size_t i = 0; ok && i < 2; i++) {
        ok = pwrite(p->marker_fd, parts[i].data, parts[i].n, at) == (ssize_t)parts[i].n;
        at += (off_t)parts[i].n;
    }
    ok = ok && ftruncate(p->marker_fd, at) == 0 && fdatasync(p->marker_fd) == 0;
    if (!ok && !p->write_failed) {
        p->write_failed = true;
        log_warn("cannot write the poison-record marker, a policy that hangs on a record will "
                 "not be stopped from doing it again file=%s error=\"%s\"",
                 p->marker_path, strerror(errno));
    }
}

/* Back to what the previous run left (until its record is handled), or none. */
static void clear_marker(struct poison *p)
{
    write_marker(p, p->last.set ? p->last.segment : NULL, p->last.start, p->last.count);
}

static unsigned count_for(const struct poison *p, const char *segment, uint64_t start)
{
    return is_last(p, segment, start) ? p->last.count + 1 : 1;
}

static void read_marker(struct poison *p)
{
    char buf[4096];
    ssize_t n = pread(p->marker_fd, buf, sizeof(buf) - 1, 0);
    if (n <= 0)
        return;
    buf[n] = '\0';
    unsigned count;
    uint64_t start;
    int used = 0;
    char *nl = memchr(buf, '\n', (size_t)n);
    if (!nl || sscanf(buf, "%u %" SCNu64 "%n", &count, &start, &used) != 2 || buf + used != nl ||
        !nl[1] || count == 0) {
        log_warn("poison-record marker unreadable, ignoring it file=%s", p->marker_path);
        return;
    }
    p->last.set = true;
    p->last.segment = xstrndup(nl + 1, (size_t)(buf + n - nl - 1));
    p->last.start = start;
    p->last.count = count;
}

static void update_armed(struct poison *p)
{
    p->armed = p->last.set || p->guard_left > 0;
}

char *poison_open(struct poison *p, const char *state_dir, size_t guarded_records)
{
    *p = (struct poison){.opened = true, .marker_fd = -1};
    pthread_mutex_init(&p->lock, NULL);
    p->marker_path = xasprintf("%s/hook-record", state_dir);
    p->running_path = xasprintf("%s/running", state_dir);
    p->marker_fd = open(p->marker_path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (p->marker_fd < 0)
        return xasprintf("cannot open %s: %s", p->marker_path, strerror(errno));
    read_marker(p);
    bool unclean = access(p->running_path, F_OK) == 0;
    int fd = open(p->running_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return xasprintf("cannot create %s: %s", p->running_path, strerror(errno));
    dprintf(fd, "%ld\n", (long)getpid());
    close(fd);
    if (unclean) {
        p->guard_left = guarded_records;
        log_info("the last run did not stop cleanly: the record being handled is noted before "
                 "the policy runs, for the next %zu records",
                 guarded_records);
    }
    if (p->last.set)
        log_warn("the last run died while the policy ran on a record segment=%s offset=%" PRIu64
                 " deaths_in_a_row=%u action=%s",
                 p->last.segment, p->last.start, p->last.count,
                 p->last.count >= 2 ? "dead-letter it" : "try it again");
    update_armed(p);
    return NULL;
}

void poison_close(struct poison *p)
{
    if (!p->opened)
        return;
    unlink(p->running_path);
    if (p->marker_fd >= 0) {
        close(p->marker_fd);
        if (!p->last.set)
            unlink(p->marker_path);
    }
    free(p->marker_path);
    free(p->running_path);
    free(p->last.segment);
    pthread_mutex_destroy(&p->lock);
    *p = (struct poison){.marker_fd = -1};
}

static const char *segment_id(const struct inflight_record *rec)
{
    return ((const struct segment *)rec->segment)->id_name;
}

/* The record the previous run died on is handled: forget it. */
static void forget_last(struct poison *p)
{
    free(p->last.segment);
    p->last.segment = NULL;
    p->last.set = false;
}

bool poison_before(struct poison *p, const struct inflight_record *rec)
{
    const char *segment = segment_id(rec);
    pthread_mutex_lock(&p->lock);
    bool poisoned = is_last(p, segment, rec->start) && p->last.count >= 2;
    if (poisoned) {
        forget_last(p);
        write_marker(p, NULL, 0, 0);
    } else if (p->guard_left > 0) {
        write_marker(p, segment, rec->start, count_for(p, segment, rec->start));
    }
    pthread_mutex_unlock(&p->lock);
    update_armed(p);
    return poisoned;
}

void poison_after(struct poison *p, const struct inflight_record *rec)
{
    pthread_mutex_lock(&p->lock);
    bool was_last = is_last(p, segment_id(rec), rec->start);
    if (was_last)
        forget_last(p);
    if (p->guard_left > 0 || was_last)
        clear_marker(p);
    if (p->guard_left > 0)
        p->guard_left--;
    pthread_mutex_unlock(&p->lock);
    update_armed(p);
}

void poison_mark_stuck(struct poison *p, const char *segment, uint64_t start)
{
    pthread_mutex_lock(&p->lock);
    if (p->guard_left == 0) { /* else the loop marked it before the hook ran */
        write_marker(p, segment, start, count_for(p, segment, start));
        p->stuck_marked = true;
    }
    pthread_mutex_unlock(&p->lock);
}

void poison_unmark_stuck(struct poison *p)
{
    pthread_mutex_lock(&p->lock);
    if (p->stuck_marked)
        clear_marker(p);
    p->stuck_marked = false;
    pthread_mutex_unlock(&p->lock);
}
