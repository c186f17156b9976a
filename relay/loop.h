/* The event loop: epoll over a few file descriptors, periodic timers on timerfd, and a
 * before-sleep hook. It knows nothing about the relay. */
#ifndef RELAY_LOOP_H
#define RELAY_LOOP_H

#include <stdbool.h>
#include <stdint.h>

struct loop;
typedef void (*loop_fd_fn)(struct loop *loop, int fd, uint32_t events, void *arg);
typedef void (*loop_hook_fn)(struct loop *loop, void *arg);

struct loop *loop_create(void);
void loop_destroy(struct loop *loop);
/* Watch fd for events (EPOLLIN, ...); fn runs on the loop. Returns 0 or -1 (errno). */
int loop_add_fd(struct loop *loop, int fd, uint32_t events, loop_fd_fn fn, void *arg);
void loop_del_fd(struct loop *loop, int fd);
/* A periodic timer; returns its timerfd (close it with loop_del_timer), or -1. */
int loop_add_timer(struct loop *loop, uint64_t interval_ms, loop_hook_fn fn, void *arg);
void loop_del_timer(struct loop *loop, int timer_fd);
/* Runs before every wait; the natural place for work batched across events. */
void loop_set_before_sleep(struct loop *loop, loop_hook_fn fn, void *arg);
/* Runs until loop_stop(). */
void loop_run(struct loop *loop);
void loop_stop(struct loop *loop);
/* Wait at most this long in the next epoll_wait (0: poll without sleeping). */
void loop_wake_within(struct loop *loop, int ms);

uint64_t loop_now_ms(void);

#endif
