#include "log.h"

#include "utf8.h"
#include "xalloc.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum { REPEAT_WINDOW_S = 10, TEXT_MAX = 2048, FIELDS_MAX = 32, LINE_MAX_BYTES = 16384 };

static enum log_level min_level = LOG_LEVEL_INFO;
static enum log_format format = LOG_FORMAT_TEXT;
static bool format_forced; /* --log-format on the command line */
static enum log_target target = LOG_TARGET_AUTO;
static int journal_detected = -1; /* stderr is journald's stream; -1: not looked yet */

/* Serializes lines from nats.c's threads and guards the repeat-folding state. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char last_text[LINE_MAX_BYTES];
static enum log_level last_level;
static time_t last_emitted;
static unsigned long repeats;

static const char *const level_names[] = {"debug", "info", "warn", "error"};
/* sd-daemon.h: SD_DEBUG, SD_INFO, SD_WARNING, SD_ERR. */
static const int level_priorities[] = {7, 6, 4, 3};

/* One event as the format string shaped it: the message, then key=value fields. */
struct log_field {
    const char *key; /* into the format string */
    size_t key_len;
    size_t value, value_len; /* into log_event.values */
    bool quoted;             /* key=\"...\" in the format */
    bool number;             /* bare, made of numeric conversions, and a JSON number */
};

struct log_event {
    enum log_level level;
    char msg[TEXT_MAX];
    size_t msg_len;
    char values[TEXT_MAX];
    size_t values_len;
    struct log_field fields[FIELDS_MAX];
    size_t field_count;
};

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
    pthread_mutex_lock(&lock);
    format = json ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT;
    format_forced = true;
    pthread_mutex_unlock(&lock);
}

void log_configure(enum log_format fmt, enum log_target tgt)
{
    pthread_mutex_lock(&lock);
    if (!format_forced)
        format = fmt;
    target = tgt;
    pthread_mutex_unlock(&lock);
}

int log_enabled(enum log_level level)
{
    return level >= min_level;
}

/* ---- Parsing the format string ---------------------------------------------------- */

enum conv_kind { CONV_LITERAL, CONV_NUMBER, CONV_OTHER, CONV_UNKNOWN };

static size_t clip(int n, size_t cap)
{
    if (n < 0)
        return 0;
    return (size_t)n >= cap ? cap - 1 : (size_t)n;
}

/* spec is one conversion cut out of a format the compiler checked at the log call (the
 * log functions carry printf attributes), with the argument of the type it names. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"

/* snprintf of one conversion with its argument of type T, after 0-2 '*' ints. */
#define PUT_ARG(T)                                                                                 \
    do {                                                                                           \
        T v_ = va_arg(*ap, T);                                                                     \
        n = stars == 0   ? snprintf(out, cap, spec, v_)                                            \
            : stars == 1 ? snprintf(out, cap, spec, star[0], v_)                                   \
                         : snprintf(out, cap, spec, star[0], star[1], v_);                         \
    } while (0)

enum length { LEN_NONE, LEN_L, LEN_LL, LEN_Z, LEN_J, LEN_T, LEN_BIG_L };

static enum length parse_length(const char **p)
{
    switch (**p) {
    case 'h':
        *p += (*p)[1] == 'h' ? 2 : 1; /* promoted to int anyway */
        return LEN_NONE;
    case 'l':
        if ((*p)[1] == 'l') {
            *p += 2;
            return LEN_LL;
        }
        *p += 1;
        return LEN_L;
    case 'z':
        *p += 1;
        return LEN_Z;
    case 'j':
        *p += 1;
        return LEN_J;
    case 't':
        *p += 1;
        return LEN_T;
    case 'L':
    case 'q':
        *p += 1;
        return LEN_BIG_L;
    }
    return LEN_NONE;
}

static int put_signed(char *out, size_t cap, const char *spec, int stars, const int *star,
                      enum length len, va_list *ap)
{
    int n;
    switch (len) {
    case LEN_L:
        PUT_ARG(long);
        break;
    case LEN_LL:
    case LEN_BIG_L:
        PUT_ARG(long long);
        break;
    case LEN_Z:
        PUT_ARG(ssize_t);
        break;
    case LEN_J:
        PUT_ARG(intmax_t);
        break;
    case LEN_T:
        PUT_ARG(ptrdiff_t);
        break;
    default:
        PUT_ARG(int);
    }
    return n;
}

static int put_unsigned(char *out, size_t cap, const char *spec, int stars, const int *star,
                        enum length len, va_list *ap)
{
    int n;
    switch (len) {
    case LEN_L:
        PUT_ARG(unsigned long);
        break;
    case LEN_LL:
    case LEN_BIG_L:
        PUT_ARG(unsigned long long);
        break;
    case LEN_Z:
        PUT_ARG(size_t);
        break;
    case LEN_J:
        PUT_ARG(uintmax_t);
        break;
    case LEN_T:
        PUT_ARG(ptrdiff_t);
        break;
    default:
        PUT_ARG(unsigned);
    }
    return n;
}

/* Expands the conversion at *fmtp ('%...') into out, taking its arguments from ap, and
 * moves *fmtp past it. An unknown conversion stops the parse: its argument's type, and
 * so every later argument, is unknown. */
static enum conv_kind expand(const char **fmtp, va_list *ap, int saved_errno, char *out, size_t cap,
                             size_t *written)
{
    const char *p = *fmtp + 1;
    *written = 0;
    if (*p == '%') {
        *written = clip(snprintf(out, cap, "%%"), cap);
        *fmtp = p + 1;
        return CONV_LITERAL;
    }
    int star[2], stars = 0;
    while (*p && strchr("-+ #0'", *p))
        p++;
    if (*p == '*') {
        star[stars++] = va_arg(*ap, int);
        p++;
    }
    while (*p >= '0' && *p <= '9')
        p++;
    if (*p == '.') {
        p++;
        if (*p == '*') {
            star[stars++] = va_arg(*ap, int);
            p++;
        }
        while (*p >= '0' && *p <= '9')
            p++;
    }
    enum length len = parse_length(&p);
    char conv = *p ? *p++ : '\0';
    char spec[32];
    if ((size_t)(p - *fmtp) >= sizeof(spec) || !conv) {
        *fmtp += strlen(*fmtp);
        return CONV_UNKNOWN;
    }
    snprintf(spec, sizeof(spec), "%.*s", (int)(p - *fmtp), *fmtp);
    *fmtp = p;
    int n;
    enum conv_kind kind = CONV_OTHER;
    switch (conv) {
    case 'd':
    case 'i':
        n = put_signed(out, cap, spec, stars, star, len, ap);
        kind = CONV_NUMBER;
        break;
    case 'u':
        n = put_unsigned(out, cap, spec, stars, star, len, ap);
        kind = CONV_NUMBER;
        break;
    case 'o':
    case 'x':
    case 'X':
        n = put_unsigned(out, cap, spec, stars, star, len, ap);
        break;
    case 'f':
    case 'F':
    case 'e':
    case 'E':
    case 'g':
    case 'G':
        if (len == LEN_BIG_L)
            PUT_ARG(long double);
        else
            PUT_ARG(double);
        kind = CONV_NUMBER;
        break;
    case 'c':
        PUT_ARG(int);
        break;
    case 's':
        PUT_ARG(const char *);
        break;
    case 'p':
        PUT_ARG(void *);
        break;
    case 'm':
        n = snprintf(out, cap, "%s", strerror(saved_errno));
        break;
    default:
        *fmtp += strlen(*fmtp);
        return CONV_UNKNOWN;
    }
    *written = clip(n, cap);
    return kind;
}

#pragma GCC diagnostic pop

/* " key=" with key in [a-z_][a-z0-9_.]*: where a field starts. */
static size_t field_key_at(const char *p)
{
    if (p[0] != ' ' || !((p[1] >= 'a' && p[1] <= 'z') || p[1] == '_'))
        return 0;
    size_t n = 1;
    while ((p[n] >= 'a' && p[n] <= 'z') || (p[n] >= '0' && p[n] <= '9') || p[n] == '_' ||
           p[n] == '.')
        n++;
    return p[n] == '=' ? n - 1 : 0;
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool is_json_number(const char *s, size_t len)
{
    size_t i = 0;
    if (i < len && s[i] == '-')
        i++;
    if (i >= len || s[i] < '0' || s[i] > '9')
        return false;
    if (s[i] == '0')
        i++;
    else
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
    if (i < len && s[i] == '.') {
        size_t start = ++i;
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == start)
            return false;
    }
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-'))
            i++;
        size_t start = i;
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == start)
            return false;
    }
    return i == len;
}

/* Appends the literal character or the conversion at *p to buf; false once parsing must
 * stop. */
static bool take(const char **p, va_list *ap, int saved_errno, char *buf, size_t *len,
                 enum conv_kind *kind)
{
    if (**p != '%') {
        if (*len + 1 < TEXT_MAX)
            buf[(*len)++] = **p;
        (*p)++;
        *kind = CONV_LITERAL;
        return true;
    }
    size_t n;
    *kind = expand(p, ap, saved_errno, buf + *len, TEXT_MAX - *len, &n);
    *len += n;
    return *kind != CONV_UNKNOWN;
}

/* The value after "key=": quoted up to the format's closing '"', or bare up to its next
 * space. */
static bool parse_value(struct log_event *ev, struct log_field *f, const char **p, va_list *ap,
                        int saved_errno)
{
    f->quoted = **p == '"';
    if (f->quoted)
        (*p)++;
    f->value = ev->values_len;
    bool numeric = false, other = false, go_on = true;
    while (**p && go_on) {
        if (f->quoted && **p == '"') {
            (*p)++;
            break;
        }
        if (!f->quoted && **p == ' ')
            break;
        enum conv_kind kind;
        go_on = take(p, ap, saved_errno, ev->values, &ev->values_len, &kind);
        numeric |= kind == CONV_NUMBER;
        other |= kind == CONV_OTHER || kind == CONV_UNKNOWN;
    }
    f->value_len = ev->values_len - f->value;
    f->number =
        !f->quoted && numeric && !other && is_json_number(ev->values + f->value, f->value_len);
    return go_on;
}

static void parse_event(struct log_event *ev, enum log_level level, const char *fmt, va_list *ap)
{
    int saved_errno = errno;
    ev->level = level;
    ev->msg_len = ev->values_len = ev->field_count = 0;
    const char *p = fmt;
    bool go_on = true;
    while (*p && go_on) {
        size_t key_len = field_key_at(p);
        enum conv_kind kind;
        if (key_len == 0 || ev->field_count == FIELDS_MAX) {
            /* the message, or text between fields that is not one: part of the message */
            go_on = take(&p, ap, saved_errno, ev->msg, &ev->msg_len, &kind);
            continue;
        }
        struct log_field *f = &ev->fields[ev->field_count++];
        f->key = p + 1;
        f->key_len = key_len;
        p += key_len + 2;
        go_on = parse_value(ev, f, &p, ap, saved_errno);
    }
}

static void event_from(struct log_event *ev, enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void event_from(struct log_event *ev, enum log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    parse_event(ev, level, fmt, &ap);
    va_end(ap);
}

/* ---- Rendering -------------------------------------------------------------------- */

static size_t put_bytes(char *out, size_t cap, size_t n, const char *s, size_t len)
{
    if (n + len >= cap)
        len = n + 1 < cap ? cap - n - 1 : 0;
    memcpy(out + n, s, len);
    return n + len;
}

/* Escapes what would break a line or, in quotes, the quoting: \" \\ \n \r \t \xHH. */
static size_t put_escaped(char *out, size_t cap, size_t n, const char *s, size_t len, bool quoted)
{
    for (size_t i = 0; i < len && n + 5 < cap; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (quoted && (ch == '"' || ch == '\\')) {
            out[n++] = '\\';
            out[n++] = (char)ch;
        } else if (ch == '\n') {
            n = put_bytes(out, cap, n, "\\n", 2);
        } else if (ch == '\r') {
            n = put_bytes(out, cap, n, "\\r", 2);
        } else if (ch == '\t') {
            n = put_bytes(out, cap, n, "\\t", 2);
        } else if (ch < 0x20 || ch == 0x7f) {
            n += (size_t)snprintf(out + n, cap - n, "\\x%02x", ch);
        } else {
            out[n++] = (char)ch;
        }
    }
    return n;
}

static bool needs_quotes(const char *s, size_t len)
{
    if (len == 0)
        return true;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= ' ' || ch == '"' || ch == '\\' || ch == '=' || ch == 0x7f)
            return true;
    }
    return false;
}

/* "level message key=value key=\"value\"" */
static size_t render_text(const struct log_event *ev, char *out, size_t cap)
{
    size_t n = put_bytes(out, cap, 0, level_names[ev->level], strlen(level_names[ev->level]));
    n = put_bytes(out, cap, n, " ", 1);
    n = put_escaped(out, cap, n, ev->msg, ev->msg_len, false);
    for (size_t i = 0; i < ev->field_count; i++) {
        const struct log_field *f = &ev->fields[i];
        const char *v = ev->values + f->value;
        bool quote = f->quoted || needs_quotes(v, f->value_len);
        n = put_bytes(out, cap, n, " ", 1);
        n = put_bytes(out, cap, n, f->key, f->key_len);
        n = put_bytes(out, cap, n, quote ? "=\"" : "=", quote ? 2 : 1);
        n = put_escaped(out, cap, n, v, f->value_len, quote);
        if (quote)
            n = put_bytes(out, cap, n, "\"", 1);
    }
    out[n] = '\0';
    return n;
}

/* A JSON string of s, whatever its bytes: invalid UTF-8 becomes U+FFFD. */
static json_t *json_text(const char *s, size_t len)
{
    json_t *j = json_stringn(s, len);
    if (j)
        return j;
    char *clean = xmalloc(len * 3 + 1);
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        unsigned char ch = (unsigned char)s[i];
        size_t seq =
            ch < 0x80 ? (ch ? 1 : 0) : utf8_sequence((const unsigned char *)s + i, len - i);
        if (seq == 0) {
            n += utf8_encode(0xFFFD, clean + n);
            i++;
            continue;
        }
        memcpy(clean + n, s + i, seq);
        n += seq;
        i += seq;
    }
    j = json_stringn(clean, n);
    free(clean);
    return j;
}

static json_t *json_value(const struct log_event *ev, const struct log_field *f)
{
    const char *v = ev->values + f->value;
    if (f->number) {
        char text[64];
        snprintf(text, sizeof(text), "%.*s", (int)f->value_len, v);
        bool integer = !strpbrk(text, ".eE");
        errno = 0;
        long long i = integer ? strtoll(text, NULL, 10) : 0;
        if (integer && errno == 0)
            return json_integer(i);
        return json_real(strtod(text, NULL)); /* past int64, or a fraction */
    }
    return json_text(v, f->value_len);
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

/* {"time":..,"level":..,"msg":..,key:value..}; malloc'd, NULL when out of memory. */
static char *render_json(const struct log_event *ev)
{
    json_t *o = json_object();
    char now[40];
    put_time(now, sizeof(now));
    json_object_set_new(o, "time", json_string(now));
    json_object_set_new(o, "level", json_string(level_names[ev->level]));
    json_object_set_new(o, "msg", json_text(ev->msg, ev->msg_len));
    for (size_t i = 0; i < ev->field_count; i++) {
        const struct log_field *f = &ev->fields[i];
        char key[64];
        snprintf(key, sizeof(key), "%.*s", (int)f->key_len, f->key);
        if (!strcmp(key, "time") || !strcmp(key, "level") || !strcmp(key, "msg"))
            snprintf(key, sizeof(key), "%.*s_", (int)f->key_len, f->key);
        json_object_set_new(o, key, json_value(ev, f));
    }
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return text;
}

/* ---- Writing ---------------------------------------------------------------------- */

static bool journal_stream(void)
{
    const char *stream = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    if (!stream || sscanf(stream, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) != 0)
        return false;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

static bool to_journal(void)
{
    if (target != LOG_TARGET_AUTO)
        return target == LOG_TARGET_JOURNAL;
    if (journal_detected < 0)
        journal_detected = journal_stream();
    return journal_detected;
}

/* One write per line, so lines from nats.c threads never interleave mid-line. Under
 * journald the "<N>" prefix gives the priority and journald the timestamp. */
static void emit(const struct log_event *ev, const char *text)
{
    char prefix[48];
    size_t n = 0;
    if (to_journal())
        n = (size_t)snprintf(prefix, sizeof(prefix), "<%d>", level_priorities[ev->level]);
    else if (format == LOG_FORMAT_TEXT) {
        n = (size_t)put_time(prefix, sizeof(prefix) - 1);
        prefix[n++] = ' ';
    }
    char *json = format == LOG_FORMAT_JSON ? render_json(ev) : NULL;
    struct iovec iov[3] = {
        {prefix, n},
        {json ? json : (char *)text, strlen(json ? json : text)},
        {"\n", 1},
    };
    ssize_t w = writev(STDERR_FILENO, iov, 3);
    (void)w;
    free(json);
}

/* Identical lines within REPEAT_WINDOW_S are counted, not written; the count is written
 * before the next different line (or the same one once the window has passed). */
static void emit_folded(const struct log_event *ev)
{
    static char text[LINE_MAX_BYTES];
    time_t now = time(NULL);
    pthread_mutex_lock(&lock);
    render_text(ev, text, sizeof(text));
    if (ev->level == last_level && strcmp(text, last_text) == 0 &&
        now - last_emitted < REPEAT_WINDOW_S) {
        repeats++;
        pthread_mutex_unlock(&lock);
        return;
    }
    if (repeats > 0) {
        struct log_event note;
        char note_text[128];
        event_from(&note, last_level, "last message repeated %lu times", repeats);
        render_text(&note, note_text, sizeof(note_text));
        emit(&note, note_text);
    }
    repeats = 0;
    last_level = ev->level;
    last_emitted = now;
    memcpy(last_text, text, sizeof(text));
    emit(ev, text);
    pthread_mutex_unlock(&lock);
}

void log_vmsg(enum log_level level, const char *fmt, va_list ap)
{
    if (level < min_level)
        return;
    struct log_event ev;
    va_list copy;
    va_copy(copy, ap);
    parse_event(&ev, level, fmt, &copy);
    va_end(copy);
    emit_folded(&ev);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, fmt, ap);
    va_end(ap);
}

void log_error_lines(const char *lines)
{
    pthread_mutex_lock(&lock);
    bool plain = format == LOG_FORMAT_TEXT && !to_journal();
    pthread_mutex_unlock(&lock);
    if (plain) {
        fputs(lines, stderr);
        return;
    }
    for (const char *p = lines; *p;) {
        const char *end = strchr(p, '\n');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        log_error("%.*s", (int)len, p);
        p += len + (end ? 1 : 0);
    }
}

char *log_format_line(enum log_format fmt, enum log_level level, const char *f, ...)
{
    struct log_event ev;
    va_list ap;
    va_start(ap, f);
    parse_event(&ev, level, f, &ap);
    va_end(ap);
    if (fmt == LOG_FORMAT_JSON)
        return render_json(&ev);
    char *text = xmalloc(LINE_MAX_BYTES);
    render_text(&ev, text, LINE_MAX_BYTES);
    return text;
}

void fatalx(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(LOG_LEVEL_ERROR, fmt, ap);
    va_end(ap);
    exit(1);
}
