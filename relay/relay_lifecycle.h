/* Start and stop of the relay (relay_lifecycle.c). Included only by the relay's own
 * files. */
#ifndef RELAY_RELAY_LIFECYCLE_H
#define RELAY_RELAY_LIFECYCLE_H

struct relay;

/* Everything but the loop's callbacks; NULL, or the error (r->exit_status may say which
 * exit status it deserves). relay_lifecycle_stop undoes a start stopped half-way too. */
char *relay_lifecycle_start(struct relay *r);
void relay_lifecycle_stop(struct relay *r);
/* --once stopped: names what was not relayed, and sets RELAY_EXIT_INCOMPLETE if any. */
void relay_lifecycle_once_report(struct relay *r);

#endif
