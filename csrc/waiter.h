/* waiter.h - one descriptor that becomes readable when another descriptor
 * is ready (readable or writable) or when a deadline passes, or both. For
 * event loops that wait on one descriptor per task and have no timers of
 * their own: copas' select loop (copas 1.x has no timers at all), where a
 * connection must still time out while the host calls copas.loop().
 * Linux only (epoll + timerfd); elsewhere mlr_waiter_open fails with
 * MLR_ERR_UNSUPPORTED and the Lua side waits on the socket itself. Part
 * of the C core: no lua.h. */
#ifndef WAITER_H
#define WAITER_H

#include "mlr_common.h"

#define MLR_WAIT_READ 1
#define MLR_WAIT_WRITE 2

typedef struct mlr_waiter {
    int ep;       /* the epoll descriptor that is handed out, or -1 */
    int tfd;      /* its timerfd */
    int fd;       /* the descriptor watched now, or -1 */
    int events;   /* MLR_WAIT_READ or MLR_WAIT_WRITE for fd */
} mlr_waiter;

/* Open the descriptors: MLR_OK, MLR_ERR_UNSUPPORTED (not Linux), or
 * MLR_ERR_NETWORK with the reason in err. w is usable for close either way. */
int mlr_waiter_open(mlr_waiter *w, char *err, size_t errlen);
/* Watch fd (-1: none) for events, and fire at deadline_ms on the clock of
 * mlr_clock_ms (negative: no deadline; a past one fires at once). Resets
 * an earlier firing. MLR_OK or MLR_ERR_NETWORK (err says why). */
int mlr_waiter_arm(mlr_waiter *w, int fd, int events, int64_t deadline_ms, char *err,
                   size_t errlen);
/* The descriptor to wait on (readable when fired), or -1 when closed. */
int mlr_waiter_fd(const mlr_waiter *w);
/* Close both descriptors (idempotent). */
void mlr_waiter_close(mlr_waiter *w);

#endif
