/* The exit statuses of kumo-nats-relay, in one place: the systemd unit's
 * RestartPreventExitStatus= and operators' scripts depend on them.
 *
 *   0   RELAY_EXIT_OK       success: --check found no problem, --once relayed the spool,
 *                           a stop on SIGTERM/SIGINT drained and wrote the checkpoint
 *   1   RELAY_EXIT_FAILURE  runtime or startup failure (state_dir, spool, NATS, signals):
 *                           worth a restart
 *   2   RELAY_EXIT_USAGE    bad command line (unknown option, missing argument)
 *   3   RELAY_EXIT_INCOMPLETE  --once stopped with part of the spool not relayed (a
 *                           segment it cannot open, SIGTERM before every ack, a checkpoint
 *                           it cannot write): the next run relays the rest
 *   78  RELAY_EXIT_CONFIG   the configuration or the policy is wrong (EX_CONFIG of
 *                           sysexits.h): a restart cannot fix it, so the unit lists it in
 *                           RestartPreventExitStatus= instead of looping
 */
#ifndef RELAY_EXIT_CODES_H
#define RELAY_EXIT_CODES_H

enum relay_exit {
    RELAY_EXIT_OK = 0,
    RELAY_EXIT_FAILURE = 1,
    RELAY_EXIT_USAGE = 2,
    RELAY_EXIT_INCOMPLETE = 3,
    RELAY_EXIT_CONFIG = 78,
};

#endif
