#include "loop.h"

#include "log.h"
#include "xalloc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

struct watch {
    int fd;
    bool is_timer;
    loop_fd_fn fn;
    loop_hook_fn timer_fn;
    void *arg;
    struct watch *next;
};

struct loop {
    int epfd;
    bool stopped;
    int wake_within_ms;
    struct watch *watches;
    loop_hook_fn before_sleep;
    void *before_sleep_arg;
};

uint64_t loop_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct loop *loop_create(void)
{
    struct loop *loop = xcalloc(1, sizeof(*loop));
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (loop->epfd < 0)
        fatalx("epoll_create1: %s", strerror(errno));
    loop->wake_within_ms = -1;
    return loop;
}

void loop_destroy(struct loop *loop)
{
    while (loop->watches) {
        struct watch *w = loop->watches;
        loop->watches = w->next;
        if (w->is_timer)
            close(w->fd);
        free(w);
    }
    close(loop->epfd);
    free(loop);
}

static struct watch *add_watch(struct loop *loop, int fd, uint32_t events)
{
    struct watch *w = xcalloc(1, sizeof(*w));
    w->fd = fd;
    struct epoll_event ev = {.events = events, .data.ptr = w};
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        free(w);
        return NULL;
    }
    w->next = loop->watches;
    loop->watches = w;
    return w;
}

int loop_add_fd(struct loop *loop, int fd, uint32_t events, loop_fd_fn fn, void *arg)
{
    struct watch *w = add_watch(loop, fd, events);
    if (!w)
        return -1;
    w->fn = fn;
    w->arg = arg;
    return 0;
}

void loop_del_fd(struct loop *loop, int fd)
{
    for (struct watch **p = &loop->watches; *p; p = &(*p)->next) {
        if ((*p)->fd == fd) {
            struct watch *w = *p;
            *p = w->next;
            epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, NULL);
            if (w->is_timer)
                close(fd);
            free(w);
            return;
        }
    }
}

int loop_add_timer(struct loop *loop, uint64_t interval_ms, loop_hook_fn fn, void *arg)
{
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (fd < 0)
        return -1;
    struct timespec every = {(time_t)(interval_ms / 1000), (long)(interval_ms % 1000) * 1000000};
    struct itimerspec spec = {every, every};
    struct watch *w =
        timerfd_settime(fd, 0, &spec, NULL) == 0 ? add_watch(loop, fd, EPOLLIN) : NULL;
    if (!w) {
        close(fd);
        return -1;
    }
    w->is_timer = true;
    w->timer_fn = fn;
    w->arg = arg;
    return fd;
}

void loop_del_timer(struct loop *loop, int timer_fd)
{
    loop_del_fd(loop, timer_fd);
}

void loop_set_before_sleep(struct loop *loop, loop_hook_fn fn, void *arg)
{
    loop->before_sleep = fn;
    loop->before_sleep_arg = arg;
}

void loop_stop(struct loop *loop)
{
    loop->stopped = true;
}

void loop_wake_within(struct loop *loop, int ms)
{
    if (loop->wake_within_ms < 0 || ms < loop->wake_within_ms)
        loop->wake_within_ms = ms;
}

static void dispatch(struct loop *loop, struct watch *w, uint32_t events)
{
    if (w->is_timer) {
        uint64_t expirations;
        if (read(w->fd, &expirations, sizeof(expirations)) > 0)
            w->timer_fn(loop, w->arg);
        return;
    }
    w->fn(loop, w->fd, events, w->arg);
}

void loop_run(struct loop *loop)
{
    loop->stopped = false;
    while (!loop->stopped) {
        if (loop->before_sleep)
            loop->before_sleep(loop, loop->before_sleep_arg);
        if (loop->stopped)
            break;
        struct epoll_event events[32];
        int timeout = loop->wake_within_ms;
        loop->wake_within_ms = -1;
        int n = epoll_wait(loop->epfd, events, 32, timeout);
        if (n < 0 && errno != EINTR)
            fatalx("epoll_wait: %s", strerror(errno));
        /* A callback may delete a later watch of this batch: look each one up again. */
        for (int i = 0; i < n; i++) {
            struct watch *target = events[i].data.ptr;
            for (struct watch *w = loop->watches; w; w = w->next) {
                if (w == target) {
                    dispatch(loop, w, events[i].events);
                    break;
                }
            }
        }
    }
}
