/* The relay: spool → segment reader → policy → publisher → offsets, on one loop. */
#ifndef RELAY_RELAY_H
#define RELAY_RELAY_H

#include "exit_codes.h"

#include <stdbool.h>

struct config;

struct relay_options {
    bool once;          /* relay what is there now, wait for the acks, exit */
    bool reset_offsets; /* set the checkpoint aside and start over */
};

/* Runs until SIGTERM/SIGINT (or, with once, until the spool is relayed). Returns the exit
 * status (exit_codes.h): 0, or 1 when it could not start, or RELAY_EXIT_INCOMPLETE. */
int relay_run(const struct config *cfg, const struct relay_options *options);

#endif
