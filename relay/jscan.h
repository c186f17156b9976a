/* A scanner for the top level of one JSON object, for the policy's hot path.
 *
 * Parsing a whole ~900-byte record with jansson costs more than publishing it, and the
 * built-in policy needs at most a few top-level string fields. jscan walks the line once,
 * validates its structure and remembers where the wanted keys' values are; nothing is
 * allocated and nothing nested is decoded. */
#ifndef RELAY_JSCAN_H
#define RELAY_JSCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Nonzero when one of the 8 bytes in x (read as a little-endian word) is a quote, a
 * backslash or a control byte: the bytes that end a plain stretch of a JSON string. Each
 * such byte sets the top bit of its byte of the result (the classic "has a byte below n"
 * and "has a zero byte" word tricks, which never miss one and never flag a word without
 * one); strings are read a word at a time with it, in jscan.c and json_text.h. */
static inline uint64_t jscan_word_has_stop(uint64_t x)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = ones * 0x80;
    uint64_t quote = x ^ (ones * '"'), backslash = x ^ (ones * '\\');
    uint64_t control = (x - ones * 0x20) & ~x;
    quote = (quote - ones) & ~quote;
    backslash = (backslash - ones) & ~backslash;
    return (control | quote | backslash) & highs;
}

struct jscan_value {
    const char *raw; /* the value's JSON text (strings with their quotes); NULL = absent */
    size_t len;
};

/* Scan line[0..len) (a trailing newline is allowed). For each keys[i] found at the top
 * level, values[i] gets its raw text. Returns true when the line is one well-formed JSON
 * object followed only by whitespace. */
bool jscan_object(const char *line, size_t len, const char *const *keys, size_t key_count,
                  struct jscan_value *values);

/* The deepest nesting jscan reads: jansson's JSON_PARSER_MAX_DEPTH, which the Lua
 * policy's parser shares (lua_json.c checks), so both policies read the same records. */
#define JSCAN_MAX_DEPTH 2048
/* The dead-letter reason of such a record, the same in both policies. */
#define JSCAN_TOO_DEEP "nesting deeper than 2048"

/* jscan_object, and when it returns false, *too_deep tells whether it stopped because the
 * line nests deeper than JSCAN_MAX_DEPTH (before any syntax error): a dead letter must say
 * so, not "not JSON". */
bool jscan_object_depth(const char *line, size_t len, const char *const *keys, size_t key_count,
                        struct jscan_value *values, bool *too_deep);

/* jscan_object_depth without its map of quotes and backslashes: every string read byte
 * by byte, as it does for a line with a control byte or longer than 16 KiB. The fuzz target checks
 * that both read every line alike. */
bool jscan_object_bytewise(const char *line, size_t len, const char *const *keys, size_t key_count,
                           struct jscan_value *values, bool *too_deep);

/* Whether jscan may draw its map 32 bytes at a time when the CPU has AVX2 (it may unless
 * told otherwise); false: 16 at a time with SSE2. The fuzz target and the unit tests check
 * both ways against jscan_object_bytewise. */
void jscan_allow_avx2(bool allowed);

/* Decode a raw JSON string value (with quotes) into out (NUL-terminated, truncated to
 * cap-1 bytes). Returns the decoded length, or -1 if value is not a string. */
long jscan_string(const struct jscan_value *value, char *out, size_t cap);

/* The end of the JSON number, or of the literal word[0..n) ("true", "false", "null"), that
 * starts at p, or NULL if none starts there: the grammar jscan_object reads, for readers
 * of other small JSON texts (publish_reply.c). */
const char *jscan_number_end(const char *p, const char *end);
const char *jscan_literal_end(const char *p, const char *end, const char *word, size_t n);

#endif
