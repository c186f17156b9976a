/* publish: the publisher against a real nats-server -js on a free loopback port (started
 * for each test, killed at its end): acks in order through the callback, duplicates,
 * no responders, ack timeouts and resends, the window as the caller keeps it, publishes
 * held while no server is up. */
#include "loop.h"
#include "metrics.h"
#include "publish.h"
#include "stream.h"

#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* The publisher's counters are the process's metrics (metrics.h); Criterion runs each test
 * in a process of its own, so they start at 0. */
#define COUNT(field) atomic_load_explicit(&metrics.field, memory_order_relaxed)

#define NATS_SERVER "/usr/sbin/nats-server"

/* ---- the server ---- */

static char tmpdir[64];
static int port;
static pid_t server = -1;
static char url[64];

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static bool accepts(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

static void start_server(void)
{
    char p[16], store[128];
    snprintf(p, sizeof(p), "%d", port);
    snprintf(store, sizeof(store), "%s/js", tmpdir);
    server = fork();
    cr_assert_geq(server, 0);
    if (server == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a crashed test leaves no server behind */
        int null = open("/dev/null", O_WRONLY);
        dup2(null, STDOUT_FILENO);
        dup2(null, STDERR_FILENO);
        execl(NATS_SERVER, NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", p, "-sd", store,
              (char *)NULL);
        _exit(127);
    }
    uint64_t deadline = loop_now_ms() + 10000;
    while (!accepts()) {
        cr_assert_lt(loop_now_ms(), deadline, "nats-server does not accept on port %d", port);
        int status;
        cr_assert_eq(waitpid(server, &status, WNOHANG), 0, "nats-server exited");
        usleep(10000);
    }
}

static void stop_server(void)
{
    if (server <= 0)
        return;
    kill(server, SIGCONT); /* in case a test left it stopped */
    kill(server, SIGKILL);
    waitpid(server, NULL, 0);
    server = -1;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void setup(void)
{
    strcpy(tmpdir, "/tmp/relay-test-publish-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir), "mkdtemp: %s", strerror(errno));
    port = free_port();
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", port);
}

static void teardown(void)
{
    stop_server();
    nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(publish, .init = setup, .fini = teardown);

/* A stream named name on subjects "<prefix>.>", made with nats.c's own JetStream API. */
static void add_stream_stored(const char *name, const char *prefix, jsStorageType storage)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    cr_assert_eq(natsConnection_ConnectTo(&nc, url), NATS_OK);
    cr_assert_eq(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    char subject[64];
    snprintf(subject, sizeof(subject), "%s.>", prefix);
    const char *subjects[] = {subject};
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    sc.Name = name;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = storage;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_AddStream(&si, js, &sc, NULL, &jerr);
    cr_assert_eq(st, NATS_OK, "js_AddStream: %s (%d)", natsStatus_GetText(st), (int)jerr);
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

static void add_stream(const char *name, const char *prefix)
{
    add_stream_stored(name, prefix, js_MemoryStorage);
}

/* ---- what the publisher reported ---- */

struct acked {
    uintptr_t cookie;
    struct publish_ack ack;
};

static struct acked acks[4096];
static size_t ack_count;

static void on_done(void *ctx, void *cookie, const struct publish_ack *ack)
{
    cr_assert_lt(ack_count, 4096);
    acks[ack_count].cookie = (uintptr_t)cookie;
    acks[ack_count].ack = *ack;
    ack_count++;
}

/* ---- running the loop ---- */

struct until {
    struct publisher *p;
    bool (*cond)(struct publisher *p, void *arg);
    void *arg;
    uint64_t deadline;
    bool met;
};

static struct publisher_set publishers; /* the relay's, which every publisher joins */

/* What relay.c's before_sleep and tick do for the publisher, and the condition. */
static void check_until(struct loop *loop, void *arg)
{
    struct until *u = arg;
    publisher_set_take_acks(&publishers);
    publisher_tick(u->p);
    if (u->cond(u->p, u->arg)) {
        u->met = true;
        loop_stop(loop);
    } else if (loop_now_ms() >= u->deadline) {
        loop_stop(loop);
    } else {
        loop_wake_within(loop, 1);
    }
}

static bool run_until(struct loop *loop, struct publisher *p,
                      bool (*cond)(struct publisher *, void *), void *arg, int64_t ms)
{
    struct until u = {p, cond, arg, loop_now_ms() + (uint64_t)ms, false};
    loop_set_before_sleep(loop, check_until, &u);
    loop_run(loop);
    loop_set_before_sleep(loop, NULL, NULL);
    return u.met;
}

static bool is_connected(struct publisher *p, void *arg)
{
    return publisher_connected(p);
}

static bool acks_at_least(struct publisher *p, void *n)
{
    return ack_count >= *(size_t *)n;
}

static bool timeouts_at_least(struct publisher *p, void *n)
{
    return COUNT(publish_timeouts) >= *(uint64_t *)n;
}

static bool reconnected(struct publisher *p, void *arg)
{
    return COUNT(nats_reconnects) > 0 && publisher_connected(p);
}

static bool no_responders_seen(struct publisher *p, void *arg)
{
    return COUNT(publish_no_responders) > 0;
}

struct fixture {
    struct loop *loop;
    struct publisher *p;
};

static struct stream_check streams; /* the relay's, as every publisher gets it */

static struct fixture connect_publisher(int64_t ack_timeout_ms)
{
    struct fixture f = {.loop = loop_create()};
    const char *servers[] = {url};
    struct publisher_options po = {.servers = servers,
                                   .server_count = 1,
                                   .name = "test",
                                   .ack_timeout_ms = ack_timeout_ms,
                                   .streams = &streams,
                                   .set = &publishers};
    char *err = NULL;
    f.p = publisher_create(&po, f.loop, on_done, NULL, &err);
    cr_assert_not_null(f.p, "publisher_create: %s", err);
    return f;
}

static void close_publisher(struct fixture *f)
{
    publisher_destroy(f->p);
    loop_destroy(f->loop);
}

/* A publish whose ack a Lua policy waits for (await_id): JetStream's refusals come back
 * to it at once instead of being retried (publish_with). */
static void publish_with(struct publisher *p, uintptr_t cookie, const char *subject, const char *id,
                         uint64_t await_id);

static void publish(struct publisher *p, uintptr_t cookie, const char *subject, const char *id)
{
    publish_with(p, cookie, subject, id, cookie * 10);
}

static void publish_with(struct publisher *p, uintptr_t cookie, const char *subject, const char *id,
                         uint64_t await_id)
{
    char data[64];
    snprintf(data, sizeof(data), "record %zu", (size_t)cookie);
    const char *headers[] = {"Kumo-Type", "Delivery"};
    struct publish_request req = {.subject = subject,
                                  .data = data,
                                  .len = strlen(data),
                                  .msg_id = id,
                                  .headers = headers,
                                  .header_count = 1,
                                  .await_id = await_id};
    char *err = NULL;
    cr_assert_eq(publisher_publish(p, (void *)cookie, &req, &err), 0, "publish: %s", err);
}

/* ---- tests ---- */

Test(publish, acks_come_in_order_with_their_sequences)
{
    start_server();
    add_stream("TEST", "t");
    struct fixture f = connect_publisher(5000);
    cr_assert(run_until(f.loop, f.p, is_connected, NULL, 5000), "never connected");
    size_t down_total = 0;
    cr_expect_eq(publisher_set_disconnected(&publishers, &down_total), 0);
    cr_expect_eq(down_total, 1);
    uint64_t since = 7;
    cr_expect_null(publisher_set_down_reason(&publishers, &since));

    enum { N = 200 };
    for (uintptr_t i = 1; i <= N; i++) {
        char id[32];
        snprintf(id, sizeof(id), "relay:seg:%zu", (size_t)i);
        publish(f.p, i, "t.delivery", id);
    }
    cr_expect_eq(publisher_in_flight(f.p), N);
    cr_expect_eq(publisher_set_in_flight(&publishers), N);
    size_t want = N;
    cr_assert(run_until(f.loop, f.p, acks_at_least, &want, 5000), "acked %zu of %d", ack_count, N);
    cr_assert_eq(ack_count, N);
    for (size_t i = 0; i < N; i++) {
        cr_expect_eq(acks[i].cookie, i + 1, "ack %zu is for cookie %zu", i, acks[i].cookie);
        cr_expect_eq(acks[i].ack.sequence, i + 1);
        cr_expect_not(acks[i].ack.duplicate);
        cr_expect_str_eq(acks[i].ack.stream, "TEST");
        cr_expect_str_eq(acks[i].ack.domain, "");
        cr_expect_eq(acks[i].ack.await_id, (i + 1) * 10);
    }
    cr_expect_eq(publisher_in_flight(f.p), 0);
    cr_expect_eq(COUNT(publishes), N);
    cr_expect_eq(COUNT(publishes_acked), N);
    cr_expect_eq(COUNT(publish_resends), 0);
    cr_expect_eq(COUNT(publish_errors), 0);
    close_publisher(&f);
}

Test(publish, a_message_id_seen_before_is_a_duplicate)
{
    start_server();
    add_stream("TEST", "t");
    struct fixture f = connect_publisher(5000);
    cr_assert(run_until(f.loop, f.p, is_connected, NULL, 5000));
    publish(f.p, 1, "t.x", "relay:seg:10");
    publish(f.p, 2, "t.x", "relay:seg:20");
    size_t want = 2;
    cr_assert(run_until(f.loop, f.p, acks_at_least, &want, 5000));
    publish(f.p, 3, "t.x", "relay:seg:10"); /* sent again, as after a restart */
    publish(f.p, 4, "t.x", NULL);           /* no id: never a duplicate */
    want = 4;
    cr_assert(run_until(f.loop, f.p, acks_at_least, &want, 5000));
    cr_expect_eq(acks[2].cookie, 3);
    cr_expect(acks[2].ack.duplicate);
    cr_expect_eq(acks[2].ack.sequence, 1, "the sequence of the copy JetStream has");
    cr_expect_eq(acks[3].cookie, 4);
    cr_expect_not(acks[3].ack.duplicate);
    cr_expect_eq(acks[3].ack.sequence, 3);
    cr_expect_eq(COUNT(publish_duplicates), 1);
    cr_expect_eq(COUNT(publishes_acked), 4);
    close_publisher(&f);
}

/* No stream listens: nats.c reports no responders and drops the reply subject, so the
 * slot waits for its ack timeout and is sent again; once a stream exists it is stored. */
Test(publish, no_responders_then_the_resend_after_the_timeout_lands)
{
    start_server();
    struct fixture f = connect_publisher(200);
    cr_assert(run_until(f.loop, f.p, is_connected, NULL, 5000));
    publish_with(f.p, 1, "late.x", "relay:seg:1", 0); /* nobody waits for this one */
    cr_assert(run_until(f.loop, f.p, no_responders_seen, NULL, 5000));
    cr_expect_eq(ack_count, 0);
    cr_expect_eq(publisher_in_flight(f.p), 1, "still in flight: it is sent again");

    add_stream("LATE", "late");
    size_t want = 1;
    cr_assert(run_until(f.loop, f.p, acks_at_least, &want, 5000), "never stored");
    cr_expect_eq(ack_count, 1);
    cr_expect_eq(acks[0].cookie, 1);
    cr_expect_str_eq(acks[0].ack.stream, "LATE");
    cr_expect_eq(acks[0].ack.sequence, 1);
    cr_expect_geq(COUNT(publish_timeouts), 1);
    cr_expect_geq(COUNT(publish_resends), 1);
    cr_expect_eq(publisher_in_flight(f.p), 0);
    close_publisher(&f);
}

/* An awaited publish (a Lua policy in client:publish) gets the refusal at once, as kumod
 * raises it in publish (crates/mod-nats), and its slot is free. */
Test(publish, no_responders_reach_an_awaited_publish_at_once)
{
    start_server();
    struct fixture f = connect_publisher(200);
    cr_assert(run_until(f.loop, f.p, is_connected, NULL, 5000));
    publish(f.p, 1, "nobody.x", "relay:seg:1");
    size_t want = 1;
    cr_assert(run_until(f.loop, f.p, acks_at_least, &want, 5000));
    cr_expect_eq(acks[0].cookie, 1);
    cr_expect_eq(acks[0].ack.await_id, 10);
    cr_expect_str_eq(acks[0].ack.error, "no responders (no stream listens on the subject)");
    cr_expect_eq(publisher_in_flight(f.p), 0);
    close_publisher(&f);
}

/* Awaited replies come on the polled inbox, where nats.c drops a "no responders" reply's
 * subject: the probes of the awaited publishes in flight name the refused one, long
 * before its ack timeout, with kumod's text; the others are acked once, not as
 * duplicates of their probes, and stored once. */
Test(publish, no_responders_among_awaited_publishes_name_the_refused_one)
{
    start_server();
    add_stream("TEST", "t");
    struct fixture f = connect_publisher(60000);
    cr_assert(run_until(f.loop, f.p, is_connected, NULL, 5000));
    enum { N = 50 };
    for (uintptr_t i = 1; i <= N; i++) {
        char id[32];
        snprintf(id, sizeof(id), "relay:seg:%zu", (size_t)i);
        publish(f.p, i, i == N / 2 ? "nobody.x" : "t.x", id);
    }
    size_t want = N;
    cr_assert(run_until(f.loop, f.p, acks_at_least, &want, 5000), "acked %zu of %d", ack_count, N);
    size_t refused = 0;
    uint64_t max_sequence = 0;
    for (size_t i = 0; i < ack_count; i++) {
        if (acks[i].ack.sequence > max_sequence)
            max_sequence = acks[i].ack.sequence;
        if (acks[i].cookie == N / 2) {
            refused++;
            cr_expect_eq(acks[i].ack.await_id, (N / 2) * 10);
            cr_expect_str_eq(acks[i].ack.error, "no responders (no stream listens on the subject)");
        } else {
            cr_expect_str_eq(acks[i].ack.error, "", "cookie %zu", acks[i].cookie);
            cr_expect_not(acks[i].ack.duplicate, "cookie %zu", acks[i].cookie);
            cr_expect_str_eq(acks[i].ack.stream, "TEST");
        }
    }
    cr_expect_eq(refused, 1);
    cr_expect_eq(max_sequence, N - 1, "each stored once: the probes were duplicates");
    cr_expect_eq(COUNT(publish_no_responders), 1);
    cr_expect_eq(COUNT(publish_timeouts), 0, "named by its probe, not by its ack timeout");
    cr_expect_eq(publisher_in_flight(f.p), 0);
    close_publisher(&f);
}

/* The server stops answering (SIGSTOP): after ack_timeout the publish goes out again
 * with the same id. When the server wakes both copies are answered; the callback runs
 * once, and JetStream stored the record once. */
Test(publish, an_ack_timeout_resends_and_the_callback_runs_once)
{
    start_server();
    add_stream("TEST", "t");
    struct fixture f = connect_publisher(100);
    cr_assert(run_until(f.loop, f.p, is_connected, NULL, 5000));
    cr_assert_eq(kill(server, SIGSTOP), 0);
    publish(f.p, 1, "t.x", "relay:seg:1");
    uint64_t two = 2;
    cr_assert(run_until(f.loop, f.p, timeouts_at_least, &two, 5000));
    cr_expect_eq(ack_count, 0);
    cr_assert_eq(kill(server, SIGCONT), 0);
    size_t want = 1;
    cr_assert(run_until(f.loop, f.p, acks_at_least, &want, 5000));
    /* Then a publish after it: its ack comes after the copies' answers. */
    publish(f.p, 2, "t.x", "relay:seg:2");
    want = 2;
    cr_assert(run_until(f.loop, f.p, acks_at_least, &want, 5000));
    cr_expect_eq(ack_count, 2, "one callback per publish, whatever the copies");
    cr_expect_eq(acks[0].cookie, 1);
    cr_expect_eq(acks[0].ack.sequence, 1);
    cr_expect_not(acks[0].ack.duplicate, "the first answer is the first copy's");
    cr_expect_eq(acks[1].cookie, 2);
    cr_expect_eq(acks[1].ack.sequence, 2, "the resent copies were not stored again");
    cr_expect_geq(COUNT(publish_resends), 2);
    close_publisher(&f);
}

/* The window is the caller's (relay.c's publishes_in_flight): publishing only while
 * fewer than max are in flight keeps it there, and slots are reused across more
 * publishes than one chunk of slots holds. */
Test(publish, a_window_kept_by_the_caller_bounds_the_publishes_in_flight)
{
    start_server();
    add_stream("TEST", "t");
    struct fixture f = connect_publisher(5000);
    cr_assert(run_until(f.loop, f.p, is_connected, NULL, 5000));
    enum { N = 3000, WINDOW = 64 };
    size_t next = 1, highest = 0;
    uint64_t deadline = loop_now_ms() + 8000;
    while (ack_count < N) {
        cr_assert_lt(loop_now_ms(), deadline, "acked %zu of %d", ack_count, N);
        while (next <= N && publisher_in_flight(f.p) < WINDOW) {
            char id[32];
            snprintf(id, sizeof(id), "relay:seg:%zu", next);
            publish(f.p, next, "t.x", id);
            next++;
        }
        if (publisher_in_flight(f.p) > highest)
            highest = publisher_in_flight(f.p);
        size_t want = ack_count + 1;
        run_until(f.loop, f.p, acks_at_least, &want, 1000);
    }
    cr_expect_eq(highest, WINDOW);
    for (size_t i = 0; i < N; i++) {
        cr_assert_eq(acks[i].cookie, i + 1);
        cr_assert_eq(acks[i].ack.sequence, i + 1);
        cr_assert_not(acks[i].ack.duplicate);
    }
    cr_expect_eq(COUNT(publish_resends), 0);
    close_publisher(&f);
}

Test(publish, larger_than_max_payload_is_refused_at_once)
{
    start_server();
    add_stream("TEST", "t");
    struct fixture f = connect_publisher(5000);
    cr_assert(run_until(f.loop, f.p, is_connected, NULL, 5000));
    size_t len = 2 * 1024 * 1024; /* the server's default max_payload is 1 MiB */
    char *big = calloc(1, len);
    struct publish_request req = {.subject = "t.x", .data = big, .len = len, .msg_id = "big"};
    char *err = NULL;
    cr_expect_eq(publisher_publish(f.p, (void *)1, &req, &err), -1);
    cr_expect_str_eq(err, "the message is larger than the server's max_payload");
    free(err);
    free(big);
    cr_expect_eq(publisher_in_flight(f.p), 0, "its slot is free again");
    publish(f.p, 2, "t.x", "small");
    size_t want = 1;
    cr_assert(run_until(f.loop, f.p, acks_at_least, &want, 5000));
    cr_expect_eq(acks[0].cookie, 2);
    close_publisher(&f);
}

/* No server yet: the publisher says why it waits, holds what is published, and sends it
 * when the server comes. */
Test(publish, publishes_wait_for_a_server_that_comes_later)
{
    struct fixture f = connect_publisher(5000);
    cr_expect_not(publisher_connected(f.p));
    size_t total = 0;
    cr_expect_eq(publisher_set_disconnected(&publishers, &total), 1);
    cr_expect_eq(total, 1);
    uint64_t since = 0;
    const char *why = publisher_set_down_reason(&publishers, &since);
    cr_assert_not_null(why);
    cr_expect_not_null(strstr(why, "Connection refused"), "why: %s", why);
    cr_expect_gt(since, 0);

    publish(f.p, 1, "t.x", "relay:seg:1");
    publish(f.p, 2, "t.x", "relay:seg:2");
    cr_expect_eq(publisher_in_flight(f.p), 2);
    cr_expect_eq(COUNT(publishes), 2);

    start_server();
    add_stream("TEST", "t");
    size_t want = 2;
    cr_assert(run_until(f.loop, f.p, acks_at_least, &want, 5000), "acked %zu", ack_count);
    cr_expect(publisher_connected(f.p));
    cr_expect_eq(acks[0].cookie, 1);
    cr_expect_eq(acks[1].cookie, 2);
    cr_expect_eq(acks[1].ack.sequence, 2);
    cr_expect_null(publisher_set_down_reason(&publishers, &since));
    close_publisher(&f);
}

Test(publish, a_server_url_with_a_password_and_no_user_is_refused)
{
    const char *servers[] = {"nats://:secret@127.0.0.1:1"};
    struct publisher_options po = {.servers = servers, .server_count = 1, .ack_timeout_ms = 1000};
    struct loop *loop = loop_create();
    char *err = NULL;
    cr_expect_null(publisher_create(&po, loop, on_done, NULL, &err));
    cr_expect_str_eq(err, "server nats://:***@127.0.0.1:1 has a password and no user name");
    free(err);
    loop_destroy(loop);
}

/* The server dies with a publish unacknowledged (nats.c never reports acks lost with a
 * connection): after the reconnect the publisher sends it again itself. */
Test(publish, a_reconnect_resends_what_is_unacknowledged)
{
    start_server();
    add_stream_stored("TEST", "t", js_FileStorage);
    struct fixture f = connect_publisher(60000); /* no timeout resend: the reconnect's */
    cr_assert(run_until(f.loop, f.p, is_connected, NULL, 5000));
    publish(f.p, 1, "t.x", "relay:seg:1");
    size_t want = 1;
    cr_assert(run_until(f.loop, f.p, acks_at_least, &want, 5000));
    cr_assert_eq(kill(server, SIGSTOP), 0);
    publish(f.p, 2, "t.x", "relay:seg:2");
    stop_server();
    start_server();
    cr_assert(run_until(f.loop, f.p, reconnected, NULL, 5000), "never reconnected");
    want = 2;
    cr_assert(run_until(f.loop, f.p, acks_at_least, &want, 5000), "not resent");
    cr_expect_eq(ack_count, 2);
    cr_expect_eq(acks[1].cookie, 2);
    cr_expect_eq(acks[1].ack.sequence, 2);
    cr_expect_not(acks[1].ack.duplicate);
    cr_expect_eq(COUNT(nats_reconnects), 1);
    cr_expect_eq(COUNT(nats_disconnects), 1);
    cr_expect_eq(COUNT(publish_resends), 1);
    cr_expect_eq(COUNT(publish_timeouts), 0);
    close_publisher(&f);
}

/* The first ack from a stream asks for its configuration on <inbox>.w.0, which the ack
 * subscription receives: a duplicate_window (2 min by default) shorter than
 * expected_max_downtime is warned about. */
Test(publish, the_first_ack_checks_the_streams_duplicate_window)
{
    char path[] = "/tmp/relay-test-publish-log-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    int saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    start_server();
    add_stream("TEST", "t");
    stream_check_configure(&streams, 10 * 60 * 1000);
    struct fixture f = connect_publisher(5000);
    cr_assert(run_until(f.loop, f.p, is_connected, NULL, 5000));
    publish(f.p, 1, "t.x", "relay:seg:1");
    size_t want = 1;
    cr_assert(run_until(f.loop, f.p, acks_at_least, &want, 5000));
    char text[4096] = "";
    const char *warning = "the stream's duplicate_window is shorter than expected_max_downtime";
    uint64_t deadline = loop_now_ms() + 5000;
    while (!strstr(text, warning) && loop_now_ms() < deadline) {
        run_until(f.loop, f.p, acks_at_least, &want, 10); /* takes the info reply */
        ssize_t n = pread(fd, text, sizeof(text) - 1, 0);
        text[n > 0 ? n : 0] = '\0';
    }
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fd);
    unlink(path);
    cr_expect_not_null(strstr(text, warning), "log: %s", text);
    cr_expect_not_null(strstr(text, "stream=TEST duplicate_window_ms=120000"), "log: %s", text);
    cr_expect_eq(ack_count, 1, "the info reply is not taken for an ack");
    close_publisher(&f);
    stream_check_free(&streams);
}
