/* transport.c - TCP + OpenSSL driver of the SMTP engine. See transport.h.
 *
 * Deadlines are absolute per step: the engine's step id changes when a
 * reply completes or a data block is produced, and only then is the
 * deadline moved, so a server that trickles one octet a second still
 * times out. SIGPIPE is avoided with MSG_NOSIGNAL, also under TLS through
 * a small BIO of our own that uses send()/recv(). */
#include "transport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0   /* platforms with SO_NOSIGPIPE set it on the socket */
#endif

struct mlr_conn {
    const mlr_alloc *a;
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    BIO_METHOD *biom;   /* our socket BIO's method, one per connection (no global state) */
    double timeout;
    char host[256];
    char servername[256];
    unsigned port;
    mlr_tls_opts tls;
    int verify;
    uint8_t rbuf[16384];
};

/* Monotonic time in milliseconds. */
static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

mlr_conn *mlr_conn_new(const mlr_alloc *a)
{
    mlr_conn *c = mlr_malloc(a, sizeof *c);
    if (!c)
        return NULL;
    memset(c, 0, sizeof *c);
    c->a = a;
    c->fd = -1;
    return c;
}

void mlr_conn_close(mlr_conn *c)
{
    if (c->ssl) {
        SSL_free(c->ssl);   /* no close_notify: SMTP ends with QUIT */
        c->ssl = NULL;
    }
    if (c->biom) {   /* after SSL_free: the BIO used it */
        BIO_meth_free(c->biom);
        c->biom = NULL;
    }
    if (c->ctx) {
        SSL_CTX_free(c->ctx);
        c->ctx = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
}

void mlr_conn_free(mlr_conn *c)
{
    if (!c)
        return;
    mlr_conn_close(c);
    mlr_free(c->a, c, sizeof *c);
}

int mlr_conn_is_open(const mlr_conn *c) { return c->fd >= 0; }

/* Fill a status. */
static int st_set(mlr_smtp_status *st, int err, int temporary, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

static int st_set(mlr_smtp_status *st, int err, int temporary, const char *fmt, ...)
{
    va_list ap;
    memset(st, 0, sizeof *st);
    st->err = err;
    st->temporary = temporary;
    va_start(ap, fmt);
    vsnprintf(st->message, sizeof st->message, fmt, ap);
    va_end(ap);
    return err;
}

/* ---- a socket BIO that never raises SIGPIPE ---- */

static int bio_write(BIO *b, const char *buf, int len)
{
    int fd = *(int *)BIO_get_data(b);
    ssize_t n;
    BIO_clear_retry_flags(b);
    n = send(fd, buf, (size_t)len, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        BIO_set_retry_write(b);
    return (int)n;
}

static int bio_read(BIO *b, char *buf, int len)
{
    int fd = *(int *)BIO_get_data(b);
    ssize_t n;
    BIO_clear_retry_flags(b);
    n = recv(fd, buf, (size_t)len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        BIO_set_retry_read(b);
    return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

/* A new method for our BIO (freed with the connection). The type index is
 * taken once: a race between threads only wastes an index. */
static BIO_METHOD *nosigpipe_method(void)
{
    static int index;
    BIO_METHOD *m;
    if (!index)
        index = BIO_get_new_index();
    m = BIO_meth_new((index > 0 ? index : 0) | BIO_TYPE_SOURCE_SINK, "mailer-socket");
    if (!m)
        return NULL;
    BIO_meth_set_write(m, bio_write);
    BIO_meth_set_read(m, bio_read);
    BIO_meth_set_ctrl(m, bio_ctrl);
    BIO_meth_set_create(m, bio_create);
    return m;
}

/* ---- OpenSSL errors ---- */

/* Append the OpenSSL error queue (and clear it) to buf. */
static void ssl_errors(char *buf, size_t cap)
{
    unsigned long e;
    size_t len = strlen(buf);
    while ((e = ERR_get_error()) != 0) {
        char one[256];
        ERR_error_string_n(e, one, sizeof one);
        if (len + 3 < cap)
            len += (size_t)snprintf(buf + len, cap - len, "%s%s", len ? "; " : "", one);
    }
}

/* Describe a failed handshake: the verification result first, in words. */
static int tls_fail(mlr_conn *c, mlr_smtp_status *st, const char *what)
{
    long vr = c->ssl ? SSL_get_verify_result(c->ssl) : X509_V_OK;
    char q[400] = "";
    const char *why = NULL;
    if (c->verify && vr != X509_V_OK) {
        switch (vr) {
        case X509_V_ERR_CERT_HAS_EXPIRED:
            why = "the server certificate has expired";
            break;
        case X509_V_ERR_CERT_NOT_YET_VALID:
            why = "the server certificate is not yet valid";
            break;
        case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
        case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
            why = "the server certificate is self-signed (not trusted)";
            break;
        case X509_V_ERR_HOSTNAME_MISMATCH:
        case X509_V_ERR_IP_ADDRESS_MISMATCH:
            why = "host name mismatch: the certificate is not valid for this server name";
            break;
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
            why = "the server certificate was issued by an unknown (untrusted) CA";
            break;
        default:
            why = X509_verify_cert_error_string(vr);
        }
        ERR_clear_error();
        return st_set(st, MLR_ERR_TLS, 0, "TLS %s with %s failed: certificate verification: %s (%s)",
                      what, c->servername[0] ? c->servername : c->host, why,
                      X509_verify_cert_error_string(vr));
    }
    ssl_errors(q, sizeof q);
    return st_set(st, MLR_ERR_TLS, 0, "TLS %s with %s:%u failed%s%s", what, c->host, c->port,
                  q[0] ? ": " : "", q[0] ? q : " (connection closed by the server)");
}

/* Is s an IPv4 or IPv6 literal? */
static int is_ip(const char *s)
{
    unsigned char b[16];
    return inet_pton(AF_INET, s, b) == 1 || inet_pton(AF_INET6, s, b) == 1;
}

/* Build the SSL context: protocol floor, CA store, client certificate. */
static int ctx_setup(mlr_conn *c, mlr_smtp_status *st)
{
    ERR_clear_error();
    c->ctx = SSL_CTX_new(TLS_client_method());
    if (!c->ctx)
        return tls_fail(c, st, "setup");
    SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(c->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (c->verify) {
        int ok = 1;
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
        if (c->tls.cafile || c->tls.capath)
            ok = SSL_CTX_load_verify_locations(c->ctx, c->tls.cafile, c->tls.capath);
        else
            ok = SSL_CTX_set_default_verify_paths(c->ctx);
        if (!ok) {
            char q[300] = "";
            ssl_errors(q, sizeof q);
            return st_set(st, MLR_ERR_TLS, 0, "cannot load the CA certificates (%s%s%s): %s",
                          c->tls.cafile ? c->tls.cafile : "", c->tls.capath ? " " : "",
                          c->tls.capath ? c->tls.capath : "", q);
        }
    } else {
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL);
    }
    if (c->tls.certfile) {
        const char *key = c->tls.keyfile ? c->tls.keyfile : c->tls.certfile;
        if (SSL_CTX_use_certificate_chain_file(c->ctx, c->tls.certfile) != 1 ||
            SSL_CTX_use_PrivateKey_file(c->ctx, key, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(c->ctx) != 1) {
            char q[300] = "";
            ssl_errors(q, sizeof q);
            return st_set(st, MLR_ERR_TLS, 0, "cannot load the client certificate %s: %s",
                          c->tls.certfile, q);
        }
    }
    return MLR_OK;
}

/* Build the SSL object on the socket: our BIO, SNI, host-name check. */
static int tls_setup(mlr_conn *c, mlr_smtp_status *st)
{
    BIO_METHOD *m;
    BIO *bio;
    const char *name = c->servername[0] ? c->servername : c->host;
    ERR_clear_error();
    if (!c->ctx)
        return st_set(st, MLR_ERR_TLS, 0, "TLS was not set up for this connection");
    c->ssl = SSL_new(c->ctx);
    if (!c->ssl || !(c->biom = m = nosigpipe_method()) || !(bio = BIO_new(m)))
        return tls_fail(c, st, "setup");
    BIO_set_data(bio, &c->fd);
    SSL_set_bio(c->ssl, bio, bio);
    if (!is_ip(name))
        SSL_set_tlsext_host_name(c->ssl, name);   /* SNI, even without verification */
    if (c->verify) {
        int ok;
        if (is_ip(name))
            ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), name);
        else
            ok = SSL_set1_host(c->ssl, name);
        if (ok != 1)
            return tls_fail(c, st, "setup");
    }
    return MLR_OK;
}

/* Wait for events on the socket until deadline; 1 ready, 0 timeout, -1 error. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        struct pollfd p = {fd, events, 0};
        int64_t left = deadline - now_ms();
        int rc;
        if (left <= 0)
            return 0;
        rc = poll(&p, 1, left > 60000 ? 60000 : (int)left);
        if (rc > 0)
            return 1;
        if (rc < 0 && errno != EINTR)
            return -1;
    }
}

/* The TLS handshake, non-blocking with a deadline. */
static int tls_handshake(mlr_conn *c, mlr_smtp_status *st)
{
    int64_t deadline = now_ms() + (int64_t)(c->timeout * 1000);
    int rc;
    if (!c->ssl && (rc = tls_setup(c, st)))
        return rc;
    for (;;) {
        int r, e, w;
        ERR_clear_error();
        r = SSL_connect(c->ssl);
        if (r == 1)
            return MLR_OK;
        e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ)
            w = wait_fd(c->fd, POLLIN, deadline);
        else if (e == SSL_ERROR_WANT_WRITE)
            w = wait_fd(c->fd, POLLOUT, deadline);
        else if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
            return st_set(st, MLR_ERR_TLS, 1, "TLS handshake with %s:%u failed: %s", c->host, c->port,
                          errno ? strerror(errno) : "connection closed by the server");
        else
            return tls_fail(c, st, "handshake");
        if (w == 0)
            return st_set(st, MLR_ERR_TIMEOUT, 1, "timeout during the TLS handshake (%g s)", c->timeout);
        if (w < 0)
            return st_set(st, MLR_ERR_NETWORK, 1, "poll failed: %s", strerror(errno));
    }
}

/* Connect one address with a deadline; the socket or -1 (errno set). */
static int connect_one(const struct addrinfo *ai, int64_t deadline)
{
    int fd, one = 1, err = 0, w;
    socklen_t el = sizeof err;
    fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (fd < 0)
        return -1;
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
#ifdef SO_NOSIGPIPE
    setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
#endif
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
        return fd;
    if (errno != EINPROGRESS && errno != EINTR) {
        err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    w = wait_fd(fd, POLLOUT, deadline);
    if (w <= 0) {
        err = w == 0 ? ETIMEDOUT : errno;
        close(fd);
        errno = err;
        return -1;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) {
        close(fd);
        errno = err ? err : EIO;
        return -1;
    }
    return fd;
}

int mlr_conn_open(mlr_conn *c, const mlr_conn_opts *o, mlr_smtp_status *st)
{
    struct addrinfo hints, *res = NULL, *ai;
    char port[16], addr[INET6_ADDRSTRLEN + 2] = "";
    int rc, err = 0, timed_out = 0;
    memset(st, 0, sizeof *st);
    mlr_conn_close(c);
    if (!o->host || strlen(o->host) >= sizeof c->host ||
        (o->tls.servername && strlen(o->tls.servername) >= sizeof c->servername))
        return st_set(st, MLR_ERR_INPUT, 0, "host name too long");
    snprintf(c->host, sizeof c->host, "%s", o->host);
    snprintf(c->servername, sizeof c->servername, "%s", o->tls.servername ? o->tls.servername : "");
    c->port = o->port;
    c->timeout = o->timeout > 0 ? o->timeout : 30;
    c->tls = o->tls;   /* file names are only used during this call and the handshakes */
    c->verify = o->tls.verify;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof port, "%u", o->port);
    rc = getaddrinfo(o->host, port, &hints, &res);
    if (rc)
        return st_set(st, MLR_ERR_NETWORK, 1, "cannot resolve %s: %s", o->host, gai_strerror(rc));
    for (ai = res; ai; ai = ai->ai_next) {
        int64_t deadline = now_ms() + (int64_t)(c->timeout * 1000);
        c->fd = connect_one(ai, deadline);
        if (c->fd >= 0)
            break;
        err = errno;
        timed_out |= err == ETIMEDOUT;
        if (ai->ai_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, addr, sizeof addr);
        else if (ai->ai_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, addr, sizeof addr);
    }
    freeaddrinfo(res);
    if (c->fd < 0) {
        if (err == ETIMEDOUT)
            return st_set(st, MLR_ERR_TIMEOUT, 1, "timeout connecting to %s port %u (%g s)",
                          o->host, o->port, c->timeout);
        return st_set(st, MLR_ERR_NETWORK, 1, "cannot connect to %s port %u%s%s%s: %s", o->host,
                      o->port, addr[0] ? " (" : "", addr, addr[0] ? ")" : "", strerror(err));
    }
    (void)timed_out;
    if (!o->no_tls && (rc = ctx_setup(c, st))) {
        mlr_conn_close(c);
        return rc;
    }
    if (o->implicit_tls && (rc = tls_handshake(c, st))) {
        mlr_conn_close(c);
        return rc;
    }
    c->tls.cafile = c->tls.capath = c->tls.certfile = c->tls.keyfile = c->tls.servername = NULL;
    return MLR_OK;
}

/* Write some bytes: count written, 0 when it would block, -1 on error. */
static long conn_write(mlr_conn *c, const uint8_t *p, size_t n, int *want_read, char *why, size_t wl)
{
    *want_read = 0;
    if (n > INT32_MAX)
        n = INT32_MAX;
    if (c->ssl) {
        int r, e;
        ERR_clear_error();
        r = SSL_write(c->ssl, p, (int)n);
        if (r > 0)
            return r;
        e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_WRITE)
            return 0;
        if (e == SSL_ERROR_WANT_READ) {
            *want_read = 1;
            return 0;
        }
        snprintf(why, wl, "%s", e == SSL_ERROR_SYSCALL && errno ? strerror(errno) : "TLS write failed");
        ssl_errors(why, wl);
        return -1;
    } else {
        ssize_t r = send(c->fd, p, n, MSG_NOSIGNAL);
        if (r >= 0)
            return (long)r;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return 0;
        snprintf(why, wl, "%s", strerror(errno));
        return -1;
    }
}

/* Read some bytes: count, 0 at EOF, -2 when it would block, -1 on error. */
static long conn_read(mlr_conn *c, int *want_write, char *why, size_t wl)
{
    *want_write = 0;
    if (c->ssl) {
        int r, e;
        ERR_clear_error();
        r = SSL_read(c->ssl, c->rbuf, sizeof c->rbuf);
        if (r > 0)
            return r;
        e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ)
            return -2;
        if (e == SSL_ERROR_WANT_WRITE) {
            *want_write = 1;
            return -2;
        }
        if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && errno == 0))
            return 0;
        snprintf(why, wl, "%s", e == SSL_ERROR_SYSCALL && errno ? strerror(errno) : "TLS read failed");
        ssl_errors(why, wl);
        return -1;
    } else {
        ssize_t r = recv(c->fd, c->rbuf, sizeof c->rbuf, 0);
        if (r >= 0)
            return (long)r;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return -2;
        snprintf(why, wl, "%s", strerror(errno));
        return -1;
    }
}

/* Best-effort, non-blocking write of what the engine still has (a QUIT). */
static void flush_polite(mlr_conn *c, mlr_smtp *e)
{
    const uint8_t *p;
    size_t n;
    int wr;
    char why[64];
    if (c->fd < 0)
        return;
    n = mlr_smtp_pending(e, &p);
    if (n > 0 && conn_write(c, p, n, &wr, why, sizeof why) > 0)
        mlr_smtp_consume(e, n);
}

int mlr_conn_drive(mlr_conn *c, mlr_smtp *e, mlr_drive_fn check, void *ud)
{
    uint64_t step = mlr_smtp_step_id(e) + 1;   /* force a first deadline */
    int64_t deadline = 0;
    char why[400];
    for (;;) {
        int w = mlr_smtp_want(e), rc;
        short events = 0;
        int write_blocked_on_read = 0;
        if (w < 0) {
            flush_polite(c, e);
            mlr_conn_close(c);
            return w;
        }
        if (check && (rc = check(ud)) != 0)
            return rc < 0 ? rc : MLR_OK;
        if (w == 0 || (w & MLR_WANT_DONE))
            return MLR_OK;
        if (c->fd < 0)
            return mlr_smtp_fail(e, MLR_ERR_NETWORK, 1, "the connection is closed");
        if (mlr_smtp_step_id(e) != step) {
            step = mlr_smtp_step_id(e);
            deadline = now_ms() + (int64_t)(c->timeout * 1000);
        }
        if (w & MLR_WANT_TLS) {
            mlr_smtp_status st;
            if ((rc = tls_handshake(c, &st))) {
                mlr_smtp_fail(e, st.err, st.temporary, "%s", st.message);
                mlr_conn_close(c);
                return rc;
            }
            mlr_smtp_tls_done(e);
            continue;
        }
        if (w & MLR_WANT_WRITE) {
            const uint8_t *p;
            size_t n = mlr_smtp_pending(e, &p);
            if (n > 0) {
                long r = conn_write(c, p, n, &write_blocked_on_read, why, sizeof why);
                if (r < 0) {
                    mlr_smtp_fail(e, MLR_ERR_NETWORK, 1,
                                  "connection lost while %s: %s", mlr_smtp_step_name(e), why);
                    mlr_conn_close(c);
                    return MLR_ERR_NETWORK;
                }
                if (r > 0) {
                    mlr_smtp_consume(e, (size_t)r);
                    continue;   /* write more before polling */
                }
                events |= write_blocked_on_read ? POLLIN : POLLOUT;
            } else if (mlr_smtp_want(e) < 0) {
                continue;   /* the body source failed */
            } else if (!(w & MLR_WANT_READ)) {
                continue;
            }
        }
        {
            long r = -2;
            int ww = 0, have = 0;
            if ((w & MLR_WANT_READ) && c->ssl && SSL_pending(c->ssl) > 0) {
                r = conn_read(c, &ww, why, sizeof why);   /* decrypted bytes already here */
                have = 1;
            } else if (w & MLR_WANT_READ) {
                events |= POLLIN;
            }
            if (!have) {
                struct pollfd pfd = {c->fd, events, 0};
                int64_t left = deadline - now_ms();
                int pr;
                if (left <= 0) {
                    mlr_smtp_fail(e, MLR_ERR_TIMEOUT, 1, "timeout %s%s (%g s)",
                                  (w & MLR_WANT_WRITE) ? "" : "waiting for ",
                                  mlr_smtp_step_name(e), c->timeout);
                    mlr_conn_close(c);
                    return MLR_ERR_TIMEOUT;
                }
                pr = poll(&pfd, 1, left > 60000 ? 60000 : (int)left);
                if (pr < 0 && errno != EINTR) {
                    mlr_smtp_fail(e, MLR_ERR_NETWORK, 1, "poll failed: %s", strerror(errno));
                    mlr_conn_close(c);
                    return MLR_ERR_NETWORK;
                }
                if (pr <= 0 || write_blocked_on_read || !(w & MLR_WANT_READ) ||
                    !(pfd.revents & (POLLIN | POLLHUP | POLLERR)))
                    continue;   /* timeout check, or back to writing */
                r = conn_read(c, &ww, why, sizeof why);
            }
            if (r == -2)
                continue;
            if (r < 0) {
                mlr_smtp_fail(e, MLR_ERR_NETWORK, 1, "connection lost while waiting for %s: %s",
                              mlr_smtp_step_name(e), why);
                mlr_conn_close(c);
                return MLR_ERR_NETWORK;
            }
            if (r == 0) {
                rc = mlr_smtp_eof(e);
                mlr_conn_close(c);
                return rc;
            }
            mlr_smtp_feed(e, c->rbuf, (size_t)r);
        }
    }
}
