/* smtp_reply.c - incremental SMTP reply parser with hard limits, and the
 * EHLO capability parser. See smtp_reply.h. */
#include "smtp_reply.h"

#include <stdio.h>
#include <string.h>

/* Set the sticky error and return it. */
static int fail(mlr_reply_parser *p, int err, const char *msg)
{
    p->err = err;
    snprintf(p->errmsg, sizeof p->errmsg, "%s", msg);
    return err;
}

void mlr_reply_init(mlr_reply_parser *p, const mlr_alloc *a)
{
    memset(p, 0, sizeof *p);
    mlr_buf_init(&p->text, a);
}

void mlr_reply_free(mlr_reply_parser *p) { mlr_buf_free(&p->text); }

void mlr_reply_reset(mlr_reply_parser *p)
{
    mlr_buf_reset(&p->text);
    p->line_len = 0;
    p->saw_cr = 0;
    p->code = 0;
    p->nlines = 0;
    p->nbytes = 0;
    p->done = 0;
    p->err = 0;
    p->errmsg[0] = '\0';
}

int mlr_reply_partial(const mlr_reply_parser *p)
{
    return !p->done && (p->nbytes > 0 || p->line_len > 0 || p->saw_cr);
}

size_t mlr_reply_enhanced(const char *s, size_t n, char out[16])
{
    size_t i = 0, part, digits, olen = 0;
    out[0] = '\0';
    if (n < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
        return 0;
    out[olen++] = s[0];
    out[olen++] = '.';
    i = 2;
    for (part = 0; part < 2; part++) {
        digits = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9' && digits < 3) {
            out[olen++] = s[i++];
            digits++;
        }
        if (digits == 0 || (i < n && s[i] >= '0' && s[i] <= '9'))
            goto bad;
        if (part == 0) {
            if (i >= n || s[i] != '.')
                goto bad;
            out[olen++] = '.';
            i++;
        }
    }
    if (i < n && s[i] != ' ')
        goto bad;
    out[olen] = '\0';
    return i < n ? i + 1 : i;
bad:
    out[0] = '\0';
    return 0;
}

/* Check and store one complete line; 1 when it ends the reply. */
static int end_line(mlr_reply_parser *p)
{
    const char *l = p->line;
    size_t n = p->line_len;
    int code, last;
    if (n < 3 || l[0] < '2' || l[0] > '5' || l[1] < '0' || l[1] > '5' ||
        l[2] < '0' || l[2] > '9')
        return fail(p, MLR_ERR_PROTOCOL, "malformed reply code from server");
    if (n > 3 && l[3] != ' ' && l[3] != '-')
        return fail(p, MLR_ERR_PROTOCOL, "malformed reply line from server");
    code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
    if (p->code && code != p->code)
        return fail(p, MLR_ERR_PROTOCOL, "reply code changed inside a multi-line reply");
    p->code = code;
    last = n == 3 || l[3] == ' ';
    if (++p->nlines > MLR_REPLY_MAX_LINES)
        return fail(p, MLR_ERR_PROTOCOL, "server reply has too many lines");
    if (p->nlines > 1 && mlr_buf_addc(&p->text, '\n'))
        return fail(p, MLR_ERR_NOMEM, "out of memory");
    if (n > 4 && mlr_buf_add(&p->text, l + 4, n - 4))
        return fail(p, MLR_ERR_NOMEM, "out of memory");
    p->line_len = 0;
    return last;
}

int mlr_reply_parse(mlr_reply_parser *p, const uint8_t *buf, size_t len,
                    size_t *used, mlr_reply *out)
{
    size_t i;
    int rc;
    *used = 0;
    if (p->err)
        return p->err;
    if (p->done) {  /* the previous reply was handed out: start a new one */
        mlr_buf_reset(&p->text);
        p->code = 0;
        p->nlines = 0;
        p->nbytes = 0;
        p->done = 0;
    }
    for (i = 0; i < len; i++) {
        uint8_t c = buf[i];
        if (++p->nbytes > MLR_REPLY_MAX_BYTES) {
            *used = i + 1;
            return fail(p, MLR_ERR_PROTOCOL, "server reply exceeds 64 KiB");
        }
        if (c == '\n') {
            p->saw_cr = 0;
            rc = end_line(p);
            if (rc < 0) {
                *used = i + 1;
                return rc;
            }
            if (rc == 1) {
                *used = i + 1;
                p->done = 1;
                out->code = p->code;
                out->text = p->text.data ? p->text.data : "";
                out->text_len = p->text.len;
                out->nlines = p->nlines;
                mlr_reply_enhanced(out->text, out->text_len, out->enhanced);
                return 1;
            }
            continue;
        }
        if (p->saw_cr || c == '\0') {
            *used = i + 1;
            return fail(p, MLR_ERR_PROTOCOL, c == '\0' ? "NUL octet in server reply"
                                                       : "bare CR in server reply");
        }
        if (c == '\r') {
            p->saw_cr = 1;
            continue;
        }
        if (p->line_len >= MLR_REPLY_MAX_LINE) {
            *used = i + 1;
            return fail(p, MLR_ERR_PROTOCOL, "server reply line exceeds 4 KiB");
        }
        p->line[p->line_len++] = (char)c;
    }
    *used = len;
    return 0;
}

/* ---- capabilities ---- */

static const struct {
    const char *name;
    unsigned bit;
} mechs[] = {
    {"PLAIN", MLR_MECH_PLAIN},         {"LOGIN", MLR_MECH_LOGIN},
    {"CRAM-MD5", MLR_MECH_CRAM_MD5},   {"XOAUTH2", MLR_MECH_XOAUTH2},
    {"OAUTHBEARER", MLR_MECH_OAUTHBEARER},
    {"SCRAM-SHA-256", MLR_MECH_SCRAM_SHA_256},
};

/* Case-insensitive comparison of s[0..n) with the NUL-terminated word w. */
static int word_eq(const char *s, size_t n, const char *w)
{
    size_t i;
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (c >= 'a' && c <= 'z')
            c = (char)(c - 32);
        if (w[i] == '\0' || c != w[i])
            return 0;
    }
    return w[n] == '\0';
}

unsigned mlr_mech_from_name(const char *name, size_t len)
{
    size_t i;
    for (i = 0; i < sizeof mechs / sizeof mechs[0]; i++)
        if (word_eq(name, len, mechs[i].name))
            return mechs[i].bit;
    return 0;
}

const char *mlr_mech_name(unsigned mech)
{
    size_t i;
    for (i = 0; i < sizeof mechs / sizeof mechs[0]; i++)
        if (mechs[i].bit == mech)
            return mechs[i].name;
    return NULL;
}

/* Add the mechanisms named in the space-separated list s[0..n). */
static unsigned parse_mechs(const char *s, size_t n)
{
    unsigned bits = 0;
    size_t i = 0, start;
    while (i < n) {
        while (i < n && s[i] == ' ')
            i++;
        start = i;
        while (i < n && s[i] != ' ')
            i++;
        if (i > start)
            bits |= mlr_mech_from_name(s + start, i - start);
    }
    return bits;
}

/* Handle one capability line l[0..n). */
static void cap_line(mlr_caps *c, const char *l, size_t n)
{
    size_t k = 0, i;
    const char *arg;
    size_t alen;
    while (k < n && l[k] != ' ' && l[k] != '=')
        k++;
    arg = l + k + (k < n);
    alen = k < n ? n - k - 1 : 0;
    if (word_eq(l, k, "AUTH")) {
        c->flags |= MLR_CAP_AUTH;
        c->mechs |= parse_mechs(arg, alen);
    } else if (word_eq(l, k, "SIZE")) {
        uint64_t v = 0;
        c->flags |= MLR_CAP_SIZE;
        for (i = 0; i < alen && arg[i] >= '0' && arg[i] <= '9'; i++) {
            if (v > (UINT64_MAX - 9) / 10) {
                v = 0;  /* absurd: treat as no limit */
                break;
            }
            v = v * 10 + (uint64_t)(arg[i] - '0');
        }
        c->size = v;
    } else if (word_eq(l, k, "PIPELINING")) {
        c->flags |= MLR_CAP_PIPELINING;
    } else if (word_eq(l, k, "8BITMIME")) {
        c->flags |= MLR_CAP_8BITMIME;
    } else if (word_eq(l, k, "SMTPUTF8")) {
        c->flags |= MLR_CAP_SMTPUTF8;
    } else if (word_eq(l, k, "DSN")) {
        c->flags |= MLR_CAP_DSN;
    } else if (word_eq(l, k, "ENHANCEDSTATUSCODES")) {
        c->flags |= MLR_CAP_ENHANCED;
    } else if (word_eq(l, k, "STARTTLS")) {
        c->flags |= MLR_CAP_STARTTLS;
    } else if (word_eq(l, k, "CHUNKING")) {
        c->flags |= MLR_CAP_CHUNKING;
    }
}

void mlr_caps_parse(mlr_caps *c, const char *text, size_t len)
{
    size_t i = 0, start;
    memset(c, 0, sizeof *c);
    /* the first line is the server's name and greeting, not a capability */
    while (i < len && text[i] != '\n')
        i++;
    while (i < len) {
        start = ++i;
        while (i < len && text[i] != '\n')
            i++;
        cap_line(c, text + start, i - start);
    }
}
