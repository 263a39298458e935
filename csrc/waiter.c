/* waiter.c - see waiter.h. An epoll descriptor holds the watched socket
 * (level-triggered, so it reads as ready while the socket is) and a
 * timerfd on the monotonic clock (absolute deadlines; re-arming resets
 * an earlier expiry). */
#include "waiter.h"

#include "transport.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#ifdef __linux__
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#endif

/* A message for err (may be NULL); returns code. */
static int werr(char *err, size_t errlen, int code, const char *what)
{
    if (err && errlen)
        snprintf(err, errlen, "%s: %s", what, strerror(errno));
    return code;
}

#ifdef __linux__

int mlr_waiter_open(mlr_waiter *w, char *err, size_t errlen)
{
    struct epoll_event ev;
    w->ep = w->tfd = w->fd = -1;
    w->events = 0;
    w->ep = epoll_create1(EPOLL_CLOEXEC);
    if (w->ep < 0)
        return werr(err, errlen, MLR_ERR_NETWORK, "epoll_create1");
    w->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (w->tfd < 0) {
        int rc = werr(err, errlen, MLR_ERR_NETWORK, "timerfd_create");
        mlr_waiter_close(w);
        return rc;
    }
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.fd = w->tfd;
    if (epoll_ctl(w->ep, EPOLL_CTL_ADD, w->tfd, &ev) < 0) {
        int rc = werr(err, errlen, MLR_ERR_NETWORK, "epoll_ctl");
        mlr_waiter_close(w);
        return rc;
    }
    return MLR_OK;
}

int mlr_waiter_arm(mlr_waiter *w, int fd, int events, int64_t deadline_ms, char *err,
                   size_t errlen)
{
    struct itimerspec its;
    struct epoll_event ev;
    if (w->ep < 0) {
        errno = EBADF;
        return werr(err, errlen, MLR_ERR_NETWORK, "waiter");
    }
    memset(&its, 0, sizeof its);   /* zero: disarmed */
    if (deadline_ms >= 0) {
        int64_t now = mlr_clock_ms();
        if (deadline_ms <= now) {
            its.it_value.tv_nsec = 1;   /* an absolute time long past: fires at once */
        } else {
            its.it_value.tv_sec = (time_t)(deadline_ms / 1000);
            its.it_value.tv_nsec = (long)(deadline_ms % 1000) * 1000000L;
        }
    }
    if (timerfd_settime(w->tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
        return werr(err, errlen, MLR_ERR_NETWORK, "timerfd_settime");
    if (w->fd >= 0 && w->fd != fd) {
        /* fails harmlessly when that descriptor was closed since */
        epoll_ctl(w->ep, EPOLL_CTL_DEL, w->fd, NULL);
        w->fd = -1;
    }
    if (fd < 0)
        return MLR_OK;
    memset(&ev, 0, sizeof ev);
    ev.events = events == MLR_WAIT_WRITE ? EPOLLOUT : EPOLLIN;
    ev.data.fd = fd;
    /* the same number may be a new socket: then MOD finds nothing and ADD
     * registers it (a closed descriptor leaves epoll by itself) */
    if (w->fd != fd || epoll_ctl(w->ep, EPOLL_CTL_MOD, fd, &ev) < 0) {
        if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev) < 0 &&
            !(errno == EEXIST && epoll_ctl(w->ep, EPOLL_CTL_MOD, fd, &ev) == 0))
            return werr(err, errlen, MLR_ERR_NETWORK, "epoll_ctl");
    }
    w->fd = fd;
    w->events = events;
    return MLR_OK;
}

#else

int mlr_waiter_open(mlr_waiter *w, char *err, size_t errlen)
{
    w->ep = w->tfd = w->fd = -1;
    w->events = 0;
    errno = ENOSYS;
    werr(err, errlen, MLR_ERR_UNSUPPORTED, "waiter (epoll and timerfd)");
    return MLR_ERR_UNSUPPORTED;
}

int mlr_waiter_arm(mlr_waiter *w, int fd, int events, int64_t deadline_ms, char *err,
                   size_t errlen)
{
    (void)w;
    (void)fd;
    (void)events;
    (void)deadline_ms;
    errno = ENOSYS;
    return werr(err, errlen, MLR_ERR_UNSUPPORTED, "waiter");
}

#endif

int mlr_waiter_fd(const mlr_waiter *w) { return w->ep; }

void mlr_waiter_close(mlr_waiter *w)
{
    if (w->tfd >= 0)
        close(w->tfd);
    if (w->ep >= 0)
        close(w->ep);
    w->ep = w->tfd = w->fd = -1;
}
