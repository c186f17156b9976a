#include "offsets.h"

#include "atomicfile.h"
#include "hex.h"
#include "xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHECKPOINT_MAGIC "kumo-nats-relay checkpoint 1\n"

void offsets_watermark_push(struct watermark *wm, struct inflight_record *rec)
{
    rec->next = NULL;
    if (wm->tail)
        wm->tail->next = rec;
    else
        wm->head = rec;
    wm->tail = rec;
    wm->pending++;
}

bool offsets_watermark_complete(struct watermark *wm, struct inflight_record *rec,
                                void (*release)(void *arg, struct inflight_record *rec), void *arg)
{
    rec->complete = true;
    bool moved = false;
    while (wm->head && wm->head->complete) {
        struct inflight_record *done = wm->head;
        wm->head = done->next;
        if (!wm->head)
            wm->tail = NULL;
        wm->pending--;
        wm->committed_offset = done->end;
        wm->committed_ordinal = done->ordinal + 1;
        moved = true;
        release(arg, done);
    }
    return moved;
}

/* CRC-32 (IEEE) over the checkpoint body, so a file cut short or scribbled on is refused
 * instead of silently restarting segments from a wrong offset. */
static uint32_t crc32_update(uint32_t crc, const char *data, size_t len)
{
    crc = ~crc;
    for (size_t i = 0; i < len; i++) {
        crc ^= (unsigned char)data[i];
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

/* Names are written with %XX for bytes outside the printable, space-free range. */
static void put_escaped(FILE *f, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p <= ' ' || *p >= 0x7f || *p == '%')
            fprintf(f, "%%%02X", *p);
        else
            fputc(*p, f);
    }
}

/* s[0..len) is not NUL-terminated (it points into the checkpoint text): look only at
 * those bytes, which sscanf cannot promise. */
static char *unescape(const char *s, size_t len)
{
    char *out = xmalloc(len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < len && (hi = hex_value(s[i + 1])) >= 0 &&
            (lo = hex_value(s[i + 2])) >= 0) {
            out[n++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            out[n++] = s[i];
        }
    }
    out[n] = '\0';
    return out;
}

void offsets_checkpoint_add(struct checkpoint *cp, const struct checkpoint_entry *entry)
{
    cp->entries = xrealloc(cp->entries, (cp->count + 1) * sizeof(*cp->entries));
    cp->entries[cp->count] = *entry;
    cp->entries[cp->count].name = xstrdup(entry->name);
    cp->count++;
}

void offsets_checkpoint_free(struct checkpoint *cp)
{
    for (size_t i = 0; i < cp->count; i++)
        free(cp->entries[i].name);
    free(cp->entries);
    free(cp->spool_dir);
    free(cp->stream);
    memset(cp, 0, sizeof(*cp));
}

static char *render(const struct checkpoint *cp, size_t *len)
{
    char *text = NULL;
    FILE *f = open_memstream(&text, len);
    if (!f)
        return NULL;
    fputs(CHECKPOINT_MAGIC, f);
    fputs("spool ", f);
    put_escaped(f, cp->spool_dir);
    fputc('\n', f);
    if (cp->stream) {
        fputs("stream ", f);
        put_escaped(f, cp->stream);
        fprintf(f, " %" PRIu64 "\n", cp->stream_floor);
    }
    for (size_t i = 0; i < cp->count; i++) {
        const struct checkpoint_entry *e = &cp->entries[i];
        fputs("segment ", f);
        put_escaped(f, e->name);
        fprintf(f, " %" PRIu64 " %" PRIu64 " %" PRIu64 " %d", e->inode, e->offset, e->ordinal,
                e->finished ? 1 : 0);
        /* The generation is written only when not 0 or followed by the identity: files of
         * checkpoints that never saw a replaced segment stay as they were. */
        bool identity = e->size > 0 || e->fp_len > 0;
        if (e->generation > 0 || identity)
            fprintf(f, " %" PRIu32, e->generation);
        if (identity)
            fprintf(f, " %" PRIu64 " %" PRIu32 " %016" PRIx64, e->size, e->fp_len, e->fp_hash);
        fputc('\n', f);
    }
    fflush(f);
    uint32_t crc = crc32_update(0, text, *len);
    fprintf(f, "end %zu %08x\n", cp->count, crc);
    fclose(f);
    return text;
}

char *offsets_checkpoint_write(const char *state_dir, const struct checkpoint *cp)
{
    size_t len = 0;
    char *text = render(cp, &len);
    if (!text)
        return xasprintf("cannot render the checkpoint: out of memory");
    const struct atomicfile f = {
        .dir = state_dir, .name = "checkpoint", .tmp_name = ".checkpoint.tmp", .mode = 0640};
    char *err = atomicfile_write(&f, text, len);
    free(text);
    return err;
}

static bool parse_u64(const char *s, char **end, uint64_t *out)
{
    if (*s < '0' || *s > '9')
        return false;
    errno = 0;
    unsigned long long v = strtoull(s, end, 10);
    if (errno)
        return false;
    *out = v;
    return true;
}

/* Exactly 16 lowercase or uppercase hex digits. */
static bool parse_hex64(const char *s, char **end, uint64_t *out)
{
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        int d = hex_value(s[i]);
        if (d < 0)
            return false;
        v = v << 4 | (uint64_t)d;
    }
    *end = (char *)s + 16;
    *out = v;
    return true;
}

/* " SIZE FP_LEN FP_HASH" after the generation. */
static bool parse_identity(char **q, struct checkpoint_entry *e)
{
    uint64_t fp_len = 0;
    bool ok = *(*q)++ == ' ' && parse_u64(*q, q, &e->size) && *(*q)++ == ' ' &&
              parse_u64(*q, q, &fp_len) && fp_len <= UINT32_MAX && *(*q)++ == ' ' &&
              parse_hex64(*q, q, &e->fp_hash);
    e->fp_len = (uint32_t)fp_len;
    return ok;
}

/* Parses "segment NAME INODE OFFSET ORDINAL FINISHED [GENERATION [SIZE FP_LEN FP_HASH]]":
 * a generation of 0 is written only before the identity. */
static bool parse_segment_line(const char *line, size_t len, struct checkpoint *cp)
{
    char *copy = xstrndup(line, len);
    char *p = copy + strlen("segment ");
    char *space = strchr(p, ' ');
    struct checkpoint_entry e = {0};
    uint64_t finished = 0, generation = 0;
    bool ok = space != NULL;
    if (ok) {
        char *q = space + 1;
        ok = parse_u64(q, &q, &e.inode) && *q++ == ' ' && parse_u64(q, &q, &e.offset) &&
             *q++ == ' ' && parse_u64(q, &q, &e.ordinal) && *q++ == ' ' &&
             parse_u64(q, &q, &finished) && finished <= 1;
        if (ok && *q == ' ') {
            q++;
            ok = parse_u64(q, &q, &generation) && generation <= UINT32_MAX;
            if (ok && *q == ' ')
                ok = parse_identity(&q, &e);
            else
                ok = ok && generation > 0;
        }
        ok = ok && *q == '\0';
        e.generation = (uint32_t)generation;
    }
    if (ok) {
        e.name = unescape(p, (size_t)(space - p));
        e.finished = finished == 1;
        offsets_checkpoint_add(cp, &e);
        free(e.name);
    }
    free(copy);
    return ok;
}

/* Parses "stream NAME FLOOR". */
static bool parse_stream_line(const char *line, size_t len, struct checkpoint *cp)
{
    const char *name = line + strlen("stream "), *end = line + len;
    const char *space = memchr(name, ' ', (size_t)(end - name));
    if (!space || space == name || space + 1 >= end)
        return false;
    char *digits = xstrndup(space + 1, (size_t)(end - space - 1)), *after;
    uint64_t floor = 0;
    bool ok = parse_u64(digits, &after, &floor) && *after == '\0';
    free(digits);
    if (ok) {
        cp->stream = unescape(name, (size_t)(space - name));
        cp->stream_floor = floor;
    }
    return ok;
}

char *offsets_checkpoint_parse(const char *text, size_t len, struct checkpoint *cp)
{
    memset(cp, 0, sizeof(*cp));
    size_t magic_len = strlen(CHECKPOINT_MAGIC);
    if (len < magic_len || memcmp(text, CHECKPOINT_MAGIC, magic_len) != 0)
        return xstrdup("not a kumo-nats-relay checkpoint (bad first line)");
    const char *p = text + magic_len, *end = text + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            break;
        size_t n = (size_t)(nl - p);
        if (n > 4 && memcmp(p, "end ", 4) == 0) {
            size_t count = 0;
            unsigned crc = 0;
            char tail[64];
            snprintf(tail, sizeof(tail), "%.*s", (int)(n < 63 ? n : 63), p);
            char extra;
            if (sscanf(tail, "end %zu %8x%c", &count, &crc, &extra) != 2 || count != cp->count ||
                crc != crc32_update(0, text, (size_t)(p - text)) || nl + 1 != end)
                break;
            return NULL;
        }
        if (n > 6 && memcmp(p, "spool ", 6) == 0 && !cp->spool_dir)
            cp->spool_dir = unescape(p + 6, n - 6);
        else if (n > 7 && memcmp(p, "stream ", 7) == 0 && !cp->stream) {
            if (!parse_stream_line(p, n, cp))
                break;
        } else if (!(n > 8 && memcmp(p, "segment ", 8) == 0 && parse_segment_line(p, n, cp)))
            break;
        p = nl + 1;
    }
    offsets_checkpoint_free(cp);
    return xstrdup("the checkpoint is incomplete or damaged (its end line or checksum does not "
                   "match)");
}

char *offsets_checkpoint_load(const char *state_dir, struct checkpoint *cp, bool *exists)
{
    memset(cp, 0, sizeof(*cp));
    *exists = false;
    char *path = xasprintf("%s/checkpoint", state_dir);
    char *err = NULL;
    FILE *f = fopen(path, "re");
    if (!f) {
        if (errno != ENOENT)
            err = xasprintf("cannot read checkpoint %s: %s", path, strerror(errno));
        free(path);
        return err;
    }
    *exists = true;
    char *text = NULL;
    size_t cap = 0, len = 0;
    for (;;) {
        if (len + 65536 > cap)
            text = xrealloc(text, cap = cap * 2 + 65536);
        size_t n = fread(text + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    if (ferror(f)) {
        err = xasprintf("cannot read checkpoint %s: %s", path, strerror(errno));
    } else {
        char *why = offsets_checkpoint_parse(text, len, cp);
        if (why) {
            err = xasprintf("checkpoint %s: %s; refusing to start rather than re-read or skip "
                            "records (run with --reset-offsets to start over)",
                            path, why);
            free(why);
        }
    }
    fclose(f);
    free(text);
    free(path);
    return err;
}
