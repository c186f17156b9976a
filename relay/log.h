/* One line per event on stderr: "LEVEL message key=value ...", or one JSON object per line.
 * journald adds the timestamp and reads the priority from an sd-daemon "<N>" prefix when
 * stderr is its stream; a terminal run gets a timestamp from us.
 *
 * The format string is the structure: the text before the first literal " key=" is the
 * message, then come key=value fields, a value either bare (key=%zu) or quoted in the
 * format (key=\"%s\"). What a conversion expands to is data, never structure: it is
 * escaped in text and becomes one JSON string (or number) in JSON. */
#ifndef RELAY_LOG_H
#define RELAY_LOG_H

#include <stdarg.h>
#include <stdbool.h>

enum log_level { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };
enum log_format { LOG_FORMAT_TEXT, LOG_FORMAT_JSON };
/* auto: sd-daemon priority prefixes (and no timestamp) when stderr is journald's stream
 * (JOURNAL_STREAM names its device and inode); journal: always; stderr: never. */
enum log_target { LOG_TARGET_AUTO, LOG_TARGET_JOURNAL, LOG_TARGET_STDERR };

/* Parse "debug", "info", "warn", "error"; returns -1 when unknown. */
int log_level_parse(const char *name);
void log_set_level(enum log_level level);
/* --log-format json: one JSON object per line, {"time":..,"level":..,"msg":..,key:value..}.
 * Set on the command line it wins over log.format for the whole run. */
void log_set_json(bool json);
/* log.format and log.target from the configuration, at start and on reload. */
void log_configure(enum log_format format, enum log_target target);
int log_enabled(enum log_level level);

void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_vmsg(enum log_level level, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
/* Errors of a configuration that did not load, one per line ("file:line: message"): as they
 * are in text on a terminal, one error event per line otherwise. */
void log_error_lines(const char *lines);
/* Exit(1) after logging; for startup errors that leave nothing to run. */
void fatalx(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* The line log_msg would write, without the timestamp or priority prefix; for tests. */
char *log_format_line(enum log_format format, enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_enabled(LOG_LEVEL_DEBUG))                                                          \
            log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__);                                                 \
    } while (0)
#define log_info(...)  log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)

#endif
