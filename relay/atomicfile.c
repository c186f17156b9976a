#include "atomicfile.h"

#include "xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

int atomicfile_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

char *atomicfile_write(const struct atomicfile *f, const void *data, size_t len)
{
    char *tmp = xasprintf("%s/%s", f->dir, f->tmp_name);
    char *path = xasprintf("%s/%s", f->dir, f->name);
    char *err = NULL;
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (f->exclusive ? O_EXCL : O_TRUNC);
    int fd = open(tmp, flags, f->mode);
    if (fd < 0) {
        err = xasprintf("cannot create %s: %s", tmp, strerror(errno));
        goto out; /* not ours to remove: it may be another writer's */
    }
    /* Data must be on disk before the rename makes it the file, and the rename must be on
     * disk before the caller acts as if it were saved. */
    if (write_all(fd, data, len) != 0)
        err = xasprintf("cannot write %s: %s", tmp, strerror(errno));
    else if (fsync(fd) != 0)
        err = xasprintf("cannot fsync %s: %s", tmp, strerror(errno));
    else if (f->final_mode && fchmod(fd, f->final_mode) != 0)
        err = xasprintf("cannot chmod %s: %s", tmp, strerror(errno));
    close(fd);
    if (!err && rename(tmp, path) != 0)
        err = xasprintf("cannot rename %s to %s: %s", tmp, path, strerror(errno));
    else if (!err && atomicfile_fsync_dir(f->dir) != 0)
        err = xasprintf("cannot fsync directory %s: %s", f->dir, strerror(errno));
    if (err)
        unlink(tmp);
out:
    free(tmp);
    free(path);
    return err;
}
