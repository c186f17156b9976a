/* The Lua policy through its seam (policy_env) with a fake publisher: what
 * should_enqueue_log_record, get_queue_config and a queue's constructor make of a record
 * (the verdict, and each publish with its subject, payload and records), and a constructor
 * that raises: the record is kept for a retry, nothing published. */
#include "config.h"
#include "loop.h"
#include "offsets.h"
#include "policy.h"
#include "segment.h"
#include "spool.h"

#include <criterion/criterion.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char POLICY[] =
    "kumo.on('init', function()\n"
    "  nats = kumo.nats.connect { servers = { '127.0.0.1:1' } }\n" /* nothing listens */
    "end)\n"
    "kumo.on('should_enqueue_log_record', function(msg)\n"
    "  return not msg:get_data():find('Reception', 1, true)\n"
    "end)\n"
    "kumo.on('get_queue_config', function(domain)\n"
    "  return kumo.make_queue_config { protocol = { custom_lua = { constructor = 'make.nats' } } "
    "}\n"
    "end)\n"
    "kumo.on('make.nats', function()\n"
    "  if message:get_data():find('Boom', 1, true) then error('boom') end\n"
    "  nats:publish { subject = 'kumo.out', payload = message:get_data(), await_ack = false }\n"
    "end)\n";

/* What the fake publisher was given. */
struct sent {
    size_t count;
    char subject[64];
    char data[256];
    struct inflight_record *record;
    size_t record_count;
    bool own_connection; /* via the policy's connection, not the relay's */
};

static int fake_publish(void *ctx, struct inflight_record *const *records, size_t count,
                        const struct policy_publish *msg, char **err)
{
    struct sent *s = ctx;
    s->count++;
    snprintf(s->subject, sizeof(s->subject), "%s", msg->subject);
    snprintf(s->data, sizeof(s->data), "%.*s", (int)msg->len, msg->data);
    s->record = records[0];
    s->record_count = count;
    s->own_connection = msg->via != NULL;
    return 0;
}

static void no_resolve(void *ctx, struct inflight_record *rec, enum policy_verdict verdict,
                       enum deadletter_reason kind, const char *reason, const char *data,
                       size_t len)
{
}

static void no_done(void *ctx, void *cookie, const struct publish_ack *ack)
{
}

struct fixture {
    char dir[64];
    struct config cfg;
    struct loop *loop;
    struct policy *policy;
    struct sent sent;
    struct segment seg;
};

static void start(struct fixture *f)
{
    strcpy(f->dir, "/tmp/test_policy_lua_XXXXXX");
    cr_assert_not_null(mkdtemp(f->dir));
    char path[128], yaml[512];
    snprintf(path, sizeof(path), "%s/policy.lua", f->dir);
    FILE *p = fopen(path, "w");
    cr_assert_not_null(p);
    fputs(POLICY, p);
    fclose(p);
    snprintf(yaml, sizeof(yaml),
             "spool: { dir: %s }\nstate_dir: %s\nnats: { servers: nats://127.0.0.1:1 }\n"
             "policy: { script: %s }\n",
             f->dir, f->dir, path);
    snprintf(path, sizeof(path), "%s/relay.yaml", f->dir);
    p = fopen(path, "w");
    cr_assert_not_null(p);
    fputs(yaml, p);
    fclose(p);
    char *err = config_load(path, &f->cfg);
    cr_assert_null(err, "%s", err);
    f->loop = loop_create();
    struct policy_env env = {
        .loop = f->loop,
        .ctx = &f->sent,
        .publish = fake_publish,
        .resolve = no_resolve,
        .publish_done = no_done,
    };
    f->policy = policy_create(&f->cfg, &env, &err);
    cr_assert_not_null(f->policy, "%s", err);
    f->seg.id_name = "20240101-000000";
}

static void stop(struct fixture *f)
{
    policy_destroy(f->policy);
    loop_destroy(f->loop);
    config_free(&f->cfg);
    char path[128];
    snprintf(path, sizeof(path), "%s/policy.lua", f->dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/relay.yaml", f->dir);
    unlink(path);
    rmdir(f->dir);
}

static enum policy_verdict handle(struct fixture *f, struct inflight_record *rec, const char *line,
                                  struct policy_reason *reason)
{
    struct segment_record sr = {
        .data = line, .len = strlen(line), .start = rec->start, .end = rec->start + strlen(line)};
    memset(&f->sent, 0, sizeof(f->sent));
    *reason = (struct policy_reason){0};
    return policy_handle(f->policy, rec, &sr, reason);
}

Test(policy_lua, publishes_drops_and_retries_as_the_policy_says)
{
    struct fixture f = {0};
    start(&f);
    struct policy_reason reason;

    struct inflight_record delivery = {.segment = &f.seg, .start = 0};
    const char *line = "{\"type\":\"Delivery\",\"queue\":\"nats\"}\n";
    cr_assert_eq(handle(&f, &delivery, line, &reason), POLICY_PUBLISHED);
    cr_assert_eq(f.sent.count, 1);
    cr_assert_str_eq(f.sent.subject, "kumo.out");
    cr_assert_str_eq(f.sent.data, line);
    cr_assert_eq(f.sent.record, &delivery);
    cr_assert_eq(f.sent.record_count, 1);
    cr_assert(f.sent.own_connection, "published through the relay's connection");

    struct inflight_record reception = {.segment = &f.seg, .start = 40};
    cr_assert_eq(handle(&f, &reception, "{\"type\":\"Reception\"}\n", &reason), POLICY_DROPPED);
    cr_assert_eq(f.sent.count, 0);

    struct inflight_record boom = {.segment = &f.seg, .start = 80};
    cr_assert_eq(handle(&f, &boom, "{\"type\":\"Boom\"}\n", &reason), POLICY_DEFERRED);
    cr_assert_eq(f.sent.count, 0);
    cr_assert_null(reason.text);
    cr_assert_eq(policy_in_flight(f.policy), 0);
    stop(&f);
}
