/* Secrets (passwords, tokens, key seeds): where they come from, and keeping them out of
 * sight. A secret's value never goes into a message; messages name where it came from
 * (the environment variable, the file) instead. */
#ifndef RELAY_SECRET_H
#define RELAY_SECRET_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Longest secret file read (a .creds file is about 1 KiB). */
#define SECRET_FILE_MAX (64 * 1024)

/* If text is exactly "${NAME}" with NAME a valid environment variable name, copy NAME
 * into name (size cap) and return true. */
bool secret_env_reference(const char *text, char *name, size_t cap);

/* The value of environment variable name (malloc'd), or NULL with *err (malloc'd)
 * saying it is unset or empty. */
char *secret_from_env(const char *name, char **err);

/* The whole file (malloc'd), trailing newlines ("\n", "\r\n") removed, or NULL with
 * *err naming the file and the reason: unreadable, empty, larger than SECRET_FILE_MAX,
 * holding a NUL byte. */
char *secret_read_file(const char *path, char **err);

/* True when others (not the owner, not the group) may read the file: mode & 004, and
 * every directory above it lets others through (o+x). *mode is the file's mode. */
bool secret_file_exposed(const char *path, mode_t *mode);

/* Overwrite a secret with zeros, in a way the compiler keeps, then free it. */
void secret_free(char *secret);

#endif
