#include "log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { REPEAT_WINDOW_S = 10 };

static enum log_level min_level = LOG_LEVEL_INFO;
static bool json_format;

/* The last line, to fold identical repeats into "... repeated N times". */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char last_text[2048];
static enum log_level last_level;
static time_t last_emitted;
static unsigned long repeats;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int log_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

void log_set_level(enum log_level level)
{
    min_level = level;
}

void log_set_json(bool json)
{
    json_format = json;
}

int log_enabled(enum log_level level)
{
    return level >= min_level;
}

static int put_time(char *out, size_t cap)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = (int)strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    return n + snprintf(out + n, cap - (size_t)n, ".%03ldZ", ts.tv_nsec / 1000000);
}

static size_t put_json_string(char *out, size_t cap, const char *s, size_t len)
{
    size_t n = 0;
    if (n + 1 < cap)
        out[n++] = '"';
    for (size_t i = 0; i < len && n + 8 < cap; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            out[n++] = '\\';
            out[n++] = (char)ch;
        } else if (ch < 0x20) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", ch);
        } else {
            out[n++] = (char)ch;
        }
    }
    if (n + 1 < cap)
        out[n++] = '"';
    return n;
}

/* Where the key=value fields of a message start: the first " key=" with key in [a-z_]. */
static const char *fields_start(const char *text)
{
    for (const char *p = strchr(text, ' '); p; p = strchr(p + 1, ' ')) {
        const char *k = p + 1;
        while ((*k >= 'a' && *k <= 'z') || *k == '_')
            k++;
        if (k > p + 1 && *k == '=')
            return p;
    }
    return NULL;
}

/* {"time":..,"level":..,"msg":..} plus each key=value field (quoted values unquoted). */
static size_t format_json(char *out, size_t cap, enum log_level level, const char *text)
{
    size_t n = (size_t)snprintf(out, cap, "{\"time\":\"");
    n += (size_t)put_time(out + n, cap - n);
    n += (size_t)snprintf(out + n, cap - n, "\",\"level\":\"%s\",\"msg\":", level_names[level]);
    const char *fields = fields_start(text);
    n += put_json_string(out + n, cap - n, text, fields ? (size_t)(fields - text) : strlen(text));
    for (const char *p = fields; p && *p && n + 16 < cap;) {
        while (*p == ' ')
            p++;
        const char *eq = strchr(p, '=');
        if (!eq)
            break;
        out[n++] = ',';
        n += put_json_string(out + n, cap - n, p, (size_t)(eq - p));
        out[n++] = ':';
        const char *v = eq + 1, *end;
        if (*v == '"') {
            end = v + 1;
            while (*end && !(*end == '"' && end[-1] != '\\'))
                end++;
            n += put_json_string(out + n, cap - n, v + 1, (size_t)(end - v - 1));
            p = *end ? end + 1 : end;
        } else {
            end = strchr(v, ' ');
            if (!end)
                end = v + strlen(v);
            n += put_json_string(out + n, cap - n, v, (size_t)(end - v));
            p = end;
        }
    }
    if (n + 2 < cap)
        out[n++] = '}';
    return n;
}

static void emit(enum log_level level, const char *text)
{
    char line[4096];
    size_t n;
    if (json_format) {
        n = format_json(line, sizeof(line) - 1, level, text);
    } else {
        n = 0;
        /* Under systemd (JOURNAL_STREAM set) journald stamps the time itself. */
        if (!getenv("JOURNAL_STREAM")) {
            n = (size_t)put_time(line, sizeof(line));
            line[n++] = ' ';
        }
        n += (size_t)snprintf(line + n, sizeof(line) - n - 1, "%s %s", level_names[level], text);
        if (n > sizeof(line) - 2)
            n = sizeof(line) - 2;
    }
    line[n++] = '\n';
    /* One write per line so lines from nats.c threads never interleave mid-line. */
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}

/* Identical lines within REPEAT_WINDOW_S are counted, not written; the count is written
 * before the next different line (or the same one once the window has passed). */
static void emit_folded(enum log_level level, const char *text)
{
    time_t now = time(NULL);
    pthread_mutex_lock(&lock);
    if (level == last_level && strcmp(text, last_text) == 0 &&
        now - last_emitted < REPEAT_WINDOW_S) {
        repeats++;
        pthread_mutex_unlock(&lock);
        return;
    }
    if (repeats > 0) {
        char note[128];
        snprintf(note, sizeof(note), "last message repeated %lu times", repeats);
        emit(last_level, note);
    }
    repeats = 0;
    last_level = level;
    last_emitted = now;
    snprintf(last_text, sizeof(last_text), "%s", text);
    emit(level, text);
    pthread_mutex_unlock(&lock);
}

void log_vmsg(enum log_level level, const char *fmt, va_list ap)
{
    if (level < min_level)
        return;
    char text[2048];
    vsnprintf(text, sizeof(text), fmt, ap);
    emit_folded(level, text);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, fmt, ap);
    va_end(ap);
}

void fatalx(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(LOG_LEVEL_ERROR, fmt, ap);
    va_end(ap);
    exit(1);
}
