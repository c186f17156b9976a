/* config_load on arbitrary YAML: every error path, every key type, secrets included. */
#include "config.h"
#include "log.h"

#include "fuzz_util.h"

#include <stdlib.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    log_set_level(LOG_LEVEL_ERROR); /* the permission warnings would flood the output */
    setenv("KNR_FUZZ_SECRET", "value", 1);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = fuzz_memfd(data, size, path);
    struct config cfg;
    char *errors = config_load(path, &cfg);
    if (errors)
        free(errors);
    else
        config_free(&cfg);
    close(fd);
    return 0;
}
