/* The checkpoint parser: a damaged file must be refused with a message, never crash. */
#include "offsets.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct checkpoint cp = {0};
    char *err = offsets_checkpoint_parse((const char *)data, size, &cp);
    free(err);
    offsets_checkpoint_free(&cp);
    return 0;
}
