/* An exclusive lock on a file for the life of the process: two relays on one state_dir
 * would both dead-letter the same records and both write .checkpoint.tmp. */
#ifndef RELAY_STATELOCK_H
#define RELAY_STATELOCK_H

/* Locks path (created if needed) with a non-blocking exclusive flock and writes this
 * process's pid into it, for the next one to name. The descriptor stays open (and
 * close-on-exec) until the process exits, which releases the lock, however it exits.
 * Returns 0; 1 with *err set when another process holds it (naming its pid); -1 with *err
 * set when the file cannot be made or locked. */
int statelock_take(const char *path, char **err);

#endif
