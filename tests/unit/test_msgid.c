/* msgid: the message-id contract, formatted and read back with names that hold the
 * separators themselves. */
#include "msgid.h"

#include <criterion/criterion.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *names[] = {
    "log.20260101-000000",
    "a:b",
    "a:1",
    "a:1:2",
    ":",
    "x~3",
    "x~",
    "~7",
    "x~03",
    "with space",
    "caf\xc3\xa9 \xe2\x9c\x93",
    "1234",
    "0a1b2c3d:20260101", /* what a second directory's segment looks like */
    "0a1b2c3d:a:~5:b 9",
};

static const char *relay_ids[] = {"host-1", "h:1", "r~1", "caf\xc3\xa9"};

/* The reading that gives back exactly what was formatted is among the readings. */
static void expect_round_trip(const char *relay_id, const char *name, uint32_t generation,
                              uint64_t end, bool has_index, uint32_t index)
{
    char *id_name = msgid_id_name(name, generation);
    char id[MSGID_MAX];
    char want[MSGID_MAX];
    size_t len = msgid_format(id, sizeof(id), relay_id, id_name, end, has_index, index);
    if (has_index)
        snprintf(want, sizeof(want), "%s:%s:%" PRIu64 ":%u", relay_id, id_name, end, index);
    else
        snprintf(want, sizeof(want), "%s:%s:%" PRIu64, relay_id, id_name, end);
    cr_assert_str_eq(id, want, "the format is the one of every id already in streams");
    cr_assert_eq(len, strlen(want));
    cr_assert(msgid_is_ours(id, relay_id));

    struct msgid_reading r[MSGID_READINGS];
    size_t n = msgid_parse(id, relay_id, r);
    bool found = false;
    for (size_t i = 0; i < n; i++)
        found |= r[i].name_len == strlen(name) && memcmp(r[i].name, name, r[i].name_len) == 0 &&
                 r[i].generation == generation && r[i].end == end && r[i].has_index == has_index &&
                 (!has_index || r[i].index == index);
    cr_assert(found, "%s does not read back as (%s, %u, %" PRIu64 ")", id, name, generation, end);
    free(id_name);
}

Test(msgid, round_trips_with_odd_names)
{
    const uint64_t ends[] = {0, 1, 10, 123456789, UINT64_MAX};
    const uint32_t generations[] = {0, 1, 12, UINT32_MAX};
    for (size_t a = 0; a < sizeof(relay_ids) / sizeof(*relay_ids); a++)
        for (size_t b = 0; b < sizeof(names) / sizeof(*names); b++)
            for (size_t c = 0; c < sizeof(generations) / sizeof(*generations); c++)
                for (size_t d = 0; d < sizeof(ends) / sizeof(*ends); d++) {
                    expect_round_trip(relay_ids[a], names[b], generations[c], ends[d], false, 0);
                    expect_round_trip(relay_ids[a], names[b], generations[c], ends[d], true, 3);
                    expect_round_trip(relay_ids[a], names[b], generations[c], ends[d], true,
                                      UINT32_MAX);
                }
}

Test(msgid, the_first_reading_is_the_plain_one)
{
    struct msgid_reading r[MSGID_READINGS];
    cr_assert_eq(msgid_parse("h:seg:42", "h", r), 1);
    cr_assert_eq(r[0].name_len, 3);
    cr_assert_eq(r[0].end, 42);
    cr_assert_not(r[0].has_index);

    /* "h:a~2:5:1": a~2 or a (generation 2), end 5 and index 1, or a~2:5 at end 1. */
    cr_assert_eq(msgid_parse("h:a~2:5:1", "h", r), 3);
    cr_assert_eq(r[0].name_len, 5); /* "a~2:5", end 1 */
    cr_assert_eq(r[0].end, 1);
    cr_assert_eq(r[1].name_len, 3); /* "a~2", end 5, index 1 */
    cr_assert(r[1].has_index);
    cr_assert_eq(r[2].name_len, 1); /* "a", generation 2 */
    cr_assert_eq(r[2].generation, 2);
}

Test(msgid, others_ids_and_malformed_ones)
{
    struct msgid_reading r[MSGID_READINGS];
    cr_assert_not(msgid_is_ours("host-10:seg:1", "host-1"));
    cr_assert_not(msgid_is_ours("host-1", "host-1"));
    cr_assert_eq(msgid_parse("host-10:seg:1", "host-1", r), 0);
    cr_assert_eq(msgid_parse("h:seg", "h", r), 0, "no end offset");
    cr_assert_eq(msgid_parse("h::5", "h", r), 0, "no segment name");
    cr_assert_eq(msgid_parse("h:seg:05", "h", r), 0, "not as formatted");
    cr_assert_eq(msgid_parse("h:seg:18446744073709551616", "h", r), 0, "past 64 bits");
    cr_assert_eq(msgid_parse("h:x~0:5", "h", r), 1, "generation 0 is never written");
    cr_assert_eq(r[0].generation, 0);
}

Test(msgid, segment_names_and_tags)
{
    char *first = msgid_segment_name("/var/log/kumo", 0, "20260101");
    cr_assert_str_eq(first, "20260101");
    char *second = msgid_segment_name("/var/log/kumo", 1, "20260101");
    char want[64];
    snprintf(want, sizeof(want), "%08x:20260101", msgid_dir_tag("/var/log/kumo"));
    cr_assert_str_eq(second, want);
    /* FNV-1a 32 of the path: in every id of a second directory already in streams. */
    cr_assert_eq(msgid_dir_tag(""), 0x811c9dc5u);
    cr_assert_eq(msgid_dir_tag("a"), 0xe40c292cu);
    free(first);
    free(second);
    char *gen = msgid_id_name("a:b", 4);
    cr_assert_str_eq(gen, "a:b~4");
    free(gen);
}

Test(msgid, format_cuts_like_snprintf)
{
    char small[8];
    size_t len = msgid_format(small, sizeof(small), "relay", "segment", 12345, true, 6);
    cr_assert_eq(len, strlen("relay:segment:12345:6"));
    cr_assert_str_eq(small, "relay:s");
}

Test(msgid, hash_is_stable)
{
    uint64_t a[2], b[2], c[2];
    msgid_hash128("h", "seg", 42, a);
    msgid_hash128("h", "seg", 42, b);
    msgid_hash128("hs", "eg", 42, c);
    cr_assert(a[0] == b[0] && a[1] == b[1]);
    cr_assert(a[0] != c[0] || a[1] != c[1], "the NULs keep the parts apart");
}
