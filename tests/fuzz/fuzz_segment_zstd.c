/* The zstd side of the segment reader: the input is the compressed segment (the zstd
 * magic is put in front when it is missing, so every input takes the zstd path), read as
 * it grows in two steps like a live segment; the first byte says where it is cut. */
#include "segment.h"

#include "fuzz_util.h"

#include <stdlib.h>
#include <string.h>

static const uint8_t magic[4] = {0x28, 0xb5, 0x2f, 0xfd};

static void drain(struct segment_reader *r)
{
    struct segment_record rec;
    uint64_t last_end = 0;
    while (segment_reader_next(r, &rec) == SEGMENT_RECORD) {
        if (rec.end < rec.start || rec.start < last_end)
            abort();
        last_end = rec.end;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t cut = (size - 1) * data[0] / 255;
    data++;
    size--;
    char path[64], *err = NULL;
    int fd = fuzz_memfd(magic, size >= 4 && memcmp(data, magic, 4) == 0 ? 0 : 4, path);
    fuzz_append(fd, data, cut);
    struct segment_reader *r = segment_reader_open(path, 0, 64 * 1024, &err);
    if (!r) {
        free(err);
        close(fd);
        return 0;
    }
    drain(r);
    fuzz_append(fd, data + cut, size - cut);
    drain(r);
    struct segment_tail tail;
    segment_reader_tail(r, &tail);
    segment_reader_close(r);
    close(fd);
    return 0;
}
