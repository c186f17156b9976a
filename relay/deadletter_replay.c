#include "deadletter_replay.h"

#include "atomicfile.h"
#include "config.h"
#include "statelock.h"
#include "xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* How far deadletter.jsonl was replayed: "<inode> <offset>\n" in state_dir/deadletter. */
struct mark {
    uint64_t inode, offset;
};

static struct mark read_mark(const char *path)
{
    struct mark m = {0, 0};
    FILE *f = fopen(path, "r");
    if (!f)
        return m;
    if (fscanf(f, "%" SCNu64 " %" SCNu64, &m.inode, &m.offset) != 2)
        m.inode = m.offset = 0;
    fclose(f);
    return m;
}

/* Writes data as a done segment: a dot file first (the relay ignores those), fsynced and
 * made read-only, then renamed into place, so the relay never sees it half written. */
static char *write_segment(const char *dir, const char *name, const char *data, size_t len)
{
    char *tmp = xasprintf(".%s", name);
    const struct atomicfile f = {.dir = dir,
                                 .name = name,
                                 .tmp_name = tmp,
                                 .mode = 0644,
                                 .final_mode = 0444,
                                 .exclusive = true};
    char *err = atomicfile_write(&f, data, len);
    free(tmp);
    return err;
}

static char *write_mark(const char *dir, const struct mark *m)
{
    char text[64];
    int len = snprintf(text, sizeof(text), "%" PRIu64 " %" PRIu64 "\n", m->inode, m->offset);
    const struct atomicfile f = {
        .dir = dir, .name = "replayed", .tmp_name = ".replayed.tmp", .mode = 0666};
    return atomicfile_write(&f, text, (size_t)len);
}

/* The records of the dead letters in text[0..len), concatenated; counts what it took and
 * what it could not (a line capped at 1 MiB, or one that is not a dead letter). */
static char *collect_records(const char *text, size_t len, size_t *records_len, size_t *taken,
                             size_t *truncated, size_t *unreadable)
{
    char *out = NULL;
    size_t out_len = 0;
    FILE *f = open_memstream(&out, &out_len);
    for (const char *p = text, *end = text + len; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        json_t *dl = json_loadb(p, (size_t)(nl - p), JSON_ALLOW_NUL, NULL);
        json_t *line = json_object_get(dl, "line");
        if (json_is_true(json_object_get(dl, "line_truncated")) || json_is_null(line))
            (*truncated)++;
        else if (!json_is_string(line))
            (*unreadable)++;
        else {
            fwrite(json_string_value(line), 1, json_string_length(line), f);
            (*taken)++;
        }
        json_decref(dl);
        p = nl + 1;
    }
    fclose(f);
    *records_len = out_len;
    return out;
}

/* Two replays at once would both read the lines after the same mark and hand them back
 * twice. The running relay holds state_dir/lock, and a replay must run beside it, so
 * replays take a lock of their own. */
static char *lock_replays(const char *dir)
{
    char *path = xasprintf("%s/replay.lock", dir);
    char *err = NULL;
    if (statelock_take(path, &err) > 0) {
        char *held = xasprintf("%s: another deadletter replay is running", err);
        free(err);
        err = held;
    }
    free(path);
    return err;
}

int replay_deadletters(const struct config *cfg)
{
    char *dir = xasprintf("%s/deadletter", cfg->state_dir);
    char *path = xasprintf("%s/deadletter.jsonl", dir);
    char *mark_path = xasprintf("%s/replayed", dir);
    char *text = NULL, *records = NULL, *name = NULL, *err = NULL;
    int rc = 1;
    struct mark mark;
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        printf("no dead letters to replay (%s does not exist)\n", path);
        rc = 0;
        goto out;
    }
    if (fd < 0 || fstat(fd, &st) != 0) {
        err = xasprintf("cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    if ((err = lock_replays(dir)) != NULL)
        goto out;
    mark = read_mark(mark_path);
    if (mark.inode != (uint64_t)st.st_ino || mark.offset > (uint64_t)st.st_size)
        mark.offset = 0; /* a new file since the last replay */
    mark.inode = (uint64_t)st.st_ino;
    size_t want = (size_t)((uint64_t)st.st_size - mark.offset), len = 0;
    text = xmalloc(want + 1);
    while (len < want) {
        ssize_t n = pread(fd, text + len, want - len, (off_t)(mark.offset + len));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    /* Only whole lines: the relay may be appending the next one right now. */
    while (len > 0 && text[len - 1] != '\n')
        len--;
    if (len == 0) {
        printf("no dead letters to replay since the last replay (%s)\n", path);
        rc = 0;
        goto out;
    }
    size_t records_len = 0, taken = 0, truncated = 0, unreadable = 0;
    records = collect_records(text, len, &records_len, &taken, &truncated, &unreadable);

    const struct spool_source *spool = &cfg->spools[0];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    char stamp[32];
    strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", &tm);
    name = xasprintf("%s.%09ld_replay", stamp, now.tv_nsec);
    if (fnmatch(spool->pattern, name, FNM_PERIOD) != 0) {
        err = xasprintf("spool.pattern \"%s\" does not match a replay segment's name (%s): the "
                        "relay would not read it",
                        spool->pattern, name);
        goto out;
    }
    if (taken > 0 && (err = write_segment(spool->dir, name, records, records_len)) != NULL)
        goto out;
    mark.offset += len;
    if ((err = write_mark(dir, &mark)) != NULL)
        goto out;
    if (taken > 0)
        printf("replayed %zu dead letters as segment %s/%s\n", taken, spool->dir, name);
    if (truncated > 0)
        printf("%zu dead letters were not replayed: their line was not kept whole (over 1 MiB "
               "or over max_record_bytes); each names the segment and offsets that hold it\n",
               truncated);
    if (unreadable > 0)
        printf("%zu lines of %s are not dead letters and were skipped\n", unreadable, path);
    rc = 0;
out:
    if (err) {
        fprintf(stderr, "kumo-nats-relay: deadletter replay: %s\n", err);
        free(err);
    }
    if (fd >= 0)
        close(fd);
    free(text);
    free(records);
    free(name);
    free(mark_path);
    free(path);
    free(dir);
    return rc;
}
