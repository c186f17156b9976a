/* jscan, the scanner the built-in policy runs on every record (whose text comes partly
 * from remote SMTP peers): scan for the subject's keys and decode the string values.
 * Checked against its own byte-by-byte scan (its map of quotes and backslashes must change nothing)
 * and against jansson: an object jansson accepts (nested less deeply than jscan's limit) must scan,
 * and the value found for a key must be what jansson reads there. */
#include "jscan.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static size_t brackets(const uint8_t *data, size_t size)
{
    size_t n = 0;
    for (size_t i = 0; i < size; i++)
        n += data[i] == '[' || data[i] == '{';
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const keys[] = {"type", "queue", "nodeid", "recipient", "meta"};
    struct jscan_value values[5] = {{0}};
    bool too_deep;
    /* The map drawn 16 bytes at a time on every other input, 32 (AVX2, when the CPU has
     * it) on the rest. */
    jscan_allow_avx2(size % 2 == 0);
    bool scanned = jscan_object_depth((const char *)data, size, keys, 5, values, &too_deep);
    /* The map is a shortcut: the byte-by-byte scan must read the line alike. */
    struct jscan_value slow[5];
    bool slow_too_deep;
    if (jscan_object_bytewise((const char *)data, size, keys, 5, slow, &slow_too_deep) != scanned ||
        slow_too_deep != too_deep)
        abort();
    for (int i = 0; scanned && i < 5; i++)
        if (slow[i].raw != values[i].raw || slow[i].len != values[i].len)
            abort();
    char out[256];
    for (int i = 0; i < 5; i++)
        if (values[i].raw)
            jscan_string(&values[i], out, 1 + (size % sizeof(out)));

    /* jansson takes a NUL byte right after a number for the end of the number and reads
     * on ({"a":1<NUL>} is {"a":1} to it); jscan rightly refuses. Compare only without. */
    if (memchr(data, '\0', size))
        return 0;
    json_t *root = json_loadb((const char *)data, size, 0, NULL);
    if (json_is_object(root) && brackets(data, size) < 100 && !scanned)
        abort(); /* jansson read an object that jscan refused */
    /* Whatever member jscan picked (the first of duplicates, by design), its raw text is
     * one JSON value, and a string one decodes as jansson decodes it. */
    for (int i = 0; scanned && i < 5; i++) {
        json_t *v = values[i].raw ? json_loadb(values[i].raw, values[i].len,
                                               JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL)
                                  : NULL;
        if (values[i].raw && !v && json_is_object(root))
            abort(); /* jscan cut a member's value short or long */
        if (json_is_string(v) && json_string_length(v) < sizeof(out) &&
            (jscan_string(&values[i], out, sizeof(out)) != (long)json_string_length(v) ||
             memcmp(out, json_string_value(v), json_string_length(v)) != 0))
            abort(); /* decoded otherwise than jansson */
        json_decref(v);
    }
    json_decref(root);
    return 0;
}
