/* What config.c (the schema and its defaults) and config_yaml.c (the YAML reader that
 * walks a file against the schema) share. Nothing else includes this. */
#ifndef RELAY_CONFIG_INTERNAL_H
#define RELAY_CONFIG_INTERNAL_H

#include "config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum key_type {
    KEY_SECTION,     /* a nested mapping of more keys */
    KEY_STRING,      /* a non-empty string (char *) */
    KEY_STRING_LIST, /* one string or a sequence of them (char ** and a size_t count) */
    KEY_ENUM,        /* one of a list of words, stored as the word's index (int) */
    KEY_COUNT,       /* a plain integer in [min, max] (size_t) */
    KEY_BYTES,       /* an integer with an optional KB..GiB suffix, in [min, max] (size_t) */
    KEY_DURATION,    /* a duration in [min, max] milliseconds (int64_t) */
    KEY_SECRET,      /* a string, ${ENV_VAR} or { file: path }, stored resolved (char *) */
};

struct key {
    const char *name;
    enum key_type type;
    size_t offset;             /* of the field in struct config_staging */
    size_t count_offset;       /* KEY_STRING_LIST: of its size_t count */
    const struct key *section; /* KEY_SECTION: its keys, ended by a NULL name */
    const char *const *words;  /* KEY_ENUM: the accepted words, ended by NULL */
    int64_t min, max;          /* KEY_COUNT, KEY_BYTES, KEY_DURATION */
    bool required;             /* reported when absent; has no default */
    bool file;                 /* KEY_STRING: names a file that must be readable */
    bool secret;               /* KEY_STRING file: its content is secret, others must not read
                                * it; KEY_SECRET: the value is (a password, not a user name) */
    const char *text;          /* KEY_STRING, KEY_STRING_LIST: the default, or NULL */
    int64_t value;             /* other types: the default (milliseconds, bytes, index) */
    /* What the key is for, next to its definition; config/relay.yaml says the same at
     * length. Not printed yet: nothing in config.h exposes the table. */
    // cppcheck-suppress unusedStructMember
    const char *help;
};

/* What the reader fills: the configuration, and the keys of one spool directory, which
 * become an entry of cfg.spools once the whole section is read. */
struct config_staging {
    struct config cfg;
    struct spool_source spool;
};

#define FIELD(name)       offsetof(struct config_staging, cfg.name)
#define SPOOL_FIELD(name) offsetof(struct config_staging, spool.name)

extern const struct key config_top_keys[];
extern const struct key config_spool_keys[];

void *config_field(struct config_staging *st, const struct key *k);
void config_store_string(struct config_staging *st, const struct key *k, const char *text);
/* Takes over list, whose strings are already copies. */
void config_store_list(struct config_staging *st, const struct key *k, char **list, size_t count);
void config_store_number(struct config_staging *st, const struct key *k, int64_t value);
char **config_list_of_one(const char *text);
void config_free_strings(char **list, size_t count);
void config_set_defaults(struct config_staging *st, const struct key *keys);
/* Moves *from to the end of cfg->spools. */
void config_add_spool(struct config *cfg, struct spool_source *from);

struct unit {
    const char *name;
    int64_t factor;
};

extern const struct unit config_duration_units[], config_size_units[], config_plain_units[];

/* "<digits>[spaces]<unit>" with the unit one of the table's; false past INT64_MAX. */
bool config_parse_with_unit(const char *text, const struct unit *units, int64_t *out);
/* Print n with the first unit that divides it exactly: 3600000 ms → "1h". */
void config_format_with_unit(int64_t n, const struct unit *units, char *buf, size_t size);

/* config_yaml.c: reads path into st (its defaults already set). Returns NULL or the
 * problems, one "path:line:column: message" a line. *literal_secret: a secret is
 * written in the file itself. */
char *config_yaml_read(const char *path, struct config_staging *st, bool *literal_secret);

#endif
