/* The hook watchdog: a hook stuck past the limit is reported with the record it ran for,
 * from the watchdog's own copy of the record's id (the loop's memory may change or go
 * meanwhile), named in the poison marker, and forgotten once it returns. */
#include "hook_watchdog.h"
#include "loop.h"
#include "offsets.h"
#include "poison.h"
#include "spool.h"

#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void pause_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The watchdog's /healthz text, once it is (or is no longer) there; deadline_ms at most. */
static char *health_when(struct hook_watchdog *w, bool present, uint64_t deadline_ms)
{
    uint64_t until = loop_now_ms() + deadline_ms;
    for (;;) {
        char *h = hook_watchdog_health(w);
        if ((h != NULL) == present || loop_now_ms() >= until)
            return h;
        free(h);
        pause_ms(20);
    }
}

static char *read_marker(const char *dir)
{
    char path[512], *text = calloc(1, 512);
    snprintf(path, sizeof(path), "%s/hook-record", dir);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    cr_assert(fread(text, 1, 511, f) < 511);
    fclose(f);
    return text;
}

Test(hook_watchdog, reports_the_stuck_hooks_record_from_its_own_copy, .timeout = 30)
{
    char dir[] = "/tmp/test_hook_watchdog_XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    struct poison poison = {0};
    cr_assert_null(poison_open(&poison, dir, 0));
    struct hook_watchdog w = {0};
    hook_watchdog_start(&w, 60000, &poison);

    struct segment seg = {.id_name = strdup("20240101-000000~3")};
    struct inflight_record rec = {.segment = &seg, .start = 1234};
    char event[] = "make.kumo.q";
    hook_watchdog_set_record(&w, &rec);
    hook_watchdog_enter(&w, event);
    /* What the loop owns changes under the running hook: the watchdog must not see it. */
    memset(seg.id_name, 'X', strlen(seg.id_name));
    rec.start = 99;
    memset(event, 'Y', strlen(event));

    char *h = health_when(&w, true, HOOK_WATCHDOG_LIMIT_MS + 5000);
    cr_assert_not_null(h, "no report after the limit");
    const char *want = "s (segment=20240101-000000~3 offset=1234)";
    cr_assert(strncmp(h, "policy hook 'make.kumo.q' has been running for ", 47) == 0, "%s", h);
    cr_assert_str_eq(h + strlen(h) - strlen(want), want);
    free(h);
    char *marker = read_marker(dir);
    cr_assert_str_eq(marker, "1 1234\n20240101-000000~3");
    free(marker);

    hook_watchdog_leave(&w);
    hook_watchdog_set_record(&w, NULL);
    cr_assert_null(health_when(&w, false, 5000), "still reported after the hook returned");
    /* The mark goes once the watchdog has seen the hook return (its next check). */
    uint64_t until = loop_now_ms() + 5000;
    while (marker = read_marker(dir), *marker && loop_now_ms() < until) {
        free(marker);
        pause_ms(20);
    }
    cr_assert_str_eq(marker, "");
    free(marker);

    hook_watchdog_stop(&w);
    poison_close(&poison);
    free(seg.id_name);
    rmdir(dir);
}
