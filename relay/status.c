#include "status.h"

#include "config.h"
#include "offsets.h"
#include "segment.h"
#include "xalloc.h"

#include <dirent.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct segment_status {
    char *name;
    const char *state; /* finished, live, done, new, gone, replaced */
    uint64_t committed_records, committed_bytes;
    uint64_t behind_records, behind_bytes;
};

struct status_table {
    struct segment_status *rows;
    size_t count;
};

static struct segment_status *add_row(struct status_table *t, const char *name)
{
    for (size_t i = 0; i < t->count; i++)
        if (strcmp(t->rows[i].name, name) == 0)
            return &t->rows[i];
    t->rows = xrealloc(t->rows, (t->count + 1) * sizeof(*t->rows));
    struct segment_status *row = &t->rows[t->count++];
    memset(row, 0, sizeof(*row));
    row->name = xstrdup(name);
    return row;
}

/* Complete records (and their bytes) after offset that are on disk now. */
static void count_behind(const char *path, uint64_t offset, const struct config *cfg,
                         struct segment_status *row)
{
    char *err = NULL;
    struct segment_reader *reader =
        segment_reader_open(path, offset, 0, cfg->max_record_bytes, &err);
    if (!reader) {
        free(err);
        return;
    }
    segment_reader_set_header(reader, cfg->spool_segment_header);
    struct segment_record rec;
    while (segment_reader_next(reader, &rec) == SEGMENT_RECORD) {
        row->behind_records++;
        row->behind_bytes += rec.len;
    }
    segment_reader_close(reader);
}

static void scan_spool(const struct config *cfg, const struct checkpoint *cp,
                       struct status_table *t)
{
    DIR *d = opendir(cfg->spool_dir);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' || fnmatch(cfg->spool_pattern, de->d_name, FNM_PERIOD) != 0)
            continue;
        char *path = xasprintf("%s/%s", cfg->spool_dir, de->d_name);
        struct stat st;
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            struct segment_status *row = add_row(t, de->d_name);
            const struct checkpoint_entry *e = NULL;
            for (size_t i = 0; i < cp->count && !e; i++)
                if (strcmp(cp->entries[i].name, de->d_name) == 0)
                    e = &cp->entries[i];
            bool same = e && e->inode == (uint64_t)st.st_ino;
            bool done = (st.st_mode & 0222) == 0;
            row->state = e && !same    ? "replaced"
                         : !e          ? "new"
                         : e->finished ? "finished"
                         : done        ? "done"
                                       : "live";
            if (same) {
                row->committed_records = e->ordinal;
                row->committed_bytes = e->offset;
            }
            if (!same || !e->finished)
                count_behind(path, same ? e->offset : 0, cfg, row);
        }
        free(path);
    }
    if (d)
        closedir(d);
    for (size_t i = 0; i < cp->count; i++) {
        struct segment_status *row = add_row(t, cp->entries[i].name);
        if (!row->state) {
            row->state = "gone";
            row->committed_records = cp->entries[i].ordinal;
            row->committed_bytes = cp->entries[i].offset;
        }
    }
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const struct segment_status *)a)->name,
                  ((const struct segment_status *)b)->name);
}

static void print_table(const struct config *cfg, const struct status_table *t)
{
    uint64_t records = 0, bytes = 0, behind_records = 0, behind_bytes = 0;
    size_t behind_segments = 0;
    printf("%-40s %-9s %12s %14s %12s %14s\n", "SEGMENT", "STATE", "RECORDS", "BYTES", "BEHIND",
           "BEHIND_BYTES");
    for (size_t i = 0; i < t->count; i++) {
        const struct segment_status *row = &t->rows[i];
        printf("%-40s %-9s %12" PRIu64 " %14" PRIu64 " %12" PRIu64 " %14" PRIu64 "\n", row->name,
               row->state, row->committed_records, row->committed_bytes, row->behind_records,
               row->behind_bytes);
        records += row->committed_records;
        bytes += row->committed_bytes;
        behind_records += row->behind_records;
        behind_bytes += row->behind_bytes;
        behind_segments += row->behind_records > 0;
    }
    printf("%-40s %-9s %12" PRIu64 " %14" PRIu64 " %12" PRIu64 " %14" PRIu64 "\n", "TOTAL", "",
           records, bytes, behind_records, behind_bytes);
    printf("spool %s: %zu segments, %zu behind\n", cfg->spool_dir, t->count, behind_segments);
}

static void print_json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", *s);
        else
            putchar(*s);
    }
    putchar('"');
}

static void print_json(const struct config *cfg, const struct status_table *t)
{
    uint64_t behind_records = 0, behind_bytes = 0;
    printf("{\"spool\":");
    print_json_string(cfg->spool_dir);
    printf(",\"segments\":[");
    for (size_t i = 0; i < t->count; i++) {
        const struct segment_status *row = &t->rows[i];
        printf("%s{\"name\":", i ? "," : "");
        print_json_string(row->name);
        printf(",\"state\":\"%s\",\"records\":%" PRIu64 ",\"bytes\":%" PRIu64
               ",\"behind_records\":%" PRIu64 ",\"behind_bytes\":%" PRIu64 "}",
               row->state, row->committed_records, row->committed_bytes, row->behind_records,
               row->behind_bytes);
        behind_records += row->behind_records;
        behind_bytes += row->behind_bytes;
    }
    printf("],\"behind_records\":%" PRIu64 ",\"behind_bytes\":%" PRIu64 "}\n", behind_records,
           behind_bytes);
}

int status_run(const struct config *cfg, bool json)
{
    struct checkpoint cp;
    bool exists;
    char *err = offsets_checkpoint_load(cfg->state_dir, &cp, &exists);
    if (err) {
        fprintf(stderr, "%s\n", err);
        free(err);
        return 1;
    }
    struct status_table t = {0};
    scan_spool(cfg, &cp, &t);
    qsort(t.rows, t.count, sizeof(*t.rows), by_name);
    if (json)
        print_json(cfg, &t);
    else
        print_table(cfg, &t);
    for (size_t i = 0; i < t.count; i++)
        free(t.rows[i].name);
    free(t.rows);
    offsets_checkpoint_free(&cp);
    return 0;
}
