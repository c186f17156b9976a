#include "dupwindow.h"

#include "log.h"
#include "xalloc.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

enum { ANSWER_WAIT_MS = 2000 };

static int64_t floor_ms;
static size_t unanswered; /* requests sent, replies not yet taken */
static uint64_t asked_at_ms;
static char **seen; /* streams asked about; a handful at most */
static size_t seen_count;

void dupwindow_free(void)
{
    for (size_t i = 0; i < seen_count; i++)
        free(seen[i]);
    free(seen);
    seen = NULL;
    seen_count = 0;
    unanswered = 0;
}

void dupwindow_asked(uint64_t now_ms)
{
    unanswered++;
    asked_at_ms = now_ms;
}

bool dupwindow_waiting(uint64_t now_ms)
{
    return unanswered > 0 && now_ms - asked_at_ms < ANSWER_WAIT_MS;
}

void dupwindow_configure(int64_t expected_max_downtime_ms)
{
    dupwindow_free();
    floor_ms = expected_max_downtime_ms;
}

static bool remember(const char *stream)
{
    for (size_t i = 0; i < seen_count; i++)
        if (strcmp(seen[i], stream) == 0)
            return false;
    seen = xrealloc(seen, (seen_count + 1) * sizeof(*seen));
    seen[seen_count++] = xstrdup(stream);
    return true;
}

bool dupwindow_first_ack(const char *stream)
{
    /* The common case, one stream, costs one comparison per ack. */
    if (floor_ms <= 0 || !stream[0] || (seen_count > 0 && strcmp(seen[0], stream) == 0))
        return false;
    return remember(stream);
}

void dupwindow_check(json_t *info)
{
    json_t *config = json_object_get(info, "config");
    const char *name = json_string_value(json_object_get(config, "name"));
    json_t *window = json_object_get(config, "duplicate_window");
    if (!name || !json_is_integer(window))
        return;
    remember(name); /* read at start: its acks need not ask again */
    int64_t window_ms = (int64_t)(json_integer_value(window) / 1000000);
    if (floor_ms > 0 && window_ms < floor_ms)
        log_warn("the stream's duplicate_window is shorter than expected_max_downtime: after a "
                 "longer outage JetStream cannot drop copies the relay sends again (with "
                 "jetstream.stream set, the relay still skips those it finds at the stream's "
                 "tail) stream=%s duplicate_window_ms=%" PRId64
                 " expected_max_downtime_ms=%" PRId64,
                 name, window_ms, floor_ms);
}

void dupwindow_info_reply(const char *data, size_t len)
{
    if (unanswered > 0)
        unanswered--;
    json_t *info = json_loadb(data, len, 0, NULL);
    json_t *error = info ? json_object_get(info, "error") : NULL;
    if (!info || error)
        log_info("cannot read a stream's configuration to check its duplicate_window "
                 "error=\"%s\"",
                 error ? json_string_value(json_object_get(error, "description")) : "bad reply");
    else
        dupwindow_check(info);
    json_decref(info);
}
