/* smtp_engine.h - the SMTP client state machine (sans I/O).
 *
 * The engine never touches a socket. The driver (csrc/transport.c, or the
 * Lua cosocket driver) loops:
 *   w = mlr_smtp_want(e);
 *   if (w < 0)                 fatal error: flush pending output (a polite
 *                              QUIT, if any) best-effort, then close;
 *   if (w & MLR_WANT_WRITE)    n = mlr_smtp_pending(e, &p); write; consume;
 *   if (w & MLR_WANT_READ)     read; mlr_smtp_feed(e, buf, n), or
 *                              mlr_smtp_eof(e) on end of stream;
 *   if (w & MLR_WANT_TLS)      TLS handshake; mlr_smtp_tls_done(e);
 *   if (w & MLR_WANT_BODY)     the body source is waiting on its owner (a
 *                              push source to supply, a slice of signing
 *                              work): act, then mlr_smtp_body_resume(e);
 *   if (w & MLR_WANT_DONE)     the session has ended (QUIT answered);
 *   w == 0                     idle: connected, nothing outstanding.
 * Session setup (greeting, EHLO/HELO, STARTTLS, AUTH) starts on creation;
 * mlr_smtp_ready() tells when it is over. Messages are sent with
 * mlr_smtp_send(); several may be queued, and with PIPELINING the commands
 * of the next message go out right behind the previous final dot.
 * When the server offers CHUNKING (RFC 3030) the body goes out as BDAT
 * chunks instead of DATA: CRLF-normalised but not dot-stuffed, sent once
 * the recipients are answered (so nothing of the body leaves when all are
 * refused), all chunks pipelined when PIPELINING is offered, else one
 * chunk per round trip.
 *
 * Errors are negative mlr_err values. A fatal error is sticky: every
 * outstanding transaction fails with it and the connection must be
 * closed. A failed transaction (rejected sender, every recipient refused,
 * message refused) is not fatal: the connection stays usable.
 * Part of the C core: no lua.h. */
#ifndef SMTP_ENGINE_H
#define SMTP_ENGINE_H

#include "mlr_common.h"
#include "smtp_reply.h"

typedef struct mlr_smtp mlr_smtp;

enum mlr_security {
    MLR_SEC_STARTTLS = 0,      /* STARTTLS required (default) */
    MLR_SEC_STARTTLS_OPTIONAL, /* STARTTLS when offered; plaintext otherwise */
    MLR_SEC_TLS,               /* implicit TLS: the driver did the handshake */
    MLR_SEC_NONE               /* never TLS */
};

enum {
    MLR_WANT_READ = 1,
    MLR_WANT_WRITE = 2,
    MLR_WANT_TLS = 4,
    MLR_WANT_DONE = 8,
    MLR_WANT_BODY = 16
};

/* DSN NOTIFY values (RFC 3461). */
enum {
    MLR_DSN_NEVER = 1,
    MLR_DSN_SUCCESS = 2,
    MLR_DSN_FAILURE = 4,
    MLR_DSN_DELAY = 8
};

/* Trace hook: dir 'C' (client) or 'S' (server), one line without CRLF;
 * secrets already replaced by "<redacted>". */
typedef void (*mlr_smtp_trace_fn)(void *ud, char dir, const char *line, size_t len);

/* Body source: 1 with (*p, *n) set (valid until the next call), 0 at the
 * end, negative mlr_err on failure, or MLR_BODY_WAIT: nothing now, the
 * source waits on its owner (want() says MLR_WANT_BODY until
 * mlr_smtp_body_resume). Same signature as mlr_render_next. */
#define MLR_BODY_WAIT 2
typedef int (*mlr_body_fn)(void *ud, const uint8_t **p, size_t *n);

typedef struct mlr_smtp_opts {
    const char *helo;           /* EHLO/HELO name; NULL = "localhost" */
    int security;               /* enum mlr_security */
    const char *username;       /* NULL: no AUTH */
    size_t username_len;
    const char *password;       /* NULL when none */
    size_t password_len;
    const char *token;          /* OAuth bearer token, NULL when none */
    size_t token_len;
    unsigned auth_pref[8];      /* MLR_MECH_* in preference order */
    size_t auth_npref;          /* 0: the strongest offered */
    int allow_plaintext_auth;   /* AUTH without TLS is refused unless set */
    const char *host;           /* server name and port (for OAUTHBEARER) */
    unsigned port;
    size_t max_line;            /* longest DATA line; 0 = 998, SIZE_MAX = none */
    int no_chunking;            /* never BDAT, even when CHUNKING is offered */
    size_t chunk_size;          /* BDAT chunk size; 0 = 32 KiB */
    size_t out_block;           /* body output refilled up to this; 0 = 64 KiB (a driver
                                   that copies it into strings may want less) */
    mlr_smtp_trace_fn trace;
    void *trace_ud;
} mlr_smtp_opts;

/* The outcome of a command, a transaction, or the whole session. */
typedef struct mlr_smtp_status {
    int err;             /* MLR_OK or a negative mlr_err */
    int code;            /* reply code, 0 when not from a reply */
    char enhanced[16];   /* "5.1.1" when the server uses them, else "" */
    int temporary;       /* 4xx, dropped connection, timeout */
    char message[512];   /* the server's text for "smtp", else a description */
} mlr_smtp_status;

/* Per-recipient outcome. text points into the transaction's text buffer. */
typedef struct mlr_rcpt_result {
    int code;
    char enhanced[16];
    size_t text_off, text_len;
} mlr_rcpt_result;

/* One message. Inputs are borrowed and must stay valid until done is set.
 * Initialise with mlr_smtp_txn_init, release with mlr_smtp_txn_free. */
typedef struct mlr_smtp_txn {
    /* inputs */
    const char *from;            /* reverse-path addr-spec ("" = null path) */
    size_t from_len;
    const char *const *rcpt;     /* forward-path addr-specs */
    const size_t *rcpt_len;
    size_t nrcpt;
    uint64_t size;               /* octets of the message, 0 = unknown */
    int utf8;                    /* headers need SMTPUTF8 (addresses are checked anyway) */
    int eightbit;                /* the body has 8-bit octets: BODY=8BITMIME */
    int binarymime;              /* opt-in: BODY=BINARYMIME, body sent as is (needs
                                    CHUNKING and BINARYMIME; else kind "unsupported") */
    const char *dsn_ret;         /* "FULL", "HDRS" or NULL */
    const char *dsn_envid;       /* NULL or an envelope id (xtext-encoded here) */
    size_t dsn_envid_len;
    unsigned dsn_notify;         /* MLR_DSN_* bits, 0 = none */
    mlr_body_fn read;
    void *read_ud;
    const char *(*read_error)(void *ud);  /* optional: text of a read failure */

    /* outputs */
    int done;                    /* 1 when the outcome below is final */
    mlr_smtp_status status;      /* err 0: accepted (code/message of the final reply) */
    mlr_rcpt_result *results;    /* nrcpt entries, code 0 = no reply */
    size_t naccepted;
    mlr_buf text;                /* texts of the per-recipient replies */
    uint64_t body_sent;          /* octets read from the body source so far */
    int body_done;               /* the final dot / BDAT LAST went into the output */

    /* engine-private */
    const mlr_alloc *a;
    int phase, failed, mail_ok, dot_ignored;
    size_t next_cmd, replies;
    int bdat, bdat_last, bdat_stopped;   /* BDAT in use; LAST sent; stopped after a refusal */
    int bdat_early;                      /* BDAT went out behind the RCPTs, before their
                                            replies (a small message, PIPELINING) */
    size_t results_cap;                  /* entries results has room for (reused) */
    size_t bdat_sent, bdat_replies;      /* chunks sent, replies to them */
} mlr_smtp_txn;

void mlr_smtp_txn_init(mlr_smtp_txn *t, const mlr_alloc *a);
void mlr_smtp_txn_free(mlr_smtp_txn *t);
/* Make a finished (or never sent) transaction ready for the next message:
 * every field cleared, its buffers kept for reuse. */
void mlr_smtp_txn_clear(mlr_smtp_txn *t);

/* Create an engine; copies every string of opts. NULL on allocation
 * failure or when opts is unusable (*err says which: MLR_ERR_NOMEM,
 * MLR_ERR_INPUT for CR/LF/NUL in the helo name or credentials). */
mlr_smtp *mlr_smtp_new(const mlr_alloc *a, const mlr_smtp_opts *opts, int *err,
                       char *errmsg, size_t errlen);
/* Free the engine (wipes the secrets). Transactions still queued are left
 * as they are (not done). */
void mlr_smtp_free(mlr_smtp *e);

/* What the engine wants next: MLR_WANT_* bits, 0 when idle, or the
 * (negative) fatal error. */
int mlr_smtp_want(mlr_smtp *e);
/* Feed bytes from the server: MLR_OK, or the fatal error. */
int mlr_smtp_feed(mlr_smtp *e, const uint8_t *buf, size_t len);
/* Tell the engine the server closed the connection. Returns the fatal
 * error it causes (MLR_ERR_NETWORK), or MLR_OK after QUIT. */
int mlr_smtp_eof(mlr_smtp *e);
/* The bytes to write next (valid until the next engine call); 0 if none.
 * May pull the body from a transaction's reader (a reader failure makes
 * it return 0 with a fatal error set). */
size_t mlr_smtp_pending(mlr_smtp *e, const uint8_t **p);
/* The body source that returned MLR_BODY_WAIT can be read again. */
void mlr_smtp_body_resume(mlr_smtp *e);
/* The transaction whose body is being read, or NULL. */
mlr_smtp_txn *mlr_smtp_body_txn(const mlr_smtp *e);
/* n of the pending bytes were written. */
void mlr_smtp_consume(mlr_smtp *e, size_t n);
/* The TLS handshake the engine asked for succeeded: MLR_OK or MLR_ERR_STATE. */
int mlr_smtp_tls_done(mlr_smtp *e);
/* Record a fatal error from the driver (network, TLS, timeout, a Lua
 * callback error...); fails every outstanding transaction. Returns err. */
int mlr_smtp_fail(mlr_smtp *e, int err, int temporary, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/* 1 once session setup is over (ready for mail). */
int mlr_smtp_ready(const mlr_smtp *e);
/* The fatal error (err 0 when none). */
const mlr_smtp_status *mlr_smtp_status_get(const mlr_smtp *e);
/* The capabilities of the last EHLO (all zero after HELO), and its raw text
 * (lines joined by '\n', the first line being the greeting). */
const mlr_caps *mlr_smtp_caps(const mlr_smtp *e);
const char *mlr_smtp_ehlo_text(const mlr_smtp *e, size_t *len);
/* Is the session encrypted (implicit TLS or after STARTTLS)? Which
 * mechanism authenticated (0 = none)? */
int mlr_smtp_tls_active(const mlr_smtp *e);
unsigned mlr_smtp_auth_mech(const mlr_smtp *e);

/* Queue a message. MLR_OK, MLR_ERR_STATE (engine failed or quitting, or
 * too many queued: at most MLR_SMTP_MAX_TXN not yet done), MLR_ERR_NOMEM.
 * Input problems (bad addresses, too big, no SMTPUTF8) are reported in
 * t->status when the transaction is started, before any of its bytes is
 * written, and do not harm the connection. */
#define MLR_SMTP_MAX_TXN 8
int mlr_smtp_send(mlr_smtp *e, mlr_smtp_txn *t);
/* How many transactions are worth queuing at once: 3 (one awaiting the
 * reply to its end, one its 354, the next one queued so that its commands
 * follow the end of the one before in the same write) unless small
 * messages can go back to back as pipelined BDAT (CHUNKING and PIPELINING
 * offered, chunking not turned off), then MLR_SMTP_MAX_TXN. Meaningful
 * once ready. */
size_t mlr_smtp_window(const mlr_smtp *e);

/* Simple commands, allowed only while idle (MLR_ERR_STATE otherwise):
 * NOOP and RSET put their outcome in mlr_smtp_cmd_status once want()
 * is idle again; QUIT ends the session (MLR_WANT_DONE). */
int mlr_smtp_noop(mlr_smtp *e);
int mlr_smtp_rset(mlr_smtp *e);
int mlr_smtp_quit(mlr_smtp *e);
const mlr_smtp_status *mlr_smtp_cmd_status(const mlr_smtp *e);

/* What the engine waits for, for timeouts and error texts: a phrase such
 * as "the reply to RCPT TO" or "sending message data". */
const char *mlr_smtp_step_name(const mlr_smtp *e);
/* Changes whenever a new step starts (a reply arrives, a data block is
 * produced): drivers restart their per-step deadline when it changes. */
uint64_t mlr_smtp_step_id(const mlr_smtp *e);

#endif
