/* systemd's notify protocol (READY, STATUS, WATCHDOG, STOPPING). Compiles to nothing
 * useful without libsystemd, and does nothing when not started by systemd. */
#ifndef RELAY_NOTIFY_H
#define RELAY_NOTIFY_H

#include <stdint.h>

void notify_ready(void);
void notify_stopping(void);
void notify_reloading(void);
void notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void notify_watchdog(void);
/* How often the loop must call notify_watchdog (half the unit's WatchdogSec), 0: never. */
uint64_t notify_watchdog_interval_ms(void);

#endif
