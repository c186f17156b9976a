/* The one-of-each helpers: JSON escapes, the durable file replace, the jitter source. */
#include "atomicfile.h"
#include "rng.h"
#include "utf8.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void expect_escape(unsigned char c, const char *want)
{
    char out[6];
    size_t n = json_escape_ascii(c, out);
    cr_assert_eq(n, strlen(want), "byte 0x%02x: %zu bytes", c, n);
    cr_assert(memcmp(out, want, n) == 0, "byte 0x%02x: %.*s, want %s", c, (int)n, out, want);
}

Test(json_escape, every_ascii_byte)
{
    expect_escape('"', "\\\"");
    expect_escape('\\', "\\\\");
    expect_escape('\n', "\\n");
    expect_escape('\r', "\\r");
    expect_escape('\t', "\\t");
    expect_escape('\b', "\\b");
    expect_escape('\f', "\\f");
    expect_escape(0x00, "\\u0000");
    expect_escape(0x1f, "\\u001f");
    expect_escape(0x7f, "\\u007f");
    for (unsigned c = 0x20; c < 0x7f; c++)
        if (c != '"' && c != '\\')
            expect_escape((unsigned char)c, "");
}

static char *make_dir(void)
{
    char *dir = strdup("/tmp/test_util.XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    return dir;
}

static char *read_file(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    static char buf[256];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

Test(atomicfile, replaces_and_leaves_no_temporary)
{
    char *dir = make_dir();
    const struct atomicfile f = {.dir = dir, .name = "mark", .tmp_name = ".mark.tmp", .mode = 0640};
    cr_assert_null(atomicfile_write(&f, "one\n", 4));
    cr_assert_null(atomicfile_write(&f, "two\n", 4));
    cr_assert_str_eq(read_file(dir, "mark"), "two\n");
    cr_assert_null(read_file(dir, ".mark.tmp"));
    char path[512];
    snprintf(path, sizeof(path), "%s/mark", dir);
    unlink(path);
    rmdir(dir);
    free(dir);
}

Test(atomicfile, exclusive_and_read_only)
{
    char *dir = make_dir();
    const struct atomicfile f = {.dir = dir,
                                 .name = "seg",
                                 .tmp_name = ".seg",
                                 .mode = 0644,
                                 .final_mode = 0444,
                                 .exclusive = true};
    char tmp[512], path[512];
    snprintf(tmp, sizeof(tmp), "%s/.seg", dir);
    snprintf(path, sizeof(path), "%s/seg", dir);
    FILE *other = fopen(tmp, "w"); /* another writer's temporary file */
    fclose(other);
    char *err = atomicfile_write(&f, "x", 1);
    cr_assert_not_null(err);
    cr_assert(strstr(err, "cannot create ") == err, "%s", err);
    free(err);
    cr_assert_not_null(read_file(dir, ".seg"), "another writer's file is not removed");
    unlink(tmp);
    cr_assert_null(atomicfile_write(&f, "x", 1));
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0444);
    unlink(path);
    rmdir(dir);
    free(dir);
}

Test(rng, bounds)
{
    for (int i = 0; i < 10000; i++) {
        cr_assert_lt(rng_below(7), 7);
        double u = rng_unit();
        cr_assert(u >= 0 && u < 1);
    }
    cr_assert_eq(rng_below(0), 0);
}

Test(rng, seeds_differ)
{
    /* Seeded from the kernel, not a constant: two seedings (as two hosts) draw apart. */
    rng_seed();
    uint64_t a = rng_next();
    rng_seed();
    uint64_t b = rng_next();
    cr_assert_neq(a, b);
}
