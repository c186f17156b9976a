/* `kumo-nats-relay status`: from the checkpoint and the spool, each segment's state and
 * how far behind the relay is. Reads only; safe next to a running relay. */
#ifndef RELAY_STATUS_H
#define RELAY_STATUS_H

#include <stdbool.h>

struct config;

/* Prints the table (or JSON) to stdout. Returns the exit status. */
int status_run(const struct config *cfg, bool json);

#endif
