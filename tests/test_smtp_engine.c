/* test_smtp_engine.c - the SMTP engine against recorded server transcripts.
 * Each transcript is replayed with the server's bytes whole, split at every
 * single offset, octet by octet, and with the client's writes consumed one
 * octet at a time; every run must produce the same client bytes and the
 * same results, equal to the expected ones. */
#define _GNU_SOURCE   /* memmem */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_engine.h"
#include "tap.h"

#define MAXSTEPS 24
#define MAXTXN 4
#define MAXRCPT 6

/* A message to send: envelope and body. */
typedef struct msg {
    const char *from;
    size_t from_len;   /* 0: strlen(from) */
    const char *rcpt[MAXRCPT];
    size_t rcpt_len[MAXRCPT];   /* 0: strlen */
    const char *body;
    size_t body_len;   /* 0: strlen(body) */
    uint64_t size;
    size_t chunk;      /* body reader chunk size, 0 = whole */
    unsigned notify;
    const char *ret;
    int fail_read;     /* the reader fails after this many chunks (0: never) */
    int binary;        /* BINARYMIME opt-in */
} tmsg;

/* A transcript: steps "S:<server bytes>", "T" (TLS handshake done), "E"
 * (server EOF); quit: send QUIT once idle; client: the expected bytes. */
typedef struct tcase {
    const char *name;
    mlr_smtp_opts opts;
    const char *steps[MAXSTEPS];
    tmsg msgs[MAXTXN];
    int quit;
    const char *client;
    int want_err;                 /* expected fatal engine error */
    int want_txn_err[MAXTXN];     /* expected per-message error */
    int want_txn_code[MAXTXN];
    int want_temporary[MAXTXN];
    const char *want_msg_sub;     /* substring of the engine (or txn 0) message */
} tcase;

/* What a run produced. */
typedef struct result {
    mlr_buf client;
    int err, code, temporary;
    char msg[512];
    int txn_err[MAXTXN], txn_code[MAXTXN], txn_done[MAXTXN], txn_temp[MAXTXN];
    char txn_msg[MAXTXN][512];
    size_t naccepted[MAXTXN];
    int rcpt_code[MAXTXN][MAXRCPT];
    int dot_then_mail;   /* a single write held ".\r\nMAIL FROM" (pipelined send_many) */
    size_t nwrites;
    mlr_buf trace;
} result;

/* Body reader over a msg. */
typedef struct reader {
    const tmsg *m;
    size_t off;
    int calls;
} reader;

static int read_body(void *ud, const uint8_t **p, size_t *n)
{
    reader *r = ud;
    size_t len = r->m->body_len ? r->m->body_len : strlen(r->m->body);
    size_t chunk = r->m->chunk ? r->m->chunk : len;
    if (r->m->fail_read && r->calls++ >= r->m->fail_read)
        return MLR_ERR_IO;
    if (r->off >= len)
        return 0;
    if (chunk > len - r->off)
        chunk = len - r->off;
    *p = (const uint8_t *)r->m->body + r->off;
    *n = chunk;
    r->off += chunk;
    return 1;
}

static const char *read_error(void *ud)
{
    (void)ud;
    return "attachment vanished";
}

static void on_trace(void *ud, char dir, const char *line, size_t len)
{
    mlr_buf *b = ud;
    mlr_buf_addc(b, dir);
    mlr_buf_addstr(b, ": ");
    mlr_buf_add(b, line, len);
    mlr_buf_addc(b, '\n');
}

/* Replay a transcript. split: global server offset to cut at (-1: none);
 * bytewise: feed one octet at a time; wstep: consume at most this many
 * client octets per write (0 = all). */
static void run(const tcase *c, long split, int bytewise, size_t wstep, result *res)
{
    mlr_smtp_opts o = c->opts;
    mlr_smtp *e;
    mlr_smtp_txn txn[MAXTXN];
    reader rd[MAXTXN];
    size_t rlen[MAXTXN][MAXRCPT];
    int ntx = 0, i, err, quit_sent = 0, guard;
    size_t step = 0, off = 0, base = 0;
    char errmsg[128];

    memset(res, 0, sizeof *res);
    mlr_buf_init(&res->client, mlr_default_alloc());
    mlr_buf_init(&res->trace, mlr_default_alloc());
    o.trace = on_trace;
    o.trace_ud = &res->trace;
    e = mlr_smtp_new(mlr_default_alloc(), &o, &err, errmsg, sizeof errmsg);
    if (!e) {
        res->err = err;
        snprintf(res->msg, sizeof res->msg, "%s", errmsg);
        return;
    }
    for (i = 0; i < MAXTXN && c->msgs[i].from; i++) {
        const tmsg *m = &c->msgs[i];
        size_t k;
        mlr_smtp_txn_init(&txn[i], mlr_default_alloc());
        txn[i].from = m->from;
        txn[i].from_len = m->from_len ? m->from_len : strlen(m->from);
        for (k = 0; k < MAXRCPT && m->rcpt[k]; k++)
            rlen[i][k] = m->rcpt_len[k] ? m->rcpt_len[k] : strlen(m->rcpt[k]);
        txn[i].rcpt = m->rcpt;
        txn[i].rcpt_len = rlen[i];
        txn[i].nrcpt = k;
        txn[i].size = m->size;
        txn[i].dsn_notify = m->notify;
        txn[i].dsn_ret = m->ret;
        txn[i].binarymime = m->binary;
        rd[i].m = m;
        rd[i].off = 0;
        rd[i].calls = 0;
        txn[i].read = read_body;
        txn[i].read_ud = &rd[i];
        txn[i].read_error = read_error;
        mlr_smtp_send(e, &txn[i]);
        ntx++;
    }
    for (guard = 0; guard < 1000000; guard++) {
        const uint8_t *p;
        size_t n;
        int w, all_done = 1;
        while ((n = mlr_smtp_pending(e, &p)) > 0) {
            size_t m = wstep && n > wstep ? wstep : n;
            size_t q;
            for (q = 0; q + 12 <= m; q++)
                if (!memcmp(p + q, ".\r\nMAIL FROM", 12))
                    res->dot_then_mail = 1;
            mlr_buf_add(&res->client, p, m);
            mlr_smtp_consume(e, m);
            res->nwrites++;
        }
        w = mlr_smtp_want(e);
        if (w < 0 || (w & MLR_WANT_DONE))
            break;
        for (i = 0; i < ntx; i++)
            all_done &= txn[i].done;
        if (w == 0 && all_done && c->quit && !quit_sent) {
            mlr_smtp_quit(e);
            quit_sent = 1;
            continue;
        }
        if (step >= MAXSTEPS || !c->steps[step])
            break;
        if (c->steps[step][0] == 'T') {
            mlr_smtp_tls_done(e);
            step++;
        } else if (c->steps[step][0] == 'E') {
            mlr_smtp_eof(e);
            step++;
        } else {
            const char *d = c->steps[step] + 2;
            size_t len = strlen(d), piece = len - off;
            if (bytewise)
                piece = 1;
            else if (split >= 0 && (size_t)split > base + off && (size_t)split < base + len)
                piece = (size_t)split - base - off;
            mlr_smtp_feed(e, (const uint8_t *)d + off, piece);
            off += piece;
            if (off == len) {
                step++;
                base += len;
                off = 0;
            }
        }
    }
    {
        const mlr_smtp_status *s = mlr_smtp_status_get(e);
        res->err = s->err;
        res->code = s->code;
        res->temporary = s->temporary;
        snprintf(res->msg, sizeof res->msg, "%s", s->message);
    }
    for (i = 0; i < ntx; i++) {
        size_t k;
        res->txn_done[i] = txn[i].done;
        res->txn_err[i] = txn[i].status.err;
        res->txn_code[i] = txn[i].status.code;
        res->txn_temp[i] = txn[i].status.temporary;
        snprintf(res->txn_msg[i], sizeof res->txn_msg[i], "%s", txn[i].status.message);
        res->naccepted[i] = txn[i].naccepted;
        for (k = 0; k < txn[i].nrcpt && txn[i].results; k++)
            res->rcpt_code[i][k] = txn[i].results[k].code;
        mlr_smtp_txn_free(&txn[i]);
    }
    mlr_smtp_free(e);
}

static void result_free(result *r)
{
    mlr_buf_free(&r->client);
    mlr_buf_free(&r->trace);
}

/* Same client bytes and outcomes? */
static int same(const result *a, const result *b)
{
    int i, k;
    if (a->client.len != b->client.len ||
        (a->client.len && memcmp(a->client.data, b->client.data, a->client.len)))
        return 0;
    if (a->err != b->err || a->code != b->code || a->temporary != b->temporary)
        return 0;
    for (i = 0; i < MAXTXN; i++) {
        if (a->txn_err[i] != b->txn_err[i] || a->txn_code[i] != b->txn_code[i] ||
            a->txn_done[i] != b->txn_done[i] || a->naccepted[i] != b->naccepted[i] ||
            a->txn_temp[i] != b->txn_temp[i] || strcmp(a->txn_msg[i], b->txn_msg[i]))
            return 0;
        for (k = 0; k < MAXRCPT; k++)
            if (a->rcpt_code[i][k] != b->rcpt_code[i][k])
                return 0;
    }
    return 1;
}

/* Print a client byte stream readably, for failures. */
static void show(const char *label, const char *s, size_t n)
{
    size_t i;
    printf("# %s: \"", label);
    for (i = 0; i < n && i < 2000; i++) {
        if (s[i] == '\r')
            printf("\\r");
        else if (s[i] == '\n')
            printf("\\n\"\n#   \"");
        else
            putchar(s[i]);
    }
    printf("\"\n");
}

static size_t server_len(const tcase *c)
{
    size_t i, n = 0;
    for (i = 0; i < MAXSTEPS && c->steps[i]; i++)
        if (c->steps[i][0] == 'S')
            n += strlen(c->steps[i]) - 2;
    return n;
}

/* Run a case in every way and check it; returns the baseline (caller frees). */
static void check(const tcase *c, result *base)
{
    result r;
    size_t n = server_len(c), i;
    int ok, same_all = 1;
    run(c, -1, 0, 0, base);
    ok = base->client.len == strlen(c->client) &&
         !memcmp(base->client.data ? base->client.data : "", c->client, base->client.len);
    TAP_OK(ok, "%s: client bytes", c->name);
    if (!ok) {
        show("got", base->client.data ? base->client.data : "", base->client.len);
        show("want", c->client, strlen(c->client));
        printf("# engine error %d: %s\n", base->err, base->msg);
    }
    TAP_OK(base->err == c->want_err, "%s: engine error %d (want %d) %s", c->name, base->err,
           c->want_err, base->msg);
    for (i = 0; i < MAXTXN && c->msgs[i].from; i++) {
        TAP_OK(base->txn_done[i] && base->txn_err[i] == c->want_txn_err[i] &&
                   (!c->want_txn_code[i] || base->txn_code[i] == c->want_txn_code[i]) &&
                   base->txn_temp[i] == c->want_temporary[i],
               "%s: message %zu outcome err=%d code=%d temporary=%d (%s)", c->name, i + 1,
               base->txn_err[i], base->txn_code[i], base->txn_temp[i], base->txn_msg[i]);
    }
    if (c->want_msg_sub)
        TAP_OK(strstr(base->msg, c->want_msg_sub) || strstr(base->txn_msg[0], c->want_msg_sub),
               "%s: message mentions \"%s\"", c->name, c->want_msg_sub);
    for (i = 0; i <= n; i++) {
        run(c, (long)i, 0, 0, &r);
        if (!same(base, &r)) {
            if (same_all)
                printf("# split at %zu differs: %s / %s\n", i, r.msg, r.txn_msg[0]);
            same_all = 0;
        }
        result_free(&r);
    }
    run(c, -1, 1, 0, &r);
    if (!same(base, &r)) {
        printf("# octet-by-octet differs: %s\n", r.msg);
        same_all = 0;
    }
    result_free(&r);
    run(c, -1, 1, 1, &r);
    if (!same(base, &r)) {
        printf("# one-octet writes differ: %s\n", r.msg);
        same_all = 0;
    }
    result_free(&r);
    TAP_OK(same_all, "%s: identical in all %zu splits, octet by octet, one-octet writes", c->name,
           n + 1);
}

/* check() and drop the baseline. */
static void check1(const tcase *c)
{
    result b;
    check(c, &b);
    result_free(&b);
}

#define EHLO_PIPE "S:250-mx.example.com\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
#define GREET "S:220 mx.example.com ESMTP\r\n"
#define C_EHLO "EHLO client.example\r\n"
#define PLAIN_OPTS {.helo = "client.example", .security = MLR_SEC_NONE}
#define MSG1 {.from = "a@example.com", .rcpt = {"b@example.com"}, .body = "Subject: hi\r\n\r\nhello\r\n"}

static void happy_paths(void)
{
    result b;
    tcase c1 = {
        .name = "pipelined happy path",
        .opts = PLAIN_OPTS,
        .steps = {GREET, EHLO_PIPE,
                  "S:250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n250 2.1.5 ok\r\n354 go\r\n",
                  "S:250 2.0.0 Ok: queued as ABC\r\n", "S:221 2.0.0 bye\r\n"},
        .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com", "nobody@example.com", "c@example.com"},
                  .body = "Subject: x\r\n\r\n.hidden\nline\r.\r\nend", .size = 42, .chunk = 3}},
        .quit = 1,
        .client = C_EHLO
        "MAIL FROM:<a@example.com> SIZE=42\r\nRCPT TO:<b@example.com>\r\n"
        "RCPT TO:<nobody@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n"
        "Subject: x\r\n\r\n..hidden\r\nline\r\n..\r\nend\r\n.\r\nQUIT\r\n",
        .want_txn_code = {250},
    };
    check(&c1, &b);
    TAP_OK(b.naccepted[0] == 2 && b.rcpt_code[0][1] == 550 && b.rcpt_code[0][0] == 250,
           "partial rejection: 2 accepted, the 550 recorded for recipient 2");
    TAP_OK(strstr(b.trace.data, "S: 250-PIPELINING\n") && strstr(b.trace.data, "C: DATA\n") &&
               strstr(b.trace.data, "C: .\n"),
           "trace shows server and client lines");
    TAP_OK(strstr(b.txn_msg[0], "queued as ABC") != NULL, "receipt keeps the server's text");
    result_free(&b);

    {
        tcase c = {
            .name = "no PIPELINING: one command per round trip",
            .opts = PLAIN_OPTS,
            .steps = {GREET, "S:250-mx\r\n250 8BITMIME\r\n", "S:250 ok\r\n", "S:250 ok\r\n",
                      "S:251 will forward\r\n", "S:354 go\r\n", "S:250 queued\r\n", "S:221 bye\r\n"},
            .msgs = {{.from = "", .rcpt = {"b@example.com", "c@example.com"}, .body = "x"}},
            .quit = 1,
            .client = C_EHLO "MAIL FROM:<>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\n"
                             "DATA\r\nx\r\n.\r\nQUIT\r\n",
            .want_txn_code = {250},
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "send_many: next message pipelined behind the final dot",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_PIPE, "S:250 ok\r\n250 ok\r\n354 go\r\n",
                      "S:250 q1\r\n250 ok\r\n250 ok\r\n354 go\r\n",
                      "S:250 q2\r\n250 ok\r\n550 5.1.1 bad\r\n554 no valid recipients\r\n",
                      "S:250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n", "S:250 q4\r\n", "S:221 bye\r\n"},
            .msgs = {MSG1, {.from = "a@example.com", .rcpt = {"c@example.com"}, .body = "two"},
                     {.from = "a@example.com", .rcpt = {"bad@example.com"}, .body = "three"},
                     {.from = "a@example.com", .rcpt = {"d@example.com"}, .body = "four"}},
            .quit = 1,
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
                             "Subject: hi\r\n\r\nhello\r\n.\r\n"
                             "MAIL FROM:<a@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n"
                             "two\r\n.\r\n"
                             "MAIL FROM:<a@example.com>\r\nRCPT TO:<bad@example.com>\r\nDATA\r\n"
                             "RSET\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<d@example.com>\r\nDATA\r\n"
                             "four\r\n.\r\nQUIT\r\n",
            .want_txn_err = {0, 0, MLR_ERR_SMTP, 0},
            .want_txn_code = {250, 250, 550, 250},
            .want_msg_sub = NULL,
        };
        check(&c, &b);
        TAP_OK(b.dot_then_mail, "send_many: a final dot and the next MAIL FROM went out in one write");
        TAP_OK(strstr(b.txn_msg[2], "all recipients were rejected") != NULL,
               "all rejected: message says so (%s)", b.txn_msg[2]);
        result_free(&b);
    }
    {
        tcase c = {
            .name = "DSN and SMTPUTF8 parameters",
            .opts = PLAIN_OPTS,
            .steps = {GREET, "S:250-mx\r\n250-PIPELINING\r\n250-DSN\r\n250-SMTPUTF8\r\n250 8BITMIME\r\n",
                      "S:250 ok\r\n250 ok\r\n354 go\r\n", "S:250 q\r\n"},
            .msgs = {{.from = "j\xc3\xb6rg@example.com", .rcpt = {"b+x@example.com"}, .body = "x",
                      .notify = MLR_DSN_FAILURE | MLR_DSN_DELAY, .ret = "HDRS"}},
            .client = C_EHLO "MAIL FROM:<j\xc3\xb6rg@example.com> BODY=8BITMIME SMTPUTF8 RET=HDRS\r\n"
                             "RCPT TO:<b+x@example.com> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b+2Bx@example.com\r\n"
                             "DATA\r\nx\r\n.\r\n",
            .want_txn_code = {250},
        };
        check1(&c);
    }
}

static void starttls_and_auth(void)
{
    {
        /* refused by mlr_smtp_new: nothing at all is written */
        static const struct {
            const char *name, *user, *pass, *tok;
            size_t ul, pl, tl;
        } bad[] = {
            {"CR/LF in the username", "u\r\nMAIL FROM:<x@evil.test>", "p", NULL, 26, 1, 0},
            {"LF in the username", "u\nx", "p", NULL, 3, 1, 0},
            {"NUL in the username", "u\0x", "p", NULL, 3, 1, 0},
            {"NUL in the password", "u", "p\0q", NULL, 1, 3, 0},
            {"CR in a token", "u", NULL, "t\rQUIT", 1, 0, 6},
        };
        size_t k;
        for (k = 0; k < sizeof bad / sizeof bad[0]; k++) {
            char name[80];
            tcase c = {
                .opts = {.helo = "c", .security = MLR_SEC_TLS, .username = bad[k].user,
                         .username_len = bad[k].ul, .password = bad[k].pass, .password_len = bad[k].pl,
                         .token = bad[k].tok, .token_len = bad[k].tl},
                .steps = {GREET, "S:250-mx\r\n250 AUTH PLAIN LOGIN XOAUTH2\r\n", "S:235 ok\r\n"},
                .client = "",
                .want_err = MLR_ERR_INPUT,
            };
            snprintf(name, sizeof name, "INJ-08 %s: refused before anything is sent", bad[k].name);
            c.name = name;
            check1(&c);
        }
    }

    {
        tcase c = {
            .name = "STARTTLS, caps forgotten, re-EHLO, AUTH PLAIN",
            .opts = {.helo = "client.example", .security = MLR_SEC_STARTTLS, .username = "user",
                     .username_len = 4, .password = "pass", .password_len = 4},
            .steps = {GREET, "S:250-mx\r\n250-SIZE 10\r\n250-AUTH LOGIN\r\n250 STARTTLS\r\n",
                      "S:220 2.0.0 go ahead\r\n", "T",
                      "S:250-mx\r\n250-SIZE 100000\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n",
                      "S:235 ok\r\n", "S:250 ok\r\n", "S:250 ok\r\n", "S:354 go\r\n", "S:250 queued\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"}, .body = "hi", .size = 50}},
            .client = C_EHLO "STARTTLS\r\n" C_EHLO "AUTH PLAIN AHVzZXIAcGFzcw==\r\n"
                             "MAIL FROM:<a@example.com> SIZE=50\r\nRCPT TO:<b@example.com>\r\nDATA\r\nhi\r\n.\r\n",
            .want_txn_code = {250},
        };
        result b;
        check(&c, &b);
        TAP_OK(b.trace.data && strstr(b.trace.data, "C: AUTH PLAIN <redacted>\n") &&
                   !strstr(b.trace.data, "AHVzZXIAcGFzcw"),
               "trace redacts the AUTH PLAIN response");
        result_free(&b);
    }
    {
        tcase c = {
            .name = "ST-01 response injection after 220",
            .opts = {.helo = "client.example", .security = MLR_SEC_STARTTLS},
            .steps = {GREET, "S:250-mx\r\n250 STARTTLS\r\n",
                      "S:220 Ready\r\n250-x\r\n250 AUTH PLAIN LOGIN\r\n", "T"},
            .client = C_EHLO "STARTTLS\r\n",
            .want_err = MLR_ERR_PROTOCOL,
            .want_msg_sub = "response injection",
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "ST-02 partial-line injection after 220",
            .opts = {.helo = "client.example", .security = MLR_SEC_STARTTLS},
            .steps = {GREET, "S:250-mx\r\n250 STARTTLS\r\n", "S:220 ok\r\n250-AUTH PLAIN", "T"},
            .client = C_EHLO "STARTTLS\r\n",
            .want_err = MLR_ERR_PROTOCOL,
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "ST-04 no STARTTLS offered: only QUIT",
            .opts = {.helo = "client.example", .security = MLR_SEC_STARTTLS, .username = "u",
                     .username_len = 1, .password = "p", .password_len = 1},
            .steps = {GREET, "S:250-mx\r\n250 AUTH PLAIN LOGIN\r\n"},
            .msgs = {MSG1},
            .client = C_EHLO "QUIT\r\n",
            .want_err = MLR_ERR_TLS,
            .want_txn_err = {MLR_ERR_TLS},
            .want_msg_sub = "does not offer STARTTLS",
        };
        check1(&c);
    }
    {
        static const char *refusals[] = {"S:454 4.7.0 TLS not available\r\n", "S:502 no\r\n",
                                         "S:501 syntax\r\n"};
        size_t k;
        for (k = 0; k < 3; k++) {
            tcase c = {
                .name = "ST-05 STARTTLS refused",
                .opts = {.helo = "client.example", .security = MLR_SEC_STARTTLS},
                .steps = {GREET, "S:250-mx\r\n250 STARTTLS\r\n", refusals[k],
                          "S:235 Authenticated\r\n250 ok\r\n"},
                .msgs = {MSG1},
                .client = C_EHLO "STARTTLS\r\nQUIT\r\n",
                .want_err = MLR_ERR_TLS,
                .want_txn_err = {MLR_ERR_TLS},
                .want_temporary = {k == 0},
                .want_msg_sub = "refused STARTTLS",
            };
            check1(&c);
        }
    }
    {
        static const char *wrong[] = {"S:250 OK\r\n", "S:354 go on\r\n", "S:221 bye\r\n"};
        size_t k;
        for (k = 0; k < 3; k++) {
            tcase c = {
                .name = "ST-06 STARTTLS answered with a non-220",
                .opts = {.helo = "client.example", .security = MLR_SEC_STARTTLS},
                .steps = {GREET, "S:250-mx\r\n250 STARTTLS\r\n", wrong[k]},
                .client = C_EHLO "STARTTLS\r\n",
                .want_err = MLR_ERR_TLS,
                .want_msg_sub = "only 220 starts TLS",
            };
            check1(&c);
        }
    }
    {
        tcase c = {
            .name = "ST-07 EHLO refused while STARTTLS is required: no HELO",
            .opts = {.helo = "client.example", .security = MLR_SEC_STARTTLS},
            .steps = {GREET, "S:500 what\r\n", "S:250 hi\r\n"},
            .client = C_EHLO "QUIT\r\n",
            .want_err = MLR_ERR_TLS,
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "STARTTLS optional, refused: continues in plaintext",
            .opts = {.helo = "client.example", .security = MLR_SEC_STARTTLS_OPTIONAL},
            .steps = {GREET, "S:250-mx\r\n250 STARTTLS\r\n", "S:454 not now\r\n", "S:250 ok\r\n",
                      "S:250 ok\r\n", "S:354 go\r\n", "S:250 queued\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"}, .body = "hi"}},
            .client = C_EHLO "STARTTLS\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                             "DATA\r\nhi\r\n.\r\n",
            .want_txn_code = {250},
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "AUTH refused without TLS",
            .opts = {.helo = "client.example", .security = MLR_SEC_NONE, .username = "u",
                     .username_len = 1, .password = "p", .password_len = 1},
            .steps = {GREET, "S:250-mx\r\n250 AUTH PLAIN\r\n"},
            .client = C_EHLO "QUIT\r\n",
            .want_err = MLR_ERR_AUTH,
            .want_msg_sub = "unencrypted",
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "HELO fallback (plaintext allowed)",
            .opts = PLAIN_OPTS,
            .steps = {GREET, "S:502 5.5.1 EHLO not implemented\r\n", "S:250 hello\r\n", "S:250 ok\r\n",
                      "S:250 ok\r\n", "S:354 go\r\n", "S:250 queued\r\n"},
            .msgs = {MSG1},
            .client = C_EHLO "HELO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                             "DATA\r\nSubject: hi\r\n\r\nhello\r\n.\r\n",
            .want_txn_code = {250},
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "AUTH LOGIN (implicit TLS)",
            .opts = {.helo = "c", .security = MLR_SEC_TLS, .username = "tim", .username_len = 3,
                     .password = "tanstaaf", .password_len = 8, .auth_pref = {MLR_MECH_LOGIN},
                     .auth_npref = 1},
            .steps = {GREET, "S:250-mx\r\n250 AUTH PLAIN LOGIN CRAM-MD5\r\n", "S:334 VXNlcm5hbWU6\r\n",
                      "S:334 UGFzc3dvcmQ6\r\n", "S:235 2.7.0 ok\r\n"},
            .client = "EHLO c\r\nAUTH LOGIN\r\ndGlt\r\ndGFuc3RhYWY=\r\n",
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "AUTH CRAM-MD5 (RFC 2195 example), chosen as strongest",
            .opts = {.helo = "c", .security = MLR_SEC_TLS, .username = "tim", .username_len = 3,
                     .password = "tanstaaftanstaaf", .password_len = 16},
            .steps = {GREET, "S:250-mx\r\n250 AUTH LOGIN PLAIN CRAM-MD5\r\n",
                      "S:334 PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+\r\n",
                      "S:235 ok\r\n"},
            .client = "EHLO c\r\nAUTH CRAM-MD5\r\n"
                      "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw\r\n",
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "AUTH XOAUTH2 with an error challenge",
            .opts = {.helo = "c", .security = MLR_SEC_TLS, .username = "u@x", .username_len = 3,
                     .token = "tok", .token_len = 3},
            .steps = {GREET, "S:250-mx\r\n250 AUTH PLAIN XOAUTH2\r\n",
                      "S:334 eyJzdGF0dXMiOiI0MDEifQ==\r\n", "S:535 5.7.8 bad token\r\n"},
            .client = "EHLO c\r\nAUTH XOAUTH2 dXNlcj11QHgBYXV0aD1CZWFyZXIgdG9rAQE=\r\n\r\nQUIT\r\n",
            .want_err = MLR_ERR_AUTH,
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "AUTH OAUTHBEARER",
            .opts = {.helo = "c", .security = MLR_SEC_TLS, .username = "u", .username_len = 1,
                     .token = "t", .token_len = 1, .host = "mx", .port = 587},
            .steps = {GREET, "S:250-mx\r\n250 AUTH OAUTHBEARER XOAUTH2\r\n", "S:235 ok\r\n"},
            .client = "EHLO c\r\nAUTH OAUTHBEARER bixhPXUsAWhvc3Q9bXgBcG9ydD01ODcBYXV0aD1CZWFyZXIgdAEB\r\n",
        };
        check1(&c);
    }
    {
        static char tok[600];
        tcase c = {
            .name = "INJ-05 long XOAUTH2 token: initial response after 334",
            .opts = {.helo = "c", .security = MLR_SEC_TLS, .username = "u", .username_len = 1,
                     .token = tok, .token_len = 500},
            .steps = {GREET, "S:250-mx\r\n250 AUTH XOAUTH2\r\n", "S:334 \r\n", "S:235 ok\r\n"},
            .want_err = 0,
        };
        result b;
        memset(tok, 'A', 500);
        c.client = "";
        run(&c, -1, 0, 0, &b);
        TAP_OK(b.err == 0 && b.client.len > 520 && !memcmp(b.client.data, "EHLO c\r\nAUTH XOAUTH2\r\n", 22),
               "long token: AUTH line without initial response, response after 334 (err %d %s)",
               b.err, b.msg);
        result_free(&b);
    }
    {
        tcase c = {
            .name = "RPL-06 334 loop is cancelled with *",
            .opts = {.helo = "c", .security = MLR_SEC_TLS, .username = "u", .username_len = 1,
                     .password = "p", .password_len = 1, .auth_pref = {MLR_MECH_LOGIN}, .auth_npref = 1},
            .steps = {GREET, "S:250-mx\r\n250 AUTH LOGIN\r\n", "S:334 eHl6\r\n", "S:334 eHl6\r\n",
                      "S:334 eHl6\r\n", "S:501 cancelled\r\n"},
            .client = "EHLO c\r\nAUTH LOGIN\r\ndQ==\r\ncA==\r\n*\r\nQUIT\r\n",
            .want_err = MLR_ERR_AUTH,
            .want_msg_sub = "cancelled",
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "invalid base64 challenge is cancelled",
            .opts = {.helo = "c", .security = MLR_SEC_TLS, .username = "u", .username_len = 1,
                     .password = "p", .password_len = 1, .auth_pref = {MLR_MECH_CRAM_MD5}, .auth_npref = 1},
            .steps = {GREET, "S:250-mx\r\n250 AUTH CRAM-MD5\r\n", "S:334 !!!!\r\n", "S:501 ok\r\n"},
            .client = "EHLO c\r\nAUTH CRAM-MD5\r\n*\r\nQUIT\r\n",
            .want_err = MLR_ERR_AUTH,
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "ST-08 tampered capabilities: post-TLS list only",
            .opts = {.helo = "c", .security = MLR_SEC_STARTTLS, .username = "u", .username_len = 1,
                     .password = "p", .password_len = 1},
            .steps = {GREET, "S:250-mx\r\n250-AUTH PLAIN LOGIN\r\n250-SIZE 10\r\n250 STARTTLS\r\n",
                      "S:220 go\r\n", "T", "S:250-mx\r\n250-AUTH GSSAPI\r\n250-SIZE 100000\r\n250 STARTTLS\r\n"},
            .client = "EHLO c\r\nSTARTTLS\r\nEHLO c\r\nQUIT\r\n",
            .want_err = MLR_ERR_AUTH,
            .want_msg_sub = "none we support",
        };
        check1(&c);
    }
}

static void faults(void)
{
    /* FLT-01: 421 at every step */
    static const struct {
        const char *label;
        const char *steps[8];
        const char *client;
        int security;
    } f421[] = {
        {"greeting", {"S:421 busy\r\n"}, "", MLR_SEC_NONE},
        {"EHLO", {GREET, "S:421 busy\r\n"}, C_EHLO, MLR_SEC_NONE},
        {"STARTTLS", {GREET, "S:250-mx\r\n250 STARTTLS\r\n", "S:421 busy\r\n"}, C_EHLO "STARTTLS\r\n",
         MLR_SEC_STARTTLS},
        {"MAIL", {GREET, "S:250 mx\r\n", "S:421 busy\r\n"}, C_EHLO "MAIL FROM:<a@example.com>\r\n",
         MLR_SEC_NONE},
        {"RCPT", {GREET, "S:250 mx\r\n", "S:250 ok\r\n", "S:421 busy\r\n"},
         C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n", MLR_SEC_NONE},
        {"DATA", {GREET, "S:250 mx\r\n", "S:250 ok\r\n", "S:250 ok\r\n", "S:421 busy\r\n"},
         C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n", MLR_SEC_NONE},
        {"final dot", {GREET, "S:250 mx\r\n", "S:250 ok\r\n", "S:250 ok\r\n", "S:354 go\r\n", "S:421 busy\r\n"},
         C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nSubject: hi\r\n\r\nhello\r\n.\r\n",
         MLR_SEC_NONE},
    };
    size_t k;
    for (k = 0; k < sizeof f421 / sizeof f421[0]; k++) {
        tcase c = {.opts = PLAIN_OPTS, .msgs = {MSG1}, .want_err = MLR_ERR_SMTP,
                   .want_txn_err = {MLR_ERR_SMTP}, .want_txn_code = {421}, .want_temporary = {1}};
        char name[64];
        size_t i;
        snprintf(name, sizeof name, "FLT-01 421 at %s", f421[k].label);
        c.name = name;
        c.opts.security = f421[k].security;
        for (i = 0; i < 8 && f421[k].steps[i]; i++)
            c.steps[i] = f421[k].steps[i];
        c.client = f421[k].client;
        check1(&c);
    }
    {
        tcase c = {
            .name = "554 greeting: QUIT and fail",
            .opts = PLAIN_OPTS,
            .steps = {"S:554 go away\r\n"},
            .client = "QUIT\r\n",
            .want_err = MLR_ERR_SMTP,
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "all recipients rejected, no PIPELINING: no DATA",
            .opts = PLAIN_OPTS,
            .steps = {GREET, "S:250 mx\r\n", "S:250 ok\r\n", "S:550 5.1.1 no\r\n", "S:451 4.3.0 later\r\n",
                      "S:250 reset\r\n", "S:221 bye\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"x@example.com", "y@example.com"}, .body = "b"}},
            .quit = 1,
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<x@example.com>\r\n"
                             "RCPT TO:<y@example.com>\r\nQUIT\r\n",
            /* one refusal was temporary: so is the whole (it cites that one) */
            .want_txn_err = {MLR_ERR_SMTP},
            .want_txn_code = {451},
            .want_temporary = {1},
            .want_msg_sub = "1 of 2 only for now",
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "all recipients rejected for good: permanent, the first refusal",
            .opts = PLAIN_OPTS,
            .steps = {GREET, "S:250 mx\r\n", "S:250 ok\r\n", "S:550 5.1.1 no\r\n", "S:553 5.1.3 bad\r\n",
                      "S:250 reset\r\n", "S:221 bye\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"x@example.com", "y@example.com"}, .body = "b"}},
            .quit = 1,
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<x@example.com>\r\n"
                             "RCPT TO:<y@example.com>\r\nQUIT\r\n",
            .want_txn_err = {MLR_ERR_SMTP},
            .want_txn_code = {550},
            .want_msg_sub = "all recipients were rejected: 5.1.1 no",
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "all rejected (4xx) with PIPELINING, DATA answered 354: lone dot",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_PIPE, "S:250 ok\r\n451 4.3.0 later\r\n354 go\r\n", "S:554 no\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"x@example.com"}, .body = "secret body"}},
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n.\r\n",
            .want_txn_err = {MLR_ERR_SMTP},
            .want_txn_code = {451},
            .want_temporary = {1},
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "SIZE refusal before MAIL",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_PIPE, "S:221 bye\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"}, .body = "x", .size = 5000}},
            .quit = 1,
            .client = C_EHLO "QUIT\r\n",
            .want_txn_err = {MLR_ERR_SMTP},
            .want_txn_code = {552},
            .want_msg_sub = "SIZE limit",
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "INJ-01 CR/LF in envelope: nothing written",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_PIPE, "S:221 bye\r\n"},
            .msgs = {{.from = "a@b.com\r\nRCPT TO:<x@evil>", .rcpt = {"b@example.com"}, .body = "x"},
                     {.from = "a@b.com", .rcpt = {"b@example.com\nRSET"}, .body = "x"},
                     {.from = "a@b.com", .rcpt = {"\"Mich\" <m@example.com>"}, .body = "x"},
                     {.from = "a@b.com", .rcpt = {"user@example.com evil.com"}, .body = "x"}},
            .quit = 1,
            .client = C_EHLO "QUIT\r\n",
            .want_txn_err = {MLR_ERR_INPUT, MLR_ERR_INPUT, MLR_ERR_INPUT, MLR_ERR_INPUT},
        };
        check1(&c);
    }
    {
        static char longlocal[80], longaddr[300];
        tcase c = {
            .name = "INJ-05 length limits",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_PIPE, "S:221 bye\r\n"},
            .msgs = {{.from = longlocal, .rcpt = {"b@example.com"}, .body = "x"},
                     {.from = "a@b.com", .rcpt = {longaddr}, .body = "x"},
                     {.from = "\xff@b.com", .rcpt = {"b@example.com"}, .body = "x"}},
            .quit = 1,
            .client = C_EHLO "QUIT\r\n",
            /* an address that is not UTF-8 is bad input, with or without SMTPUTF8 */
            .want_txn_err = {MLR_ERR_INPUT, MLR_ERR_INPUT, MLR_ERR_INPUT},
        };
        memset(longlocal, 'l', 65);
        strcpy(longlocal + 65, "@example.com");
        memset(longaddr, 'd', 260);
        longaddr[0] = 'x';
        longaddr[1] = '@';
        check1(&c);
    }
    {
        /* the lengths are the caller's: a NUL cannot hide what follows it */
        tcase c = {
            .name = "INJ-06 NUL, CR or LF inside the given lengths: nothing but QUIT",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_PIPE, "S:221 bye\r\n"},
            .msgs = {{.from = "ceo@bank.example\0@mycompany.example", .from_len = 35,
                      .rcpt = {"b@example.com"}, .body = "x"},
                     {.from = "a@example.com", .rcpt = {"b@example.com", "c@example.com\0\r\nRSET"},
                      .rcpt_len = {0, 19}, .body = "x"},
                     {.from = "a@example.com\r", .rcpt = {"b@example.com"}, .body = "x"},
                     {.from = "a@example.com", .rcpt = {"b@exa\nmple.com"}, .body = "x"}},
            .quit = 1,
            .client = C_EHLO "QUIT\r\n",
            .want_txn_err = {MLR_ERR_INPUT, MLR_ERR_INPUT, MLR_ERR_INPUT, MLR_ERR_INPUT},
            .want_msg_sub = "invalid envelope sender",
        };
        check1(&c);
    }
    {
        /* RFC-valid, but a server that ignores quotes reads parameters */
        tcase c = {
            .name = "INJ-07 quoted local parts that could hide ESMTP parameters",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_PIPE, "S:221 bye\r\n"},
            .msgs = {{.from = "a@example.com",
                      .rcpt = {"\"x> NOTIFY=SUCCESS ORCPT=rfc822;spy@evil.test\"@d.test"}, .body = "x"},
                     {.from = "\"a b\"@example.com", .rcpt = {"b@example.com"}, .body = "x"},
                     {.from = "a@example.com", .rcpt = {"\"a=b\"@example.com"}, .body = "x"},
                     {.from = "\"@evil.test:a\"@example.com", .rcpt = {"b@example.com"}, .body = "x"}},
            .quit = 1,
            .client = C_EHLO "QUIT\r\n",
            .want_txn_err = {MLR_ERR_INPUT, MLR_ERR_INPUT, MLR_ERR_INPUT, MLR_ERR_INPUT},
            .want_msg_sub = "quoted local part",
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "IDN: A-labels in MAIL, RCPT and ORCPT without SMTPUTF8",
            .opts = PLAIN_OPTS,
            .steps = {GREET, "S:250-mx\r\n250-PIPELINING\r\n250 DSN\r\n",
                      "S:250 ok\r\n250 ok\r\n354 go\r\n", "S:250 q\r\n"},
            .msgs = {{.from = "a@m\xc3\xbcnchen.example", .rcpt = {"b@B\xc3\x9c" "cher.de"}, .body = "x",
                      .notify = MLR_DSN_FAILURE}},
            .client = C_EHLO "MAIL FROM:<a@xn--mnchen-3ya.example>\r\n"
                             "RCPT TO:<b@xn--bcher-kva.de> NOTIFY=FAILURE ORCPT=rfc822;b@xn--bcher-kva.de\r\n"
                             "DATA\r\nx\r\n.\r\n",
            .want_txn_code = {250},
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "IDN: a non-ASCII local part without SMTPUTF8 is unsupported, named; a bad IDN is input",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_PIPE, "S:221 bye\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com", "j\xc3\xb6rg@b\xc3\xbc" "cher.de"},
                      .body = "x"},
                     {.from = "a@example.com", .rcpt = {"b@\xe2\x98\x83.net"}, .body = "x"}},
            .quit = 1,
            .client = C_EHLO "QUIT\r\n",
            .want_txn_err = {MLR_ERR_UNSUPPORTED, MLR_ERR_INPUT},
            .want_msg_sub = "j\xc3\xb6rg@b\xc3\xbc" "cher.de has a non-ASCII local part",
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "IDN: with SMTPUTF8 a non-ASCII local part keeps its domain as given",
            .opts = PLAIN_OPTS,
            .steps = {GREET, "S:250-mx\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
                      "S:250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", "S:250 q\r\n"},
            .msgs = {{.from = "a@b\xc3\xbc" "cher.de",
                      .rcpt = {"j\xc3\xb6rg@b\xc3\xbc" "cher.de", "k@b\xc3\xbc" "cher.de"}, .body = "x"}},
            .client = C_EHLO "MAIL FROM:<a@xn--bcher-kva.de> BODY=8BITMIME SMTPUTF8\r\n"
                             "RCPT TO:<j\xc3\xb6rg@b\xc3\xbc" "cher.de>\r\n"
                             "RCPT TO:<k@xn--bcher-kva.de>\r\nDATA\r\nx\r\n.\r\n",
            .want_txn_code = {250},
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "FLT-03 drop after the final dot: outcome unknown",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_PIPE, "S:250 ok\r\n250 ok\r\n354 go\r\n", "E"},
            .msgs = {MSG1},
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
                             "Subject: hi\r\n\r\nhello\r\n.\r\n",
            .want_err = MLR_ERR_NETWORK,
            .want_txn_err = {MLR_ERR_NETWORK},
            .want_temporary = {1},
            .want_msg_sub = "outcome unknown",
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "RPL-04 reply without CRLF then EOF",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_PIPE, "S:250 ok\r\n250 ok\r\n354 go\r\n", "S:250 OK", "E"},
            .msgs = {MSG1},
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
                             "Subject: hi\r\n\r\nhello\r\n.\r\n",
            .want_err = MLR_ERR_NETWORK,
            .want_txn_err = {MLR_ERR_NETWORK},
            .want_temporary = {1},
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "FLT-03 drop after RCPT: not sent",
            .opts = PLAIN_OPTS,
            .steps = {GREET, "S:250 mx\r\n", "S:250 ok\r\n", "E"},
            .msgs = {MSG1},
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n",
            .want_err = MLR_ERR_NETWORK,
            .want_txn_err = {MLR_ERR_NETWORK},
            .want_temporary = {1},
            .want_msg_sub = "RCPT TO",
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "354 in reply to EHLO is a protocol error",
            .opts = PLAIN_OPTS,
            .steps = {GREET, "S:354 what\r\n"},
            .client = C_EHLO,
            .want_err = MLR_ERR_PROTOCOL,
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "overlong reply line",
            .opts = PLAIN_OPTS,
            .steps = {"S:220-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                      "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"},
            .client = "",
            .want_err = 0,
        };
        static char big[6000];
        memset(big, 'x', sizeof big - 1);
        memcpy(big, "S:220 ", 6);
        c.steps[0] = big;
        c.want_err = MLR_ERR_PROTOCOL;
        c.want_msg_sub = "4 KiB";
        check1(&c);
    }
    {
        /* the body source fails mid-DATA: the connection is closed, no final dot */
        tcase c = {
            .name = "body source failure mid-DATA: no final dot",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_PIPE, "S:250 ok\r\n250 ok\r\n354 go\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"}, .body = "abcdef", .chunk = 2,
                      .fail_read = 1}},
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
            .want_err = MLR_ERR_INPUT,
            .want_txn_err = {MLR_ERR_INPUT},
            .want_msg_sub = "attachment vanished",
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "NUL in body: connection closed, no final dot",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_PIPE, "S:250 ok\r\n250 ok\r\n354 go\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"}, .body = "ab\r\n\0.\r\n", .body_len = 7}},
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
            .want_err = MLR_ERR_INPUT,
            .want_txn_err = {MLR_ERR_INPUT},
        };
        check1(&c);
    }
}

/* DATA-03: each smuggling ending inside a body, sent through the engine. */
static void smuggling(void)
{
    static const char *ends[] = {"\n.\n", "\r.\r", "\r.\n", "\n.\r", "\n.\r\n", "\r\n.\n",
                                 "\r.\r\n", "\r\n.\r"};
    size_t k;
    for (k = 0; k < sizeof ends / sizeof ends[0]; k++) {
        char body[200], want[600];
        size_t i, eod = 0, bare = 0;
        result r;
        tcase c = {
            .name = "smuggling",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_PIPE, "S:250 ok\r\n250 ok\r\n354 go\r\n", "S:250 q\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"}, .body = body, .chunk = 1}},
            .want_txn_code = {250},
        };
        snprintf(body, sizeof body, "x%sMAIL FROM:<spoof@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nevil\r\n", ends[k]);
        run(&c, -1, 0, 0, &r);
        for (i = 0; i < r.client.len; i++) {
            const char *s = r.client.data;
            if ((s[i] == '\r' && (i + 1 == r.client.len || s[i + 1] != '\n')) ||
                (s[i] == '\n' && (i == 0 || s[i - 1] != '\r')))
                bare++;
            if (i >= 2 && s[i] == '.' && s[i - 1] == '\n' && i + 1 < r.client.len && s[i + 1] == '\r')
                eod++;
        }
        snprintf(want, sizeof want, "%s", r.client.data);
        TAP_OK(bare == 0 && eod == 1 && r.txn_code[0] == 250 && r.txn_err[0] == 0,
               "smuggling ending %zu: no bare CR/LF, one end-of-data on the wire", k + 1);
        c.client = want;
        check1(&c);
        result_free(&r);
    }
}

/* NOOP / RSET / QUIT and misuse. */
static void simple_commands(void)
{
    mlr_smtp_opts o = PLAIN_OPTS;
    int err;
    char msg[128];
    const uint8_t *p;
    size_t n;
    mlr_smtp *e = mlr_smtp_new(mlr_default_alloc(), &o, &err, msg, sizeof msg);
    TAP_OK(mlr_smtp_want(e) == MLR_WANT_READ, "a new engine waits for the greeting");
    TAP_OK(mlr_smtp_noop(e) == MLR_ERR_STATE, "NOOP before ready is a state error");
    TAP_OK(strcmp(mlr_smtp_step_name(e), "the greeting") == 0, "step name: the greeting");
    mlr_smtp_feed(e, (const uint8_t *)"220 hi\r\n", 8);
    n = mlr_smtp_pending(e, &p);
    mlr_smtp_consume(e, n);
    mlr_smtp_feed(e, (const uint8_t *)"250 mx\r\n", 8);
    TAP_OK(mlr_smtp_ready(e) && mlr_smtp_want(e) == 0, "ready and idle after EHLO");
    TAP_OK(mlr_smtp_noop(e) == 0 && mlr_smtp_want(e) == (MLR_WANT_READ | MLR_WANT_WRITE), "NOOP queued");
    n = mlr_smtp_pending(e, &p);
    TAP_OK(n == 6 && !memcmp(p, "NOOP\r\n", 6), "NOOP on the wire");
    mlr_smtp_consume(e, n);
    TAP_OK(strcmp(mlr_smtp_step_name(e), "the reply to NOOP") == 0, "step name: the reply to NOOP");
    mlr_smtp_feed(e, (const uint8_t *)"250 2.0.0 ok\r\n", 14);
    TAP_OK(mlr_smtp_want(e) == 0 && mlr_smtp_cmd_status(e)->code == 250, "NOOP answered");
    mlr_smtp_rset(e);
    n = mlr_smtp_pending(e, &p);
    mlr_smtp_consume(e, n);
    mlr_smtp_feed(e, (const uint8_t *)"500 no\r\n", 8);
    TAP_OK(mlr_smtp_cmd_status(e)->err == MLR_ERR_SMTP && mlr_smtp_cmd_status(e)->code == 500,
           "RSET refusal reported");
    TAP_OK(mlr_smtp_feed(e, (const uint8_t *)"250 unasked\r\n", 13) == MLR_ERR_PROTOCOL,
           "an unsolicited reply is a protocol error");
    TAP_OK(mlr_smtp_want(e) == MLR_ERR_PROTOCOL && mlr_smtp_noop(e) == MLR_ERR_PROTOCOL,
           "and it is sticky");
    mlr_smtp_free(e);


    e = mlr_smtp_new(mlr_default_alloc(), &o, &err, msg, sizeof msg);
    mlr_smtp_feed(e, (const uint8_t *)"220 hi\r\n", 8);
    mlr_smtp_consume(e, mlr_smtp_pending(e, &p));
    mlr_smtp_feed(e, (const uint8_t *)"250 mx\r\n", 8);
    mlr_smtp_quit(e);
    mlr_smtp_consume(e, mlr_smtp_pending(e, &p));
    TAP_OK(mlr_smtp_eof(e) == 0 && (mlr_smtp_want(e) & MLR_WANT_DONE), "EOF after QUIT is a clean end");
    mlr_smtp_free(e);

    o.helo = "evil\r\nMAIL FROM:<x>";
    e = mlr_smtp_new(mlr_default_alloc(), &o, &err, msg, sizeof msg);
    TAP_OK(!e && err == MLR_ERR_INPUT, "INJ-02 CR/LF in the helo name refused");
}

#define EHLO_CHUNK "S:250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n"

/* CHUNKING / BDAT (RFC 3030). */
static void bdat(void)
{
    {
        tcase c = {
            .name = "BDAT: pipelined, one LAST chunk, CRLF-normalised, not dot-stuffed",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_CHUNK, "S:250 2.1.0 ok\r\n250 2.1.5 ok\r\n",
                      "S:250 2.0.0 Ok: queued as B1\r\n", "S:221 bye\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"},
                      .body = ".x\n.\r\nend", .chunk = 2}},
            .quit = 1,
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                             "BDAT 12 LAST\r\n.x\r\n.\r\nend\r\nQUIT\r\n",
            .want_txn_code = {250},
        };
        result b;
        check(&c, &b);
        TAP_OK(strstr(b.txn_msg[0], "queued as B1") && strstr(b.trace.data, "C: BDAT 12 LAST\n"),
               "BDAT: receipt from the LAST reply, BDAT line in the trace");
        result_free(&b);
    }
    {
        tcase c = {
            .name = "BDAT: pipelined chunks, sizes add up",
            .opts = {.helo = "client.example", .security = MLR_SEC_NONE, .chunk_size = 8},
            .steps = {GREET, EHLO_CHUNK, "S:250 ok\r\n250 ok\r\n",
                      "S:250 2.0.0 c1\r\n250 2.0.0 c2\r\n250 2.0.0 c3\r\n250 2.0.0 c4\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"},
                      .body = "0123456789abcdefghijklmnopqrstuv", .chunk = 5}},
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                             "BDAT 10\r\n0123456789BDAT 10\r\nabcdefghijBDAT 10\r\nklmnopqrst"
                             "BDAT 4 LAST\r\nuv\r\n",
            .want_txn_code = {250},
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "BDAT: no PIPELINING, one chunk per round trip",
            .opts = {.helo = "client.example", .security = MLR_SEC_NONE, .chunk_size = 4},
            .steps = {GREET, "S:250-mx\r\n250 CHUNKING\r\n", "S:250 ok\r\n", "S:250 ok\r\n",
                      "S:250 c1\r\n", "S:250 c2\r\n", "S:250 done\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"}, .body = "abcdefghij",
                      .chunk = 4}},
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                             "BDAT 4\r\nabcdBDAT 4\r\nefghBDAT 4 LAST\r\nij\r\n",
            .want_txn_code = {250},
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "BDAT: send_many, next MAIL right behind BDAT LAST",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_CHUNK, "S:250 ok\r\n250 ok\r\n",
                      "S:250 q1\r\n250 ok\r\n250 ok\r\n", "S:250 q2\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"}, .body = "one\r\n"},
                     {.from = "a@example.com", .rcpt = {"c@example.com"}, .body = "two\r\n"}},
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                             "BDAT 5 LAST\r\none\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<c@example.com>\r\n"
                             "BDAT 5 LAST\r\ntwo\r\n",
            .want_txn_code = {250, 250},
        };
        check1(&c);
    }
    {
        /* RFC 3030 with RFC 2920: a message known to fit one chunk goes
         * out behind its RCPTs before their replies, and the next one
         * right behind it: no reply is awaited between them */
        tcase c = {
            .name = "BDAT: small messages back to back before any reply",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_CHUNK,
                      "S:250 ok\r\n250 ok\r\n250 q1\r\n250 ok\r\n250 ok\r\n250 q2\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"}, .body = "one\r\n",
                      .size = 5},
                     {.from = "a@example.com", .rcpt = {"c@example.com"}, .body = "two\r\n",
                      .size = 5}},
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                             "BDAT 5 LAST\r\none\r\nMAIL FROM:<a@example.com>\r\n"
                             "RCPT TO:<c@example.com>\r\nBDAT 5 LAST\r\ntwo\r\n",
            .want_txn_code = {250, 250},
        };
        result b;
        const char *second;
        check(&c, &b);
        second = strstr(b.trace.data, "C: BDAT 5 LAST\n");
        second = second ? strstr(second + 1, "C: BDAT 5 LAST\n") : NULL;
        TAP_OK(second && !memmem(b.trace.data, (size_t)(second - b.trace.data), "\nS: 250 ok", 10),
               "BDAT: both messages' BDAT went out before the first reply was read");
        TAP_OK(strstr(b.txn_msg[0], "q1") && strstr(b.txn_msg[1], "q2"),
               "BDAT: each message gets its own LAST reply");
        result_free(&b);
    }
    {
        tcase c = {
            .name = "BDAT: early, every recipient refused: no RSET, the next one goes on",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_CHUNK,
                      "S:250 ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n"
                      "250 ok\r\n250 ok\r\n250 q2\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"x@example.com"}, .body = "one\r\n",
                      .size = 5},
                     {.from = "a@example.com", .rcpt = {"c@example.com"}, .body = "two\r\n",
                      .size = 5}},
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<x@example.com>\r\n"
                             "BDAT 5 LAST\r\none\r\nMAIL FROM:<a@example.com>\r\n"
                             "RCPT TO:<c@example.com>\r\nBDAT 5 LAST\r\ntwo\r\n",
            .want_txn_err = {MLR_ERR_SMTP, 0},
            .want_txn_code = {550, 250},
            .want_msg_sub = "all recipients were rejected",
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "BDAT: early, the sender refused: that message fails with MAIL's reply",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_CHUNK,
                      "S:553 5.7.1 sender refused\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need RCPT\r\n"
                      "250 ok\r\n250 ok\r\n250 q2\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"}, .body = "one\r\n",
                      .size = 5},
                     {.from = "a@example.com", .rcpt = {"c@example.com"}, .body = "two\r\n",
                      .size = 5}},
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                             "BDAT 5 LAST\r\none\r\nMAIL FROM:<a@example.com>\r\n"
                             "RCPT TO:<c@example.com>\r\nBDAT 5 LAST\r\ntwo\r\n",
            .want_txn_err = {MLR_ERR_SMTP, 0},
            .want_txn_code = {553, 250},
            .want_msg_sub = "sender refused",
        };
        check1(&c);
    }
    {
        /* a message larger than one chunk waits for its recipients */
        tcase c = {
            .name = "BDAT: a message over one chunk waits for the RCPT replies",
            .opts = {.helo = "client.example", .security = MLR_SEC_NONE, .chunk_size = 8},
            .steps = {GREET, EHLO_CHUNK, "S:250 ok\r\n250 ok\r\n",
                      "S:250 2.0.0 c1\r\n250 2.0.0 c2\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"},
                      .body = "0123456789abcd", .size = 14, .chunk = 5}},
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                             "BDAT 10\r\n0123456789BDAT 6 LAST\r\nabcd\r\n",
            .want_txn_code = {250},
        };
        result b;
        const char *bd;
        check(&c, &b);
        bd = strstr(b.trace.data, "C: BDAT 10\n");
        TAP_OK(bd && memmem(b.trace.data, (size_t)(bd - b.trace.data), "\nS: 250 ok", 10),
               "BDAT: the large message's first chunk followed the RCPT replies");
        result_free(&b);
    }
    {
        /* a body source fails under BDAT: only that message fails; the
         * connection goes on, the next transaction starts with RSET */
        tcase c = {
            .name = "BDAT: a failing source gives up its message alone, RSET, the next goes",
            .opts = {.helo = "client.example", .security = MLR_SEC_NONE, .chunk_size = 4},
            .steps = {GREET, EHLO_CHUNK, "S:250 ok\r\n250 ok\r\n",
                      "S:250 reset\r\n250 ok\r\n250 ok\r\n", "S:250 q2\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"}, .body = "aaaabbbbcccc",
                      .chunk = 4, .fail_read = 1},
                     {.from = "a@example.com", .rcpt = {"c@example.com"}, .body = "two\r\n"}},
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                             "RSET\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<c@example.com>\r\n"
                             "BDAT 5 LAST\r\ntwo\r\n",
            .want_txn_err = {MLR_ERR_INPUT, 0},
            .want_txn_code = {0, 250},
            .want_msg_sub = "attachment vanished",
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "BDAT: a failing source after chunks went out: RSET drops them",
            .opts = {.helo = "client.example", .security = MLR_SEC_NONE, .chunk_size = 4},
            .steps = {GREET, EHLO_CHUNK, "S:250 ok\r\n250 ok\r\n", "S:250 c1\r\n",
                      "S:250 reset\r\n250 ok\r\n250 ok\r\n", "S:250 q2\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"}, .body = "aaaabbbbcccc",
                      .chunk = 4, .fail_read = 2},
                     {.from = "a@example.com", .rcpt = {"c@example.com"}, .body = "two\r\n"}},
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                             "BDAT 4\r\naaaaRSET\r\nMAIL FROM:<a@example.com>\r\n"
                             "RCPT TO:<c@example.com>\r\nBDAT 5 LAST\r\ntwo\r\n",
            .want_txn_err = {MLR_ERR_INPUT, 0},
            .want_txn_code = {0, 250},
            .want_msg_sub = "attachment vanished",
        };
        check1(&c);
    }
    {
        /* back to back: the failing message's MAIL/RCPT replies come after
         * the next one went out; no second RSET follows them */
        tcase c = {
            .name = "BDAT: early, a failing source: RSET once, the others go on",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_CHUNK,
                      "S:250 ok\r\n250 ok\r\n250 q1\r\n250 ok\r\n250 ok\r\n250 reset\r\n250 ok\r\n"
                      "250 ok\r\n250 q3\r\n250 ok\r\n250 ok\r\n250 q4\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"}, .body = "one\r\n",
                      .size = 5},
                     {.from = "a@example.com", .rcpt = {"c@example.com"}, .body = "abcdef",
                      .chunk = 2, .size = 8, .fail_read = 1},
                     {.from = "a@example.com", .rcpt = {"d@example.com"}, .body = "three\r\n",
                      .size = 7},
                     {.from = "a@example.com", .rcpt = {"e@example.com"}, .body = "four\r\n",
                      .size = 6}},
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                             "BDAT 5 LAST\r\none\r\n"
                             "MAIL FROM:<a@example.com>\r\nRCPT TO:<c@example.com>\r\n"
                             "RSET\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<d@example.com>\r\n"
                             "BDAT 7 LAST\r\nthree\r\n"
                             "MAIL FROM:<a@example.com>\r\nRCPT TO:<e@example.com>\r\n"
                             "BDAT 6 LAST\r\nfour\r\n",
            .want_txn_err = {0, MLR_ERR_INPUT, 0, 0},
            .want_txn_code = {250, 0, 250, 250},
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "BDAT: all recipients refused, no body sent, RSET before the next",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_CHUNK, "S:250 ok\r\n550 5.1.1 no\r\n",
                      "S:250 reset\r\n250 ok\r\n250 ok\r\n", "S:250 q2\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"x@example.com"}, .body = "secret\r\n"},
                     {.from = "a@example.com", .rcpt = {"c@example.com"}, .body = "two\r\n"}},
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<x@example.com>\r\n"
                             "RSET\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<c@example.com>\r\n"
                             "BDAT 5 LAST\r\ntwo\r\n",
            .want_txn_err = {MLR_ERR_SMTP, 0},
            .want_txn_code = {550, 250},
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "BDAT: a refused chunk stops the body; later replies drained; RSET",
            .opts = {.helo = "client.example", .security = MLR_SEC_NONE, .chunk_size = 4},
            .steps = {GREET, EHLO_CHUNK, "S:250 ok\r\n250 ok\r\n",
                      "S:552 5.3.4 too big\r\n", "S:503 5.5.1 no transaction\r\n",
                      "S:250 reset\r\n250 ok\r\n250 ok\r\n", "S:250 q2\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"},
                      .body = "aaaabbbbccccddddeeee", .chunk = 4},
                     {.from = "a@example.com", .rcpt = {"c@example.com"}, .body = "two\r\n"}},
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                             "BDAT 4\r\naaaaBDAT 4\r\nbbbbBDAT 4\r\nccccBDAT 4\r\nddddBDAT 6 LAST\r\neeee\r\n"
                             "MAIL FROM:<a@example.com>\r\nRCPT TO:<c@example.com>\r\n",
            .want_txn_err = {MLR_ERR_SMTP, 0},
            .want_txn_code = {552, 0},
        };
        result b;
        run(&c, -1, 0, 0, &b);
        /* the whole small body is queued before the refusal arrives: what
         * matters is the outcome and that the session stays usable */
        TAP_OK(b.txn_err[0] == MLR_ERR_SMTP && b.txn_code[0] == 552 && b.err == 0,
               "BDAT: refused chunk fails the message (%d %s)", b.txn_code[0], b.txn_msg[0]);
        result_free(&b);
    }
    {
        tcase c = {
            .name = "BDAT: refusal without PIPELINING, no further chunk, RSET before the next",
            .opts = {.helo = "client.example", .security = MLR_SEC_NONE, .chunk_size = 4},
            .steps = {GREET, "S:250-mx\r\n250 CHUNKING\r\n", "S:250 ok\r\n", "S:250 ok\r\n",
                      "S:552 5.3.4 too big\r\n", "S:250 reset\r\n", "S:250 ok\r\n",
                      "S:250 ok\r\n", "S:250 q2\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"},
                      .body = "aaaabbbbccccddddeeee", .chunk = 4},
                     {.from = "a@example.com", .rcpt = {"c@example.com"}, .body = "two\r\n"}},
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                             "BDAT 4\r\naaaaRSET\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<c@example.com>\r\n"
                             "BDAT 5 LAST\r\ntwo\r\n",
            .want_txn_err = {MLR_ERR_SMTP, 0},
            .want_txn_code = {552, 250},
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "BDAT: connection dropped after LAST, outcome unknown",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_CHUNK, "S:250 ok\r\n250 ok\r\n", "E"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"}, .body = "x\r\n"}},
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n"
                             "BDAT 3 LAST\r\nx\r\n",
            .want_err = MLR_ERR_NETWORK,
            .want_txn_err = {MLR_ERR_NETWORK},
            .want_temporary = {1},
            .want_msg_sub = "outcome unknown",
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "CHUNKING switched off: DATA",
            .opts = {.helo = "client.example", .security = MLR_SEC_NONE, .no_chunking = 1},
            .steps = {GREET, EHLO_CHUNK, "S:250 ok\r\n250 ok\r\n354 go\r\n", "S:250 q\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"}, .body = ".x\r\n"}},
            .client = C_EHLO "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
                             "..x\r\n.\r\n",
            .want_txn_code = {250},
        };
        check1(&c);
    }
    {
        tcase c = {
            .name = "BINARYMIME opt-in without the extension: unsupported, nothing sent",
            .opts = PLAIN_OPTS,
            .steps = {GREET, EHLO_CHUNK, "S:221 bye\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"}, .body = "x", .binary = 1}},
            .quit = 1,
            .client = C_EHLO "QUIT\r\n",
            .want_txn_err = {MLR_ERR_UNSUPPORTED},
        };
        check1(&c);
    }
    {
        static const char body[] = "bin\0\n\r.\r\nx";
        tcase c = {
            .name = "BINARYMIME: BODY=BINARYMIME, octets sent as they are",
            .opts = PLAIN_OPTS,
            .steps = {GREET, "S:250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-8BITMIME\r\n250 BINARYMIME\r\n",
                      "S:250 ok\r\n250 ok\r\n", "S:250 q\r\n"},
            .msgs = {{.from = "a@example.com", .rcpt = {"b@example.com"}, .body = body,
                      .body_len = sizeof body - 1, .binary = 1}},
            .want_txn_code = {250},
        };
        static const char want[] = "EHLO client.example\r\nMAIL FROM:<a@example.com> BODY=BINARYMIME\r\n"
                                   "RCPT TO:<b@example.com>\r\nBDAT 10 LAST\r\nbin\0\n\r.\r\nx";
        result b;
        run(&c, -1, 0, 0, &b);
        if (b.client.len != sizeof want - 1 || memcmp(b.client.data, want, sizeof want - 1))
            show("got", b.client.data, b.client.len);
        TAP_OK(b.client.len == sizeof want - 1 && !memcmp(b.client.data, want, sizeof want - 1) &&
                   b.txn_code[0] == 250,
               "BINARYMIME: exact octets (NUL, bare LF and CR kept, no final CRLF added)");
        result_free(&b);
    }
}

/* Write everything pending into out; returns the octets written. */
static size_t drain(mlr_smtp *e, mlr_buf *out)
{
    const uint8_t *p;
    size_t n, total = 0;
    while ((n = mlr_smtp_pending(e, &p)) > 0) {
        mlr_buf_add(out, p, n);
        mlr_smtp_consume(e, n);
        total += n;
    }
    return total;
}

static void feed_str(mlr_smtp *e, const char *s) { mlr_smtp_feed(e, (const uint8_t *)s, strlen(s)); }

/* DATA read-ahead: while the 354 is awaited the body is read and stuffed
 * aside; nothing of it goes out, and none of it counts as sent, before
 * the 354; a refused DATA drops it. */
static void read_ahead(void)
{
    mlr_smtp_opts o = PLAIN_OPTS;
    static const tmsg m1 = {.from = "a@example.com", .rcpt = {"b@example.com"},
                            .body = ".dot\nhello\n", .chunk = 4};
    static const tmsg m2 = {.from = "a@example.com", .rcpt = {"c@example.com"},
                            .body = "second\r\n"};
    const char *rc1[1] = {"b@example.com"}, *rc2[1] = {"c@example.com"};
    size_t l1[1] = {13}, l2[1] = {13};
    reader r1 = {&m1, 0, 0}, r2 = {&m2, 0, 0};
    mlr_smtp_txn t1, t2;
    mlr_buf out;
    int err;
    char msg[128];
    size_t n;
    mlr_smtp *e = mlr_smtp_new(mlr_default_alloc(), &o, &err, msg, sizeof msg);
    mlr_buf_init(&out, mlr_default_alloc());
    mlr_smtp_txn_init(&t1, mlr_default_alloc());
    mlr_smtp_txn_init(&t2, mlr_default_alloc());
    t1.from = t2.from = "a@example.com";
    t1.from_len = t2.from_len = 13;
    t1.rcpt = rc1;
    t1.rcpt_len = l1;
    t2.rcpt = rc2;
    t2.rcpt_len = l2;
    t1.nrcpt = t2.nrcpt = 1;
    t1.read = t2.read = read_body;
    t1.read_ud = &r1;
    t2.read_ud = &r2;
    feed_str(e, "220 mx ESMTP\r\n");
    drain(e, &out);
    feed_str(e, "250-mx\r\n250 PIPELINING\r\n");
    mlr_smtp_send(e, &t1);
    mlr_smtp_send(e, &t2);
    drain(e, &out);
    TAP_OK(strstr(out.data, "DATA\r\n") && r1.calls == 0 && r1.off == strlen(m1.body),
           "read-ahead: the body was read while the 354 is awaited");
    TAP_OK(!strstr(out.data, "dot") && t1.body_sent == 0 && !t1.body_done,
           "read-ahead: none of it went out or counts as sent before the 354");
    mlr_buf_reset(&out);
    feed_str(e, "250 ok\r\n250 ok\r\n354 go\r\n");
    TAP_OK(t1.body_sent == 0, "read-ahead: counted only when the writer takes it");
    n = drain(e, &out);
    TAP_OK(n > 0 && !strncmp(out.data, "..dot\r\nhello\r\n.\r\nMAIL FROM:<a@example.com>\r\n", 44) &&
               t1.body_sent == strlen(m1.body) && t1.body_done,
           "read-ahead: after the 354 the stuffed body, its dot and the next commands leave "
           "together");
    mlr_buf_reset(&out);
    feed_str(e, "250 queued\r\n250 ok\r\n250 ok\r\n554 5.3.0 no data today\r\n");
    drain(e, &out);
    TAP_OK(t1.done && t1.status.code == 250 && t2.done && t2.status.code == 554 &&
               t2.body_sent == 0 && (!out.data || !strstr(out.data, "second")),
           "read-ahead: a refused DATA drops what was read ahead (%d, %d)", t1.status.code,
           t2.status.code);
    mlr_smtp_txn_free(&t1);
    mlr_smtp_txn_free(&t2);
    mlr_buf_free(&out);
    mlr_smtp_free(e);
}

int main(void)
{
    read_ahead();
    bdat();
    happy_paths();
    starttls_and_auth();
    faults();
    smuggling();
    simple_commands();
    return tap_done();
}
