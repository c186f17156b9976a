#include "statelock.h"

#include "xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* The pid the holder wrote, as text; "unknown" when it has not written it yet. */
static void holder_pid(int fd, char *out, size_t cap)
{
    char buf[32];
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    long pid = 0;
    if (n > 0) {
        buf[n] = '\0';
        pid = strtol(buf, NULL, 10);
    }
    if (pid > 0)
        snprintf(out, cap, "%ld", pid);
    else
        snprintf(out, cap, "unknown");
}

/* root (deadletter replay, a manual --once) must not leave a lock file the relay's own
 * user cannot open: it gets the owner of the directory that holds it. */
static void give_to_directory_owner(int fd, const char *path)
{
    if (geteuid() != 0)
        return;
    char *dir = xstrdup(path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    struct stat ds, fs;
    if (stat(slash ? dir : ".", &ds) == 0 && fstat(fd, &fs) == 0 && fs.st_uid != ds.st_uid &&
        fchown(fd, ds.st_uid, ds.st_gid) != 0) {
        /* Only a convenience: the lock itself holds. */
    }
    free(dir);
}

int statelock_take(const char *path, char **err)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    int open_errno = errno;
    /* A read-only state_dir: the start fails further on, with its own message. */
    if (fd < 0 && (errno == EROFS || errno == EACCES))
        fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        *err = xasprintf("cannot create %s: %s", path, strerror(open_errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int lock_errno = errno;
        char pid[32];
        holder_pid(fd, pid, sizeof(pid));
        close(fd);
        if (lock_errno != EWOULDBLOCK) {
            *err = xasprintf("cannot lock %s: %s", path, strerror(lock_errno));
            return -1;
        }
        *err = xasprintf("%s is locked by kumo-nats-relay pid %s", path, pid);
        return 1;
    }
    give_to_directory_owner(fd, path);
    char text[32];
    int len = snprintf(text, sizeof(text), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, text, (size_t)len, 0) != len) {
        /* Read-only or full: the lock holds all the same; the next one says "unknown". */
    }
    return 0; /* fd stays open: the lock lasts as long as the process */
}
