/* transport.h - the blocking driver of the SMTP engine over TCP and
 * OpenSSL: connect over every address getaddrinfo returns, non-blocking
 * sockets with poll, an absolute deadline per protocol step, no SIGPIPE,
 * TCP_NODELAY, TLS 1.2+ with certificate and host-name verification.
 * Part of the C core: no lua.h. */
#ifndef TRANSPORT_H
#define TRANSPORT_H

#include "mlr_common.h"
#include "smtp_engine.h"

typedef struct mlr_tls_opts {
    int verify;               /* verify the certificate chain and host name (default on) */
    const char *cafile;       /* NULL: the system store */
    const char *capath;
    const char *servername;   /* name to verify and send as SNI; NULL: the host */
    const char *certfile;     /* client certificate (PEM chain) */
    const char *keyfile;      /* its key (PEM); NULL: in certfile */
} mlr_tls_opts;

typedef struct mlr_conn_opts {
    const char *host;
    unsigned port;
    int implicit_tls;         /* TLS from the start (port 465 style) */
    int no_tls;               /* TLS will never be used: skip loading CA files */
    double timeout;           /* seconds per step; <= 0: 30 */
    mlr_tls_opts tls;
} mlr_conn_opts;

typedef struct mlr_conn mlr_conn;

/* A new, unconnected connection object; NULL on allocation failure. */
mlr_conn *mlr_conn_new(const mlr_alloc *a);
/* Close the socket and free the TLS state (idempotent); keeps the object. */
void mlr_conn_close(mlr_conn *c);
/* Close and free. */
void mlr_conn_free(mlr_conn *c);

/* Resolve, connect (trying each address), set up TLS options, and with
 * implicit_tls do the handshake. Returns MLR_OK, or MLR_ERR_NETWORK /
 * MLR_ERR_TIMEOUT / MLR_ERR_TLS / MLR_ERR_NOMEM / MLR_ERR_INPUT (bad TLS
 * files) with st filled. Copies what it needs of opts. */
int mlr_conn_open(mlr_conn *c, const mlr_conn_opts *opts, mlr_smtp_status *st);

/* Called after every I/O step of mlr_conn_drive: return 0 to go on, 1 to
 * stop driving, or a negative value to abort (the caller then records an
 * error in the engine with mlr_smtp_fail). */
typedef int (*mlr_drive_fn)(void *ud);

/* Drive engine e over the connection until check() says stop, the engine
 * is idle (want 0) or done, or a fatal error. Network, TLS and timeout
 * failures are recorded in the engine (mlr_smtp_fail) and returned. On a
 * fatal error, pending output (a polite QUIT) is flushed best-effort and
 * the connection is closed. Returns MLR_OK, the fatal error, or the
 * negative value check() returned. */
int mlr_conn_drive(mlr_conn *c, mlr_smtp *e, mlr_drive_fn check, void *ud);

/* Is the connection open? */
int mlr_conn_is_open(const mlr_conn *c);

#endif
