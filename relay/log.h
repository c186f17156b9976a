/* One line per event on stderr: "LEVEL message key=value ...". journald adds the
 * timestamp when run under systemd; a terminal run gets one from us. */
#ifndef RELAY_LOG_H
#define RELAY_LOG_H

#include <stdarg.h>
#include <stdbool.h>

enum log_level { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };

/* Parse "debug", "info", "warn", "error"; returns -1 when unknown. */
int log_level_parse(const char *name);
void log_set_level(enum log_level level);
/* One JSON object per line instead of text: {"time":..,"level":..,"msg":..,key:value..}. */
void log_set_json(bool json);
int log_enabled(enum log_level level);

void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_vmsg(enum log_level level, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
/* Exit(1) after logging; for startup errors that leave nothing to run. */
void fatalx(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_enabled(LOG_LEVEL_DEBUG))                                                          \
            log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__);                                                 \
    } while (0)
#define log_info(...)  log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)

#endif
