/* transport.h - TCP and OpenSSL for the C socket: connect over every
 * address getaddrinfo returns, non-blocking sockets with poll, absolute
 * deadlines, no SIGPIPE, TCP_NODELAY, TLS 1.2+ with certificate and
 * host-name verification. mlr_sock is a blocking socket with the cosocket
 * method set (connect, sslhandshake, send, receive); the one driver, in
 * Lua (lua/mailer/driver.lua), runs the engine over it. Part of the C
 * core: no lua.h. */
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

/* ---- mlr_sock: a blocking socket for drivers written elsewhere ----
 *
 * Every I/O call takes a timeout in milliseconds for the whole call (an
 * absolute deadline is computed inside, so a peer that trickles one byte
 * at a time still times out); a negative timeout_ms means "the stored
 * timeout for this kind of call" (mlr_sock_set_timeouts, default 30000).
 * Errors are negative mlr_err values with a one-line message in
 * err[errlen] (err may be NULL):
 *   MLR_ERR_NETWORK  resolving, connecting, sending or receiving failed,
 *                    or the socket is not connected
 *   MLR_ERR_TIMEOUT  the call's timeout passed
 *   MLR_ERR_TLS      TLS setup or handshake failed (certificate
 *                    verification failures say "certificate verification")
 *   MLR_ERR_INPUT    a TLS file could not be loaded, or a name is too long
 *   MLR_ERR_NOMEM    out of memory
 * A failed send, a receive error other than a timeout, and a failed
 * handshake close the socket (the stream is no longer usable); a receive
 * timeout does not. */

typedef struct mlr_sock mlr_sock;

/* One piece of a gathered write. */
typedef struct mlr_iov {
    const void *p;
    size_t n;
} mlr_iov;

/* A new, unconnected socket; NULL on allocation failure. Keeps a. */
mlr_sock *mlr_sock_new(const mlr_alloc *a);
/* Close the connection (idempotent): a TLS close_notify is sent when the
 * session is healthy and the socket takes it at once (never waits, never
 * fails), then the descriptor is closed. Settings (timeouts, settls) stay. */
void mlr_sock_close(mlr_sock *s);
/* Close and free (NULL is fine). */
void mlr_sock_free(mlr_sock *s);
/* Is a connection open? */
int mlr_sock_is_open(const mlr_sock *s);
/* The descriptor, or -1 when closed. */
int mlr_sock_fd(const mlr_sock *s);
/* Has the peer sent something (or closed) that a read would return now?
 * Never blocks. */
int mlr_sock_readable(const mlr_sock *s);

/* Stored timeouts in ms for connect (and handshake), send and read; a
 * negative value leaves that one unchanged. */
void mlr_sock_set_timeouts(mlr_sock *s, int connect_ms, int send_ms, int read_ms);
/* The stored send / read timeout in ms. */
int mlr_sock_send_timeout(const mlr_sock *s);
int mlr_sock_read_timeout(const mlr_sock *s);
/* Monotonic clock in ms, to spread one timeout over several calls. */
int64_t mlr_clock_ms(void);

/* Resolve host and connect to the first address that answers (an open
 * connection is closed first). MLR_OK or an error as above. */
int mlr_sock_connect(mlr_sock *s, const char *host, unsigned port, int timeout_ms, char *err,
                     size_t errlen);
/* Trust store and client certificate for later handshakes: cafile,
 * capath, certfile, keyfile of o (verify and servername are ignored; o
 * NULL clears them). The files are loaded at once (MLR_ERR_INPUT when one
 * cannot be), so the strings need not outlive the call. Without cafile
 * and capath a verifying handshake uses the system store. */
int mlr_sock_set_tls(mlr_sock *s, const mlr_tls_opts *o, char *err, size_t errlen);
/* TLS handshake on the open connection (also after plaintext, for
 * STARTTLS): TLS 1.2 or newer, SNI unless servername is an IP literal
 * (servername NULL: the host given to connect). With verify: the chain
 * against the trust store and the name (no partial wildcards such as
 * w*.example.com). Timeout: the connect timeout when timeout_ms < 0. */
int mlr_sock_handshake(mlr_sock *s, const char *servername, int verify, int timeout_ms,
                       char *err, size_t errlen);
/* Write all n bytes, or fail: MLR_OK or an error. */
int mlr_sock_write(mlr_sock *s, const void *p, size_t n, int timeout_ms, char *err,
                   size_t errlen);
/* Write all pieces in order, or fail: MLR_OK or an error. Small pieces
 * are gathered into one bounded buffer (TLS records, segments). */
int mlr_sock_writev(mlr_sock *s, const mlr_iov *v, size_t nv, int timeout_ms, char *err,
                    size_t errlen);
/* Read up to cap bytes: the count (> 0), 0 when the peer closed, or a
 * negative error (MLR_ERR_TIMEOUT when nothing arrived in time). */
long mlr_sock_read(mlr_sock *s, void *buf, size_t cap, int timeout_ms, char *err, size_t errlen);

/* ---- steps that never wait, for event loops ----
 *
 * The same socket driven by someone else's poll (copas, cqueues): each
 * call does what it can at once and says what it waits for. Besides the
 * errors above they return MLR_SOCK_WANT_READ or MLR_SOCK_WANT_WRITE
 * (positive): wait until the descriptor (mlr_sock_fd) is readable or
 * writable, then call again. Deadlines are the caller's. */
#define MLR_SOCK_WANT_READ 1
#define MLR_SOCK_WANT_WRITE 2

/* Connect without waiting: the first call (nothing in progress) resolves
 * host (getaddrinfo, which may block) and starts a connection; later calls
 * finish it, moving on to the next address when one fails (host and port
 * are then ignored). MLR_OK when connected, MLR_SOCK_WANT_WRITE, or an
 * error (nothing left to try). mlr_sock_close abandons an attempt. */
int mlr_sock_connect_step(mlr_sock *s, const char *host, unsigned port, char *err,
                          size_t errlen);
/* One step of the TLS handshake (the first call sets it up as
 * mlr_sock_handshake does): MLR_OK when done, a want, or an error (the
 * socket is then closed). */
int mlr_sock_handshake_step(mlr_sock *s, const char *servername, int verify, char *err,
                            size_t errlen);
/* Write what the socket takes now: the count (> 0), 0 with *want set when
 * it takes nothing, or an error (the stream is broken: closed). After a
 * TLS write that wanted something, call again with the same bytes first. */
long mlr_sock_write_some(mlr_sock *s, const void *p, size_t n, int *want, char *err,
                         size_t errlen);
/* Read what has arrived: the count (> 0); 0 with *want set when nothing
 * is there yet, 0 with *want clear when the peer closed; or an error (the
 * socket is then closed). */
long mlr_sock_read_some(mlr_sock *s, void *buf, size_t cap, int *want, char *err,
                        size_t errlen);

#endif
