/* smtp_engine.c - the SMTP client state machine: session setup (greeting,
 * EHLO/HELO, STARTTLS, AUTH), transactions with PIPELINING, body streaming
 * through the dot-stuffer, and the simple commands. No sockets here; see
 * smtp_engine.h for the driver loop. */
#include "smtp_engine.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>

#include "auth.h"
#include "codec_dotstuff.h"
#include "mime_addr.h"

#define BODY_BLOCK (64 * 1024)   /* default: refill the output up to this many octets */
#define MAX_CMD_LINE 512         /* RFC 5321 4.5.3.1.4, CRLF included */
#define MAX_AUTH_ROUNDS 4        /* 334 challenges before cancelling */
#define QCAP 32                  /* expected-reply ring */
#define BDAT_CHUNK (32 * 1024)   /* default BDAT chunk size (bounded memory) */
#define BDAT_COPY_MAX 4096       /* a chunk this small is copied into the output */

enum state { ST_GREETING, ST_EHLO, ST_HELO, ST_STARTTLS, ST_TLS_WAIT, ST_AUTH,
             ST_READY, ST_CLOSED };

enum expect { X_GREETING, X_EHLO, X_HELO, X_STARTTLS, X_AUTH, X_AUTH_CANCEL,
              X_RSET, X_MAIL, X_RCPT, X_DATA, X_DOT, X_BDAT, X_NOOP, X_CMD_RSET, X_QUIT };

enum phase { P_QUEUED, P_CMDS, P_BODY, P_DOT, P_DONE };

/* read-ahead state: reading on; the source ended; it waits for Lua (a push
 * source or a signing step); it failed (the error is replayed at 354) */
enum { PRE_MORE, PRE_EOF, PRE_WAIT, PRE_FAILED };

typedef struct expect_entry {
    int kind;
    mlr_smtp_txn *t;
    size_t count;   /* for X_RCPT: replies still due */
} expect_entry;

struct mlr_smtp {
    const mlr_alloc *a;
    /* options (owned copies) */
    char *helo, *user, *secret, *host;
    size_t user_len, secret_len;
    int secret_is_token;
    int security, allow_plain;
    unsigned auth_pref[8];
    size_t auth_npref;
    unsigned port;
    size_t max_line;
    int no_chunking;
    size_t chunk_size;
    size_t out_block;     /* refill the body output up to this many octets */
    mlr_smtp_trace_fn trace;
    void *trace_ud;

    int state;
    int tls_active, starttls_done, starttls_refused;
    int quitting, need_rset;
    mlr_caps caps;
    mlr_buf ehlo;
    mlr_reply_parser rp;

    mlr_buf out;          /* bytes to write: out.data[out_pos .. out.len) */
    size_t out_pos;
    mlr_buf tmp;          /* command line under construction */
    mlr_buf addr;         /* an envelope address in its wire form */

    expect_entry q[QCAP];
    size_t qhead, qlen;

    mlr_smtp_txn *txq[MLR_SMTP_MAX_TXN];
    size_t ntx;
    mlr_smtp_txn *body;   /* transaction whose body is being sent */
    int body_wait;        /* its source returned MLR_BODY_WAIT */
    int body_eof;         /* its source already ended (in the read-ahead) */
    uint64_t body_credit; /* read-ahead octets not yet counted in body_sent */
    mlr_dot dot;          /* the body's normaliser (stuffing for DATA only) */
    /* DATA read-ahead: while the 354 is awaited, the body's first octets are
     * read and stuffed here (not into out: they may not go before the
     * 354), so that the reply finds them ready; see prefetch() */
    mlr_buf pre;
    mlr_smtp_txn *pre_txn;   /* whose octets pre holds; NULL: none */
    int pre_state;           /* PRE_* */
    int pre_rc;              /* PRE_FAILED: the error */
    uint64_t pre_read;       /* source octets in pre */
    mlr_buf chunk;        /* BDAT: the chunk being filled */
    mlr_buf wire;         /* BDAT: the chunk being written, straight from here
                             (no copy into out): wire[wire_pos..) goes out right
                             after out[..wire_at) */
    size_t wire_pos, wire_at;
    int wire_busy;
    int bdat_eof;         /* BDAT: the body ended; LAST waits for the wire */

    mlr_sasl sasl;
    unsigned auth_mech;   /* mechanism in use / used */
    int auth_rounds, ir_deferred;
    mlr_buf sasl_buf;     /* initial response kept for a deferred send */

    mlr_smtp_status status;   /* fatal error */
    mlr_smtp_status cmd;      /* NOOP / RSET outcome */
    uint64_t step_id;
};

/* ---- small helpers ---- */

static int is_2xx(int code) { return code >= 200 && code < 300; }

/* Copy reply text into a status message, newlines turned into spaces. */
static void set_text(char *dst, size_t cap, const char *src, size_t n)
{
    size_t i;
    if (n > cap - 1)
        n = cap - 1;
    for (i = 0; i < n; i++)
        dst[i] = (src[i] == '\n' || src[i] == '\r') ? ' ' : src[i];
    dst[n] = '\0';
}

/* The RFC 3463 code at the start of a reply's text into dst, or "".
 * Taken whether or not the server announced ENHANCEDSTATUSCODES (many
 * servers write them without saying so, and RFC 2034 asks nothing of the
 * client), but only when its class agrees with the reply code (RFC 2034,
 * section 4: a 5xx reply carries a 5.x.x code), so free text that merely
 * starts with digits and dots is not taken for one. */
static void copy_enhanced(char dst[16], const mlr_reply *r)
{
    if (r->enhanced[0] && r->enhanced[0] - '0' == r->code / 100)
        memcpy(dst, r->enhanced, 16);
    else
        dst[0] = '\0';
}

/* Fill a status from a server reply (kind "smtp"). */
static void status_from_reply(mlr_smtp_status *s, const mlr_reply *r)
{
    s->err = MLR_ERR_SMTP;
    s->code = r->code;
    s->temporary = r->code / 100 == 4;
    copy_enhanced(s->enhanced, r);
    set_text(s->message, sizeof s->message, r->text, r->text_len);
}

/* Send a trace line, if tracing. */
static void trace(mlr_smtp *e, char dir, const char *line, size_t len)
{
    if (e->trace)
        e->trace(e->trace_ud, dir, line, len);
}

/* Append one command line (CRLF added); show is what the trace gets
 * (NULL = the line itself). */
static int add_line(mlr_smtp *e, const char *line, size_t len, const char *show)
{
    if (mlr_buf_add(&e->out, line, len) || mlr_buf_add(&e->out, "\r\n", 2))
        return MLR_ERR_NOMEM;
    trace(e, 'C', show ? show : line, show ? strlen(show) : len);
    e->step_id++;
    return MLR_OK;
}

/* Queue the expectation of a reply. */
static int expect(mlr_smtp *e, int kind, mlr_smtp_txn *t)
{
    expect_entry *last = e->qlen ? &e->q[(e->qhead + e->qlen - 1) % QCAP] : NULL;
    if ((kind == X_RCPT || kind == X_BDAT) && last && last->kind == kind && last->t == t) {
        last->count++;
        return MLR_OK;
    }
    if (e->qlen == QCAP)
        return MLR_ERR_LIMIT;
    e->q[(e->qhead + e->qlen) % QCAP] = (expect_entry){kind, t, 1};
    e->qlen++;
    return MLR_OK;
}

static void txn_finish(mlr_smtp *e, mlr_smtp_txn *t);
static int awaits(const mlr_smtp *e, const mlr_smtp_txn *t);
static void take_prefetch(mlr_smtp *e, mlr_smtp_txn *t);
static void data_end(mlr_smtp *e, mlr_smtp_txn *t);

/* Record a fatal error (unless one is set); quit: queue a polite QUIT
 * (only where the session state is known to be sane). */
static int vfatal(mlr_smtp *e, int err, int temporary, const mlr_reply *r, int quit,
                  const char *fmt, va_list ap)
{
    size_t i;
    if (e->status.err)
        return e->status.err;
    memset(&e->status, 0, sizeof e->status);
    if (r)
        status_from_reply(&e->status, r);
    e->status.err = err;
    e->status.temporary = temporary;
    if (fmt)
        vsnprintf(e->status.message, sizeof e->status.message, fmt, ap);
    mlr_buf_reset(&e->out);
    mlr_buf_reset(&e->chunk);
    mlr_buf_reset(&e->wire);
    e->wire_busy = 0;
    e->bdat_eof = 0;
    e->out_pos = 0;
    e->qlen = 0;
    e->body = NULL;
    e->body_wait = 0;
    e->body_eof = 0;
    e->body_credit = 0;
    e->pre_txn = NULL;
    mlr_buf_reset(&e->pre);
    if (quit && e->state != ST_CLOSED && !e->quitting) {
        e->quitting = 1;
        add_line(e, "QUIT", 4, NULL);
    }
    /* every outstanding transaction fails with the same error */
    for (i = 0; i < e->ntx; i++) {
        mlr_smtp_txn *t = e->txq[i];
        t->status = e->status;
        /* its end was handed out and its reply is lost with the session
         * (a drop, a timeout, or a failure elsewhere, such as a callback
         * that gave up another message in flight): it may have arrived */
        if (t->phase == P_DOT && !t->dot_ignored && !strstr(t->status.message, "outcome")) {
            size_t l = strlen(t->status.message);
            snprintf(t->status.message + l, sizeof t->status.message - l,
                     " (outcome unknown: the message may or may not have been delivered)");
        }
        t->phase = P_DONE;
        t->done = 1;
    }
    e->ntx = 0;
    return err;
}

static int fatal(mlr_smtp *e, int err, int temporary, const mlr_reply *r, int quit,
                 const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 6, 7)))
#endif
    ;

/* vfatal with a format. */
static int fatal(mlr_smtp *e, int err, int temporary, const mlr_reply *r, int quit,
                 const char *fmt, ...)
{
    va_list ap;
    int rc;
    va_start(ap, fmt);
    rc = vfatal(e, err, temporary, r, quit, fmt, ap);
    va_end(ap);
    return rc;
}

int mlr_smtp_fail(mlr_smtp *e, int err, int temporary, const char *fmt, ...)
{
    va_list ap;
    int rc;
    va_start(ap, fmt);
    rc = vfatal(e, err, temporary, NULL, 0, fmt, ap);
    va_end(ap);
    return rc;
}

/* Out of memory is fatal. */
static int nomem(mlr_smtp *e) { return fatal(e, MLR_ERR_NOMEM, 0, NULL, 0, "out of memory"); }

/* ---- options ---- */

/* Does s[0..n) hold an octet that must never reach a command line? */
static int has_ctl(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 1;
    return 0;
}

mlr_smtp *mlr_smtp_new(const mlr_alloc *a, const mlr_smtp_opts *o, int *err,
                       char *errmsg, size_t errlen)
{
    mlr_smtp *e;
    const char *helo = o->helo ? o->helo : "localhost";
    size_t hl = strlen(helo);
    *err = MLR_ERR_INPUT;
    if (hl == 0 || hl > 255 || has_ctl(helo, hl) || strchr(helo, ' ')) {
        snprintf(errmsg, errlen, "invalid helo name (empty, too long, or a space or control character)");
        return NULL;
    }
    /* Credentials no mechanism can carry are refused before anything is
     * sent, rather than reaching the server as a failed AUTH: a control
     * character in the user name, a NUL in the password (PLAIN separates
     * its fields with NUL) or any control character in a token. */
    if (o->username && has_ctl(o->username, o->username_len)) {
        snprintf(errmsg, errlen, "username contains a control character (CR, LF, NUL...)");
        return NULL;
    }
    if (o->username && o->password && memchr(o->password, '\0', o->password_len)) {
        snprintf(errmsg, errlen, "password contains a NUL octet");
        return NULL;
    }
    if (o->username && o->token && !o->password && has_ctl(o->token, o->token_len)) {
        snprintf(errmsg, errlen, "token contains a control character (CR, LF, NUL...)");
        return NULL;
    }
    *err = MLR_ERR_NOMEM;
    snprintf(errmsg, errlen, "out of memory");
    e = mlr_malloc(a, sizeof *e);
    if (!e)
        return NULL;
    memset(e, 0, sizeof *e);
    e->a = a;
    mlr_buf_init(&e->ehlo, a);
    mlr_buf_init(&e->out, a);
    mlr_buf_init(&e->tmp, a);
    mlr_buf_init(&e->addr, a);
    mlr_buf_init(&e->sasl_buf, a);
    mlr_buf_init(&e->chunk, a);
    mlr_buf_init(&e->wire, a);
    mlr_buf_init(&e->pre, a);
    mlr_reply_init(&e->rp, a);
    e->helo = mlr_strndup(a, helo, hl);
    e->host = mlr_strndup(a, o->host ? o->host : "", o->host ? strlen(o->host) : 0);
    if (o->username) {
        const char *sec = o->password ? o->password : o->token;
        size_t sl = o->password ? o->password_len : o->token_len;
        e->user = mlr_strndup(a, o->username, o->username_len);
        e->user_len = o->username_len;
        e->secret = mlr_strndup(a, sec ? sec : "", sec ? sl : 0);
        e->secret_len = sec ? sl : 0;
        e->secret_is_token = !o->password && o->token;
        if (!e->user || !e->secret) {
            mlr_smtp_free(e);
            return NULL;
        }
    }
    if (!e->helo || !e->host) {
        mlr_smtp_free(e);
        return NULL;
    }
    e->security = o->security;
    e->allow_plain = o->allow_plaintext_auth;
    e->auth_npref = o->auth_npref > 8 ? 8 : o->auth_npref;
    memcpy(e->auth_pref, o->auth_pref, sizeof e->auth_pref);
    e->port = o->port;
    e->max_line = o->max_line == 0 ? 998 : o->max_line == SIZE_MAX ? 0 : o->max_line;
    e->no_chunking = o->no_chunking;
    e->chunk_size = o->chunk_size ? o->chunk_size : BDAT_CHUNK;
    e->out_block = o->out_block ? o->out_block : BODY_BLOCK;
    e->trace = o->trace;
    e->trace_ud = o->trace_ud;
    e->tls_active = o->security == MLR_SEC_TLS;
    e->state = ST_GREETING;
    expect(e, X_GREETING, NULL);
    *err = MLR_OK;
    return e;
}

void mlr_smtp_free(mlr_smtp *e)
{
    if (!e)
        return;
    if (e->secret) {
        OPENSSL_cleanse(e->secret, e->secret_len);
        mlr_free(e->a, e->secret, e->secret_len + 1);
    }
    mlr_sasl_clear(&e->sasl);
    if (e->sasl_buf.data)
        OPENSSL_cleanse(e->sasl_buf.data, e->sasl_buf.cap);
    if (e->out.data)  /* may hold an AUTH line */
        OPENSSL_cleanse(e->out.data, e->out.cap);
    if (e->user)
        mlr_free(e->a, e->user, e->user_len + 1);
    if (e->helo)
        mlr_free(e->a, e->helo, strlen(e->helo) + 1);
    if (e->host)
        mlr_free(e->a, e->host, strlen(e->host) + 1);
    mlr_buf_free(&e->ehlo);
    mlr_buf_free(&e->out);
    mlr_buf_free(&e->tmp);
    mlr_buf_free(&e->addr);
    mlr_buf_free(&e->sasl_buf);
    mlr_buf_free(&e->chunk);
    mlr_buf_free(&e->wire);
    mlr_buf_free(&e->pre);
    mlr_reply_free(&e->rp);
    mlr_free(e->a, e, sizeof *e);
}

/* ---- transactions ---- */

void mlr_smtp_txn_init(mlr_smtp_txn *t, const mlr_alloc *a)
{
    memset(t, 0, sizeof *t);
    t->a = a;
    mlr_buf_init(&t->text, a);
}

void mlr_smtp_txn_free(mlr_smtp_txn *t)
{
    if (t->results)
        mlr_free(t->a, t->results, t->results_cap * sizeof *t->results);
    t->results = NULL;
    t->results_cap = 0;
    mlr_buf_free(&t->text);
}

void mlr_smtp_txn_clear(mlr_smtp_txn *t)
{
    const mlr_alloc *a = t->a;
    mlr_rcpt_result *res = t->results;
    size_t cap = t->results_cap;
    mlr_buf text = t->text;
    memset(t, 0, sizeof *t);
    t->a = a;
    t->results = res;
    t->results_cap = cap;
    t->text = text;
    mlr_buf_reset(&t->text);
    if (t->results)
        memset(t->results, 0, t->results_cap * sizeof *t->results);
}

/* Check an envelope addr-spec with the rules of message addresses
 * (mlr_addr_check: no control characters, no quoted local part that could
 * hide ESMTP parameters, RFC 5321 lengths) and its international domain
 * (mlr_addr_idna, which writes the wire form into scratch). The lengths
 * are the caller's, never strlen. MLR_OK or MLR_ERR_INPUT with why set;
 * *utf8_local when the local part needs SMTPUTF8. */
static int check_addr(mlr_buf *scratch, const char *s, size_t n, int is_from, int *utf8_local,
                      char *why, size_t whylen)
{
    int utf8, rc;
    *utf8_local = 0;
    if (n == 0) {
        if (is_from)
            return MLR_OK;
        snprintf(why, whylen, "empty recipient address");
        return MLR_ERR_INPUT;
    }
    if ((rc = mlr_addr_check(s, n, &utf8, why, whylen)))
        return rc;
    mlr_buf_reset(scratch);
    return mlr_addr_idna(s, n, scratch, utf8_local, why, whylen);
}

/* Append the RFC 3461 xtext of s[0..n). */
static int add_xtext(mlr_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        int rc;
        if (c >= 33 && c <= 126 && c != '+' && c != '=') {
            rc = mlr_buf_addc(b, (char)c);
        } else {
            char x[3] = {'+', hex[c >> 4], hex[c & 15]};
            rc = mlr_buf_add(b, x, 3);
        }
        if (rc)
            return rc;
    }
    return MLR_OK;
}

/* Fail a transaction before any of its bytes went out. */
static void txn_reject(mlr_smtp *e, mlr_smtp_txn *t, int err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

static void txn_reject(mlr_smtp *e, mlr_smtp_txn *t, int err, const char *fmt, ...)
{
    va_list ap;
    memset(&t->status, 0, sizeof t->status);
    t->status.err = err;
    va_start(ap, fmt);
    vsnprintf(t->status.message, sizeof t->status.message, fmt, ap);
    va_end(ap);
    t->failed = 1;
    txn_finish(e, t);
}

/* Record the first failure of a transaction from a reply. */
static void txn_fail_reply(mlr_smtp_txn *t, const mlr_reply *r)
{
    if (t->failed)
        return;
    t->failed = 1;
    status_from_reply(&t->status, r);
}

/* Build the MAIL FROM line into e->tmp. */
static int build_mail(mlr_smtp *e, mlr_smtp_txn *t, int utf8)
{
    mlr_buf *b = &e->tmp;
    char num[32];
    int rc, local8;
    char why[8];   /* unused: txn_start checked the address */
    mlr_buf_reset(b);
    if (mlr_buf_addstr(b, "MAIL FROM:<"))
        return MLR_ERR_NOMEM;
    /* the address in its wire form (an international domain as A-label) */
    if ((rc = mlr_addr_idna(t->from, t->from_len, b, &local8, why, sizeof why)))
        return rc;
    if (mlr_buf_addc(b, '>'))
        return MLR_ERR_NOMEM;
    if ((e->caps.flags & MLR_CAP_SIZE) && t->size) {
        snprintf(num, sizeof num, " SIZE=%llu", (unsigned long long)t->size);
        if (mlr_buf_addstr(b, num))
            return MLR_ERR_NOMEM;
    }
    if (t->binarymime) {
        if (mlr_buf_addstr(b, " BODY=BINARYMIME"))
            return MLR_ERR_NOMEM;
    } else if ((e->caps.flags & MLR_CAP_8BITMIME) && (t->eightbit || utf8) &&
               mlr_buf_addstr(b, " BODY=8BITMIME")) {
        return MLR_ERR_NOMEM;
    }
    if (utf8 && mlr_buf_addstr(b, " SMTPUTF8"))
        return MLR_ERR_NOMEM;
    if (e->caps.flags & MLR_CAP_DSN) {
        if (t->dsn_ret && (mlr_buf_addstr(b, " RET=") || mlr_buf_addstr(b, t->dsn_ret)))
            return MLR_ERR_NOMEM;
        if (t->dsn_envid && (mlr_buf_addstr(b, " ENVID=") ||
                             add_xtext(b, t->dsn_envid, t->dsn_envid_len)))
            return MLR_ERR_NOMEM;
    }
    return MLR_OK;
}

/* Build the RCPT TO line of recipient i into e->tmp. */
static int build_rcpt(mlr_smtp *e, mlr_smtp_txn *t, size_t i)
{
    mlr_buf *b = &e->tmp;
    const char *addr;
    size_t n, k;
    int ascii = 1, rc, local8;
    char why[8];   /* unused: txn_start checked the address */
    /* the address in its wire form (an international domain as A-label) */
    mlr_buf_reset(&e->addr);
    if ((rc = mlr_addr_idna(t->rcpt[i], t->rcpt_len[i], &e->addr, &local8, why, sizeof why)))
        return rc;
    addr = e->addr.data;
    n = e->addr.len;
    mlr_buf_reset(b);
    if (mlr_buf_addstr(b, "RCPT TO:<") || mlr_buf_add(b, addr, n) || mlr_buf_addc(b, '>'))
        return MLR_ERR_NOMEM;
    if ((e->caps.flags & MLR_CAP_DSN) && t->dsn_notify) {
        static const char *names[] = {"NEVER", "SUCCESS", "FAILURE", "DELAY"};
        int first = 1;
        if (mlr_buf_addstr(b, " NOTIFY="))
            return MLR_ERR_NOMEM;
        for (k = 0; k < 4; k++) {
            if (!(t->dsn_notify & (1u << k)))
                continue;
            if ((!first && mlr_buf_addc(b, ',')) || mlr_buf_addstr(b, names[k]))
                return MLR_ERR_NOMEM;
            first = 0;
        }
        for (k = 0; k < n; k++)
            if ((unsigned char)addr[k] >= 0x80)
                ascii = 0;
        if (ascii && (mlr_buf_addstr(b, " ORCPT=rfc822;") || add_xtext(b, addr, n)))
            return MLR_ERR_NOMEM;
    }
    return MLR_OK;
}

/* Write the transaction's next command(s): with PIPELINING all of them. */
static int send_cmds(mlr_smtp *e, mlr_smtp_txn *t)
{
    int pipelined = (e->caps.flags & MLR_CAP_PIPELINING) != 0;
    do {
        size_t i = t->next_cmd;
        int rc, kind;
        if (i == 0) {
            rc = build_mail(e, t, t->utf8);
            kind = X_MAIL;
        } else if (i <= t->nrcpt) {
            rc = build_rcpt(e, t, i - 1);
            kind = X_RCPT;
        } else {
            mlr_buf_reset(&e->tmp);
            rc = mlr_buf_addstr(&e->tmp, "DATA");
            kind = X_DATA;
        }
        if (rc || add_line(e, e->tmp.data, e->tmp.len, NULL))
            return nomem(e);
        if (expect(e, kind, t))
            return fatal(e, MLR_ERR_LIMIT, 0, NULL, 0, "too many pipelined commands");
        t->next_cmd++;
    } while (pipelined && t->next_cmd <= t->nrcpt + (t->bdat ? 0 : 1));
    return MLR_OK;
}

/* Does the last EHLO list this keyword (a line of its own, any case)? */
static int ehlo_has(const mlr_smtp *e, const char *kw)
{
    size_t i = 0, n = e->ehlo.len, k = strlen(kw);
    const char *t = e->ehlo.data;
    while (t && i < n) {
        size_t j = i, q;
        while (j < n && t[j] != '\n')
            j++;
        if (j - i >= k && (j - i == k || t[i + k] == ' ')) {
            for (q = 0; q < k; q++) {
                char c = t[i + q];
                if ((c >= 'a' && c <= 'z' ? c - 32 : c) != kw[q])
                    break;
            }
            if (q == k && i > 0)   /* the first line is the greeting */
                return 1;
        }
        i = j + 1;
    }
    return 0;
}

/* The recipients are answered and some accepted: start the BDAT body. */
static void start_bdat(mlr_smtp *e, mlr_smtp_txn *t)
{
    t->phase = P_BODY;
    e->body = t;
    mlr_dot_init_plain(&e->dot, e->max_line);
    e->bdat_eof = 0;
    mlr_buf_reset(&e->chunk);
    e->step_id++;
}

/* Validate and start a queued transaction; 1 when its commands went out. */
static int txn_start(mlr_smtp *e, mlr_smtp_txn *t)
{
    char why[200];
    const char *u8 = NULL;   /* the first address with a non-ASCII local part */
    size_t i, len, u8len = 0;
    int local8, rc;
    if (!t->read) {
        txn_reject(e, t, MLR_ERR_INPUT, "no message body source");
        return 0;
    }
    if (t->nrcpt == 0) {
        txn_reject(e, t, MLR_ERR_INPUT, "no recipients");
        return 0;
    }
    rc = check_addr(&e->addr, t->from, t->from_len, 1, &local8, why, sizeof why);
    if (rc == MLR_ERR_INPUT) {
        txn_reject(e, t, MLR_ERR_INPUT, "invalid envelope sender: %s", why);
        return 0;
    }
    if (rc)
        return nomem(e), 0;
    if (local8) {
        u8 = t->from;
        u8len = t->from_len;
    }
    for (i = 0; i < t->nrcpt; i++) {
        rc = check_addr(&e->addr, t->rcpt[i], t->rcpt_len[i], 0, &local8, why, sizeof why);
        if (rc == MLR_ERR_INPUT) {
            txn_reject(e, t, MLR_ERR_INPUT, "invalid envelope recipient %zu: %s", i + 1, why);
            return 0;
        }
        if (rc)
            return nomem(e), 0;
        if (local8 && !u8) {
            u8 = t->rcpt[i];
            u8len = t->rcpt_len[i];
        }
    }
    if (t->dsn_ret && strcmp(t->dsn_ret, "FULL") && strcmp(t->dsn_ret, "HDRS")) {
        txn_reject(e, t, MLR_ERR_INPUT, "DSN ret must be FULL or HDRS");
        return 0;
    }
    if ((t->dsn_notify & MLR_DSN_NEVER) && (t->dsn_notify & ~(unsigned)MLR_DSN_NEVER)) {
        txn_reject(e, t, MLR_ERR_INPUT, "DSN notify NEVER cannot be combined with other values");
        return 0;
    }
    if (t->dsn_notify & ~15u) {
        txn_reject(e, t, MLR_ERR_INPUT, "invalid DSN notify value");
        return 0;
    }
    if (u8)
        t->utf8 = 1;
    t->bdat = (e->caps.flags & MLR_CAP_CHUNKING) && !e->no_chunking;
    if (t->binarymime && !(t->bdat && ehlo_has(e, "BINARYMIME"))) {
        txn_reject(e, t, MLR_ERR_UNSUPPORTED,
                   "the message is binary (BINARYMIME) but the server does not offer "
                   "CHUNKING and BINARYMIME%s", e->no_chunking ? " (or chunking is off)" : "");
        return 0;
    }
    if (t->utf8 && !(e->caps.flags & MLR_CAP_SMTPUTF8)) {
        if (u8)
            txn_reject(e, t, MLR_ERR_UNSUPPORTED,
                       "the address %.*s has a non-ASCII local part, which needs SMTPUTF8, but "
                       "the server does not offer it", (int)u8len, u8);
        else
            txn_reject(e, t, MLR_ERR_UNSUPPORTED,
                       "the message needs SMTPUTF8 (an address in its headers has a non-ASCII "
                       "local part) but the server does not offer it");
        return 0;
    }
    if ((e->caps.flags & MLR_CAP_SIZE) && e->caps.size && t->size > e->caps.size) {
        txn_reject(e, t, MLR_ERR_SMTP,
                   "message size %llu exceeds the server's SIZE limit of %llu octets",
                   (unsigned long long)t->size, (unsigned long long)e->caps.size);
        t->status.code = 552;
        memcpy(t->status.enhanced, "5.3.4", 6);
        return 0;
    }
    /* every command line must fit in 512 octets: check before writing any */
    if ((rc = build_mail(e, t, t->utf8)))
        return nomem(e), 0;
    len = e->tmp.len + 2;
    if (len > MAX_CMD_LINE) {
        txn_reject(e, t, MLR_ERR_INPUT, "MAIL FROM command would exceed 512 octets");
        return 0;
    }
    for (i = 0; i < t->nrcpt; i++) {
        if ((rc = build_rcpt(e, t, i)))
            return nomem(e), 0;
        if (e->tmp.len + 2 > MAX_CMD_LINE) {
            txn_reject(e, t, MLR_ERR_INPUT, "RCPT TO command %zu would exceed 512 octets", i + 1);
            return 0;
        }
    }
    if (t->nrcpt > SIZE_MAX / sizeof *t->results)
        return nomem(e), 0;
    if (t->results_cap < t->nrcpt) {   /* (a transaction reused keeps its room) */
        if (t->results)
            mlr_free(t->a, t->results, t->results_cap * sizeof *t->results);
        t->results_cap = 0;
        t->results = mlr_malloc(t->a, t->nrcpt * sizeof *t->results);
        if (!t->results)
            return nomem(e), 0;
        t->results_cap = t->nrcpt;
    }
    memset(t->results, 0, t->nrcpt * sizeof *t->results);
    t->phase = P_CMDS;
    if (e->need_rset) {
        if (add_line(e, "RSET", 4, NULL) || expect(e, X_RSET, t))
            return nomem(e), 0;
        e->need_rset = 0;
        if (!(e->caps.flags & MLR_CAP_PIPELINING))
            return 1;  /* MAIL goes out after the RSET reply */
    }
    send_cmds(e, t);
    /* RFC 3030 with RFC 2920: a message that fits one chunk follows its
     * RCPTs at once, before their replies (the server discards the chunk
     * when no recipient was accepted); so the transactions of many small
     * messages go back to back, one write each. A larger one waits for the
     * replies, not to send its bulk to nobody. */
    if (!e->status.err && t->bdat && (e->caps.flags & MLR_CAP_PIPELINING) && !e->body &&
        t->size > 0 && t->size <= e->chunk_size) {
        t->bdat_early = 1;
        start_bdat(e, t);
    }
    return e->status.err ? 0 : 1;
}

/* Start queued transactions as far as the protocol allows. */
static void pump(mlr_smtp *e)
{
    size_t i;
    while (!e->status.err && e->state == ST_READY && !e->quitting) {
        mlr_smtp_txn *next = NULL;
        int busy = 0, waiting_dot = 0;
        for (i = 0; i < e->ntx; i++) {
            mlr_smtp_txn *t = e->txq[i];
            if (t->phase == P_CMDS || t->phase == P_BODY)
                busy = 1;
            else if (t->phase == P_DOT)
                waiting_dot = 1;
            else if (t->phase == P_QUEUED && !next)
                next = t;
        }
        if (!next || busy)
            return;
        if (waiting_dot && !(e->caps.flags & MLR_CAP_PIPELINING))
            return;
        /* a simple command still outstanding keeps the order simple */
        if (e->qlen && e->q[e->qhead].kind >= X_NOOP)
            return;
        if (txn_start(e, next))
            return;
    }
}

/* Mark a transaction done and drop it from the queue. */
static void txn_finish(mlr_smtp *e, mlr_smtp_txn *t)
{
    size_t i, j;
    if (e->pre_txn == t) {   /* refused before its body: the read-ahead goes */
        e->pre_txn = NULL;
        mlr_buf_reset(&e->pre);
    }
    t->phase = P_DONE;
    t->done = 1;
    for (i = 0; i < e->ntx; i++)
        if (e->txq[i] == t) {
            for (j = i + 1; j < e->ntx; j++)
                e->txq[j - 1] = e->txq[j];
            e->ntx--;
            break;
        }
}

size_t mlr_smtp_window(const mlr_smtp *e)
{
    unsigned both = MLR_CAP_CHUNKING | MLR_CAP_PIPELINING;
    return (e->caps.flags & both) == both && !e->no_chunking ? MLR_SMTP_MAX_TXN : 3;
}

int mlr_smtp_send(mlr_smtp *e, mlr_smtp_txn *t)
{
    if (e->status.err || e->quitting || e->state == ST_CLOSED ||
        e->ntx == MLR_SMTP_MAX_TXN)
        return MLR_ERR_STATE;
    t->done = 0;
    t->phase = P_QUEUED;
    t->failed = t->mail_ok = t->dot_ignored = 0;
    t->next_cmd = t->replies = 0;
    t->bdat = t->bdat_last = t->bdat_stopped = t->bdat_early = 0;
    t->bdat_sent = t->bdat_replies = 0;
    t->naccepted = 0;
    t->body_sent = 0;
    t->body_done = 0;
    mlr_buf_reset(&t->text);
    if (t->results)   /* (results from an earlier use must not show) */
        memset(t->results, 0, t->results_cap * sizeof *t->results);
    memset(&t->status, 0, sizeof t->status);
    e->txq[e->ntx++] = t;
    pump(e);
    return MLR_OK;
}

/* ---- session setup ---- */

static void send_ehlo(mlr_smtp *e, const char *verb, int kind, int state)
{
    mlr_buf_reset(&e->tmp);
    if (mlr_buf_addstr(&e->tmp, verb) || mlr_buf_addc(&e->tmp, ' ') ||
        mlr_buf_addstr(&e->tmp, e->helo) ||
        add_line(e, e->tmp.data, e->tmp.len, NULL) || expect(e, kind, NULL)) {
        nomem(e);
        return;
    }
    e->state = state;
}

/* Session setup is over. */
static void become_ready(mlr_smtp *e)
{
    e->state = ST_READY;
    pump(e);
}

/* Start AUTH (when credentials were given), else become ready. */
static void start_auth(mlr_smtp *e)
{
    char names[128];
    size_t i, nl = 0;
    int rc;
    mlr_buf *ir = &e->sasl_buf;
    if (!e->user) {
        become_ready(e);
        return;
    }
    if (!e->tls_active && !e->allow_plain) {
        fatal(e, MLR_ERR_AUTH, 0, NULL, 1,
              "refusing to send credentials over an unencrypted connection "
              "(use TLS, or allow_plaintext_auth = true to send them in clear text)");
        return;
    }
    if (!(e->caps.flags & MLR_CAP_AUTH)) {
        fatal(e, MLR_ERR_AUTH, 0, NULL, 1, "the server does not offer AUTH");
        return;
    }
    e->auth_mech = mlr_sasl_choose(e->caps.mechs, e->auth_pref, e->auth_npref,
                                   !e->secret_is_token, e->secret_is_token);
    if (e->auth_mech == MLR_MECH_SCRAM_SHA_256 && e->auth_npref == 0 &&
        (mlr_saslprep(e->user, e->user_len, NULL) || mlr_saslprep(e->secret, e->secret_len, NULL)))
        /* credentials SASLprep refuses (not UTF-8, say): the next best */
        e->auth_mech = mlr_sasl_choose(e->caps.mechs & ~(unsigned)MLR_MECH_SCRAM_SHA_256,
                                       e->auth_pref, 0, !e->secret_is_token, e->secret_is_token);
    if (!e->auth_mech) {
        names[0] = '\0';
        for (i = 0; i < 6; i++)
            if (e->caps.mechs & (1u << i))
                nl += (size_t)snprintf(names + nl, sizeof names - nl, " %s", mlr_mech_name(1u << i));
        fatal(e, MLR_ERR_AUTH, 0, NULL, 1,
              "no usable AUTH mechanism for the given credentials (server offers:%s)",
              nl ? names : " none we support");
        return;
    }
    mlr_sasl_clear(&e->sasl);
    memset(&e->sasl, 0, sizeof e->sasl);
    e->sasl.mech = e->auth_mech;
    e->sasl.user = e->user;
    e->sasl.user_len = e->user_len;
    e->sasl.secret = e->secret;
    e->sasl.secret_len = e->secret_len;
    e->sasl.host = e->host;
    e->sasl.port = e->port;
    if (mlr_sasl_check(&e->sasl)) {
        fatal(e, MLR_ERR_INPUT, 0, NULL, 1, "credentials contain octets %s cannot carry",
              mlr_mech_name(e->auth_mech));
        return;
    }
    e->auth_rounds = 0;
    e->ir_deferred = 0;
    mlr_buf_reset(ir);
    rc = mlr_sasl_initial(&e->sasl, ir);
    if (rc == MLR_ERR_INPUT) {
        fatal(e, MLR_ERR_INPUT, 0, NULL, 1, "credentials contain characters %s cannot carry",
              mlr_mech_name(e->auth_mech));
        return;
    }
    if (rc < 0) {
        nomem(e);
        return;
    }
    mlr_buf_reset(&e->tmp);
    if (mlr_buf_addstr(&e->tmp, "AUTH ") || mlr_buf_addstr(&e->tmp, mlr_mech_name(e->auth_mech))) {
        nomem(e);
        return;
    }
    snprintf(names, sizeof names, "AUTH %s", mlr_mech_name(e->auth_mech));
    if (rc == 1) {
        size_t b64 = 4 * ((ir->len + 2) / 3);
        if (e->tmp.len + 1 + b64 + 2 > MAX_CMD_LINE) {
            e->ir_deferred = 1;  /* RFC 4954 section 4: send it after a 334 */
        } else {
            if (mlr_buf_addc(&e->tmp, ' ') ||
                mlr_sasl_b64_append(&e->tmp, (const uint8_t *)ir->data, ir->len)) {
                nomem(e);
                return;
            }
            snprintf(names, sizeof names, "AUTH %s <redacted>", mlr_mech_name(e->auth_mech));
        }
    }
    if (add_line(e, e->tmp.data, e->tmp.len, names) || expect(e, X_AUTH, NULL)) {
        nomem(e);
        return;
    }
    OPENSSL_cleanse(e->tmp.data, e->tmp.len);
    e->state = ST_AUTH;
}

/* After a successful EHLO or HELO: STARTTLS, AUTH, or ready. */
static void after_ehlo(mlr_smtp *e)
{
    if (!e->tls_active && !e->starttls_done && !e->starttls_refused &&
        (e->security == MLR_SEC_STARTTLS || e->security == MLR_SEC_STARTTLS_OPTIONAL)) {
        if (e->caps.flags & MLR_CAP_STARTTLS) {
            if (add_line(e, "STARTTLS", 8, NULL) || expect(e, X_STARTTLS, NULL)) {
                nomem(e);
                return;
            }
            e->state = ST_STARTTLS;
            return;
        }
        if (e->security == MLR_SEC_STARTTLS) {
            fatal(e, MLR_ERR_TLS, 0, NULL, 1,
                  "the server does not offer STARTTLS, and security = \"starttls\" requires it "
                  "(security = \"starttls-optional\" goes on in clear text when it is missing, "
                  "security = \"none\" never uses TLS)");
            return;
        }
    }
    start_auth(e);
}

/* Send a SASL response (raw octets) base64-encoded; the trace hides it. */
static void auth_respond(mlr_smtp *e, const uint8_t *p, size_t n)
{
    mlr_buf_reset(&e->tmp);
    if (mlr_sasl_b64_append(&e->tmp, p, n) ||
        add_line(e, e->tmp.data, e->tmp.len, "<redacted>") || expect(e, X_AUTH, NULL)) {
        nomem(e);
        return;
    }
    OPENSSL_cleanse(e->tmp.data, e->tmp.len);
}

/* Cancel the SASL exchange with "*". */
static void auth_cancel(mlr_smtp *e)
{
    if (add_line(e, "*", 1, NULL) || expect(e, X_AUTH_CANCEL, NULL))
        nomem(e);
}

/* A reply to AUTH or to a SASL response. */
static void on_auth(mlr_smtp *e, const mlr_reply *r)
{
    uint8_t *dec;
    long dn;
    size_t tl = r->text_len;
    int rc;
    if (is_2xx(r->code)) {
        if (!mlr_sasl_complete(&e->sasl)) {
            fatal(e, MLR_ERR_AUTH, 0, r, 1,
                  "the server accepted %s authentication without proving that it knows the "
                  "password (no server signature); not trusting this server",
                  mlr_mech_name(e->auth_mech));
            return;
        }
        mlr_sasl_clear(&e->sasl);
        become_ready(e);
        return;
    }
    if (r->code != 334) {
        if (r->code / 100 == 3)
            fatal(e, MLR_ERR_PROTOCOL, 0, r, 0, "unexpected %d reply to AUTH", r->code);
        else
            fatal(e, MLR_ERR_AUTH, r->code / 100 == 4, r, 1, "authentication failed (%s): %d %.400s",
                  mlr_mech_name(e->auth_mech), r->code, r->text);
        return;
    }
    if (++e->auth_rounds > MAX_AUTH_ROUNDS) {
        auth_cancel(e);
        return;
    }
    if (e->ir_deferred) {
        e->ir_deferred = 0;
        auth_respond(e, (const uint8_t *)e->sasl_buf.data, e->sasl_buf.len);
        OPENSSL_cleanse(e->sasl_buf.data, e->sasl_buf.len);
        return;
    }
    while (tl && r->text[tl - 1] == ' ')
        tl--;
    dec = mlr_malloc(e->a, tl / 4 * 3 + 4);
    if (!dec) {
        nomem(e);
        return;
    }
    dn = mlr_sasl_b64_decode(r->text, tl, dec);
    mlr_buf_reset(&e->sasl_buf);
    rc = dn < 0 ? MLR_ERR_AUTH : mlr_sasl_step(&e->sasl, dec, (size_t)dn, &e->sasl_buf);
    mlr_free(e->a, dec, tl / 4 * 3 + 4);
    if (rc == MLR_ERR_NOMEM) {
        nomem(e);
        return;
    }
    if (rc) {
        auth_cancel(e);
        return;
    }
    auth_respond(e, (const uint8_t *)e->sasl_buf.data, e->sasl_buf.len);
    OPENSSL_cleanse(e->sasl_buf.data, e->sasl_buf.len);
}

/* ---- replies ---- */

/* Hand out the per-recipient reply i of t. */
static void rcpt_result(mlr_smtp *e, mlr_smtp_txn *t, size_t i, const mlr_reply *r)
{
    mlr_rcpt_result *res = &t->results[i];
    res->code = r->code;
    copy_enhanced(res->enhanced, r);
    res->text_off = t->text.len;
    if (mlr_buf_add(&t->text, r->text, r->text_len)) {
        nomem(e);
        return;
    }
    res->text_len = r->text_len;
    if (is_2xx(r->code))
        t->naccepted++;
}

/* A refusal a later attempt may overcome: 4xx, and 552 on RCPT (RFC 5321
 * section 4.5.3.1.10: too many recipients, treated as temporary). The
 * binding marks each refused recipient with the same test. */
static int rcpt_temporary(int code) { return code / 100 == 4 || code == 552; }

/* Every recipient was refused: the transaction fails. The error is
 * temporary when any refusal was (a later attempt may reach that
 * recipient; each one's own result says which), and then it cites the
 * first temporary refusal, so that code and temporary agree; else the
 * first refusal. A mix says so in the message. */
static void all_rejected(mlr_smtp_txn *t)
{
    size_t i, ntemp = 0, l;
    const mlr_rcpt_result *cite = NULL;
    if (t->failed)
        return;
    for (i = 0; i < t->nrcpt; i++)
        if (rcpt_temporary(t->results[i].code) && ntemp++ == 0)
            cite = &t->results[i];
    if (!cite)
        cite = &t->results[0];
    t->failed = 1;
    memset(&t->status, 0, sizeof t->status);
    t->status.err = MLR_ERR_SMTP;
    t->status.code = cite->code;
    t->status.temporary = ntemp > 0;
    memcpy(t->status.enhanced, cite->enhanced, sizeof cite->enhanced);
    if (ntemp > 0 && ntemp < t->nrcpt)
        snprintf(t->status.message, sizeof t->status.message,
                 "all recipients were rejected, %zu of %zu only for now (a later attempt "
                 "may reach those): ",
                 ntemp, t->nrcpt);
    else
        snprintf(t->status.message, sizeof t->status.message, "all recipients were rejected: ");
    l = strlen(t->status.message);
    set_text(t->status.message + l, sizeof t->status.message - l,
             t->text.data ? t->text.data + cite->text_off : "", cite->text_len);
}

/* BDAT: no further chunk of t goes out (a chunk refused, or its body
 * given up); the transaction stays open on the server until the RSET that
 * starts the next one. */
static void bdat_stop(mlr_smtp *e, mlr_smtp_txn *t)
{
    t->bdat_stopped = 1;
    t->phase = P_DOT;
    if (e->body == t) {
        e->body = NULL;
        e->body_wait = 0;
    }
    mlr_buf_reset(&e->chunk);
    e->bdat_eof = 0;
    e->need_rset = 1;
}

/* A reply in a transaction. */
static void on_txn(mlr_smtp *e, int kind, mlr_smtp_txn *t, const mlr_reply *r)
{
    int pipelined = (e->caps.flags & MLR_CAP_PIPELINING) != 0;
    int cls = r->code / 100;
    switch (kind) {
    case X_RSET:
        if (!is_2xx(r->code)) {
            fatal(e, MLR_ERR_PROTOCOL, cls == 4, r, 0, "RSET failed: %d %.400s", r->code, r->text);
            return;
        }
        if (!pipelined)
            send_cmds(e, t);
        return;
    case X_MAIL:
        if (cls == 3) {
            fatal(e, MLR_ERR_PROTOCOL, 0, r, 0, "unexpected %d reply to MAIL FROM", r->code);
            return;
        }
        if (is_2xx(r->code)) {
            t->mail_ok = 1;
            /* (an early BDAT LAST already ended it; a given-up one has its
             * RSET arranged already) */
            if (!t->body_done && !t->bdat_stopped)
                e->need_rset = 1;
            if (!pipelined)
                send_cmds(e, t);
        } else {
            txn_fail_reply(t, r);
            if (!pipelined)
                txn_finish(e, t);
        }
        return;
    case X_RCPT: {
        size_t i = t->replies++;
        if (cls == 3) {
            fatal(e, MLR_ERR_PROTOCOL, 0, r, 0, "unexpected %d reply to RCPT TO", r->code);
            return;
        }
        if (i < t->nrcpt)
            rcpt_result(e, t, i, r);
        if (i + 1 < t->nrcpt) {
            if (!pipelined)
                send_cmds(e, t);
            return;
        }
        if (t->naccepted == 0)
            all_rejected(t);
        if (t->bdat_early) {   /* the body is on its way: its BDAT reply ends it */
            if (t->bdat_stopped && !awaits(e, t))   /* (or it was given up) */
                txn_finish(e, t);
            return;
        }
        if (t->bdat) {   /* no DATA: the body follows once the recipients are known */
            if (t->failed)
                txn_finish(e, t);
            else
                start_bdat(e, t);
            return;
        }
        if (!pipelined) {
            if (t->failed)
                txn_finish(e, t);
            else
                send_cmds(e, t);  /* DATA */
        }
        return;
    }
    case X_DATA:
        if (r->code == 354) {
            if (t->failed) {  /* RFC 2920: DATA accepted with no recipient: send "." alone */
                if (e->pre_txn == t) {
                    e->pre_txn = NULL;
                    mlr_buf_reset(&e->pre);
                }
                if (add_line(e, ".", 1, NULL) || expect(e, X_DOT, t)) {
                    nomem(e);
                    return;
                }
                t->dot_ignored = 1;
                t->phase = P_DOT;
                return;
            }
            t->phase = P_BODY;
            e->body = t;
            e->step_id++;
            if (e->pre_txn == t)
                take_prefetch(e, t);
            else
                mlr_dot_init(&e->dot, e->max_line);
            return;
        }
        if (cls == 2 || cls == 3) {
            fatal(e, MLR_ERR_PROTOCOL, 0, r, 0, "unexpected %d reply to DATA", r->code);
            return;
        }
        txn_fail_reply(t, r);
        txn_finish(e, t);
        return;
    case X_BDAT:
        t->bdat_replies++;
        if (cls == 3) {
            fatal(e, MLR_ERR_PROTOCOL, 0, r, 0, "unexpected %d reply to BDAT", r->code);
            return;
        }
        if (!is_2xx(r->code)) {
            txn_fail_reply(t, r);
            if (!t->bdat_last && !t->bdat_stopped)
                bdat_stop(e, t);   /* RFC 3030 4.2: what is queued still goes */
        }
        if (t->bdat_replies == t->bdat_sent && (t->bdat_last || t->bdat_stopped)) {
            if (!t->failed) {
                memset(&t->status, 0, sizeof t->status);
                t->status.code = r->code;
                copy_enhanced(t->status.enhanced, r);
                set_text(t->status.message, sizeof t->status.message, r->text, r->text_len);
            }
            txn_finish(e, t);
            return;
        }
        if (!pipelined && !t->failed && !t->bdat_last) {
            e->body = t;   /* one chunk per round trip: the next one */
            e->step_id++;
        }
        return;
    case X_DOT:
        if (cls == 3) {
            fatal(e, MLR_ERR_PROTOCOL, 0, r, 0, "unexpected %d reply to the final dot", r->code);
            return;
        }
        if (!t->dot_ignored) {
            e->need_rset = 0;  /* the transaction is over either way */
            if (is_2xx(r->code)) {
                memset(&t->status, 0, sizeof t->status);
                t->status.code = r->code;
                copy_enhanced(t->status.enhanced, r);
                set_text(t->status.message, sizeof t->status.message, r->text, r->text_len);
            } else {
                txn_fail_reply(t, r);
            }
        }
        txn_finish(e, t);
        return;
    }
}

/* Dispatch one complete reply. */
static void on_reply(mlr_smtp *e, const mlr_reply *r)
{
    expect_entry *x;
    int kind, cls = r->code / 100;
    mlr_smtp_txn *t;
    if (e->qlen == 0) {
        if (r->code == 421)
            fatal(e, MLR_ERR_SMTP, 1, r, 0, "%.480s", r->text);
        else if (e->body && (cls == 4 || cls == 5))   /* refused in the middle of DATA */
            fatal(e, MLR_ERR_SMTP, cls == 4, r, 0, "%.480s", r->text);
        else
            fatal(e, MLR_ERR_PROTOCOL, 0, r, 0, "unexpected %d reply from the server", r->code);
        return;
    }
    x = &e->q[e->qhead];
    kind = x->kind;
    t = x->t;
    if (--x->count == 0) {
        e->qhead = (e->qhead + 1) % QCAP;
        e->qlen--;
    }
    e->step_id++;
    if (kind == X_QUIT) {
        e->state = ST_CLOSED;
        return;
    }
    if (r->code == 421) {  /* service closing: transient, close at once */
        fatal(e, MLR_ERR_SMTP, 1, r, 0, "%.480s", r->text);
        return;
    }
    switch (kind) {
    case X_GREETING:
        if (r->code == 220)
            send_ehlo(e, "EHLO", X_EHLO, ST_EHLO);
        else if (cls == 2 || cls == 3)
            fatal(e, MLR_ERR_PROTOCOL, 0, r, 0, "unexpected %d greeting", r->code);
        else
            fatal(e, MLR_ERR_SMTP, cls == 4, r, 1, "%.480s", r->text);
        return;
    case X_EHLO:
        if (r->code == 250) {
            mlr_caps_parse(&e->caps, r->text, r->text_len);
            mlr_buf_reset(&e->ehlo);
            if (mlr_buf_add(&e->ehlo, r->text, r->text_len))
                nomem(e);
            else
                after_ehlo(e);
        } else if (cls == 5) {
            if (e->security == MLR_SEC_STARTTLS && !e->tls_active)
                fatal(e, MLR_ERR_TLS, 0, r, 1,
                      "the server refused EHLO (%d); STARTTLS is required, so no HELO fallback",
                      r->code);
            else
                send_ehlo(e, "HELO", X_HELO, ST_HELO);
        } else if (cls == 4) {
            fatal(e, MLR_ERR_SMTP, 1, r, 1, "%.480s", r->text);
        } else {
            fatal(e, MLR_ERR_PROTOCOL, 0, r, 0, "unexpected %d reply to EHLO", r->code);
        }
        return;
    case X_HELO:
        if (r->code == 250) {
            memset(&e->caps, 0, sizeof e->caps);
            mlr_buf_reset(&e->ehlo);
            after_ehlo(e);
        } else if (cls == 4 || cls == 5) {
            fatal(e, MLR_ERR_SMTP, cls == 4, r, 1, "%.480s", r->text);
        } else {
            fatal(e, MLR_ERR_PROTOCOL, 0, r, 0, "unexpected %d reply to HELO", r->code);
        }
        return;
    case X_STARTTLS:
        if (r->code == 220) {
            e->state = ST_TLS_WAIT;
            e->step_id++;
        } else if ((cls == 4 || cls == 5) && e->security == MLR_SEC_STARTTLS_OPTIONAL) {
            e->starttls_refused = 1;
            start_auth(e);
        } else if (cls == 4 || cls == 5) {
            fatal(e, MLR_ERR_TLS, cls == 4, r, 1, "the server refused STARTTLS: %d %.400s",
                  r->code, r->text);
        } else {
            fatal(e, MLR_ERR_TLS, 0, r, 0,
                  "unexpected %d reply to STARTTLS (only 220 starts TLS)", r->code);
        }
        return;
    case X_AUTH:
        on_auth(e, r);
        return;
    case X_AUTH_CANCEL:
        if (e->sasl.errmsg[0])   /* whatever the server answers to "*", even 235 */
            fatal(e, MLR_ERR_AUTH, 0, r, 1, "authentication failed (%s): %s",
                  mlr_mech_name(e->auth_mech), e->sasl.errmsg);
        else
            fatal(e, MLR_ERR_AUTH, 0, r, 1,
                  "authentication cancelled: the server kept sending 334 challenges or sent an "
                  "invalid one (%s)", mlr_mech_name(e->auth_mech));
        return;
    case X_NOOP:
    case X_CMD_RSET:
        memset(&e->cmd, 0, sizeof e->cmd);
        if (is_2xx(r->code)) {
            e->cmd.code = r->code;
            set_text(e->cmd.message, sizeof e->cmd.message, r->text, r->text_len);
            if (kind == X_CMD_RSET)
                e->need_rset = 0;
        } else {
            status_from_reply(&e->cmd, r);
        }
        pump(e);
        return;
    default:
        on_txn(e, kind, t, r);
        if (!e->status.err)
            pump(e);
        return;
    }
}

/* Trace each line of a reply as the server sent it. */
static void trace_reply(mlr_smtp *e, const mlr_reply *r)
{
    char line[MLR_REPLY_MAX_LINE + 8];
    size_t i = 0, start, n, k = 0;
    if (!e->trace)
        return;
    do {
        start = i;
        while (i < r->text_len && r->text[i] != '\n')
            i++;
        n = i - start;
        snprintf(line, 6, "%03d%c", r->code, ++k == r->nlines ? ' ' : '-');
        memcpy(line + 4, r->text + start, n);
        e->trace(e->trace_ud, 'S', line, n + 4);
        i++;
    } while (i <= r->text_len && k < r->nlines);
}

int mlr_smtp_feed(mlr_smtp *e, const uint8_t *buf, size_t len)
{
    mlr_reply r;
    size_t used;
    int rc;
    if (e->status.err)
        return e->status.err;
    while (len > 0) {
        if (e->state == ST_TLS_WAIT)
            return fatal(e, MLR_ERR_PROTOCOL, 0, NULL, 0,
                         "the server sent data after its 220 reply to STARTTLS, before the "
                         "TLS handshake (response injection); aborting");
        if (e->state == ST_CLOSED)
            return MLR_OK;
        rc = mlr_reply_parse(&e->rp, buf, len, &used, &r);
        buf += used;
        len -= used;
        if (rc < 0)
            return fatal(e, rc == MLR_ERR_NOMEM ? rc : MLR_ERR_PROTOCOL, 0, NULL, 0,
                         "%s (while waiting for %s)", e->rp.errmsg, mlr_smtp_step_name(e));
        if (rc == 0)
            break;
        trace_reply(e, &r);
        on_reply(e, &r);
        if (e->status.err)
            return e->status.err;
    }
    return MLR_OK;
}

int mlr_smtp_eof(mlr_smtp *e)
{
    if (e->state == ST_CLOSED)
        return MLR_OK;
    if (e->qlen && e->q[e->qhead].kind == X_QUIT) {
        e->state = ST_CLOSED;
        return MLR_OK;
    }
    if (e->status.err)
        return e->status.err;
    if (e->qlen && ((e->q[e->qhead].kind == X_DOT && !e->q[e->qhead].t->dot_ignored) ||
                    (e->q[e->qhead].kind == X_BDAT && e->q[e->qhead].t->bdat_last)))
        return fatal(e, MLR_ERR_NETWORK, 1, NULL, 0,
                     "connection closed by the server before the reply to the final dot: "
                     "outcome unknown, the message may or may not have been delivered");
    if (mlr_reply_partial(&e->rp))
        return fatal(e, MLR_ERR_NETWORK, 1, NULL, 0,
                     "connection closed by the server in the middle of %s", mlr_smtp_step_name(e));
    return fatal(e, MLR_ERR_NETWORK, 1, NULL, 0, "connection closed by the server (while %s%s)",
                 e->qlen ? "waiting for " : "", mlr_smtp_step_name(e));
}

int mlr_smtp_tls_done(mlr_smtp *e)
{
    if (e->status.err)
        return e->status.err;
    if (e->state != ST_TLS_WAIT)
        return MLR_ERR_STATE;
    e->tls_active = 1;
    e->starttls_done = 1;
    /* RFC 3207 4.2: forget everything learnt before TLS */
    memset(&e->caps, 0, sizeof e->caps);
    mlr_buf_reset(&e->ehlo);
    mlr_reply_reset(&e->rp);
    send_ehlo(e, "EHLO", X_EHLO, ST_EHLO);
    return e->status.err;
}

/* ---- output ---- */

/* Move the unwritten output bytes to the front. */
/* The transaction whose DATA went out and whose 354 is awaited, if any
 * (a body is never read for one whose recipients all failed). */
static mlr_smtp_txn *awaiting_354(const mlr_smtp *e)
{
    size_t i;
    for (i = 0; i < e->ntx; i++) {
        mlr_smtp_txn *t = e->txq[i];
        if (t->phase == P_CMDS && !t->bdat && !t->failed && t->next_cmd == t->nrcpt + 2)
            return t;
    }
    return NULL;
}

/* DATA read-ahead: the output has drained and the server is working on
 * MAIL / RCPT / DATA; meanwhile render and stuff the first out_block
 * octets of the body into pre, so that its 354 finds them ready (the
 * round trip, not this work, then sets the pace of many small messages).
 * Nothing goes out before the 354; a source that must wait for Lua, or
 * fails, stops the read-ahead and is taken up again at the 354. */
static void prefetch(mlr_smtp *e)
{
    mlr_smtp_txn *t;
    if (e->status.err || e->body || e->quitting)
        return;
    t = awaiting_354(e);
    if (!t)
        return;
    if (e->pre_txn != t) {
        if (e->pre_txn)
            return;
        e->pre_txn = t;
        e->pre_state = PRE_MORE;
        e->pre_read = 0;
        mlr_buf_reset(&e->pre);
        mlr_dot_init(&e->dot, e->max_line);
    }
    while (e->pre_state == PRE_MORE && e->pre.len < e->out_block) {
        const uint8_t *p = NULL;
        size_t n = 0, w = 0;
        int rc = t->read(t->read_ud, &p, &n);
        if (rc == MLR_BODY_WAIT) {
            e->pre_state = PRE_WAIT;
            return;
        }
        if (rc < 0) {
            e->pre_state = PRE_FAILED;
            e->pre_rc = rc;
            return;
        }
        if (rc == 0) {
            e->pre_state = PRE_EOF;
            return;
        }
        if (n > (SIZE_MAX - 8) / 2 || mlr_buf_reserve(&e->pre, MLR_DOT_BOUND(n))) {
            e->pre_state = PRE_FAILED;
            e->pre_rc = MLR_ERR_NOMEM;
            return;
        }
        if (mlr_dot_encode(&e->dot, p, n, (uint8_t *)e->pre.data + e->pre.len, &w)) {
            e->pre_state = PRE_FAILED;
            e->pre_rc = MLR_ERR_LIMIT;   /* (a NUL or an overlong line) */
            return;
        }
        e->pre.len += w;
        e->pre_read += n;   /* counted as sent once it joins the output */
    }
}

static void body_input_error(mlr_smtp *e)
{
    fatal(e, MLR_ERR_INPUT, 0, NULL, 0,
          "the message has a NUL octet or a line longer than %zu octets; "
          "connection closed so that no partial message is delivered", e->max_line);
}

static void read_failed(mlr_smtp *e, mlr_smtp_txn *t, int rc);

/* The 354 came for the read-ahead's transaction: its octets join the
 * output, and the body goes on where the read-ahead stopped. */
static void take_prefetch(mlr_smtp *e, mlr_smtp_txn *t)
{
    int st = e->pre_state;
    e->pre_txn = NULL;
    if (e->out_pos == e->out.len) {   /* the usual case: swap, no copy */
        mlr_buf tmp = e->out;
        e->out = e->pre;
        e->pre = tmp;
        e->out_pos = 0;
        e->wire_at = 0;
    } else if (mlr_buf_add(&e->out, e->pre.data, e->pre.len)) {
        nomem(e);
        return;
    }
    mlr_buf_reset(&e->pre);
    /* counted, and ended, by the next refill, as if read then: the octets
     * counted as sent, and the final dot, reach the writer together */
    e->body_credit = e->pre_read;
    if (st == PRE_EOF)
        e->body_eof = 1;
    else if (st == PRE_WAIT)
        e->body_wait = 1;
    else if (st == PRE_FAILED) {
        if (e->pre_rc == MLR_ERR_LIMIT)
            body_input_error(e);
        else
            read_failed(e, t, e->pre_rc);
    }
}

static void compact_out(mlr_smtp *e)
{
    if (e->out_pos) {
        memmove(e->out.data, e->out.data + e->out_pos, e->out.len - e->out_pos);
        e->out.len -= e->out_pos;
        if (e->wire_busy)
            e->wire_at -= e->out_pos;
        e->out_pos = 0;
    }
}

/* A body source failed: fatal (no partial message may be delivered). */
/* What t's body source says of its failure. */
static const char *source_why(mlr_smtp_txn *t)
{
    const char *why = t->read_error ? t->read_error(t->read_ud) : NULL;
    return why && *why ? why : "source error";
}

static void read_failed(mlr_smtp *e, mlr_smtp_txn *t, int rc)
{
    fatal(e, rc == MLR_ERR_NOMEM ? rc : MLR_ERR_INPUT, 0, NULL, 0,
          "reading the message failed during %s: %s; connection closed so that "
          "no partial message is delivered", t->bdat ? "BDAT" : "DATA", source_why(t));
}

/* Does a reply still due belong to t? */
static int awaits(const mlr_smtp *e, const mlr_smtp_txn *t)
{
    size_t i;
    for (i = 0; i < e->qlen; i++)
        if (e->q[(e->qhead + i) % QCAP].t == t)
            return 1;
    return 0;
}

/* BDAT: the body cannot go on (its source failed; a NUL or an overlong
 * line). Unlike DATA nothing forces the connection closed: no chunk with
 * LAST went out, so the server holds an open transaction, and the RSET
 * that starts the next one (RFC 3030 4.1) drops it with whatever chunks
 * it got. Only this message fails; it is done once its replies are in. */
static void bdat_abort(mlr_smtp *e, mlr_smtp_txn *t, int err, const char *why)
{
    if (err == MLR_ERR_NOMEM) {
        nomem(e);
        return;
    }
    if (!t->failed) {
        memset(&t->status, 0, sizeof t->status);
        t->failed = 1;
        t->status.err = err;
        snprintf(t->status.message, sizeof t->status.message,
                 "%s; the transaction was given up (no BDAT LAST), so that no partial message "
                 "is delivered",
                 why);
    }
    bdat_stop(e, t);
    e->step_id++;
    if (!awaits(e, t))
        txn_finish(e, t);
    pump(e);
}

/* BDAT: CRLF-normalise p[0..n) into the chunk (bare CR / LF become CRLF;
 * NUL and overlong lines refused), or copy it as is for BINARYMIME. */
static int bdat_add(mlr_smtp *e, mlr_smtp_txn *t, const uint8_t *p, size_t n)
{
    size_t w = 0;
    int rc;
    if (n > (SIZE_MAX - 8) / 2 || mlr_buf_reserve(&e->chunk, t->binarymime ? n : MLR_DOT_BOUND(n)))
        return MLR_ERR_NOMEM;
    if (t->binarymime) {
        memcpy(e->chunk.data + e->chunk.len, p, n);
        e->chunk.len += n;
        return MLR_OK;
    }
    rc = mlr_dot_encode(&e->dot, p, n, (uint8_t *)e->chunk.data + e->chunk.len, &w);
    e->chunk.len += w;
    return rc;
}

/* BDAT: put the chunk on the wire as "BDAT n[ LAST]" and its octets. The
 * octets are written from the chunk's own buffer (it becomes the wire
 * buffer, and the free one the next chunk), never copied; the wire must be
 * free. */
static int bdat_emit(mlr_smtp *e, mlr_smtp_txn *t, int last)
{
    char cmd[48];
    mlr_buf tmp;
    snprintf(cmd, sizeof cmd, "BDAT %zu%s", e->chunk.len, last ? " LAST" : "");
    if (add_line(e, cmd, strlen(cmd), NULL) || expect(e, X_BDAT, t))
        return MLR_ERR_NOMEM;
    if (e->chunk.len <= BDAT_COPY_MAX) {
        /* a small chunk is copied behind its command, so that several
         * small messages leave in one write */
        if (mlr_buf_add(&e->out, e->chunk.data, e->chunk.len))
            return MLR_ERR_NOMEM;
        mlr_buf_reset(&e->chunk);
        t->bdat_sent++;
        return MLR_OK;
    }
    tmp = e->wire;
    e->wire = e->chunk;
    e->chunk = tmp;
    mlr_buf_reset(&e->chunk);
    e->wire_pos = 0;
    e->wire_at = e->out.len;
    e->wire_busy = e->wire.len > 0;
    t->bdat_sent++;
    return MLR_OK;
}

/* BDAT: the body ended: the last chunk goes out with LAST (once the wire
 * is free). */
static void bdat_last(mlr_smtp *e, mlr_smtp_txn *t)
{
    if (e->wire_busy) {
        e->bdat_eof = 1;
        return;
    }
    e->bdat_eof = 0;
    if (bdat_emit(e, t, 1)) {
        nomem(e);
        return;
    }
    t->bdat_last = 1;
    t->phase = P_DOT;
    t->body_done = 1;
    e->body = NULL;
    e->need_rset = 0;  /* LAST ends the transaction, whatever its reply */
    e->step_id++;
    pump(e);           /* with PIPELINING the next message's commands follow */
}

/* Refill the output with BDAT chunks. A chunk goes out once it is full and
 * more input is known to follow, so the last one always carries LAST. */
static void fill_bdat(mlr_smtp *e)
{
    mlr_smtp_txn *t = e->body;
    int pipelined = (e->caps.flags & MLR_CAP_PIPELINING) != 0;
    compact_out(e);
    if (e->bdat_eof) {
        bdat_last(e, t);
        return;
    }
    /* a full chunk waits for the wire before more input is read */
    while (e->body && !(e->chunk.len >= e->chunk_size && e->wire_busy) && !e->status.err) {
        const uint8_t *p = NULL;
        size_t n = 0;
        int rc = t->read(t->read_ud, &p, &n), paused = 0;
        if (rc == MLR_BODY_WAIT) {
            e->body_wait = 1;
            return;
        }
        if (rc < 0) {
            char why[400];
            snprintf(why, sizeof why, "reading the message failed during BDAT: %s", source_why(t));
            bdat_abort(e, t, rc == MLR_ERR_NOMEM ? rc : MLR_ERR_INPUT, why);
            return;
        }
        if (rc == 0) {
            if (!t->binarymime) {
                uint8_t crlf[2];
                size_t k = mlr_dot_end_line(&e->dot, crlf);
                if (mlr_buf_add(&e->chunk, crlf, k)) {
                    nomem(e);
                    return;
                }
            }
            bdat_last(e, t);
            return;
        }
        if (e->chunk.len >= e->chunk_size) {
            if (bdat_emit(e, t, 0)) {
                nomem(e);
                return;
            }
            paused = !pipelined;
        }
        rc = bdat_add(e, t, p, n);
        if (rc == MLR_ERR_NOMEM) {
            nomem(e);
            return;
        }
        if (rc) {
            char why[200];
            snprintf(why, sizeof why, "the message has a NUL octet or a line longer than %zu octets",
                     e->max_line);
            bdat_abort(e, t, MLR_ERR_INPUT, why);
            return;
        }
        t->body_sent += n;
        e->step_id++;
        if (paused) {   /* without PIPELINING: wait for this chunk's reply */
            e->body = NULL;
            return;
        }
    }
}

/* The body ended: the final dot goes out. */
static void data_end(mlr_smtp *e, mlr_smtp_txn *t)
{
    uint8_t fin[MLR_DOT_FINISH_MAX];
    size_t fl = mlr_dot_finish(&e->dot, fin);
    if (mlr_buf_add(&e->out, fin, fl) || expect(e, X_DOT, t)) {
        nomem(e);
        return;
    }
    trace(e, 'C', ".", 1);
    e->body_eof = 0;
    t->phase = P_DOT;
    t->body_done = 1;
    e->body = NULL;
    e->need_rset = 0;  /* the dot ends the transaction, whatever its reply */
    e->step_id++;
    pump(e);  /* with PIPELINING the next message's commands follow the dot */
}

/* Refill the output with dot-stuffed body data, then the final dot. */
static void fill_body(mlr_smtp *e)
{
    mlr_smtp_txn *t = e->body;
    if (t->bdat) {
        fill_bdat(e);
        return;
    }
    compact_out(e);
    t->body_sent += e->body_credit;
    e->body_credit = 0;
    while (e->body && e->out.len < e->out_block && !e->status.err) {
        const uint8_t *p = NULL;
        size_t n = 0, w = 0;
        int rc = e->body_eof ? 0 : t->read(t->read_ud, &p, &n);
        if (rc == MLR_BODY_WAIT) {
            e->body_wait = 1;
            return;
        }
        if (rc < 0) {
            read_failed(e, t, rc);
            return;
        }
        if (rc == 0) {
            data_end(e, t);
            return;
        }
        if (n > (SIZE_MAX - 8) / 2 || mlr_buf_reserve(&e->out, MLR_DOT_BOUND(n))) {
            nomem(e);
            return;
        }
        if (mlr_dot_encode(&e->dot, p, n, (uint8_t *)e->out.data + e->out.len, &w)) {
            body_input_error(e);
            return;
        }
        e->out.len += w;
        t->body_sent += n;
        e->step_id++;
    }
}

size_t mlr_smtp_pending(mlr_smtp *e, const uint8_t **p)
{
    if (e->status.err && !e->quitting) {
        *p = NULL;
        return 0;
    }
    /* refill; when a body ends and the next message's body starts at once
     * (BDAT behind its RCPTs), go on with it: one write for several */
    while (e->body && !e->body_wait && !e->status.err && e->out.len - e->out_pos < e->out_block) {
        const mlr_smtp_txn *was = e->body;
        fill_body(e);
        if (e->body == was)
            break;
    }
    if (e->wire_busy) {   /* out up to the chunk, then the chunk itself */
        if (e->out_pos < e->wire_at) {
            *p = (const uint8_t *)e->out.data + e->out_pos;
            return e->wire_at - e->out_pos;
        }
        *p = (const uint8_t *)e->wire.data + e->wire_pos;
        return e->wire.len - e->wire_pos;
    }
    /* no arithmetic on a NULL buffer: nothing was ever queued */
    *p = e->out.data ? (const uint8_t *)e->out.data + e->out_pos : NULL;
    return e->out.len - e->out_pos;
}

void mlr_smtp_consume(mlr_smtp *e, size_t n)
{
    if (e->wire_busy && e->out_pos >= e->wire_at) {
        if (n > e->wire.len - e->wire_pos)
            n = e->wire.len - e->wire_pos;
        e->wire_pos += n;
        if (e->wire_pos == e->wire.len) {
            e->wire_busy = 0;
            mlr_buf_reset(&e->wire);
            e->wire_pos = 0;
        }
        return;
    }
    if (n > (e->wire_busy ? e->wire_at : e->out.len) - e->out_pos)
        n = (e->wire_busy ? e->wire_at : e->out.len) - e->out_pos;
    e->out_pos += n;
    if (e->out_pos == e->out.len) {
        e->out_pos = 0;
        e->out.len = 0;
        e->wire_at = 0;
        if (!e->wire_busy)
            prefetch(e);   /* the server is busy: use the wait */
    }
}

int mlr_smtp_want(mlr_smtp *e)
{
    int w = 0;
    if (e->status.err)
        return e->status.err;
    if (e->out.len > e->out_pos || e->wire_busy || (e->body && !e->body_wait))
        w |= MLR_WANT_WRITE;
    if (e->body && e->body_wait)
        w |= MLR_WANT_BODY;
    if (e->state == ST_TLS_WAIT)
        return w ? w : MLR_WANT_TLS;
    if (e->qlen)
        w |= MLR_WANT_READ;
    if (e->state == ST_CLOSED)
        w |= MLR_WANT_DONE;
    return w;
}

void mlr_smtp_body_resume(mlr_smtp *e) { e->body_wait = 0; }
mlr_smtp_txn *mlr_smtp_body_txn(const mlr_smtp *e) { return e->body; }

/* ---- simple commands ---- */

/* Is the engine idle (ready, nothing queued or outstanding)? */
static int idle(const mlr_smtp *e)
{
    return !e->status.err && e->state == ST_READY && !e->quitting && e->ntx == 0 &&
           e->qlen == 0 && !e->body;
}

/* Send a simple command while idle. */
static int simple(mlr_smtp *e, const char *verb, int kind)
{
    if (!idle(e))
        return e->status.err ? e->status.err : MLR_ERR_STATE;
    memset(&e->cmd, 0, sizeof e->cmd);
    if (add_line(e, verb, strlen(verb), NULL) || expect(e, kind, NULL))
        return nomem(e);
    return MLR_OK;
}

int mlr_smtp_noop(mlr_smtp *e) { return simple(e, "NOOP", X_NOOP); }
int mlr_smtp_rset(mlr_smtp *e) { return simple(e, "RSET", X_CMD_RSET); }

int mlr_smtp_quit(mlr_smtp *e)
{
    if (e->status.err)
        return e->status.err;
    if (e->state == ST_CLOSED || e->quitting)
        return MLR_OK;
    if (e->ntx || e->body)
        return MLR_ERR_STATE;
    if (add_line(e, "QUIT", 4, NULL) || expect(e, X_QUIT, NULL))
        return nomem(e);
    e->quitting = 1;
    return MLR_OK;
}

/* ---- accessors ---- */

const mlr_smtp_status *mlr_smtp_cmd_status(const mlr_smtp *e) { return &e->cmd; }
const mlr_smtp_status *mlr_smtp_status_get(const mlr_smtp *e) { return &e->status; }
int mlr_smtp_ready(const mlr_smtp *e) { return e->state == ST_READY; }
const mlr_caps *mlr_smtp_caps(const mlr_smtp *e) { return &e->caps; }
int mlr_smtp_tls_active(const mlr_smtp *e) { return e->tls_active; }
unsigned mlr_smtp_auth_mech(const mlr_smtp *e) { return e->state == ST_READY ? e->auth_mech : 0; }
uint64_t mlr_smtp_step_id(const mlr_smtp *e) { return e->step_id; }

const char *mlr_smtp_ehlo_text(const mlr_smtp *e, size_t *len)
{
    *len = e->ehlo.len;
    return e->ehlo.data ? e->ehlo.data : "";
}

const char *mlr_smtp_step_name(const mlr_smtp *e)
{
    static const char *const names[] = {
        "the greeting", "the reply to EHLO", "the reply to HELO", "the reply to STARTTLS",
        "the reply to AUTH", "the reply to the AUTH cancellation", "the reply to RSET",
        "the reply to MAIL FROM", "the reply to RCPT TO", "the reply to DATA",
        "the reply to the final dot", "the reply to BDAT", "the reply to NOOP",
        "the reply to RSET",
        "the reply to QUIT"};
    if (e->state == ST_TLS_WAIT)
        return "the TLS handshake";
    if (e->body)
        return "sending message data";
    if (e->out.len > e->out_pos && e->qlen == 0)
        return "sending a command";
    if (e->qlen)
        return names[e->q[e->qhead].kind];
    return "nothing (idle)";
}
