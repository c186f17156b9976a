/* NATS nkeys: the public key of a user nkey seed, which nats.c needs next to the seed
 * file (natsOptions_SetNKeyFromSeed) and cannot derive itself. */
#ifndef RELAY_NKEY_H
#define RELAY_NKEY_H

#include <stddef.h>

/* A user public key: "U" and 55 more base32 characters. */
#define NKEY_PUBLIC_LEN 56

/* The public key of the user seed held in text (len bytes: the seed alone, or a file
 * holding it on a line of its own such as a .creds file). Returns 0 and fills pub, or -1
 * with *err (malloc'd; it never quotes the seed). */
int nkey_public_from_seed(const char *text, size_t len, char pub[NKEY_PUBLIC_LEN + 1], char **err);

/* The same, from a file; *err names the file. */
int nkey_public_from_file(const char *path, char pub[NKEY_PUBLIC_LEN + 1], char **err);

#endif
