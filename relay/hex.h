/* One hex digit's value, for the parsers of \uXXXX escapes, UUIDs and the checkpoint. */
#ifndef RELAY_HEX_H
#define RELAY_HEX_H

/* 0..15, or -1 if c is not a hex digit (either case). */
static inline int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

#endif
