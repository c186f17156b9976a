/* The durable replace of a small file: written under a temporary (dot) name, fsynced,
 * renamed over the final name, and the directory fsynced, so that after a crash the file
 * is either the old one or the whole new one, and a caller told "done" can rely on it. */
#ifndef RELAY_ATOMICFILE_H
#define RELAY_ATOMICFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct atomicfile {
    const char *dir;
    const char *name;     /* the final name, in dir */
    const char *tmp_name; /* the name while written, in dir: a dot file nobody reads */
    mode_t mode;          /* of the created file (umask applies) */
    mode_t final_mode;    /* set exactly before the rename; 0: keep */
    bool exclusive;       /* the temporary file must not exist already */
};

/* Returns NULL, or the error (malloc'd); on error the temporary file is removed. */
char *atomicfile_write(const struct atomicfile *f, const void *data, size_t len);

/* fsync(2) of a directory, so that a rename or a create in it survives a crash. 0 or -1
 * (errno set). For writers of large files that cannot go through atomicfile_write. */
int atomicfile_fsync_dir(const char *dir);

#endif
