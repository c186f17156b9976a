/* JSON <-> Lua values, for kumo.serde and the message's log_record. Parsing (lua_json.c)
 * builds Lua values straight from the text, and hands what it is not sure of to jansson;
 * encoding (lua_json_encode.c) writes the text directly (sorted keys, compact or pretty,
 * shortest floats). */
#ifndef RELAY_LUA_JSON_H
#define RELAY_LUA_JSON_H

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Push the Lua value of a JSON text (see lua_kumo_push_json). Returns 0, or -1 with *err
 * (malloc'd, "<reason> at line L column C") and nothing pushed. */
int lua_json_push(lua_State *L, const char *text, size_t len, char **err);
/* The two halves of lua_json_push. The direct parser pushes the value and returns true,
 * or pushes nothing and returns false when it is not sure of the text; jansson then gives
 * the same values or the error (and is the reference the tests and the fuzzer compare the
 * direct parser with). */
bool lua_json_push_direct(lua_State *L, const char *text, size_t len);
int lua_json_push_reference(lua_State *L, const char *text, size_t len, char **err);

/* A member of a top-level JSON object, by offsets into its text. */
struct lua_json_member {
    uint32_t key;     /* the key's opening quote */
    uint32_t key_len; /* raw bytes between its quotes */
    uint32_t value;   /* the value's first byte */
    bool escaped;     /* the key has escapes: compare it decoded */
};
/* Is text one JSON object that lua_json_push_direct parses? Pushes nothing; the first
 * *count of *members (an array of *cap, grown with realloc and kept for the next call) say
 * where each member is, in text order, duplicates included. The log record is read this
 * way, a member at a time (lua_record.c). */
bool lua_json_scan_object(const char *text, size_t len, struct lua_json_member **members,
                          size_t *cap, size_t *count);
/* Whether lua_json_scan_object (lua_json_check.c) may draw its map 32 bytes at a time when
 * the CPU has AVX2 (it may unless told otherwise); false: 16 at a time with SSE2. For the
 * fuzz target and the unit tests, which check both ways. */
void lua_json_check_allow_avx2(bool allowed);
/* Push the value starting at text[offset] (of a text lua_json_scan_object accepted) as
 * lua_json_push_direct does; false (nothing pushed) if it cannot. */
bool lua_json_push_at(lua_State *L, const char *text, size_t len, size_t offset);

/* kumo.serde.json_encode(value), json_encode_pretty(value) and json_parse(text), as
 * lua_CFunctions. json_parse accepts //, # and block comments, as kumod's does
 * (json_comments). */
int lua_json_encode(lua_State *L);
int lua_json_encode_pretty(lua_State *L);
int lua_json_parse(lua_State *L);

/* Blank out //, # and block comments outside strings, in place (newlines kept). */
void lua_json_strip_comments(char *s, size_t len);

/* Give the table at idx the array metatable (what a JSON array parses to), or test for it:
 * such a table encodes as an array even when empty. */
void lua_json_mark_array(lua_State *L, int idx);
bool lua_json_is_array(lua_State *L, int idx);

#endif
