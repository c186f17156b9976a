/* publish_reply, which reads every JetStream ack: its scanner of flat objects must take
 * exactly the texts jscan takes and find the same members, and a reply of any shape
 * (publish_reply_classify, with its substring reading of what is not JSON) must leave a
 * NUL-terminated detail and domain. */
#include "jscan.h"
#include "publish_internal.h"
#include "publish_reply.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    static const char *const keys[] = {"stream", "seq", "duplicate", "domain", "type", "count"};
    struct jscan_value v[6];
    bool want = jscan_object(text, size, keys, 6, v);
    struct publish_reply r;
    if (publish_reply_parse(text, size, &r) != want)
        abort();
    if (want) {
        char stream[128] = "";
        if (v[0].raw && v[0].raw[0] == '"')
            jscan_string(&v[0], stream, sizeof(stream));
        if (strcmp(r.stream, stream) != 0 ||
            strnlen(r.domain, sizeof(r.domain)) == sizeof(r.domain) ||
            strnlen(r.description, sizeof(r.description)) == sizeof(r.description))
            abort();
        if (r.duplicate != (v[2].raw && v[2].len == 4 && memcmp(v[2].raw, "true", 4) == 0))
            abort();
    }
    struct reply ev = {0};
    publish_reply_classify(text, size, &ev);
    if (strnlen(ev.detail, sizeof(ev.detail)) == sizeof(ev.detail) ||
        strnlen(ev.domain, sizeof(ev.domain)) == sizeof(ev.domain))
        abort();
    return 0;
}
