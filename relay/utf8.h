/* UTF-8 as JSON parsers accept it (RFC 3629): no overlong forms, no UTF-16 surrogates, no
 * code point past U+10FFFF. */
#ifndef RELAY_UTF8_H
#define RELAY_UTF8_H

#include <stddef.h>

/* Length of the valid UTF-8 sequence that starts at p (a byte of 0x80 or more), at most
 * left bytes long; 0 if it is not valid. */
size_t utf8_sequence(const unsigned char *p, size_t left);

/* Writes code point cp (at most U+10FFFF) as UTF-8 into out (4 bytes of room); returns the
 * bytes written. */
size_t utf8_encode(unsigned cp, char *out);

/* The escape in a JSON string of an ASCII byte that cannot stand there as is ('"', '\\',
 * a control, DEL), into out (6 bytes of room): the short form where JSON has one (\n, \t,
 * ...) like serde_json, \u00XX otherwise. Returns its length, 0 for a byte that needs none.
 * Whether DEL is escaped is the caller's choice (JSON allows it bare). */
size_t json_escape_ascii(unsigned char c, char *out);

#endif
