/* The line framer of the segment reader on a plain segment that grows in two steps: the
 * first input byte says where the file is cut, the second how long a record may be, the
 * third whether the segment starts with a header to strip. */
#include "segment.h"

#include "fuzz_util.h"

#include <stdlib.h>
#include <string.h>

static void drain(struct segment_reader *r, uint64_t *last_end)
{
    struct segment_record rec;
    enum segment_read st;
    while ((st = segment_reader_next(r, &rec)) == SEGMENT_RECORD) {
        if (rec.end < rec.start || rec.start < *last_end)
            abort(); /* records go forward */
        if (!rec.oversize && (rec.len == 0 || rec.data[rec.len - 1] != '\n'))
            abort(); /* a record is a whole line */
        *last_end = rec.end;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    size_t cut = (size - 3) * data[0] / 255, max_record = 1024 + 64 * data[1];
    bool header = data[2] & 1;
    data += 3;
    size -= 3;
    char path[64], *err = NULL;
    int fd = fuzz_memfd(data, cut, path);
    struct segment_reader *r = segment_reader_open(path, 0, max_record, &err);
    if (!r) {
        free(err);
        close(fd);
        return 0;
    }
    if (header)
        segment_reader_set_header(r, "{\"header\":true}\n");
    uint64_t last_end = 0;
    drain(r, &last_end);
    fuzz_append(fd, data + cut, size - cut);
    drain(r, &last_end);
    struct segment_tail tail;
    segment_reader_tail(r, &tail);
    segment_reader_close(r);
    close(fd);
    return 0;
}
