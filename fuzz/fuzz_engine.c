/* fuzz_engine.c - the whole SMTP client engine against arbitrary server
 * bytes (a hostile server or a meddler), driven the way a transport
 * drives it: queue messages with body readers, write what it asks for,
 * feed the server's bytes in seeded pieces, do (or fail) the TLS
 * handshake when asked, then EOF.
 *
 * Input: three option bytes, a fail-the-Nth-allocation byte, then per
 * message a body (length-prefixed; one that starts with 0xEE fails after
 * its first piece, as a vanished file would); the rest is what the
 * server says.
 *
 * Whatever the server says, the client must: write no bare CR, bare LF
 * or NUL; keep every line within 998 octets; end each message with at
 * most one final dot (or BDAT ... LAST); with STARTTLS required, write
 * nothing but EHLO, STARTTLS and QUIT before the handshake, and start
 * with EHLO after it (with its capabilities forgotten); never send AUTH
 * in clear text unless allowed; never put an injected address on the
 * wire; never show a secret in the trace; after a fatal error write at
 * most a QUIT; end in an error or a clean close after EOF with every
 * message done; report an accepted message only when its whole body
 * went out; surface a failed allocation as an error; and free
 * everything. */
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "fuzz_util.h"
#include "smtp_engine.h"

#define MAXTX 4
#define SECRET "s3cr3t-PW"
#define TOKEN "ya29.t0k3n"

static const char *const addrs[8] = {
    "bob@example.com", "carol@example.net", "\"odd local\"@example.org",
    "\xce\xb4@\xcf\x80.example", "evil@x.example\r\nVRFY root", "a@b.example\0\r\nVRFY x",
    "dave@[192.0.2.1]", "eve@b\303\274cher.example"};

typedef struct body {
    const uint8_t *p;
    size_t n, off;
    uint32_t seed;
    int fails;         /* a body starting with 0xEE fails after its first piece */
} body;

static int read_body(void *ud, const uint8_t **p, size_t *n)
{
    body *b = ud;
    size_t k;
    if (b->fails && b->off > 0)
        return MLR_ERR_IO;
    if (b->off >= b->n)
        return 0;
    b->seed = b->seed * 1103515245u + 12345u;
    k = 1 + (b->seed >> 16) % 700;
    if (k > b->n - b->off)
        k = b->n - b->off;
    *p = b->p + b->off;
    *n = k;
    b->off += k;
    return 1;
}

static void on_trace(void *ud, char dir, const char *line, size_t len)
{
    fz_str *t = ud;
    FZ_ASSERT(dir == 'C' || dir == 'S');
    FZ_ASSERT(memchr(line, '\r', len) == NULL && memchr(line, '\n', len) == NULL);
    if (dir == 'S')
        return; /* a server may say anything, the secret included */
    fz_str_add(t, &dir, 1);
    fz_str_add(t, ": ", 2);
    fz_str_add(t, line, len);
    fz_str_add(t, "\n", 1);
}

/* Does a line start with the given word? */
static int starts(const uint8_t *l, size_t n, const char *w)
{
    size_t k = strlen(w);
    return n >= k && memcmp(l, w, k) == 0;
}

/* The secret in the forms an AUTH exchange would carry. */
static void secret_forms(fz_str *forms, size_t *lens, int *nforms)
{
    mlr_buf b;
    static const char plain[] = "\0user\0" SECRET;
    static const char xo[] = "user=user\001auth=Bearer " TOKEN "\001\001";
    *nforms = 0;
    mlr_buf_init(&b, mlr_default_alloc());
    mlr_sasl_b64_append(&b, (const uint8_t *)plain, sizeof plain - 1);
    fz_str_add(forms, b.data, b.len);
    lens[(*nforms)++] = b.len;
    mlr_buf_reset(&b);
    mlr_sasl_b64_append(&b, (const uint8_t *)SECRET, sizeof SECRET - 1);
    fz_str_add(forms, b.data, b.len);
    lens[(*nforms)++] = b.len;
    mlr_buf_reset(&b);
    mlr_sasl_b64_append(&b, (const uint8_t *)xo, sizeof xo - 1);
    fz_str_add(forms, b.data, b.len);
    lens[(*nforms)++] = b.len;
    mlr_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_in in = {data, size};
    fz_heap h;
    fz_str client = {0}, trace = {0}, forms = {0};
    mlr_smtp_opts o;
    mlr_smtp *e;
    mlr_smtp_txn tx[MAXTX];
    body bodies[MAXTX];
    int queued[MAXTX] = {0};
    uint8_t *bodycopy[MAXTX] = {NULL};
    const char *rcpt[MAXTX][3];
    size_t rlen[MAXTX][3], flen[MAXTX];
    const char *from[MAXTX];
    size_t ntx, i, tls_at = (size_t)-1, fatal_at = (size_t)-1, flens[3];
    const uint8_t *srv;
    size_t srvn, off = 0;
    uint8_t f0 = fz_u8(&in), f1 = fz_u8(&in), f2 = fz_u8(&in), f3 = fz_u8(&in);
    uint32_t seed = f2 | 0x10000u;
    int err, idle_cmds = 0, quit_sent = 0, eof_sent = 0, guard, stall = 0, nforms, w;
    char errmsg[160];

    memset(&o, 0, sizeof o);
    o.helo = "client.example";
    o.security = f0 & 3;
    switch ((f0 >> 2) & 3) {
    case 1:
        o.username = "user", o.username_len = 4, o.password = SECRET;
        o.password_len = sizeof SECRET - 1;
        break;
    case 2:
        o.username = "user", o.username_len = 4, o.token = TOKEN, o.token_len = sizeof TOKEN - 1;
        break;
    case 3:
        o.username = "user", o.username_len = 4, o.password = SECRET;
        o.password_len = sizeof SECRET - 1;
        o.auth_pref[0] = MLR_MECH_LOGIN;
        o.auth_pref[1] = MLR_MECH_CRAM_MD5;
        o.auth_npref = 2;
        break;
    default:
        break;
    }
    o.allow_plaintext_auth = (f0 >> 4) & 1;
    o.host = "smtp.example";
    o.port = 587;
    o.trace = on_trace;
    o.trace_ud = &trace;
    ntx = 1 + ((f0 >> 5) & 3);
    fz_heap_init(&h, (f1 & 0x80) ? f3 + 1u : 0);
    secret_forms(&forms, flens, &nforms);

    e = mlr_smtp_new(&h.alloc, &o, &err, errmsg, sizeof errmsg);
    if (!e) {
        FZ_ASSERT(h.failed && err == MLR_ERR_NOMEM);
        goto out;
    }
    for (i = 0; i < ntx; i++) {
        uint8_t m = fz_u8(&in);
        size_t k, nr = 1 + m % 3;
        mlr_smtp_txn_init(&tx[i], &h.alloc);
        from[i] = (m & 0x80) ? "" : (m & 0x40) ? addrs[(m >> 3) & 7] : "alice@example.com";
        flen[i] = (m & 0x40) && ((m >> 3) & 7) == 5 ? 21 : strlen(from[i]);
        for (k = 0; k < nr; k++) {
            unsigned a = (unsigned)(m >> (2 + k)) & 7;
            rcpt[i][k] = addrs[a];
            rlen[i][k] = a == 5 ? 21 : strlen(addrs[a]);
        }
        tx[i].from = from[i];
        tx[i].from_len = flen[i];
        tx[i].rcpt = rcpt[i];
        tx[i].rcpt_len = rlen[i];
        tx[i].nrcpt = nr;
        bodies[i].n = fz_take(&in, 3000, &bodies[i].p);
        /* no 'A' or 'V' in bodies, so that "AUTH" and "VRFY" lines on the
         * wire can only be commands */
        bodycopy[i] = malloc(bodies[i].n + 1);
        for (k = 0; k < bodies[i].n; k++)
            bodycopy[i][k] = bodies[i].p[k] == 'A' ? 'a' : bodies[i].p[k] == 'V' ? 'v'
                                                                               : bodies[i].p[k];
        bodies[i].p = bodycopy[i];
        bodies[i].off = 0;
        bodies[i].fails = bodies[i].n > 1 && bodies[i].p[0] == 0xEE;
        bodies[i].seed = seed + (uint32_t)i;
        tx[i].size = (f1 & 8) ? bodies[i].n : 0;
        tx[i].eightbit = (f1 >> 4) & 1;
        tx[i].dsn_notify = (f1 & 0x20) ? MLR_DSN_FAILURE | MLR_DSN_DELAY : 0;
        tx[i].dsn_ret = (f1 & 0x40) ? "HDRS" : NULL;
        tx[i].read = read_body;
        tx[i].read_ud = &bodies[i];
        err = mlr_smtp_send(e, &tx[i]);
        FZ_ASSERT(err == MLR_OK || mlr_smtp_want(e) < 0);
        queued[i] = err == MLR_OK;
    }
    srvn = fz_rest(&in, &srv);

    for (guard = 0; guard < 100000; guard++) {
        const uint8_t *p;
        size_t n, before = client.n;
        int all_done = 1;
        while ((n = mlr_smtp_pending(e, &p)) > 0) {
            size_t take = n;
            seed = seed * 1103515245u + 12345u;
            if (seed & 0x10000)
                take = 1 + (seed >> 17) % n;
            fz_str_add(&client, p, take);
            mlr_smtp_consume(e, take);
        }
        w = mlr_smtp_want(e);
        if (w < 0 && fatal_at == (size_t)-1)
            fatal_at = before;
        if (w < 0 || (w & MLR_WANT_DONE))
            break;
        for (i = 0; i < ntx; i++)
            all_done &= tx[i].done;
        if (w & MLR_WANT_TLS) {
            if (f1 & 2) {
                mlr_smtp_fail(e, MLR_ERR_TLS, 0, "TLS handshake failed");
            } else {
                tls_at = client.n;
                FZ_ASSERT(mlr_smtp_tls_done(e) == MLR_OK || mlr_smtp_want(e) < 0);
                FZ_ASSERTF(mlr_smtp_caps(e)->flags == 0, "capabilities kept across STARTTLS");
            }
            continue;
        }
        if (w == 0 && all_done && (f1 & 1) && !quit_sent && (idle_cmds == 3 || !(f1 & 4))) {
            quit_sent = 1;
            FZ_ASSERT(mlr_smtp_quit(e) == MLR_OK);
            continue;
        }
        if (w == 0 && all_done && (f1 & 4) && idle_cmds < 3) {
            /* NOOP or RSET while idle */
            idle_cmds++;
            seed = seed * 1103515245u + 12345u;
            FZ_ASSERT(((seed >> 16) & 1 ? mlr_smtp_noop(e) : mlr_smtp_rset(e)) == MLR_OK);
            continue;
        }
        if (off < srvn) {
            size_t piece = srvn - off;
            seed = seed * 1103515245u + 12345u;
            if (f2 & 1) {
                /* a line at a time, as most servers write */
                long eol = fz_find(srv + off, srvn - off, "\n", 1);
                piece = eol < 0 ? srvn - off : (size_t)eol + 1;
            } else if (seed & 0x20000) {
                piece = 1 + (seed >> 18) % 64;
            }
            if (piece > srvn - off)
                piece = srvn - off;
            mlr_smtp_feed(e, srv + off, piece);
            off += piece;
            stall = 0;
            continue;
        }
        if (!eof_sent) {
            eof_sent = 1;
            mlr_smtp_eof(e);
            w = mlr_smtp_want(e);
            FZ_ASSERTF(w < 0 || (w & MLR_WANT_DONE), "engine carries on after EOF (want %d)", w);
            continue;
        }
        FZ_ASSERTF(++stall < 3, "engine stalls (want %d)", w);
    }
    FZ_ASSERT(guard < 100000);
    /* the polite QUIT after a fatal error, if any */
    {
        const uint8_t *p;
        size_t n;
        while ((n = mlr_smtp_pending(e, &p)) > 0) {
            fz_str_add(&client, p, n);
            mlr_smtp_consume(e, n);
        }
    }
    if (fatal_at != (size_t)-1)
        FZ_ASSERTF(client.n == fatal_at ||
                   (client.n - fatal_at == 6 && !memcmp(client.p + fatal_at, "QUIT\r\n", 6)),
                   "client wrote more than QUIT after a fatal error");
    if (h.failed)
        FZ_ASSERTF(mlr_smtp_status_get(e)->err != 0, "an allocation failure went unnoticed");

    /* the bytes on the wire */
    FZ_ASSERTF(fz_bare_crlf(client.p, client.n) < 0, "bare CR or LF from the client");
    FZ_ASSERT(client.n == 0 || memchr(client.p, 0, client.n) == NULL);
    FZ_ASSERT(fz_max_line(client.p, client.n) <= 998);
    {
        size_t ls = 0, dots = 0;
        while (ls < client.n) {
            long eol = fz_find(client.p + ls, client.n - ls, "\r\n", 2);
            const uint8_t *l = client.p + ls;
            size_t len = eol < 0 ? client.n - ls : (size_t)eol;
            if (len == 1 && l[0] == '.')
                dots++;
            FZ_ASSERTF(!starts(l, len, "VRFY"), "an injected command reached the wire");
            if (o.security == MLR_SEC_STARTTLS && ls < tls_at)
                FZ_ASSERTF(starts(l, len, "EHLO ") || starts(l, len, "STARTTLS") ||
                               starts(l, len, "QUIT"),
                           "'%.*s' sent before TLS with STARTTLS required", (int)len, l);
            if (ls == tls_at && ls < client.n)
                FZ_ASSERT(starts(l, len, "EHLO "));
            if (!o.allow_plaintext_auth && o.security != MLR_SEC_TLS && ls < tls_at)
                FZ_ASSERTF(!starts(l, len, "AUTH"), "AUTH in clear text");
            ls += len + 2;
        }
        /* BDAT sends the body as counted octets, where a "." line is data */
        if (fz_find(client.p, client.n, "\r\nBDAT ", 7) < 0)
            FZ_ASSERTF(dots <= ntx, "%zu final dots for %zu messages", dots, ntx);
        for (i = 0; i < ntx; i++) {
            FZ_ASSERT(tx[i].done || !queued[i]);
            if (queued[i] && tx[i].status.err == 0) {
                FZ_ASSERTF(tx[i].body_sent == bodies[i].n, "accepted with %llu of %zu octets sent",
                           (unsigned long long)tx[i].body_sent, bodies[i].n);
                FZ_ASSERT(memchr(bodies[i].p, 0, bodies[i].n) == NULL);
                /* the end of the body went out: a final dot, or BDAT ... LAST */
                FZ_ASSERT(tx[i].naccepted > 0 &&
                          (dots > 0 || fz_find(client.p, client.n, " LAST\r\n", 7) >= 0));
            }
        }
    }
    /* secrets never reach the trace of what the client sent */
    if (trace.n) {
        size_t k, fo = 0;
        FZ_ASSERT(fz_find(trace.p, trace.n, SECRET, sizeof SECRET - 1) < 0);
        FZ_ASSERT(fz_find(trace.p, trace.n, TOKEN, sizeof TOKEN - 1) < 0);
        for (k = 0; k < (size_t)nforms; k++) {
            FZ_ASSERTF(fz_find(trace.p, trace.n, forms.p + fo, flens[k]) < 0, "secret in trace");
            fo += flens[k];
        }
    }
    for (i = 0; i < ntx; i++)
        mlr_smtp_txn_free(&tx[i]);
    mlr_smtp_free(e);
out:
    for (i = 0; i < MAXTX; i++)
        free(bodycopy[i]);
    fz_heap_check_empty(&h);
    fz_str_free(&client);
    fz_str_free(&trace);
    fz_str_free(&forms);
    return 0;
}
