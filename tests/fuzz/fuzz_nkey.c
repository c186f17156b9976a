/* The nkey seed reader (a file the operator points nkey_seed at). */
#include "nkey.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char pub[NKEY_PUBLIC_LEN + 1], *err = NULL;
    if (nkey_public_from_seed((const char *)data, size, pub, &err) != 0)
        free(err);
    return 0;
}
