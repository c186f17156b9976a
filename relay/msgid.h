/* The message-id contract: what a record is called in the stream (Nats-Msg-Id), the one
 * thing that makes a replay a duplicate JetStream drops. Every part of the relay that
 * makes, reads back or names the parts of an id goes through here.
 *
 *   id       = <relay_id> ":" <id name> ":" <end offset> [ ":" <publish index> ]
 *   id name  = <segment name> [ "~" <generation> ]      (generation > 0 only)
 *   segment  = <file name>                              (first spool directory)
 *            | <dir tag> ":" <file name>                (the others)
 *   dir tag  = 8 lowercase hex digits, FNV-1a 32 of the directory's path
 *
 * Numbers are plain decimal, no leading zeros. A file name may hold ':', '~' or anything
 * but '/' and NUL, so an id reads back in more than one way; msgid_parse gives every
 * reading and the caller keeps the one whose segment exists. Changing any of this makes
 * every record of a running fleet a new message: never do it. */
#ifndef RELAY_MSGID_H
#define RELAY_MSGID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Room for an id of a segment name of NAME_MAX bytes and a relay_id of ~200. */
enum { MSGID_MAX = 512 };

/* The tag of a spool directory after the first. */
uint32_t msgid_dir_tag(const char *dir_path);
/* The segment name of a file in directory dir (the index in the configuration), malloc'd. */
char *msgid_segment_name(const char *dir_path, size_t dir, const char *file);
/* The id name of a segment: name, or "name~generation" (malloc'd). */
char *msgid_id_name(const char *name, uint32_t generation);

/* Writes the id of the record ending at end into out (cap bytes, NUL-terminated; cut like
 * snprintf when it does not fit) and returns its length as snprintf would. has_index: the
 * publish is not its record's first (see relay.c's env_publish). No snprintf: this runs for
 * every record. */
size_t msgid_format(char *out, size_t cap, const char *relay_id, const char *id_name, uint64_t end,
                    bool has_index, uint32_t index);

/* Whether id is one of relay_id's ("<relay_id>:" first). */
bool msgid_is_ours(const char *id, const char *relay_id);

struct msgid_reading {
    const char *name; /* the segment name (points into the id; not NUL-terminated) */
    size_t name_len;
    uint32_t generation;
    uint64_t end;
    bool has_index;
    uint32_t index;
};
enum { MSGID_READINGS = 4 };
/* The ways id (one of relay_id's) can be read, most likely first: without and with a
 * publish index, each with the whole id name as the segment name or with its "~<n>"
 * taken as the generation. Returns how many (0: not one of relay_id's ids). */
size_t msgid_parse(const char *id, const char *relay_id, struct msgid_reading out[MSGID_READINGS]);

/* A 128-bit hash of the same (relay_id, id name, end): the message id a Lua policy sees
 * (message:id()), the same on every replay. */
void msgid_hash128(const char *relay_id, const char *id_name, uint64_t end, uint64_t out[2]);

#endif
