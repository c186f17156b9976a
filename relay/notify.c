#include "notify.h"

#include <stdarg.h>
#include <stdio.h>

#ifdef HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

static void send_state(const char *state)
{
#ifdef HAVE_SYSTEMD
    sd_notify(0, state);
#else
    (void)state;
#endif
}

void notify_ready(void)
{
    send_state("READY=1");
}

void notify_stopping(void)
{
    send_state("STOPPING=1");
}

void notify_reloading(void)
{
    send_state("RELOADING=1");
}

void notify_watchdog(void)
{
    send_state("WATCHDOG=1");
}

void notify_status(const char *fmt, ...)
{
    char text[512] = "STATUS=";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text + 7, sizeof(text) - 7, fmt, ap);
    va_end(ap);
    send_state(text);
}

uint64_t notify_watchdog_interval_ms(void)
{
#ifdef HAVE_SYSTEMD
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0)
        return usec / 2000;
#endif
    return 0;
}
