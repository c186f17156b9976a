/* jscan, the scanner the built-in policy runs on every record (whose text comes partly
 * from remote SMTP peers): scan for the subject's keys and decode the string values. */
#include "jscan.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const keys[] = {"type", "queue", "nodeid", "recipient", "meta"};
    struct jscan_value values[5] = {{0}};
    jscan_object((const char *)data, size, keys, 5, values);
    char out[256];
    for (int i = 0; i < 5; i++)
        if (values[i].raw)
            jscan_string(&values[i], out, 1 + (size % sizeof(out)));
    return 0;
}
