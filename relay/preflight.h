/* What a start needs from the machine, beyond a valid configuration file: spool
 * directories the relay can read and a state_dir it can write. One check, run the same
 * way by --check and by the daemon before it starts, so that --check refuses what the
 * start would. (Disk space and the checkpoint's contents are the start's to find out.) */
#ifndef RELAY_PREFLIGHT_H
#define RELAY_PREFLIGHT_H

struct config;

/* NULL, or a malloc'd text of one problem per line ("spool directory /x: Permission
 * denied\n"), for the running user. */
char *preflight_check(const struct config *cfg);

#endif
