/* transport.c - TCP + OpenSSL for the C socket. See transport.h.
 *
 * One connection state (struct wire: descriptor, SSL objects, names) and
 * a few helpers (connect over every address, poll with absolute deadlines,
 * the TLS setup, the error wording). Deadlines are absolute per call, so a
 * server that trickles one octet a second still times out; the driver
 * spreads each protocol step's deadline over its calls. SIGPIPE is avoided
 * with MSG_NOSIGNAL, also under TLS through a small BIO of our own that
 * uses send()/recv(). */
#include "transport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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

#define SOCK_DEFAULT_TIMEOUT 30000   /* ms */

/* What both faces share: the socket, its TLS objects and the names used
 * in messages and checks. */
typedef struct wire {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    BIO_METHOD *biom;   /* our socket BIO's method, one per connection (no global state) */
    int verify;
    int ca_loaded;      /* ctx has a trust store */
    int tls_up;         /* the handshake completed */
    int tls_dead;       /* a fatal TLS error or a broken write: no close_notify */
    int wrote;          /* the last call wrote: a reply is a round trip away */
    unsigned port;
    char host[256];
    char servername[256];
} wire;

struct mlr_sock {
    const mlr_alloc *a;
    wire w;
    int connect_ms, send_ms, read_ms;
    /* a connection being made without waiting (mlr_sock_connect_step) */
    struct addrinfo *ai_list, *ai_next; /* the addresses; those still to try */
    int connecting;
    int last_errno;                      /* why the last address failed */
    char last_addr[INET6_ADDRSTRLEN + 2];
};

/* Where an error message goes, and whether the failure is temporary. */
typedef struct xerr {
    char *msg;
    size_t cap;
    int temporary;
} xerr;

/* Record an error: the message and the temporary flag; returns code. */
static int fail(xerr *x, int code, int temporary, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

static int fail(xerr *x, int code, int temporary, const char *fmt, ...)
{
    va_list ap;
    x->temporary = temporary;
    va_start(ap, fmt);
    vsnprintf(x->msg, x->cap, fmt, ap);
    va_end(ap);
    return code;
}

/* An error sink on buf, or on spare (one byte) when the caller gave none. */
static void xerr_init(xerr *x, char *buf, size_t cap, char *spare)
{
    x->msg = buf && cap ? buf : spare;
    x->cap = buf && cap ? cap : 1;
    x->msg[0] = '\0';
    x->temporary = 0;
}

/* Monotonic time in milliseconds. */
static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The monotonic clock for callers (ms). */
int64_t mlr_clock_ms(void) { return now_ms(); }

/* ---- a socket BIO that never raises SIGPIPE ---- */

/* BIO write: send() without SIGPIPE. */
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

/* BIO read: recv(). */
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

/* BIO control: only flush is answered (nothing is buffered here). */
static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

/* BIO creation: ready at once (the descriptor is set with BIO_set_data). */
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

/* ---- the shared connection state ---- */

/* Close the connection: with notify, one non-blocking try at a TLS
 * close_notify when the session is healthy. Keeps ctx (a setting). */
static void wire_close(wire *w, int notify)
{
    if (w->ssl) {
        if (notify && w->tls_up && !w->tls_dead) {
            ERR_clear_error();
            SSL_shutdown(w->ssl);
        }
        ERR_clear_error();
        SSL_free(w->ssl);
        w->ssl = NULL;
    }
    if (w->biom) {   /* after SSL_free: the BIO used it */
        BIO_meth_free(w->biom);
        w->biom = NULL;
    }
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
    w->tls_up = w->tls_dead = 0;
}

/* Free the SSL context (the trust store and client certificate). */
static void wire_drop_ctx(wire *w)
{
    if (w->ctx) {
        SSL_CTX_free(w->ctx);
        w->ctx = NULL;
    }
    w->ca_loaded = 0;
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
static int tls_fail(wire *w, xerr *x, const char *what)
{
    long vr = w->ssl ? SSL_get_verify_result(w->ssl) : X509_V_OK;
    char q[400] = "";
    const char *why = NULL;
    if (w->verify && vr != X509_V_OK) {
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
        return fail(x, MLR_ERR_TLS, 0, "TLS %s with %s failed: certificate verification: %s (%s)",
                    what, w->servername[0] ? w->servername : w->host, why,
                    X509_verify_cert_error_string(vr));
    }
    ssl_errors(q, sizeof q);
    return fail(x, MLR_ERR_TLS, 0, "TLS %s with %s:%u failed%s%s", what, w->host, w->port,
                q[0] ? ": " : "", q[0] ? q : " (connection closed by the server)");
}

/* Is s an IPv4 or IPv6 literal? */
static int is_ip(const char *s)
{
    unsigned char b[16];
    return inet_pton(AF_INET, s, b) == 1 || inet_pton(AF_INET6, s, b) == 1;
}

/* The system trust store into ctx. */
static int ca_default(wire *w, xerr *x)
{
    char q[300] = "";
    ERR_clear_error();
    if (SSL_CTX_set_default_verify_paths(w->ctx) == 1) {
        w->ca_loaded = 1;
        return MLR_OK;
    }
    ssl_errors(q, sizeof q);
    return fail(x, MLR_ERR_TLS, 0, "cannot load the CA certificates (): %s", q);
}

/* Build the SSL context: protocol floor, trust store (with load_ca: the
 * files named in f, else the system store), client certificate. Failures
 * to load f's files return file_err. On failure there is no context. */
static int ctx_setup(wire *w, const mlr_tls_opts *f, int load_ca, int file_err, xerr *x)
{
    static const mlr_tls_opts none;
    int rc;
    if (!f)
        f = &none;
    wire_drop_ctx(w);
    ERR_clear_error();
    w->ctx = SSL_CTX_new(TLS_client_method());
    if (!w->ctx)
        return tls_fail(w, x, "setup");
    SSL_CTX_set_min_proto_version(w->ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(w->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (load_ca && (f->cafile || f->capath)) {
        if (SSL_CTX_load_verify_locations(w->ctx, f->cafile, f->capath) != 1) {
            char q[300] = "";
            ssl_errors(q, sizeof q);
            rc = fail(x, file_err, 0, "cannot load the CA certificates (%s%s%s): %s",
                      f->cafile ? f->cafile : "", f->capath ? " " : "",
                      f->capath ? f->capath : "", q);
            wire_drop_ctx(w);
            return rc;
        }
        w->ca_loaded = 1;
    } else if (load_ca && (rc = ca_default(w, x))) {
        wire_drop_ctx(w);
        return rc;
    }
    if (f->certfile) {
        const char *key = f->keyfile ? f->keyfile : f->certfile;
        if (SSL_CTX_use_certificate_chain_file(w->ctx, f->certfile) != 1 ||
            SSL_CTX_use_PrivateKey_file(w->ctx, key, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(w->ctx) != 1) {
            char q[300] = "";
            ssl_errors(q, sizeof q);
            rc = fail(x, file_err, 0, "cannot load the client certificate %s: %s", f->certfile, q);
            wire_drop_ctx(w);
            return rc;
        }
    }
    return MLR_OK;
}

/* Build the SSL object on the socket: our BIO, SNI, verification mode and
 * the host-name check (no partial wildcards). */
static int tls_setup(wire *w, xerr *x)
{
    BIO_METHOD *m;
    BIO *bio;
    const char *name = w->servername[0] ? w->servername : w->host;
    ERR_clear_error();
    if (!w->ctx)
        return fail(x, MLR_ERR_TLS, 0, "TLS was not set up for this connection");
    w->ssl = SSL_new(w->ctx);
    if (!w->ssl || !(w->biom = m = nosigpipe_method()) || !(bio = BIO_new(m)))
        return tls_fail(w, x, "setup");
    BIO_set_data(bio, &w->fd);
    SSL_set_bio(w->ssl, bio, bio);
    if (!is_ip(name))
        SSL_set_tlsext_host_name(w->ssl, name);   /* SNI, even without verification */
    SSL_set_verify(w->ssl, w->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    if (w->verify) {
        int ok;
        if (is_ip(name)) {
            ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(w->ssl), name);
        } else {
            SSL_set_hostflags(w->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            ok = SSL_set1_host(w->ssl, name);
        }
        if (ok != 1)
            return tls_fail(w, x, "setup");
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

/* One step of the TLS handshake: MLR_OK, MLR_SOCK_WANT_READ / _WRITE, or
 * an error. */
static int tls_step(wire *w, xerr *x)
{
    int r, e, rc;
    if (!w->ssl && (rc = tls_setup(w, x)))
        return rc;
    ERR_clear_error();
    errno = 0;
    r = SSL_connect(w->ssl);
    if (r == 1) {
        w->tls_up = 1;
        return MLR_OK;
    }
    e = SSL_get_error(w->ssl, r);
    if (e == SSL_ERROR_WANT_READ)
        return MLR_SOCK_WANT_READ;
    if (e == SSL_ERROR_WANT_WRITE)
        return MLR_SOCK_WANT_WRITE;
    w->tls_dead = 1;
    if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
        return fail(x, MLR_ERR_TLS, 1, "TLS handshake with %s:%u failed: %s", w->host, w->port,
                    errno ? strerror(errno) : "connection closed by the server");
    return tls_fail(w, x, "handshake");
}

/* The TLS handshake, non-blocking, until deadline (seconds: for messages). */
static int tls_handshake(wire *w, int64_t deadline, double seconds, xerr *x)
{
    for (;;) {
        int k, rc = tls_step(w, x);
        if (rc == MLR_SOCK_WANT_READ)
            k = wait_fd(w->fd, POLLIN, deadline);
        else if (rc == MLR_SOCK_WANT_WRITE)
            k = wait_fd(w->fd, POLLOUT, deadline);
        else
            return rc;
        if (k == 0)
            return fail(x, MLR_ERR_TIMEOUT, 1, "timeout during the TLS handshake (%g s)", seconds);
        if (k < 0)
            return fail(x, MLR_ERR_NETWORK, 1, "poll failed: %s", strerror(errno));
    }
}

/* Start connecting one address: the socket, connected or (*pending set)
 * on its way, or -1 (errno set). */
static int start_one(const struct addrinfo *ai, int *pending)
{
    int fd, one = 1, err;
    *pending = 0;
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
    if (errno == EINPROGRESS || errno == EINTR) {
        *pending = 1;
        return fd;
    }
    err = errno;
    close(fd);
    errno = err;
    return -1;
}

/* The outcome of a connection in progress that poll found writable: 0, or
 * -1 with errno set. */
static int connect_result(int fd)
{
    int err = 0;
    socklen_t el = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
        return -1;
    if (err) {
        errno = err;
        return -1;
    }
    return 0;
}

/* Connect one address with a deadline; the socket or -1 (errno set). */
static int connect_one(const struct addrinfo *ai, int64_t deadline)
{
    int fd, err, w, pending;
    fd = start_one(ai, &pending);
    if (fd < 0 || !pending)
        return fd;
    w = wait_fd(fd, POLLOUT, deadline);
    if (w <= 0 || connect_result(fd) < 0) {
        err = w == 0 ? ETIMEDOUT : errno ? errno : EIO;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

/* The numeric address of ai into buf (for messages). */
static void addr_text(const struct addrinfo *ai, char *buf, size_t cap)
{
    if (ai->ai_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, buf, (socklen_t)cap);
    else if (ai->ai_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, buf, (socklen_t)cap);
}

/* Resolve host and connect to the first address that answers, within
 * timeout_ms for each address (each_address) or for the whole call;
 * seconds is the timeout as messages show it. Closes what was open. */
static int wire_connect(wire *w, const char *host, unsigned port, int64_t timeout_ms,
                        int each_address, double seconds, xerr *x)
{
    struct addrinfo hints, *res = NULL, *ai;
    char portstr[16], addr[INET6_ADDRSTRLEN + 2] = "";
    int rc, err = 0;
    int64_t deadline = now_ms() + timeout_ms;
    wire_close(w, 1);
    if (!host || strlen(host) >= sizeof w->host)
        return fail(x, MLR_ERR_INPUT, 0, "host name too long");
    snprintf(w->host, sizeof w->host, "%s", host);
    w->port = port;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(portstr, sizeof portstr, "%u", port);
    rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc)
        return fail(x, MLR_ERR_NETWORK, 1, "cannot resolve %s: %s", host, gai_strerror(rc));
    for (ai = res; ai; ai = ai->ai_next) {
        if (each_address)
            deadline = now_ms() + timeout_ms;
        w->fd = connect_one(ai, deadline);
        if (w->fd >= 0)
            break;
        err = errno;
        addr_text(ai, addr, sizeof addr);
    }
    freeaddrinfo(res);
    if (w->fd < 0) {
        if (err == ETIMEDOUT)
            return fail(x, MLR_ERR_TIMEOUT, 1, "timeout connecting to %s port %u (%g s)", host,
                        port, seconds);
        return fail(x, MLR_ERR_NETWORK, 1, "cannot connect to %s port %u%s%s%s: %s", host, port,
                    addr[0] ? " (" : "", addr, addr[0] ? ")" : "", strerror(err));
    }
    return MLR_OK;
}

/* Write some bytes: count written, 0 when it would block, -1 on error. */
static long wire_write_some(wire *w, const uint8_t *p, size_t n, int *want_read, char *why,
                            size_t wl)
{
    *want_read = 0;
    if (n > INT_MAX)
        n = INT_MAX;
    if (w->ssl) {
        int r, e;
        ERR_clear_error();
        r = SSL_write(w->ssl, p, (int)n);
        if (r > 0)
            return r;
        e = SSL_get_error(w->ssl, r);
        if (e == SSL_ERROR_WANT_WRITE)
            return 0;
        if (e == SSL_ERROR_WANT_READ) {
            *want_read = 1;
            return 0;
        }
        w->tls_dead = 1;
        snprintf(why, wl, "%s",
                 e == SSL_ERROR_SYSCALL && errno ? strerror(errno) : "TLS write failed");
        ssl_errors(why, wl);
        return -1;
    } else {
        ssize_t r = send(w->fd, p, n, MSG_NOSIGNAL);
        if (r >= 0)
            return (long)r;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return 0;
        snprintf(why, wl, "%s", strerror(errno));
        return -1;
    }
}

/* Read some bytes into buf: count, 0 at EOF, -2 when it would block, -1 on error. */
static long wire_read_some(wire *w, uint8_t *buf, size_t cap, int *want_write, char *why,
                           size_t wl)
{
    *want_write = 0;
    if (cap > INT_MAX)
        cap = INT_MAX;
    if (w->ssl) {
        int r, e;
        ERR_clear_error();
        r = SSL_read(w->ssl, buf, (int)cap);
        if (r > 0)
            return r;
        e = SSL_get_error(w->ssl, r);
        if (e == SSL_ERROR_WANT_READ)
            return -2;
        if (e == SSL_ERROR_WANT_WRITE) {
            *want_write = 1;
            return -2;
        }
        if (e == SSL_ERROR_ZERO_RETURN ||
            (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && errno == 0))
            return 0;
        w->tls_dead = 1;
        snprintf(why, wl, "%s",
                 e == SSL_ERROR_SYSCALL && errno ? strerror(errno) : "TLS read failed");
        ssl_errors(why, wl);
        return -1;
    } else {
        ssize_t r = recv(w->fd, buf, cap, 0);
        if (r >= 0)
            return (long)r;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return -2;
        snprintf(why, wl, "%s", strerror(errno));
        return -1;
    }
}

/* Write all n bytes before deadline (seconds: for messages). */
static int write_all(wire *w, const uint8_t *p, size_t n, int64_t deadline, double seconds, xerr *x)
{
    w->wrote = 1;
    while (n > 0) {
        char why[400];
        int want_read, k;
        long r = wire_write_some(w, p, n, &want_read, why, sizeof why);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
            continue;
        }
        if (r < 0)
            return fail(x, MLR_ERR_NETWORK, 1, "connection to %s port %u lost while sending: %s",
                        w->host, w->port, why);
        k = wait_fd(w->fd, want_read ? POLLIN : POLLOUT, deadline);
        if (k == 0)
            return fail(x, MLR_ERR_TIMEOUT, 1, "timeout sending to %s port %u (%g s)", w->host,
                        w->port, seconds);
        if (k < 0)
            return fail(x, MLR_ERR_NETWORK, 1, "poll failed: %s", strerror(errno));
    }
    return MLR_OK;
}

/* ---- mlr_sock: a blocking socket with the cosocket method set ---- */

mlr_sock *mlr_sock_new(const mlr_alloc *a)
{
    mlr_sock *s = mlr_malloc(a, sizeof *s);
    if (!s)
        return NULL;
    memset(s, 0, sizeof *s);
    s->a = a;
    s->w.fd = -1;
    s->connect_ms = s->send_ms = s->read_ms = SOCK_DEFAULT_TIMEOUT;
    return s;
}

/* Forget a connection that was being made without waiting. */
static void connect_abort(mlr_sock *s)
{
    if (s->ai_list) {
        freeaddrinfo(s->ai_list);
        s->ai_list = s->ai_next = NULL;
    }
    s->connecting = 0;
}

void mlr_sock_close(mlr_sock *s)
{
    if (s) {
        connect_abort(s);
        wire_close(&s->w, 1);
    }
}

void mlr_sock_free(mlr_sock *s)
{
    if (!s)
        return;
    connect_abort(s);
    wire_close(&s->w, 1);
    wire_drop_ctx(&s->w);
    mlr_free(s->a, s, sizeof *s);
}

int mlr_sock_is_open(const mlr_sock *s) { return s && s->w.fd >= 0; }

int mlr_sock_fd(const mlr_sock *s) { return s ? s->w.fd : -1; }

int mlr_sock_readable(const mlr_sock *s)
{
    struct pollfd pfd;
    if (!s || s->w.fd < 0)
        return 0;
    if (s->w.ssl && SSL_pending(s->w.ssl) > 0)
        return 1;
    pfd.fd = s->w.fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    return poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLIN | POLLHUP | POLLERR)) != 0;
}

void mlr_sock_set_timeouts(mlr_sock *s, int connect_ms, int send_ms, int read_ms)
{
    if (connect_ms >= 0)
        s->connect_ms = connect_ms;
    if (send_ms >= 0)
        s->send_ms = send_ms;
    if (read_ms >= 0)
        s->read_ms = read_ms;
}

int mlr_sock_send_timeout(const mlr_sock *s) { return s->send_ms; }

int mlr_sock_read_timeout(const mlr_sock *s) { return s->read_ms; }

/* The error for I/O on a socket that is not connected. */
static int sock_closed(xerr *x)
{
    return fail(x, MLR_ERR_NETWORK, 1, "the connection is closed");
}

int mlr_sock_connect(mlr_sock *s, const char *host, unsigned port, int timeout_ms, char *err,
                     size_t errlen)
{
    char spare[1];
    xerr x;
    int ms = timeout_ms < 0 ? s->connect_ms : timeout_ms;
    xerr_init(&x, err, errlen, spare);
    connect_abort(s);
    s->w.servername[0] = '\0';
    return wire_connect(&s->w, host, port, ms, 0, ms / 1000.0, &x);
}

int mlr_sock_set_tls(mlr_sock *s, const mlr_tls_opts *o, char *err, size_t errlen)
{
    char spare[1];
    xerr x;
    int rc;
    xerr_init(&x, err, errlen, spare);
    if (!o) {
        wire_drop_ctx(&s->w);
        return MLR_OK;
    }
    rc = ctx_setup(&s->w, o, o->cafile || o->capath, MLR_ERR_INPUT, &x);
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
    if (!rc)   /* a server that closes without close_notify: EOF, as nginx has it */
        SSL_CTX_set_options(s->w.ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
#endif
    return rc;
}

int mlr_sock_handshake(mlr_sock *s, const char *servername, int verify, int timeout_ms,
                       char *err, size_t errlen)
{
    char spare[1];
    xerr x;
    int rc, ms = timeout_ms < 0 ? s->connect_ms : timeout_ms;
    wire *w = &s->w;
    xerr_init(&x, err, errlen, spare);
    if (w->fd < 0)
        return sock_closed(&x);
    if (w->ssl)
        return fail(&x, MLR_ERR_TLS, 0, "TLS is already active on this connection");
    if (servername && strlen(servername) >= sizeof w->servername)
        return fail(&x, MLR_ERR_INPUT, 0, "server name too long");
    snprintf(w->servername, sizeof w->servername, "%s", servername ? servername : "");
    w->verify = verify != 0;
    if (!w->ctx) {
        static const mlr_tls_opts none;
        if ((rc = mlr_sock_set_tls(s, &none, x.msg, x.cap)))
            goto failed;
    }
    if (w->verify && !w->ca_loaded && (rc = ca_default(w, &x)))
        goto failed;
    if ((rc = tls_handshake(w, now_ms() + ms, ms / 1000.0, &x)))
        goto failed;
    return MLR_OK;
failed:
    wire_close(w, 0);
    return rc;
}

int mlr_sock_writev(mlr_sock *s, const mlr_iov *v, size_t nv, int timeout_ms, char *err,
                    size_t errlen)
{
    uint8_t stage[16384];   /* small pieces go out together: fewer records and segments */
    size_t fill = 0, i;
    char spare[1];
    xerr x;
    int rc = MLR_OK, ms = timeout_ms < 0 ? s->send_ms : timeout_ms;
    int64_t deadline = now_ms() + ms;
    double seconds = ms / 1000.0;
    xerr_init(&x, err, errlen, spare);
    if (s->w.fd < 0)
        return sock_closed(&x);
    for (i = 0; i < nv && !rc; i++) {
        const uint8_t *p = v[i].p;
        size_t n = v[i].n;
        while (n > 0 && !rc) {
            size_t k;
            if (fill == 0 && n >= sizeof stage) {   /* a big piece goes out as it is */
                rc = write_all(&s->w, p, n, deadline, seconds, &x);
                break;
            }
            k = n < sizeof stage - fill ? n : sizeof stage - fill;
            memcpy(stage + fill, p, k);
            fill += k;
            p += k;
            n -= k;
            if (fill == sizeof stage) {
                rc = write_all(&s->w, stage, fill, deadline, seconds, &x);
                fill = 0;
            }
        }
    }
    if (!rc && fill > 0)
        rc = write_all(&s->w, stage, fill, deadline, seconds, &x);
    if (rc) {   /* part of the data may be out: the stream is broken */
        s->w.tls_dead = 1;
        wire_close(&s->w, 0);
    }
    return rc;
}

int mlr_sock_write(mlr_sock *s, const void *p, size_t n, int timeout_ms, char *err,
                   size_t errlen)
{
    mlr_iov v;
    v.p = p;
    v.n = n;
    return mlr_sock_writev(s, &v, 1, timeout_ms, err, errlen);
}

long mlr_sock_read(mlr_sock *s, void *buf, size_t cap, int timeout_ms, char *err, size_t errlen)
{
    char spare[1];
    xerr x;
    int ms = timeout_ms < 0 ? s->read_ms : timeout_ms;
    int64_t deadline = now_ms() + ms;
    wire *w = &s->w;
    xerr_init(&x, err, errlen, spare);
    if (w->fd < 0)
        return sock_closed(&x);
    if (cap == 0)
        return fail(&x, MLR_ERR_INPUT, 0, "no room to read into");
    /* Right after a write the answer is a round trip away: wait first
     * (poll, then recv) rather than try, fail and wait (three calls). */
    if (w->wrote && !(w->ssl && SSL_pending(w->ssl) > 0)) {
        int k = wait_fd(w->fd, POLLIN, deadline);
        w->wrote = 0;
        if (k == 0)
            return fail(&x, MLR_ERR_TIMEOUT, 1, "timeout waiting for data from %s port %u (%g s)",
                        w->host, w->port, ms / 1000.0);
        if (k < 0)
            return fail(&x, MLR_ERR_NETWORK, 1, "poll failed: %s", strerror(errno));
    }
    for (;;) {
        char why[400];
        int want_write, k;
        long r = wire_read_some(w, buf, cap, &want_write, why, sizeof why);
        if (r >= 0)
            return r;
        if (r == -1) {
            fail(&x, MLR_ERR_NETWORK, 1, "connection to %s port %u lost while receiving: %s",
                 w->host, w->port, why);
            wire_close(w, 0);
            return MLR_ERR_NETWORK;
        }
        k = wait_fd(w->fd, want_write ? POLLOUT : POLLIN, deadline);
        if (k == 0)
            return fail(&x, MLR_ERR_TIMEOUT, 1, "timeout waiting for data from %s port %u (%g s)",
                        w->host, w->port, ms / 1000.0);
        if (k < 0)
            return fail(&x, MLR_ERR_NETWORK, 1, "poll failed: %s", strerror(errno));
    }
}

/* ---- steps that never wait ---- */

/* Start on the next address still to try: MLR_OK (connected at once),
 * MLR_SOCK_WANT_WRITE, or the error of the last address when none is
 * left. */
static int connect_next(mlr_sock *s, xerr *x)
{
    wire *w = &s->w;
    while (s->ai_next) {
        const struct addrinfo *ai = s->ai_next;
        int pending;
        s->ai_next = ai->ai_next;
        addr_text(ai, s->last_addr, sizeof s->last_addr);   /* the one tried last, for messages */
        w->fd = start_one(ai, &pending);
        if (w->fd >= 0)
            return pending ? MLR_SOCK_WANT_WRITE : MLR_OK;
        s->last_errno = errno;
    }
    return fail(x, MLR_ERR_NETWORK, 1, "cannot connect to %s port %u%s%s%s: %s", w->host,
                w->port, s->last_addr[0] ? " (" : "", s->last_addr, s->last_addr[0] ? ")" : "",
                strerror(s->last_errno ? s->last_errno : ECONNREFUSED));
}

int mlr_sock_connect_step(mlr_sock *s, const char *host, unsigned port, char *err,
                          size_t errlen)
{
    char spare[1];
    xerr x;
    wire *w = &s->w;
    int rc;
    xerr_init(&x, err, errlen, spare);
    if (!s->connecting) {
        struct addrinfo hints;
        char portstr[16];
        wire_close(w, 1);
        w->servername[0] = '\0';
        if (!host || strlen(host) >= sizeof w->host)
            return fail(&x, MLR_ERR_INPUT, 0, "host name too long");
        snprintf(w->host, sizeof w->host, "%s", host);
        w->port = port;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        snprintf(portstr, sizeof portstr, "%u", port);
        rc = getaddrinfo(host, portstr, &hints, &s->ai_list);
        if (rc) {
            s->ai_list = NULL;
            return fail(&x, MLR_ERR_NETWORK, 1, "cannot resolve %s: %s", host, gai_strerror(rc));
        }
        s->ai_next = s->ai_list;
        s->connecting = 1;
        s->last_errno = 0;
        s->last_addr[0] = '\0';
        rc = connect_next(s, &x);
    } else {
        struct pollfd p;
        p.fd = w->fd;
        p.events = POLLOUT;
        p.revents = 0;
        if (w->fd >= 0 && poll(&p, 1, 0) == 0)
            return MLR_SOCK_WANT_WRITE;   /* woken early: still on its way */
        if (w->fd >= 0 && connect_result(w->fd) == 0) {
            rc = MLR_OK;
        } else {
            s->last_errno = errno ? errno : EIO;
            if (w->fd >= 0) {
                close(w->fd);
                w->fd = -1;
            }
            rc = connect_next(s, &x);
        }
    }
    if (rc != MLR_SOCK_WANT_WRITE)
        connect_abort(s);
    return rc;
}

int mlr_sock_handshake_step(mlr_sock *s, const char *servername, int verify, char *err,
                            size_t errlen)
{
    char spare[1];
    xerr x;
    int rc;
    wire *w = &s->w;
    xerr_init(&x, err, errlen, spare);
    if (w->fd < 0 || s->connecting)
        return sock_closed(&x);
    if (w->tls_up)
        return fail(&x, MLR_ERR_TLS, 0, "TLS is already active on this connection");
    if (!w->ssl) {   /* the first step: as mlr_sock_handshake sets it up */
        if (servername && strlen(servername) >= sizeof w->servername)
            return fail(&x, MLR_ERR_INPUT, 0, "server name too long");
        snprintf(w->servername, sizeof w->servername, "%s", servername ? servername : "");
        w->verify = verify != 0;
        if (!w->ctx) {
            static const mlr_tls_opts none;
            if ((rc = mlr_sock_set_tls(s, &none, x.msg, x.cap)))
                goto failed;
        }
        if (w->verify && !w->ca_loaded && (rc = ca_default(w, &x)))
            goto failed;
    }
    rc = tls_step(w, &x);
    if (rc >= 0)
        return rc;
failed:
    wire_close(w, 0);
    return rc;
}

long mlr_sock_write_some(mlr_sock *s, const void *p, size_t n, int *want, char *err,
                         size_t errlen)
{
    char spare[1], why[400];
    xerr x;
    int want_read;
    long r;
    wire *w = &s->w;
    xerr_init(&x, err, errlen, spare);
    *want = 0;
    if (w->fd < 0 || s->connecting)
        return sock_closed(&x);
    if (n == 0)
        return 0;
    r = wire_write_some(w, p, n, &want_read, why, sizeof why);
    if (r > 0)
        return r;
    if (r == 0) {
        *want = want_read ? MLR_SOCK_WANT_READ : MLR_SOCK_WANT_WRITE;
        return 0;
    }
    fail(&x, MLR_ERR_NETWORK, 1, "connection to %s port %u lost while sending: %s", w->host,
         w->port, why);
    w->tls_dead = 1;
    wire_close(w, 0);
    return MLR_ERR_NETWORK;
}

long mlr_sock_read_some(mlr_sock *s, void *buf, size_t cap, int *want, char *err,
                        size_t errlen)
{
    char spare[1], why[400];
    xerr x;
    int want_write;
    long r;
    wire *w = &s->w;
    xerr_init(&x, err, errlen, spare);
    *want = 0;
    if (w->fd < 0 || s->connecting)
        return sock_closed(&x);
    if (cap == 0)
        return fail(&x, MLR_ERR_INPUT, 0, "no room to read into");
    r = wire_read_some(w, buf, cap, &want_write, why, sizeof why);
    if (r >= 0)
        return r;
    if (r == -2) {
        *want = want_write ? MLR_SOCK_WANT_WRITE : MLR_SOCK_WANT_READ;
        return 0;
    }
    fail(&x, MLR_ERR_NETWORK, 1, "connection to %s port %u lost while receiving: %s", w->host,
         w->port, why);
    wire_close(w, 0);
    return MLR_ERR_NETWORK;
}
