#include "status.h"

#include "config.h"
#include "msgid.h"
#include "offsets.h"
#include "segment.h"
#include "spool.h"
#include "utf8.h"
#include "xalloc.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct segment_status {
    char *name;
    size_t dir;        /* index into cfg->spools */
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
                         const char *header, struct segment_status *row)
{
    char *err = NULL;
    struct segment_reader *reader = segment_reader_open(path, offset, cfg->max_record_bytes, &err);
    if (!reader) {
        free(err);
        return;
    }
    segment_reader_set_header(reader, header);
    struct segment_record rec;
    while (segment_reader_next(reader, &rec) == SEGMENT_RECORD) {
        row->behind_records++;
        row->behind_bytes += rec.len;
    }
    segment_reader_close(reader);
}

static const struct checkpoint_entry *find_entry(const struct checkpoint *cp, const char *name)
{
    for (size_t i = 0; i < cp->count; i++)
        if (strcmp(cp->entries[i].name, name) == 0)
            return &cp->entries[i];
    return NULL;
}

static void note_file(const struct config *cfg, size_t dir, const char *file,
                      const struct checkpoint *cp, struct status_table *t)
{
    const struct spool_source *src = &cfg->spools[dir];
    char *path = xasprintf("%s/%s", src->dir, file);
    char *name = msgid_segment_name(src->dir, dir, file);
    struct stat st;
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
        struct segment_status *row = add_row(t, name);
        const struct checkpoint_entry *e = find_entry(cp, name);
        /* Name and inode are not enough: a file made again at once gets the same inode. */
        bool same = e && e->inode == (uint64_t)st.st_ino && !spool_file_differs(path, e);
        bool done = (st.st_mode & 0222) == 0;
        row->dir = dir;
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
            count_behind(path, same ? e->offset : 0, cfg, src->segment_header, row);
    }
    free(name);
    free(path);
}

static void scan_spool(const struct config *cfg, const struct checkpoint *cp,
                       struct status_table *t)
{
    for (size_t dir = 0; dir < cfg->spool_count; dir++) {
        const struct spool_source *src = &cfg->spools[dir];
        char **names;
        size_t count;
        if (spool_list_dir(src->dir, src->pattern, &names, &count) != 0)
            continue;
        for (size_t i = 0; i < count; i++) {
            note_file(cfg, dir, names[i], cp, t);
            free(names[i]);
        }
        free(names);
    }
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
    }
    printf("%-40s %-9s %12" PRIu64 " %14" PRIu64 " %12" PRIu64 " %14" PRIu64 "\n", "TOTAL", "",
           records, bytes, behind_records, behind_bytes);
    for (size_t dir = 0; dir < cfg->spool_count; dir++) {
        size_t segments = 0, behind = 0;
        for (size_t i = 0; i < t->count; i++) {
            if (t->rows[i].dir == dir && strcmp(t->rows[i].state, "gone") != 0) {
                segments++;
                behind += t->rows[i].behind_records > 0;
            }
        }
        char tag[9];
        snprintf(tag, sizeof(tag), "%08x", msgid_dir_tag(cfg->spools[dir].dir));
        printf("spool %s%s%s: %zu segments, %zu behind\n", cfg->spools[dir].dir,
               dir ? " names " : "", dir ? tag : "", segments, behind);
    }
}

static void print_json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        char esc[6];
        size_t n = json_escape_ascii((unsigned char)*s, esc);
        if (n)
            fwrite(esc, 1, n, stdout);
        else
            putchar(*s);
    }
    putchar('"');
}

static void print_json(const struct config *cfg, const struct status_table *t)
{
    uint64_t behind_records = 0, behind_bytes = 0;
    printf("{\"spool\":");
    print_json_string(cfg->spools[0].dir);
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
    if (t.count > 1) /* no segment leaves rows NULL, which qsort must not get */
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
