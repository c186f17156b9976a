#include "secret.h"

#include "xalloc.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

bool secret_env_reference(const char *text, char *name, size_t cap)
{
    size_t len = strlen(text);
    if (len < 4 || text[0] != '$' || text[1] != '{' || text[len - 1] != '}')
        return false;
    const char *start = text + 2;
    size_t n = len - 3;
    if (n >= cap || !(isalpha((unsigned char)start[0]) || start[0] == '_'))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!(isalnum((unsigned char)start[i]) || start[i] == '_'))
            return false;
    memcpy(name, start, n);
    name[n] = '\0';
    return true;
}

char *secret_from_env(const char *name, char **err)
{
    const char *value = getenv(name);
    if (!value) {
        *err = xasprintf("environment variable %s is not set", name);
        return NULL;
    }
    if (!*value) {
        *err = xasprintf("environment variable %s is empty", name);
        return NULL;
    }
    return xstrdup(value);
}

/* Zeros the whole buffer (it may hold part of a secret past the NUL), then frees it. */
static void wipe_buffer(char *buf, size_t size)
{
    explicit_bzero(buf, size);
    free(buf);
}

char *secret_read_file(const char *path, char **err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        *err = xasprintf("cannot read %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        *err = xasprintf("%s is not a regular file", path);
        close(fd);
        return NULL;
    }
    const size_t size = SECRET_FILE_MAX + 1;
    char *buf = xcalloc(1, size);
    size_t len = 0;
    while (len < size) {
        ssize_t n = read(fd, buf + len, size - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            *err = xasprintf("cannot read %s: %s", path, strerror(errno));
            close(fd);
            wipe_buffer(buf, size);
            return NULL;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    while (len > 0 && len <= SECRET_FILE_MAX && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
        buf[--len] = '\0';
    if (len > SECRET_FILE_MAX)
        *err = xasprintf("%s is larger than %d bytes", path, SECRET_FILE_MAX);
    else if (len == 0)
        *err = xasprintf("%s is empty", path);
    else if (memchr(buf, '\0', len))
        *err = xasprintf("%s holds a NUL byte", path);
    if (len == 0 || len > SECRET_FILE_MAX || memchr(buf, '\0', len)) {
        wipe_buffer(buf, size);
        return NULL;
    }
    char *secret = xstrdup(buf);
    wipe_buffer(buf, size);
    return secret;
}

bool secret_file_exposed(const char *path, mode_t *mode)
{
    struct stat st;
    char *real = realpath(path, NULL);
    if (!real || stat(real, &st) != 0) {
        free(real);
        return false;
    }
    *mode = st.st_mode & 07777;
    bool exposed = (st.st_mode & S_IROTH) != 0;
    /* A directory others cannot search (0750 /etc/kumo-nats-relay) protects the file. */
    for (char *slash = strrchr(real, '/'); exposed && slash; slash = strrchr(real, '/')) {
        *slash = '\0';
        if (stat(*real ? real : "/", &st) != 0 || !(st.st_mode & S_IXOTH))
            exposed = false;
        if (!*real)
            break;
    }
    free(real);
    return exposed;
}

void secret_free(char *secret)
{
    if (!secret)
        return;
    explicit_bzero(secret, strlen(secret));
    free(secret);
}
