/* Subject templates: compile the first line of the input, render it with the following
 * lines as the field values (type, queue, domain, ...) into a buffer whose size the last
 * byte chooses, and split the queue line as KumoMTA does. */
#include "subject.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t cap = 1 + data[size - 1] * 2;
    char *text = malloc(size);
    memcpy(text, data, size - 1);
    text[size - 1] = '\0';
    struct subject_values values = {{0}};
    char *line = strchr(text, '\n');
    if (line)
        *line++ = '\0';
    for (int f = 0; f < SUBJECT_FIELD_COUNT && line; f++) {
        values.field[f] = line;
        line = strchr(line, '\n');
        if (line)
            *line++ = '\0';
    }
    struct subject_template tpl;
    char *err = subject_compile(text, &tpl);
    if (err) {
        free(err);
    } else {
        char *out = malloc(cap);
        long n = subject_render(&tpl, &values, out, cap);
        if (n >= (long)cap || (n >= 0 && strlen(out) != (size_t)n))
            abort();
        free(out);
        subject_free(&tpl);
    }
    const char *queue =
        values.field[SUBJECT_FIELD_QUEUE] ? values.field[SUBJECT_FIELD_QUEUE] : text;
    char *buf = malloc(strlen(queue) + 4);
    struct queue_parts parts;
    subject_parse_queue(queue, buf, &parts);
    free(buf);
    char token[64];
    subject_token(queue, token, sizeof(token));
    free(text);
    return 0;
}
