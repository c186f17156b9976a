/* YAML configuration → struct config: the reader (config.c has the schema).
 *
 * libyaml loads the whole file into a node tree (every node keeps its line and column),
 * which is then walked against the schema table below: one row per key, saying its
 * name, its type, where it is stored in struct config, its default and what it is for.
 * Defaults are stored first, then each key found replaces its default. Every problem
 * is collected rather than stopping at the first, so one `--check` shows them all, each
 * as "path:line:column: message", sorted into document order. */
#include "config.h"
#include "config_internal.h"

#include "listen.h"
#include "log.h"
#include "nats_auth.h"
#include "secret.h"
#include "xalloc.h"

#include <yaml.h>

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- Problems -------------------------------------------------------------------- */

struct problem {
    size_t line, column; /* 1-based */
    size_t order;        /* keeps the reporting order between equal positions */
    char *text;
};

struct loader {
    const char *path;
    struct config_staging *st;
    yaml_document_t *doc;
    struct problem *problems;
    size_t count, capacity;
    bool literal_secret; /* a secret is written in the file itself */
};

__attribute__((format(printf, 3, 4))) static void report(struct loader *ld, yaml_mark_t mark,
                                                         const char *fmt, ...)
{
    if (ld->count == ld->capacity) {
        ld->capacity = ld->capacity ? 2 * ld->capacity : 8;
        ld->problems = xrealloc(ld->problems, ld->capacity * sizeof(*ld->problems));
    }
    struct problem *p = &ld->problems[ld->count];
    /* libyaml counts from 0; editors and people count from 1. */
    p->line = mark.line + 1;
    p->column = mark.column + 1;
    p->order = ld->count++;
    char *message;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&message, fmt, ap) < 0)
        fatalx("out of memory formatting a configuration error");
    va_end(ap);
    p->text = xasprintf("%s:%zu:%zu: %s\n", ld->path, p->line, p->column, message);
    free(message);
}

static int compare_problems(const void *a, const void *b)
{
    const struct problem *x = a, *y = b;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    if (x->column != y->column)
        return x->column < y->column ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

/* A missing key is reported at the start of its mapping, after the walk has seen the
 * keys that are there, so reporting order is not document order: sort, then join. */
static char *take_problems(struct loader *ld)
{
    char *text = NULL;
    size_t length;
    if (ld->count == 0)
        return NULL;
    qsort(ld->problems, ld->count, sizeof(*ld->problems), compare_problems);
    FILE *out = open_memstream(&text, &length);
    if (!out)
        fatalx("out of memory joining configuration errors");
    for (size_t i = 0; i < ld->count; i++) {
        fputs(ld->problems[i].text, out);
        free(ld->problems[i].text);
    }
    if (fclose(out) != 0)
        fatalx("out of memory joining configuration errors");
    free(ld->problems);
    return text;
}

/* Append to a NUL-terminated buffer, silently cut at its size (messages only). */
static void append(char *buf, size_t size, const char *text)
{
    size_t used = strlen(buf);
    snprintf(buf + used, size - used, "%s", text);
}

/* ---- Nodes ----------------------------------------------------------------------- */

#define DESCRIBE_MAX 80

static yaml_node_t *node_at(struct loader *ld, int index)
{
    return yaml_document_get_node(ld->doc, index);
}

static const char *scalar(const yaml_node_t *node)
{
    return (const char *)node->data.scalar.value;
}

/* An unquoted empty, ~ or null scalar: "key:" with nothing after it. */
static bool is_null(const yaml_node_t *node)
{
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};
    if (node->type != YAML_SCALAR_NODE || node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    for (size_t i = 0; i < sizeof(nulls) / sizeof(nulls[0]); i++)
        if (strcmp(scalar(node), nulls[i]) == 0)
            return true;
    return false;
}

/* Quote a scalar for a message, escaped and cut short, so every problem is one line. */
static void quote(const char *text, size_t length, char *buf, size_t size)
{
    const size_t limit = size - 8; /* room for one escape, "...", the quote and the NUL */
    size_t n = 0, i = 0;
    buf[n++] = '"';
    for (; i < length && n < limit; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == '"' || c == '\\')
            n += (size_t)snprintf(buf + n, size - n, "\\%c", c);
        else if (c == '\n')
            n += (size_t)snprintf(buf + n, size - n, "\\n");
        else if (c < 0x20 || c == 0x7f)
            n += (size_t)snprintf(buf + n, size - n, "\\x%02x", c);
        else
            buf[n++] = (char)c;
    }
    if (i < length) {
        while (((unsigned char)text[i] & 0xc0) == 0x80 && n > 1) {
            n--; /* do not cut a UTF-8 character in half */
            i--;
        }
        n = (size_t)(stpcpy(buf + n, "...") - buf);
    }
    buf[n++] = '"';
    buf[n] = '\0';
}

/* How a value is named after "got": a scalar as its quoted text, anything else by kind. */
static const char *describe(const yaml_node_t *node, char buf[DESCRIBE_MAX])
{
    if (node->type == YAML_MAPPING_NODE)
        return "a mapping";
    if (node->type == YAML_SEQUENCE_NODE)
        return node->data.sequence.items.start == node->data.sequence.items.top ? "an empty list"
                                                                                : "a list";
    if (is_null(node))
        return "nothing";
    quote(scalar(node), node->data.scalar.length, buf, DESCRIBE_MAX);
    return buf;
}

static void report_expected(struct loader *ld, const yaml_node_t *node, const char *keypath,
                            const char *expected)
{
    char buf[DESCRIBE_MAX];
    report(ld, node->start_mark, "%s: expected %s, got %s", keypath, expected, describe(node, buf));
}

/* The text of a scalar that has one (with no NUL inside), or NULL after saying so. */
static const char *scalar_text(struct loader *ld, const yaml_node_t *node, const char *keypath,
                               const char *expected)
{
    if (node->type == YAML_SCALAR_NODE && !is_null(node) &&
        strlen(scalar(node)) == node->data.scalar.length)
        return scalar(node);
    report_expected(ld, node, keypath, expected);
    return NULL;
}

/* A non-empty string, or NULL after saying why not. */
static const char *string_text(struct loader *ld, const yaml_node_t *node, const char *keypath,
                               const char *expected)
{
    const char *text = scalar_text(ld, node, keypath, expected);
    if (text && *text == '\0') {
        report_expected(ld, node, keypath, "a non-empty string");
        return NULL;
    }
    return text;
}

/* ---- Values ---------------------------------------------------------------------- */

static void warn_exposed(const char *path, const char *keypath)
{
    mode_t mode;
    if (secret_file_exposed(path, &mode))
        log_warn("%s: %s holds a secret and every user may read it (mode %04o); chmod o-r it",
                 keypath, path, (unsigned)mode);
}

/* A file the relay must read (a certificate, a key, a seed): say now if it cannot. */
static void check_file(struct loader *ld, const struct key *k, const yaml_node_t *node,
                       const char *keypath, const char *path)
{
    char *err = nats_auth_check_file(keypath, path, k->offset == FIELD(nats_nkey_seed));
    if (err)
        report(ld, node->start_mark, "%s", err);
    else if (k->secret)
        warn_exposed(path, keypath);
    free(err);
}

static void load_string(struct loader *ld, const struct key *k, const yaml_node_t *node,
                        const char *keypath)
{
    const char *text = string_text(ld, node, keypath, k->file ? "a file path" : "a string");
    if (text)
        config_store_string(ld->st, k, text);
    if (text && k->file)
        check_file(ld, k, node, keypath, text);
}

/* ---- Secrets: never quoted in a message, whatever goes wrong ------------------- */

#define SECRET_FORMS "a string, ${ENV_VAR} or { file: path }"

static const yaml_node_pair_t *find_pair(struct loader *ld, const yaml_node_t *map,
                                         const char *name, size_t length);

static void store_secret(struct config_staging *st, const struct key *k, char *secret)
{
    char **slot = config_field(st, k);
    secret_free(*slot);
    *slot = secret;
}

/* password: { file: /etc/kumo-nats-relay/nats-password } */
static void load_secret_file(struct loader *ld, const struct key *k, const yaml_node_t *map,
                             const char *keypath)
{
    const yaml_node_pair_t *pair = find_pair(ld, map, "file", 4);
    if (!pair || map->data.mapping.pairs.top - map->data.mapping.pairs.start != 1) {
        report(ld, map->start_mark, "%s: expected %s, got a mapping that is not { file: path }",
               keypath, SECRET_FORMS);
        return;
    }
    char filepath[160];
    snprintf(filepath, sizeof(filepath), "%s.file", keypath);
    const yaml_node_t *value = node_at(ld, pair->value);
    const char *path = string_text(ld, value, filepath, "a file path");
    char *err = NULL, *secret;
    if (!path)
        return;
    if (!(secret = secret_read_file(path, &err))) {
        report(ld, value->start_mark, "%s: %s", filepath, err);
        free(err);
        return;
    }
    store_secret(ld->st, k, secret);
    if (k->secret)
        warn_exposed(path, filepath);
}

/* password: hunter2 | password: ${NATS_PASSWORD} | password: { file: path } */
static void load_secret(struct loader *ld, const struct key *k, const yaml_node_t *node,
                        const char *keypath)
{
    if (node->type == YAML_MAPPING_NODE) {
        load_secret_file(ld, k, node, keypath);
        return;
    }
    if (node->type != YAML_SCALAR_NODE || is_null(node) || node->data.scalar.length == 0 ||
        strlen(scalar(node)) != node->data.scalar.length) {
        const char *got = node->type == YAML_SEQUENCE_NODE ? "a list"
                          : is_null(node)                  ? "nothing"
                                                           : "an empty string or a NUL byte";
        report(ld, node->start_mark, "%s: expected %s, got %s", keypath, SECRET_FORMS, got);
        return;
    }
    char name[128], *err = NULL, *secret;
    if (!secret_env_reference(scalar(node), name, sizeof(name))) {
        store_secret(ld->st, k, xstrdup(scalar(node)));
        ld->literal_secret |= k->secret;
    } else if ((secret = secret_from_env(name, &err))) {
        store_secret(ld->st, k, secret);
    } else {
        report(ld, node->start_mark, "%s: %s", keypath, err);
        free(err);
    }
}

/* One string is a list of one: "servers: nats://a:4222" reads as naturally as a list. */
static void load_string_list(struct loader *ld, const struct key *k, const yaml_node_t *node,
                             const char *keypath)
{
    const char *text;
    if (node->type != YAML_SEQUENCE_NODE) {
        if ((text = string_text(ld, node, keypath, "a string or a list of strings")))
            config_store_list(ld->st, k, config_list_of_one(text), 1);
        return;
    }
    yaml_node_item_t *items = node->data.sequence.items.start;
    size_t count = (size_t)(node->data.sequence.items.top - items), good = 0;
    if (count == 0) {
        report_expected(ld, node, keypath, "at least one string");
        return;
    }
    char **list = xcalloc(count, sizeof(*list));
    for (size_t i = 0; i < count; i++) {
        char itempath[160];
        snprintf(itempath, sizeof(itempath), "%s[%zu]", keypath, i);
        if ((text = string_text(ld, node_at(ld, items[i]), itempath, "a string")))
            list[good++] = xstrdup(text);
    }
    if (good == count)
        config_store_list(ld->st, k, list, count);
    else
        config_free_strings(list, good);
}

static void load_enum(struct loader *ld, const struct key *k, const yaml_node_t *node,
                      const char *keypath)
{
    char expected[128] = "one of ";
    for (const char *const *word = k->words; *word; word++) {
        append(expected, sizeof(expected), word == k->words ? "" : ", ");
        append(expected, sizeof(expected), *word);
    }
    const char *text = scalar_text(ld, node, keypath, expected);
    if (!text)
        return;
    for (int i = 0; k->words[i]; i++) {
        if (strcmp(text, k->words[i]) == 0) {
            config_store_number(ld->st, k, i);
            return;
        }
    }
    report_expected(ld, node, keypath, expected);
}

struct number_kind {
    const char *noun;         /* names the range: "<noun> from <min> to <max>" */
    const char *like;         /* what a malformed value is told; NULL: the range */
    const struct unit *units; /* accepted suffixes, also used to print the range */
};

static const struct number_kind number_kinds[] = {
    [KEY_COUNT] = {"an integer", NULL, config_plain_units},
    [KEY_BYTES] = {"a size", "a size like 512KiB, 16MiB, 1GB", config_size_units},
    [KEY_DURATION] = {"a duration", "a duration like 200ms, 5s, 10m", config_duration_units},
};

static void load_number(struct loader *ld, const struct key *k, const yaml_node_t *node,
                        const char *keypath)
{
    const struct number_kind *kind = &number_kinds[k->type];
    char range[96], min[32], max[32];
    config_format_with_unit(k->min, kind->units, min, sizeof(min));
    config_format_with_unit(k->max, kind->units, max, sizeof(max));
    snprintf(range, sizeof(range), "%s from %s to %s", kind->noun, min, max);
    const char *like = kind->like ? kind->like : range, *text;
    int64_t n;
    if (!(text = scalar_text(ld, node, keypath, like)))
        return;
    if (!config_parse_with_unit(text, kind->units, &n))
        report_expected(ld, node, keypath, like);
    else if (n < k->min || n > k->max)
        report_expected(ld, node, keypath, range);
    else
        config_store_number(ld->st, k, n);
}

/* ---- Mappings -------------------------------------------------------------------- */

static void load_section(struct loader *ld, const yaml_node_t *map, const struct key *keys,
                         const char *prefix);

static void join_keypath(const char *prefix, const char *name, char *buf, size_t size)
{
    /* Key paths are short (the longest is a few dozen bytes); a cut one only shortens an
     * error message, so the truncation gcc -O3 warns about is harmless. */
    int n = snprintf(buf, size, "%s%s%s", prefix, *prefix ? "." : "", name);
    (void)n;
}

/* The first pair of the mapping whose key is this exact scalar, or NULL. */
static const yaml_node_pair_t *find_pair(struct loader *ld, const yaml_node_t *map,
                                         const char *name, size_t length)
{
    for (yaml_node_pair_t *pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top;
         pair++) {
        const yaml_node_t *key = node_at(ld, pair->key);
        if (key->type == YAML_SCALAR_NODE && key->data.scalar.length == length &&
            memcmp(key->data.scalar.value, name, length) == 0)
            return pair;
    }
    return NULL;
}

/* Absent keys keep their defaults; absent required ones are reported at mark, which is
 * the mapping that should hold them (or, when that is absent too, its closest parent). */
static void report_missing(struct loader *ld, yaml_mark_t mark, const yaml_node_t *map,
                           const struct key *keys, const char *prefix)
{
    for (const struct key *k = keys; k->name; k++) {
        if (map && find_pair(ld, map, k->name, strlen(k->name)))
            continue;
        char keypath[128];
        join_keypath(prefix, k->name, keypath, sizeof(keypath));
        if (k->required)
            report(ld, mark, "missing required key %s", keypath);
        else if (k->type == KEY_SECTION)
            report_missing(ld, mark, NULL, k->section, keypath);
    }
}

/* `spool:` as a sequence of {dir, pattern, ...}: each entry is loaded into a scratch
 * staging with the section's defaults, then moved to cfg.spools. The first entry also
 * sets start_at. */
static void load_spool_list(struct loader *ld, const struct key *k, const yaml_node_t *node,
                            const char *keypath)
{
    struct config_staging *st = ld->st;
    size_t index = 0;
    for (yaml_node_item_t *item = node->data.sequence.items.start;
         item < node->data.sequence.items.top; item++, index++) {
        const yaml_node_t *entry = node_at(ld, *item);
        char entry_path[64];
        snprintf(entry_path, sizeof(entry_path), "%s[%zu]", keypath, index);
        if (entry->type != YAML_MAPPING_NODE) {
            report_expected(ld, entry, entry_path, "a mapping with dir");
            continue;
        }
        struct config_staging scratch = {0};
        config_set_defaults(&scratch, k->section);
        ld->st = &scratch;
        load_section(ld, entry, k->section, entry_path);
        ld->st = st;
        if (index == 0)
            st->cfg.start_at = scratch.cfg.start_at;
        config_add_spool(&st->cfg, &scratch.spool);
        config_free(&scratch.cfg);
    }
    if (index == 0)
        report(ld, node->start_mark, "%s: expected at least one directory", keypath);
}

static void load_subsection(struct loader *ld, const struct key *k, const yaml_node_t *node,
                            const char *keypath)
{
    if (node->type == YAML_SEQUENCE_NODE && k->section == config_spool_keys)
        load_spool_list(ld, k, node, keypath);
    else if (node->type == YAML_MAPPING_NODE)
        load_section(ld, node, k->section, keypath);
    else if (is_null(node)) /* "log:" alone: an empty section, all defaults */
        report_missing(ld, node->start_mark, NULL, k->section, keypath);
    else
        report_expected(ld, node, keypath, "a mapping");
}

typedef void load_fn(struct loader *ld, const struct key *k, const yaml_node_t *node,
                     const char *keypath);

static load_fn *const loaders[] = {
    [KEY_SECTION] = load_subsection,
    [KEY_STRING] = load_string,
    [KEY_STRING_LIST] = load_string_list,
    [KEY_ENUM] = load_enum,
    [KEY_COUNT] = load_number,
    [KEY_BYTES] = load_number,
    [KEY_DURATION] = load_number,
    [KEY_SECRET] = load_secret,
};

static void report_unknown(struct loader *ld, const yaml_node_t *key, const struct key *keys,
                           const char *prefix)
{
    char names[256] = "", buf[DESCRIBE_MAX];
    for (const struct key *k = keys; k->name; k++) {
        append(names, sizeof(names), k == keys ? "" : ", ");
        append(names, sizeof(names), k->name);
    }
    report(ld, key->start_mark, "unknown key %s%s%s (expected one of: %s)", describe(key, buf),
           *prefix ? " in " : "", prefix, names);
}

/* The schema row this key scalar names (exactly: "dir\0x" is not "dir"), or NULL. */
static const struct key *find_key(const struct key *keys, const yaml_node_t *key)
{
    size_t length = key->data.scalar.length;
    for (const struct key *k = keys; k->name; k++)
        if (strlen(k->name) == length && memcmp(k->name, key->data.scalar.value, length) == 0)
            return k;
    return NULL;
}

static void load_pair(struct loader *ld, const yaml_node_t *map, const yaml_node_pair_t *pair,
                      const struct key *keys, const char *prefix)
{
    const yaml_node_t *key = node_at(ld, pair->key);
    const char *where = *prefix ? " in " : "";
    char buf[DESCRIBE_MAX];
    if (key->type != YAML_SCALAR_NODE) {
        report(ld, key->start_mark, "expected a key name%s%s, got %s", where, prefix,
               describe(key, buf));
        return;
    }
    const yaml_node_pair_t *first = find_pair(ld, map, scalar(key), key->data.scalar.length);
    if (first != pair) {
        yaml_mark_t at = node_at(ld, first->key)->start_mark;
        report(ld, key->start_mark, "duplicate key %s%s%s (first given at %zu:%zu)",
               describe(key, buf), where, prefix, at.line + 1, at.column + 1);
        return;
    }
    const struct key *k = find_key(keys, key);
    if (!k) {
        report_unknown(ld, key, keys, prefix);
        return;
    }
    char keypath[128];
    join_keypath(prefix, k->name, keypath, sizeof(keypath));
    loaders[k->type](ld, k, node_at(ld, pair->value), keypath);
}

static void load_section(struct loader *ld, const yaml_node_t *map, const struct key *keys,
                         const char *prefix)
{
    for (yaml_node_pair_t *pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top;
         pair++)
        load_pair(ld, map, pair, keys, prefix);
    report_missing(ld, map->start_mark, map, keys, prefix);
}

static const struct nats_auth_names config_auth_names = {
    .section = "nats",
    .user = "user",
    .password = "password",
    .ways = "user and password, token, nkey_seed or creds",
    .tls_section = "nats.tls",
    .cert = "cert",
    .key = "key",
};

/* nats: settings that are fine alone and wrong together. Checked only when every key
 * loaded, so that a secret that failed to load is not also reported missing. */
static void check_nats(struct loader *ld, const yaml_node_t *root)
{
    const yaml_node_pair_t *pair = find_pair(ld, root, "nats", 4);
    if (ld->count > 0 || !pair)
        return;
    yaml_mark_t at = node_at(ld, pair->key)->start_mark;
    struct nats_auth auth = nats_auth_from_config(&ld->st->cfg);
    char *errors[NATS_AUTH_MAX_ERRORS];
    size_t n = nats_auth_check(&auth, &config_auth_names, errors);
    for (size_t i = 0; i < n; i++) {
        report(ld, at, "%s", errors[i]);
        free(errors[i]);
    }
}

/* The value node of root.section.key, or NULL. */
static const yaml_node_t *value_at(struct loader *ld, const yaml_node_t *root, const char *section,
                                   const char *key)
{
    const yaml_node_pair_t *pair = find_pair(ld, root, section, strlen(section));
    const yaml_node_t *map = pair ? node_at(ld, pair->value) : NULL;
    if (!map || map->type != YAML_MAPPING_NODE)
        return NULL;
    pair = find_pair(ld, map, key, strlen(key));
    return pair ? node_at(ld, pair->value) : NULL;
}

/* metrics.listen is parsed here, not first when the HTTP server starts, so that --check
 * refuses what the start would. */
static void check_metrics_listen(struct loader *ld, const yaml_node_t *root)
{
    const yaml_node_t *node = value_at(ld, root, "metrics", "listen");
    struct listen_addr la;
    char *err =
        node && ld->st->cfg.metrics_listen ? listen_parse(ld->st->cfg.metrics_listen, &la) : NULL;
    if (err)
        report(ld, node->start_mark, "metrics.listen: %s", err);
    free(err);
}

/* What nats.c would take without a word and never connect with. Never quotes the URL: it
 * may hold a password. */
static const char *server_url_problem(const char *url, char *buf, size_t size)
{
    const char *ref = strstr(url, "${"), *sep = strstr(url, "://");
    if (ref) {
        snprintf(buf, size,
                 "%.*s is not expanded in a server URL (only in user, password and "
                 "token): write the URL itself",
                 (int)strcspn(ref, "}") + (strchr(ref, '}') != NULL), ref);
        return buf;
    }
    size_t n = sep ? (size_t)(sep - url) : 0;
    if (sep && !(n == 4 && strncasecmp(url, "nats", 4) == 0) &&
        !(n == 3 && strncasecmp(url, "tls", 3) == 0)) {
        snprintf(buf, size, "the scheme must be nats:// or tls://, got %.*s://",
                 n > 16 ? 16 : (int)n, url);
        return buf;
    }
    const char *host = sep ? sep + 3 : url, *end = host + strcspn(host, "/?#");
    const char *at = memrchr(host, '@', (size_t)(end - host));
    host = at ? at + 1 : host;
    const char *close = *host == '[' ? memchr(host, ']', (size_t)(end - host)) : NULL;
    const char *colon = memrchr(close ? close : host, ':', (size_t)(end - (close ? close : host)));
    const char *host_end = colon ? colon : end;
    long port = 4222;
    char digits[8] = "";
    if (colon && (size_t)(end - colon - 1) < sizeof(digits)) {
        snprintf(digits, sizeof(digits), "%.*s", (int)(end - colon - 1), colon + 1);
        char *stop;
        port = strspn(digits, "0123456789") == strlen(digits) && digits[0]
                   ? strtol(digits, &stop, 10)
                   : -1;
    } else if (colon) {
        port = -1;
    }
    if (host_end == host || (*host == '[' && !close))
        snprintf(buf, size, "no host in the server URL");
    else if (port <= 0 || port > 65535)
        snprintf(buf, size, "the port of a server URL is a number from 1 to 65535");
    else
        return NULL;
    return buf;
}

static void check_server(struct loader *ld, const yaml_node_t *node, const char *keypath)
{
    char why[160];
    /* Only what loaded as a string: anything else is reported already. */
    if (node->type == YAML_SCALAR_NODE && !is_null(node) && node->data.scalar.length > 0 &&
        server_url_problem(scalar(node), why, sizeof(why)))
        report(ld, node->start_mark, "%s: %s", keypath, why);
}

static void check_servers(struct loader *ld, const yaml_node_t *root)
{
    const yaml_node_t *node = value_at(ld, root, "nats", "servers");
    if (!node || node->type != YAML_SEQUENCE_NODE) {
        if (node)
            check_server(ld, node, "nats.servers");
        return;
    }
    size_t index = 0;
    for (yaml_node_item_t *item = node->data.sequence.items.start;
         item < node->data.sequence.items.top; item++, index++) {
        char keypath[48];
        snprintf(keypath, sizeof(keypath), "nats.servers[%zu]", index);
        check_server(ld, node_at(ld, *item), keypath);
    }
}

/* An empty file is an empty mapping: all defaults, and whatever is required is missing. */
static void load_root(struct loader *ld, const yaml_node_t *root)
{
    const yaml_mark_t file_start = {0, 0, 0};
    char buf[DESCRIBE_MAX];
    if (!root || is_null(root))
        report_missing(ld, root ? root->start_mark : file_start, NULL, config_top_keys, "");
    else if (root->type != YAML_MAPPING_NODE)
        report(ld, root->start_mark, "expected a mapping of settings, got %s", describe(root, buf));
    else {
        load_section(ld, root, config_top_keys, "");
        check_nats(ld, root);
        check_servers(ld, root);
        check_metrics_listen(ld, root);
    }
}

/* ---- The file -------------------------------------------------------------------- */

/* libyaml places reader errors (bad UTF-8) by byte offset only: count the lines to it. */
static yaml_mark_t mark_of_offset(FILE *file, size_t offset)
{
    yaml_mark_t mark = {offset, 0, 0};
    rewind(file);
    for (size_t i = 0; i < offset; i++) {
        int c = getc(file);
        if (c == EOF)
            break;
        mark.column = c == '\n' ? 0 : mark.column + 1;
        mark.line += c == '\n';
    }
    return mark;
}

static void report_syntax_error(struct loader *ld, const yaml_parser_t *parser, FILE *file)
{
    const char *problem = parser->problem ? parser->problem : "unknown error";
    const char *context = parser->context ? parser->context : "";
    if (parser->error == YAML_MEMORY_ERROR)
        fatalx("out of memory reading %s", ld->path);
    if (parser->error == YAML_READER_ERROR) {
        char value[16] = "";
        if (parser->problem_value != -1)
            snprintf(value, sizeof(value), " 0x%02X", (unsigned)parser->problem_value);
        report(ld, mark_of_offset(file, parser->problem_offset), "YAML syntax error: %s%s", problem,
               value);
        return;
    }
    report(ld, parser->problem_mark, "YAML syntax error: %s%s%s", problem, *context ? " " : "",
           context);
}

/* A second document would otherwise be ignored without a word. */
static void check_single_document(struct loader *ld, yaml_parser_t *parser, FILE *file)
{
    yaml_document_t doc;
    if (!yaml_parser_load(parser, &doc)) {
        report_syntax_error(ld, parser, file);
        return;
    }
    const yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root)
        report(ld, root->start_mark, "only one YAML document is allowed, found a second");
    yaml_document_delete(&doc);
}

static void load_file(struct loader *ld, FILE *file)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser))
        fatalx("out of memory reading %s", ld->path);
    yaml_parser_set_input_file(&parser, file);
    if (yaml_parser_load(&parser, &doc)) {
        ld->doc = &doc;
        load_root(ld, yaml_document_get_root_node(&doc));
        ld->doc = NULL;
        yaml_document_delete(&doc);
        check_single_document(ld, &parser, file);
    } else {
        report_syntax_error(ld, &parser, file);
    }
    yaml_parser_delete(&parser);
}

static FILE *open_file(const char *path, char **error)
{
    FILE *file = fopen(path, "rb");
    struct stat st;
    if (file && fstat(fileno(file), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(file);
        file = NULL;
        errno = EISDIR;
    }
    if (!file)
        *error = xasprintf("%s: cannot open: %s\n", path, strerror(errno));
    return file;
}

char *config_yaml_read(const char *path, struct config_staging *st, bool *literal_secret)
{
    struct loader ld = {.path = path, .st = st};
    char *errors = NULL;
    FILE *file = open_file(path, &errors);
    if (file) {
        load_file(&ld, file);
        fclose(file);
        errors = take_problems(&ld);
    }
    *literal_secret = ld.literal_secret;
    return errors;
}
