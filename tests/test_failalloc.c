/* test_failalloc.c - allocation failure at every point.
 *
 * Each workload (message build + render, reply parsing, an SMTP session
 * with two messages) runs with an allocator that refuses the Nth
 * allocation, for N = 1, 2, ... until a run needs fewer than N. Every
 * refusal must surface as MLR_ERR_NOMEM (never a crash, another error, or
 * a silent success with something missing), every block must be freed
 * with its own size, and nothing may stay allocated once the objects are
 * freed. Run under ASan by scripts/test as well. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "mime_message.h"
#include "smtp_engine.h"
#include "smtp_reply.h"
#include "tap.h"

/* ---- the failing allocator ---- */

typedef struct heap {
    size_t live, bytes, count, fail_at;
    int failed, bad_osize;
    mlr_alloc a;
} heap;

static void *heap_fn(void *ud, void *ptr, size_t osize, size_t nsize)
{
    heap *h = ud;
    size_t *b = ptr ? (size_t *)ptr - 2 : NULL;
    if (b && b[0] != osize)
        h->bad_osize++;
    if (nsize == 0) {
        if (b) {
            h->live--;
            h->bytes -= b[0];
            free(b);
        }
        return NULL;
    }
    if (!b || nsize > osize) {
        if (++h->count == h->fail_at) {
            h->failed = 1;
            return NULL;
        }
    }
    {
        size_t *nb = realloc(b, nsize + 2 * sizeof(size_t));
        if (!nb)
            abort();
        if (b)
            h->bytes -= nb[0];
        else
            h->live++;
        nb[0] = nsize;
        h->bytes += nsize;
        return nb + 2;
    }
}

static void heap_init(heap *h, size_t fail_at)
{
    memset(h, 0, sizeof *h);
    h->fail_at = fail_at;
    h->a.fn = heap_fn;
    h->a.ud = h;
}

/* What one run found wrong (empty: nothing). */
static char problem[512];

static void complain(const char *fmt, ...)
{
    va_list ap;
    if (problem[0])
        return;
    va_start(ap, fmt);
    vsnprintf(problem, sizeof problem, fmt, ap);
    va_end(ap);
}

/* An rc from a call that may fail only for want of memory. */
static int step(heap *h, int rc, const char *what)
{
    if (rc == MLR_OK)
        return 0;
    if (rc != MLR_ERR_NOMEM)
        complain("%s returned %d instead of MLR_ERR_NOMEM", what, rc);
    else if (!h->failed)
        complain("%s returned MLR_ERR_NOMEM with no refused allocation", what);
    return 1;
}

/* ---- workload 1: build and render a message ---- */

/* A string literal as (pointer, length). */
#define S(lit) lit, sizeof lit - 1

typedef struct chunks {
    int n;
} chunks;

static int source(void *ud, const uint8_t **p, size_t *n, char *err, size_t errlen)
{
    chunks *c = ud;
    static const char piece[] = "binary \x01\x02\x03 data\r\n.\r\n";
    (void)err;
    (void)errlen;
    if (c->n++ >= 3)
        return 0;
    *p = (const uint8_t *)piece;
    *n = sizeof piece - 1;
    return 1;
}

static void work_message(heap *h)
{
    static const char subject[] = "Grüße 你好, a subject long enough to need folding twice "
                                  "over the 78 column limit of a header line";
    static const char text[] = "Hello Bob,\nthe report is attached.\n.\nFrom Alice — ✓\n";
    static const char html[] = "<p>Hello <img src='cid:logo'></p>";
    mlr_msg *m = mlr_msg_new(&h->a);
    mlr_src att, src, inl;
    chunks ck = {0};
    mlr_render *r = NULL;
    const uint8_t *p;
    size_t n, total = 0;
    int rc;
    if (!m) {
        if (!h->failed)
            complain("mlr_msg_new returned NULL with no refused allocation");
        return;
    }
    memset(&att, 0, sizeof att);
    memset(&src, 0, sizeof src);
    memset(&inl, 0, sizeof inl);
    att.data = "a,b\n1,2\n";
    att.len = 8;
    att.size = -1;
    src.fn = source;
    src.ud = &ck;
    src.size = -1;
    inl.data = "\x89PNG\r\n";
    inl.len = 6;
    inl.size = -1;
    if (step(h, mlr_msg_add_address(m, MLR_ROLE_FROM, S("Alice Ünal <alice@example.com>"), NULL,
                                    0, "from"), "add from") ||
        step(h, mlr_msg_add_address(m, MLR_ROLE_TO, S("bob@example.com"),
                                    S("Bob \"B\" Builder"), "to"), "add to") ||
        step(h, mlr_msg_add_address(m, MLR_ROLE_TO, S("carol@example.net"), NULL, 0, "to[2]"),
             "add to[2]") ||
        step(h, mlr_msg_add_address(m, MLR_ROLE_CC, S("dave@example.org"), NULL, 0, "cc"),
             "add cc") ||
        step(h, mlr_msg_add_address(m, MLR_ROLE_BCC, S("eve@example.org"), NULL, 0, "bcc"),
             "add bcc") ||
        step(h, mlr_msg_set_subject(m, subject, sizeof subject - 1), "subject") ||
        step(h, mlr_msg_set_date_string(m, S("Mon, 1 Jan 2024 00:00:00 +0000")), "date") ||
        step(h, mlr_msg_add_header(m, S("X-Campaign"), S("q4 ✓"), "headers"), "header") ||
        step(h, mlr_msg_set_text(m, text, sizeof text - 1), "text") ||
        step(h, mlr_msg_set_html(m, html, sizeof html - 1), "html") ||
        step(h, mlr_msg_add_part(m, &att, "text/csv", S("résumé final with a long name.csv"),
                                 NULL, 0, "attachments[1]"), "attachment") ||
        step(h, mlr_msg_add_part(m, &src, "application/octet-stream", S("big.bin"), NULL, 0,
                                 "attachments[2]"), "source attachment") ||
        step(h, mlr_msg_add_part(m, &inl, "image/png", S("logo.png"), S("logo"), "inline[1]"),
             "inline part") ||
        step(h, mlr_msg_finish(m), "finish"))
        goto out;
    r = mlr_render_new(m);
    if (!r) {
        if (!h->failed)
            complain("mlr_render_new returned NULL with no refused allocation");
        goto out;
    }
    while ((rc = mlr_render_next(r, &p, &n)) == 1)
        total += n;
    if (step(h, rc, "render"))
        goto out;
    if (h->failed)
        complain("an allocation was refused, yet the message built and rendered");
    else if (total < 1000)
        complain("rendering is only %zu octets", total);
out:
    mlr_render_free(r);
    mlr_msg_free(m);
}

/* ---- workload 2: reply parsing ---- */

static void work_reply(heap *h)
{
    mlr_reply_parser rp;
    mlr_reply r;
    char buf[4096];
    size_t len = 0, off = 0, used, i, replies = 0;
    int rc = 0;
    for (i = 0; i < 60; i++)
        len += (size_t)snprintf(buf + len, sizeof buf - len,
                                "250-%02zu a capability line long enough to grow the buffer\r\n", i);
    len += (size_t)snprintf(buf + len, sizeof buf - len, "250 last\r\n354 go ahead\r\n");
    mlr_reply_init(&rp, &h->a);
    while (off < len) {
        size_t piece = len - off < 97 ? len - off : 97;
        rc = mlr_reply_parse(&rp, (const uint8_t *)buf + off, piece, &used, &r);
        if (rc < 0)
            break;
        off += used;
        replies += rc == 1;
    }
    if (rc < 0) {
        if (rc != MLR_ERR_NOMEM || !h->failed)
            complain("reply parser returned %d (%s)", rc, rp.errmsg);
        else if (mlr_reply_parse(&rp, (const uint8_t *)buf, len, &used, &r) != rc)
            complain("the NOMEM error is not sticky");
    } else if (h->failed) {
        complain("an allocation was refused, yet the parser went on");
    } else if (replies != 2) {
        complain("%zu replies instead of 2", replies);
    }
    mlr_reply_free(&rp);
}

/* ---- workload 3: an SMTP session with AUTH and two messages ---- */

typedef struct rd {
    const char *s;
    size_t off;
} rd;

static int read_body(void *ud, const uint8_t **p, size_t *n)
{
    rd *b = ud;
    size_t len = strlen(b->s);
    if (b->off >= len)
        return 0;
    *p = (const uint8_t *)b->s + b->off;
    *n = len - b->off < 10 ? len - b->off : 10;
    b->off += *n;
    return 1;
}

static const char *const *server_script;

/* The same session over DATA (server_plain) or BDAT (server_bdat). */
static const char *const server_plain[] = {
    "220 mx.example ESMTP\r\n",
    "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250-8BITMIME\r\n"
    "250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 AUTH PLAIN LOGIN\r\n",
    "334 VXNlcm5hbWU6\r\n", "334 UGFzc3dvcmQ6\r\n", "235 2.7.0 ok\r\n",
    "250 2.1.0 ok\r\n", "250 2.1.5 ok\r\n", "550 5.1.1 no such user\r\n", "250 2.1.5 ok\r\n",
    "354 go\r\n",
    "250 2.0.0 queued as A\r\n",
    "250 2.1.0 ok\r\n", "250 2.1.5 ok\r\n", "354 go\r\n", "250 2.0.0 queued as B\r\n",
    "221 bye\r\n", NULL};

static const char *const server_bdat[] = {
    "220 mx.example ESMTP\r\n",
    "250-mx.example\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-SIZE 100000\r\n"
    "250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 AUTH PLAIN LOGIN\r\n",
    "334 VXNlcm5hbWU6\r\n", "334 UGFzc3dvcmQ6\r\n", "235 2.7.0 ok\r\n",
    "250 2.1.0 ok\r\n", "250 2.1.5 ok\r\n", "550 5.1.1 no such user\r\n", "250 2.1.5 ok\r\n",
    "250 2.0.0 queued as A\r\n",
    "250 2.1.0 ok\r\n", "250 2.1.5 ok\r\n", "250 2.0.0 queued as B\r\n",
    "221 bye\r\n", NULL};

static void work_engine(heap *h)
{
    const char *const *server = server_script;
    static const char *const rcpt1[] = {"bob@example.com", "carol@example.net", "x@example.org"};
    static const size_t rlen1[] = {15, 17, 13};
    static const char *const rcpt2[] = {"dave@example.org"};
    static const size_t rlen2[] = {16};
    mlr_smtp_opts o;
    mlr_smtp *e;
    mlr_smtp_txn t[2];
    rd bodies[2] = {{"Subject: one\r\n\r\nline\r\n.\r\nmore\n", 0}, {"two\r\n", 0}};
    char msg[128];
    int err, i, quit = 0, guard;
    size_t step_i = 0;
    memset(&o, 0, sizeof o);
    o.helo = "client.example";
    o.security = MLR_SEC_NONE;
    o.username = "user";
    o.username_len = 4;
    o.password = "pass word";
    o.password_len = 9;
    o.auth_pref[0] = MLR_MECH_LOGIN;
    o.auth_npref = 1;
    o.allow_plaintext_auth = 1;
    e = mlr_smtp_new(&h->a, &o, &err, msg, sizeof msg);
    if (!e) {
        if (err != MLR_ERR_NOMEM || !h->failed)
            complain("mlr_smtp_new failed with %d: %s", err, msg);
        return;
    }
    for (i = 0; i < 2; i++) {
        mlr_smtp_txn_init(&t[i], &h->a);
        t[i].from = "alice@example.com";
        t[i].from_len = 17;
        t[i].rcpt = i ? rcpt2 : rcpt1;
        t[i].rcpt_len = i ? rlen2 : rlen1;
        t[i].nrcpt = i ? 1 : 3;
        t[i].size = 40;
        t[i].dsn_notify = MLR_DSN_FAILURE;
        t[i].read = read_body;
        t[i].read_ud = &bodies[i];
        if (mlr_smtp_send(e, &t[i]) != MLR_OK && mlr_smtp_want(e) >= 0)
            complain("mlr_smtp_send refused a message on a healthy engine");
    }
    for (guard = 0; guard < 1000; guard++) {
        const uint8_t *p;
        size_t n;
        int w;
        while ((n = mlr_smtp_pending(e, &p)) > 0)
            mlr_smtp_consume(e, n);
        w = mlr_smtp_want(e);
        if (w < 0 || (w & MLR_WANT_DONE))
            break;
        if (w == 0 && t[0].done && t[1].done && !quit) {
            quit = 1;
            if (mlr_smtp_quit(e) != MLR_OK)
                break;
            continue;
        }
        if (!(w & MLR_WANT_READ) || !server[step_i])
            break;
        mlr_smtp_feed(e, (const uint8_t *)server[step_i], strlen(server[step_i]));
        step_i++;
    }
    err = mlr_smtp_status_get(e)->err;
    if (h->failed) {
        if (err != MLR_ERR_NOMEM)
            complain("engine status %d after a refused allocation (want NOMEM)", err);
        for (i = 0; i < 2; i++)
            if (!t[i].done)
                complain("message %d not done after a fatal error", i + 1);
            else if (t[i].status.err == MLR_OK && t[i].status.code != 250)
                complain("message %d: odd success", i + 1);
    } else {
        if (err != MLR_OK || !(mlr_smtp_want(e) & MLR_WANT_DONE))
            complain("session did not end cleanly: %d %s", err, mlr_smtp_status_get(e)->message);
        if (!t[0].done || t[0].status.err || t[0].naccepted != 2 || !t[1].done || t[1].status.err)
            complain("messages not delivered as expected");
    }
    for (i = 0; i < 2; i++)
        mlr_smtp_txn_free(&t[i]);
    mlr_smtp_free(e);
}

/* Run a workload with every allocation failing in turn. */
static void sweep(const char *name, void (*work)(heap *h))
{
    size_t n, bad = 0;
    char first[700] = "";
    for (n = 1; n < 100000; n++) {
        heap h;
        heap_init(&h, n);
        problem[0] = '\0';
        work(&h);
        if (h.live || h.bytes)
            complain("leak: %zu blocks, %zu bytes", h.live, h.bytes);
        if (h.bad_osize)
            complain("%d frees with a wrong size", h.bad_osize);
        if (problem[0]) {
            if (!bad++)
                snprintf(first, sizeof first, "allocation %zu: %s", n, problem);
        }
        if (!h.failed)
            break;
    }
    TAP_OK(bad == 0, "%s: %zu runs, each allocation refused once%s%s%s", name, n,
           bad ? "; failures: " : "", first, bad > 1 ? " (and more)" : "");
}

int main(void)
{
    sweep("message build and render", work_message);
    sweep("reply parser", work_reply);
    server_script = server_plain;
    sweep("SMTP session (DATA)", work_engine);
    server_script = server_bdat;
    sweep("SMTP session (BDAT)", work_engine);
    return tap_done();
}
