#include "preflight.h"

#include "config.h"
#include "xalloc.h"

#include <errno.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

__attribute__((format(printf, 2, 3))) static void add(FILE *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(out, fmt, ap);
    va_end(ap);
    fputc('\n', out);
}

/* The relay lists the directory and opens its segments: read and search. Same words as
 * spool_open, which would find the same at the start. */
static void check_spool(FILE *out, const char *dir)
{
    struct stat st;
    if (stat(dir, &st) != 0)
        add(out, "spool directory %s: %s", dir, strerror(errno));
    else if (!S_ISDIR(st.st_mode))
        add(out, "spool directory %s: not a directory", dir);
    else if (access(dir, R_OK | X_OK) != 0)
        add(out, "spool directory %s: %s", dir, strerror(errno));
}

/* The start makes state_dir (one level, as mkdir does) when it is missing. */
static void check_creatable(FILE *out, const char *state_dir)
{
    char *copy = xstrdup(state_dir);
    const char *parent = dirname(copy);
    struct stat st;
    int err = 0;
    if (stat(parent, &st) != 0)
        err = errno;
    else if (!S_ISDIR(st.st_mode))
        err = ENOTDIR;
    else if (access(parent, W_OK | X_OK) != 0)
        err = errno;
    if (err)
        add(out, "cannot create state_dir %s: %s", state_dir, strerror(err));
    free(copy);
}

/* A file or directory in state_dir that exists must be usable as the start uses it. */
static void check_existing(FILE *out, const char *state_dir, const char *name, int mode)
{
    char *path = xasprintf("%s/%s", state_dir, name);
    if (access(path, F_OK) == 0 && access(path, mode) != 0)
        add(out, "state_dir %s: cannot %s %s: %s", state_dir, mode & W_OK ? "write" : "read", path,
            strerror(errno));
    free(path);
}

/* Checkpoints are written as a temporary file renamed over the old one, dead letters are
 * appended under deadletter/: the directory itself must be writable. */
static void check_state_dir(FILE *out, const char *state_dir)
{
    struct stat st;
    if (stat(state_dir, &st) != 0) {
        if (errno == ENOENT)
            check_creatable(out, state_dir);
        else
            add(out, "cannot create state_dir %s: %s", state_dir, strerror(errno));
        return;
    }
    if (!S_ISDIR(st.st_mode)) {
        add(out, "state_dir %s: not a directory", state_dir);
        return;
    }
    if (access(state_dir, R_OK | W_OK | X_OK) != 0) {
        add(out, "state_dir %s: %s", state_dir, strerror(errno));
        return;
    }
    check_existing(out, state_dir, "checkpoint", R_OK);
    check_existing(out, state_dir, "deadletter", W_OK | X_OK);
    check_existing(out, state_dir, "deadletter/deadletter.jsonl", W_OK);
}

char *preflight_check(const struct config *cfg)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    if (!out)
        return xstrdup("out of memory checking the spool and state directories\n");
    for (size_t i = 0; i < cfg->spool_count; i++)
        check_spool(out, cfg->spools[i].dir);
    check_state_dir(out, cfg->state_dir);
    fclose(out);
    if (len == 0) {
        free(text);
        return NULL;
    }
    return text;
}
