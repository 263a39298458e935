/* fuzz_render.c - the message builder and the streaming renderer, driven
 * by a fuzzer-built message.
 *
 * The input is a script of builder calls (strings copied, or borrowed as
 * the Lua binding does; addresses in both forms,
 * subject, custom headers, text, html, attachments from memory or from a
 * producer, inline parts, date, Message-ID), optionally with the Nth
 * allocation failing. A model of what was accepted is kept here; the
 * rendered message is then parsed by a small checker written here:
 *   - no bare CR or LF, no NUL, 7-bit only, no line over 998 octets;
 *   - the header block ends at the first empty line and holds only
 *     "Name: value" lines and continuations;
 *   - the top-level headers are exactly the ones expected, in order (Bcc
 *     never), and decode to the values given;
 *   - every multipart body is cut by its boundary exactly where the
 *     structure says, and the boundary occurs nowhere else;
 *   - the tree of content types is the one the API promises, and every
 *     leaf decodes (7bit / quoted-printable / base64) to what was given;
 *   - mlr_msg_header, mlr_msg_size and a second rendering agree.
 * A failed allocation must surface as MLR_ERR_NOMEM, and nothing leaks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fuzz_util.h"
#include "mime_addr.h"
#include "mime_header.h"
#include "mime_message.h"

#define MAXITEMS 12

typedef struct mbox {
    fz_str name, addr;
} mbox;

typedef struct src {
    const uint8_t *chunks[8];
    size_t lens[8], n, next;
    int fail_at;     /* chunk index that fails, or -1 */
} src;

typedef struct partm {
    int inl, is_src;
    const char *ctype;
    const uint8_t *fname, *cid, *data;
    size_t fnl, cidl, len;
    src s;
} partm;

typedef struct model {
    mbox boxes[MLR_ROLE_COUNT][MAXITEMS];
    size_t nbox[MLR_ROLE_COUNT];
    const uint8_t *subject;
    size_t subject_len;
    int has_subject;
    const uint8_t *hname[MAXITEMS], *hval[MAXITEMS];
    size_t hnl[MAXITEMS], hvl[MAXITEMS], nh;
    const uint8_t *text, *html;
    size_t text_len, html_len;
    int has_text, has_html;
    partm parts[MAXITEMS];
    size_t nparts;
    const uint8_t *date, *msgid;
    size_t date_len, msgid_len;
    int src_fail;
} model;

static const char *const ctypes[4] = {"application/pdf", "text/csv", "image/png",
                                      "application/octet-stream"};

static int read_src(void *ud, const uint8_t **p, size_t *n, char *err, size_t errlen)
{
    src *s = ud;
    if (s->fail_at >= 0 && s->next == (size_t)s->fail_at) {
        snprintf(err, errlen, "producer failed on purpose");
        return MLR_ERR_IO;
    }
    if (s->next >= s->n)
        return 0;
    *p = s->chunks[s->next];
    *n = s->lens[s->next];
    s->next++;
    return 1;
}

/* ---- the checker ---- */

typedef struct field {
    const uint8_t *name;
    size_t nl;
    fz_str value;   /* unfolded, leading white space removed */
} field;

typedef struct entity {
    field f[40];
    size_t nf;
    const uint8_t *body;
    size_t bl;
} entity;

static void entity_free(entity *e)
{
    size_t i;
    for (i = 0; i < e->nf; i++)
        fz_str_free(&e->f[i].value);
}

/* Split s[0..n) into a header block and a body. */
static void parse_entity(const uint8_t *s, size_t n, entity *e)
{
    size_t i = 0;
    memset(e, 0, sizeof *e);
    for (;;) {
        long eol = fz_find(s + i, n - i, "\r\n", 2);
        size_t len, k, start = i;
        FZ_ASSERTF(eol >= 0, "header block does not end");
        len = (size_t)eol;
        if (len == 0) {
            e->body = s + i + 2;
            e->bl = n - i - 2;
            return;
        }
        FZ_ASSERTF(s[i] != ' ' && s[i] != '\t', "continuation without a field");
        for (k = 0; k < len && s[i + k] != ':'; k++)
            FZ_ASSERTF(s[i + k] > 32 && s[i + k] < 127, "bad octet in a field name");
        FZ_ASSERTF(k > 0 && k < len, "a header line that is not Name: value");
        FZ_ASSERT(e->nf < 40);
        e->f[e->nf].name = s + i;
        e->f[e->nf].nl = k;
        i += len + 2;
        while (i < n && (s[i] == ' ' || s[i] == '\t')) {
            eol = fz_find(s + i, n - i, "\r\n", 2);
            FZ_ASSERT(eol >= 0);
            i += (size_t)eol + 2;
        }
        {
            fz_str un = {0};
            size_t v = k + 1;
            fz_unfold(s + start, i - start - 2, &un);
            while (v < un.n && (un.p[v] == ' ' || un.p[v] == '\t'))
                v++;
            fz_str_add(&e->f[e->nf].value, un.p + v, un.n - v);
            fz_str_free(&un);
        }
        e->nf++;
    }
}

static const fz_str *get(const entity *e, const char *name)
{
    size_t i, k = strlen(name);
    for (i = 0; i < e->nf; i++)
        if (e->f[i].nl == k && !strncasecmp((const char *)e->f[i].name, name, k))
            return &e->f[i].value;
    return NULL;
}

static int eq(const fz_str *s, const void *p, size_t n)
{
    return s && s->n == n && (n == 0 || memcmp(s->p, p, n) == 0);
}

/* The value of parameter attr in an unfolded header value (quoted or
 * RFC 2231), decoded; 0 found, -1 not. */
static int param(const fz_str *v, const char *attr, fz_str *out)
{
    char key[40];
    long at;
    size_t al;
    snprintf(key, sizeof key, "; %s=\"", attr);
    al = strlen(key);
    if ((at = fz_find(v->p, v->n, key, al)) >= 0) {
        size_t i = (size_t)at + al;
        fz_str q = {0};
        for (; i < v->n && v->p[i] != '"'; i++) {
            if (v->p[i] == '\\')
                i++;
            fz_str_add(&q, v->p + i, 1);
        }
        if (fz_find(q.p, q.n, "=?utf-8?", 8) == 0)
            FZ_ASSERT(fz_unstructured_decode(q.p, q.n, out) == 0);
        else
            fz_str_add(out, q.p, q.n);
        fz_str_free(&q);
        return 0;
    }
    {
        unsigned sec;
        for (sec = 0;; sec++) {
            size_t i, hl;
            snprintf(key, sizeof key, "%s*%u*=%s", attr, sec, sec ? "" : "utf-8''");
            hl = strlen(key);
            at = fz_find(v->p, v->n, key, hl);
            if (at < 0 && sec == 0) {
                snprintf(key, sizeof key, "%s*=utf-8''", attr);
                hl = strlen(key);
                at = fz_find(v->p, v->n, key, hl);
                if (at < 0)
                    return -1;
                sec = 1000;
            }
            if (at < 0)
                return 0;
            for (i = (size_t)at + hl; i < v->n && v->p[i] != ';'; i++) {
                if (v->p[i] == '%') {
                    unsigned x;
                    char hx[3] = {(char)v->p[i + 1], (char)v->p[i + 2], 0};
                    uint8_t c;
                    FZ_ASSERT(i + 2 < v->n && sscanf(hx, "%2X", &x) == 1);
                    c = (uint8_t)x;
                    fz_str_add(out, &c, 1);
                    i += 2;
                } else {
                    fz_str_add(out, v->p + i, 1);
                }
            }
            if (sec >= 1000)
                return 0;
        }
    }
}

/* Decode a display name as the renderer writes it. */
static void phrase_decode(const uint8_t *s, size_t n, fz_str *out)
{
    size_t i;
    if (n && s[0] == '"') {
        for (i = 1; i < n && s[i] != '"'; i++) {
            if (s[i] == '\\')
                i++;
            fz_str_add(out, s + i, 1);
        }
        FZ_ASSERT(i + 1 == n);
    } else if (fz_find(s, n, "=?", 2) >= 0) {
        FZ_ASSERT(fz_unstructured_decode(s, n, out) == 0);
    } else {
        fz_str_add(out, s, n);
    }
}

/* Check an address header against the model's mailboxes. */
static void check_addresses(const fz_str *v, const mbox *boxes, size_t nb)
{
    size_t i = 0, k;
    for (k = 0; k < nb; k++) {
        size_t start = i, lt = (size_t)-1, end;
        int inq = 0, ina = 0;
        fz_str name = {0};
        for (; i < v->n; i++) {
            uint8_t c = v->p[i];
            if (inq) {
                if (c == '\\')
                    i++;
                else if (c == '"')
                    inq = 0;
            } else if (c == '"') {
                inq = 1;
            } else if (c == '<') {
                lt = i;
                ina = 1;
            } else if (c == '>') {
                ina = 0;
            } else if (c == ',' && !ina) {
                break;
            }
        }
        end = i;
        FZ_ASSERTF(k + 1 < nb || end == v->n, "more mailboxes than given");
        FZ_ASSERTF(k + 1 == nb || end < v->n, "fewer mailboxes than given");
        while (start < end && v->p[start] == ' ')
            start++;
        if (boxes[k].name.n) {
            size_t ne = lt;
            FZ_ASSERT(lt != (size_t)-1 && v->p[end - 1] == '>');
            while (ne > start && v->p[ne - 1] == ' ')
                ne--;
            phrase_decode(v->p + start, ne - start, &name);
            FZ_ASSERTF(eq(&name, boxes[k].name.p, boxes[k].name.n), "display name differs");
            FZ_ASSERTF(end - lt - 2 == boxes[k].addr.n &&
                           !memcmp(v->p + lt + 1, boxes[k].addr.p, boxes[k].addr.n),
                       "address differs");
        } else {
            FZ_ASSERTF(end - start == boxes[k].addr.n &&
                           !memcmp(v->p + start, boxes[k].addr.p, boxes[k].addr.n),
                       "bare address differs");
        }
        fz_str_free(&name);
        i++;
    }
}

/* Decode a leaf body by its transfer encoding. */
static void leaf_body(const entity *e, fz_str *out)
{
    const fz_str *cte = get(e, "Content-Transfer-Encoding");
    FZ_ASSERT(cte);
    if (eq(cte, "base64", 6)) {
        FZ_ASSERT(fz_max_line(e->body, e->bl) <= 76);
        FZ_ASSERTF(fz_b64_decode(e->body, e->bl, out) == 0, "bad base64 body");
    } else if (eq(cte, "quoted-printable", 16)) {
        FZ_ASSERT(fz_max_line(e->body, e->bl) <= 76);
        FZ_ASSERTF(fz_qp_decode(e->body, e->bl, out) == 0, "bad quoted-printable body");
    } else {
        FZ_ASSERT(eq(cte, "7bit", 4));
        FZ_ASSERTF(fz_find(e->body, e->bl, "=_", 2) < 0, "\"=_\" in a 7bit body");
        fz_str_add(out, e->body, e->bl);
    }
}

/* Walk an entity: append its content-type tree to tree, check leaves
 * against the model (leaf index in *li). */
static void walk(const uint8_t *s, size_t n, const model *m, const partm **leaves, size_t nleaves,
                 size_t *li, fz_str *tree, int top, entity *topent)
{
    entity e;
    const fz_str *ct;
    parse_entity(s, n, &e);
    ct = get(&e, "Content-Type");
    FZ_ASSERT(ct);
    if (ct->n > 10 && !memcmp(ct->p, "multipart/", 10)) {
        fz_str b = {0}, delim = {0};
        long semi = fz_find(ct->p, ct->n, ";", 1);
        size_t pos, start = 0, nparts = 0;
        FZ_ASSERT(semi > 0 && param(ct, "boundary", &b) == 0 && b.n > 0);
        fz_str_add(tree, ct->p, (size_t)semi);
        fz_str_add(tree, "(", 1);
        fz_str_add(&delim, "--", 2);
        fz_str_add(&delim, b.p, b.n);
        /* every occurrence of "--boundary" must be a delimiter line */
        for (pos = 0;;) {
            long at = fz_find(e.body + pos, e.bl - pos, delim.p, delim.n);
            size_t d, after;
            int close;
            if (at < 0)
                break;
            d = pos + (size_t)at;
            after = d + delim.n;
            FZ_ASSERTF(d == 0 || (d >= 2 && e.body[d - 2] == '\r' && e.body[d - 1] == '\n'),
                       "boundary inside a line");
            close = after + 2 <= e.bl && e.body[after] == '-' && e.body[after + 1] == '-';
            if (close)
                after += 2;
            FZ_ASSERTF(after + 2 <= e.bl && e.body[after] == '\r' && e.body[after + 1] == '\n',
                       "delimiter not followed by CRLF");
            if (nparts++ > 0) {
                /* the part between the previous delimiter and this one */
                if (nparts > 2)
                    fz_str_add(tree, ",", 1);
                walk(e.body + start, d - 2 - start, m, leaves, nleaves, li, tree, 0, NULL);
            } else if (top) {
                FZ_ASSERT(d == 47); /* the preamble */
            } else {
                FZ_ASSERT(d == 0);
            }
            start = after + 2;
            pos = after;
            if (close) {
                FZ_ASSERTF(start == e.bl, "text after the close delimiter");
                FZ_ASSERT(fz_find(e.body + start, e.bl - start, delim.p, delim.n) < 0);
                break;
            }
            FZ_ASSERTF(start < e.bl, "no close delimiter");
        }
        FZ_ASSERTF(nparts >= 2, "multipart with no parts");
        fz_str_add(tree, ")", 1);
        fz_str_free(&b);
        fz_str_free(&delim);
    } else {
        long semi = fz_find(ct->p, ct->n, ";", 1);
        fz_str got = {0};
        const partm *pm;
        size_t ctl = semi < 0 ? ct->n : (size_t)semi;
        fz_str_add(tree, ct->p, ctl);
        FZ_ASSERT(*li < nleaves);
        pm = leaves[(*li)++];
        leaf_body(&e, &got);
        if (pm == NULL || pm == (const partm *)m) {
            /* text (NULL) or html (m) */
            const uint8_t *t = pm ? m->html : m->text;
            size_t tn = pm ? m->html_len : m->text_len, i;
            fz_str norm = {0};
            for (i = 0; i < tn; i++) {
                if (t[i] == '\r' || t[i] == '\n') {
                    fz_str_add(&norm, "\r\n", 2);
                    if (t[i] == '\r' && i + 1 < tn && t[i + 1] == '\n')
                        i++;
                } else {
                    fz_str_add(&norm, t + i, 1);
                }
            }
            FZ_ASSERT(eq(get(&e, "Content-Type"), pm ? "text/html; charset=utf-8"
                                                     : "text/plain; charset=utf-8", 24 + !pm));
            FZ_ASSERTF(eq(&got, norm.p, norm.n), "text body differs");
            fz_str_free(&norm);
        } else {
            const fz_str *cd = get(&e, "Content-Disposition");
            fz_str fn = {0};
            FZ_ASSERT(cd && eq(get(&e, "Content-Transfer-Encoding"), "base64", 6));
            FZ_ASSERT(ctl == strlen(pm->ctype) && !memcmp(ct->p, pm->ctype, ctl));
            if (pm->is_src) {
                fz_str all = {0};
                size_t c;
                for (c = 0; c < pm->s.n; c++)
                    fz_str_add(&all, pm->s.chunks[c], pm->s.lens[c]);
                FZ_ASSERTF(eq(&got, all.p, all.n), "producer part differs");
                fz_str_free(&all);
            } else {
                FZ_ASSERTF(eq(&got, pm->data, pm->len), "attachment differs");
            }
            if (pm->fnl) {
                FZ_ASSERTF(param(cd, "filename", &fn) == 0, "no filename");
                FZ_ASSERTF(eq(&fn, pm->fname, pm->fnl), "filename differs");
                fz_str_free(&fn);
                FZ_ASSERTF(param(ct, "name", &fn) == 0, "no name");
                FZ_ASSERTF(eq(&fn, pm->fname, pm->fnl), "name= differs");
            } else {
                FZ_ASSERT(param(cd, "filename", &fn) < 0);
            }
            fz_str_free(&fn);
            if (pm->inl) {
                const fz_str *cid = get(&e, "Content-ID");
                FZ_ASSERT(cd->n >= 6 && !memcmp(cd->p, "inline", 6));
                FZ_ASSERT(cid && cid->n == pm->cidl + 2 && cid->p[0] == '<' &&
                          !memcmp(cid->p + 1, pm->cid, pm->cidl));
            } else {
                FZ_ASSERT(cd->n >= 10 && !memcmp(cd->p, "attachment", 10));
            }
        }
        fz_str_free(&got);
    }
    if (top)
        *topent = e;
    else
        entity_free(&e);
}

/* The tree the API promises, and the leaves in rendering order. */
static void expected_tree(const model *m, fz_str *t, const partm **leaves, size_t *nl)
{
    size_t i, ninl = 0, natt = 0;
    int text;
    for (i = 0; i < m->nparts; i++)
        m->parts[i].inl ? ninl++ : natt++;
    /* an empty text part stands in for a message with no body at all */
    text = m->has_text || (!m->has_html && natt == 0);
    if (natt)
        fz_str_add(t, "multipart/mixed(", 16);
    if (text && m->has_html)
        fz_str_add(t, "multipart/alternative(", 22);
    if (text) {
        fz_str_add(t, "text/plain", 10);
        leaves[(*nl)++] = NULL;
        if (m->has_html)
            fz_str_add(t, ",", 1);
    }
    if (m->has_html) {
        if (ninl)
            fz_str_add(t, "multipart/related(", 18);
        fz_str_add(t, "text/html", 9);
        leaves[(*nl)++] = (const partm *)m;
        for (i = 0; i < m->nparts; i++)
            if (m->parts[i].inl) {
                fz_str_add(t, ",", 1);
                fz_str_add(t, m->parts[i].ctype, strlen(m->parts[i].ctype));
                leaves[(*nl)++] = &m->parts[i];
            }
        if (ninl)
            fz_str_add(t, ")", 1);
    }
    if (text && m->has_html)
        fz_str_add(t, ")", 1);
    for (i = 0; i < m->nparts; i++)
        if (!m->parts[i].inl) {
            if (t->n && t->p[t->n - 1] != '(')
                fz_str_add(t, ",", 1);
            fz_str_add(t, m->parts[i].ctype, strlen(m->parts[i].ctype));
            leaves[(*nl)++] = &m->parts[i];
        }
    if (natt)
        fz_str_add(t, ")", 1);
}

static void check(mlr_msg *msg, const model *m, const fz_str *out)
{
    static const char *const hdr_role[] = {"From", "Sender", "Reply-To", "To", "Cc", NULL};
    static const int roles[] = {MLR_ROLE_FROM, MLR_ROLE_SENDER, MLR_ROLE_REPLY_TO, MLR_ROLE_TO,
                                MLR_ROLE_CC};
    entity top;
    fz_str tree = {0}, want = {0};
    const partm *leaves[MAXITEMS + 2];
    size_t nl = 0, li = 0, i, k = 0;
    mlr_buf hb;

    FZ_ASSERTF(fz_bare_crlf(out->p, out->n) < 0, "bare CR or LF at %ld",
               fz_bare_crlf(out->p, out->n));
    /* 7-bit only, but for UTF-8 addresses (RFC 6532) in the header block */
    {
        long he = fz_find(out->p, out->n, "\r\n\r\n", 4);
        FZ_ASSERT(he > 0 && mlr_utf8_valid((const char *)out->p, (size_t)he));
        for (i = 0; i < out->n; i++)
            FZ_ASSERTF(out->p[i] && (out->p[i] < 0x80 || i < (size_t)he), "octet %#x at %zu",
                       out->p[i], i);
    }
    FZ_ASSERT(fz_max_line(out->p, out->n) <= 998);
    expected_tree(m, &want, leaves, &nl);
    memset(&top, 0, sizeof top);
    walk(out->p, out->n, m, leaves, nl, &li, &tree, 1, &top);
    FZ_ASSERTF(eq(&tree, want.p, want.n), "structure %.*s, expected %.*s", (int)tree.n, tree.p,
               (int)want.n, want.p);
    FZ_ASSERT(li == nl);

    /* the top-level header names, in order */
    FZ_ASSERT(top.nf > k && top.f[k].nl == 4 && !memcmp(top.f[k].name, "Date", 4));
    if (m->date) {
        size_t d = 0;
        while (d < m->date_len && (m->date[d] == ' ' || m->date[d] == '\t'))
            d++;
        FZ_ASSERT(eq(&top.f[k].value, m->date + d, m->date_len - d));
    }
    k++;
    for (i = 0; hdr_role[i]; i++) {
        size_t hl = strlen(hdr_role[i]);
        if (!m->nbox[roles[i]])
            continue;
        FZ_ASSERTF(top.nf > k && top.f[k].nl == hl && !memcmp(top.f[k].name, hdr_role[i], hl),
                   "expected %s", hdr_role[i]);
        check_addresses(&top.f[k].value, m->boxes[roles[i]], m->nbox[roles[i]]);
        k++;
    }
    if (m->has_subject) {
        fz_str dec = {0};
        const uint8_t *sv = m->subject;
        size_t sn = m->subject_len;
        FZ_ASSERT(top.nf > k && top.f[k].nl == 7 && !memcmp(top.f[k].name, "Subject", 7));
        FZ_ASSERT(fz_unstructured_decode(top.f[k].value.p, top.f[k].value.n, &dec) == 0);
        while (sn && (sv[0] == ' ' || sv[0] == '\t'))
            sv++, sn--;
        {
            size_t d = 0;
            while (d < dec.n && (dec.p[d] == ' ' || dec.p[d] == '\t'))
                d++;
            FZ_ASSERTF(dec.n - d == sn && !memcmp(dec.p + d, sv, sn), "subject differs");
        }
        fz_str_free(&dec);
        k++;
    }
    FZ_ASSERT(top.nf > k && top.f[k].nl == 10 && !memcmp(top.f[k].name, "Message-ID", 10));
    if (m->msgid) {
        size_t b = m->msgid_len >= 2 && m->msgid[0] == '<' && m->msgid[m->msgid_len - 1] == '>';
        FZ_ASSERT(top.f[k].value.n == m->msgid_len - 2 * b + 2 &&
                  !memcmp(top.f[k].value.p + 1, m->msgid + b, m->msgid_len - 2 * b));
    }
    k++;
    for (i = 0; i < m->nh; i++, k++) {
        fz_str dec = {0};
        const uint8_t *sv = m->hval[i];
        size_t sn = m->hvl[i], d = 0;
        FZ_ASSERTF(top.nf > k && top.f[k].nl == m->hnl[i] &&
                       !memcmp(top.f[k].name, m->hname[i], m->hnl[i]),
                   "custom header %zu missing", i);
        FZ_ASSERT(fz_unstructured_decode(top.f[k].value.p, top.f[k].value.n, &dec) == 0);
        while (sn && (sv[0] == ' ' || sv[0] == '\t'))
            sv++, sn--;
        while (d < dec.n && (dec.p[d] == ' ' || dec.p[d] == '\t'))
            d++;
        FZ_ASSERTF(dec.n - d == sn && !memcmp(dec.p + d, sv, sn), "custom header value differs");
        fz_str_free(&dec);
    }
    FZ_ASSERT(top.nf > k && top.f[k].nl == 12 && !memcmp(top.f[k].name, "MIME-Version", 12));
    k++;
    FZ_ASSERT(top.nf > k && top.f[k].nl == 12 && !memcmp(top.f[k].name, "Content-Type", 12));
    k++;
    if (k < top.nf && top.f[k].nl == 25 && !memcmp(top.f[k].name, "Content-Transfer-Encoding", 25))
        k++;
    FZ_ASSERTF(k == top.nf, "unexpected header %.*s", (int)top.f[k].nl, top.f[k].name);
    /* mlr_msg_header agrees with the rendering */
    mlr_buf_init(&hb, mlr_default_alloc());
    for (i = 0; i < top.nf; i++) {
        const char *v;
        size_t j;
        for (j = 0; j < i; j++) /* a repeated name gives the first value */
            if (top.f[j].nl == top.f[i].nl &&
                !strncasecmp((const char *)top.f[j].name, (const char *)top.f[i].name, top.f[i].nl))
                break;
        if (j < i)
            continue;
        v = mlr_msg_header(msg, (const char *)top.f[i].name, top.f[i].nl, &hb);
        FZ_ASSERT(v && hb.len == top.f[i].value.n &&
                  !memcmp(v, top.f[i].value.p, top.f[i].value.n));
    }
    FZ_ASSERT(mlr_msg_header(msg, "Bcc", 3, &hb) == NULL);
    mlr_buf_free(&hb);
    entity_free(&top);
    fz_str_free(&tree);
    fz_str_free(&want);
}

/* Render a finished message; returns the rendering's result code. */
static int render(mlr_msg *msg, fz_str *out)
{
    mlr_render *r = mlr_render_new(msg);
    const uint8_t *p;
    size_t n;
    int rc;
    if (!r)
        return MLR_ERR_NOMEM;
    while ((rc = mlr_render_next(r, &p, &n)) == 1) {
        FZ_ASSERT(n > 0);
        fz_str_add(out, p, n);
    }
    if (rc < 0)
        FZ_ASSERT(mlr_render_error(r)[0]);
    mlr_render_free(r);
    return rc;
}

static void copy_str(fz_str *s, const void *p, size_t n)
{
    s->n = 0;
    fz_str_add(s, p, n);
}

/* The model's address: as given, an international domain as the A-label
 * (mlr_addr_idna, fuzzed on its own by fuzz_addr) when the local part is
 * ASCII. */
static void copy_addr(fz_str *s, const void *p, size_t n)
{
    mlr_buf b;
    char err[160];
    int local8;
    mlr_buf_init(&b, mlr_default_alloc());
    FZ_ASSERT(mlr_addr_idna(p, n, &b, &local8, err, sizeof err) == MLR_OK);
    copy_str(s, b.data, b.len);
    mlr_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_in in = {data, size};
    fz_heap h;
    mlr_msg *msg;
    model *m = calloc(1, sizeof *m);
    uint8_t head = fz_u8(&in);
    int rc, ops, has_src = 0, src_sized = 1;
    size_t i, r;
    fz_str out = {0};

    fz_heap_init(&h, (head & 0x80) ? (size_t)fz_u8(&in) + 1 : 0);
    msg = mlr_msg_new(&h.alloc);
    if (!msg) {
        FZ_ASSERT(h.failed);
        goto done;
    }
    /* as the Lua binding builds: strings borrowed, texts with bare line
     * ends normalised as they are rendered (the input outlives msg) */
    if (head & 0x40)
        mlr_msg_borrow_strings(msg, 1);
    for (ops = 0; ops < 24 && in.n; ops++) {
        uint8_t op = fz_u8(&in);
        const uint8_t *a, *b;
        size_t al, bl;
        rc = MLR_OK;
        switch (op % 13) {
        case 0: case 1: case 3: case 11: {
            /* an address as a mailbox string */
            int role = op % 13 == 0 ? MLR_ROLE_FROM : op % 13 == 1 ? MLR_ROLE_TO
                     : op % 13 == 3 ? MLR_ROLE_BCC : (op & 16) ? MLR_ROLE_SENDER : MLR_ROLE_REPLY_TO;
            char *nm, *ad, err[64];
            size_t nml, adl;
            al = fz_take(&in, 120, &a);
            rc = mlr_msg_add_address(msg, role, (const char *)a, al, NULL, 0, "to");
            if (rc == MLR_OK && m->nbox[role] < MAXITEMS) {
                FZ_ASSERT(mlr_addr_parse(mlr_default_alloc(), (const char *)a, al, &nm, &nml, &ad,
                                         &adl, err, sizeof err) == MLR_OK);
                copy_str(&m->boxes[role][m->nbox[role]].name, nm, nml);
                copy_addr(&m->boxes[role][m->nbox[role]].addr, ad, adl);
                m->nbox[role]++;
                free(nm);
                free(ad);
            } else if (rc == MLR_OK) {
                goto skip; /* the model is full: stop here */
            }
            break;
        }
        case 2: {
            /* cc as name + addr-spec */
            al = fz_take(&in, 80, &a);
            bl = fz_take(&in, 60, &b);
            rc = mlr_msg_add_address(msg, MLR_ROLE_CC, (const char *)a, al, (const char *)b, bl,
                                     "cc");
            if (rc == MLR_OK) {
                if (m->nbox[MLR_ROLE_CC] >= MAXITEMS)
                    goto skip;
                copy_str(&m->boxes[MLR_ROLE_CC][m->nbox[MLR_ROLE_CC]].name, b, bl);
                copy_addr(&m->boxes[MLR_ROLE_CC][m->nbox[MLR_ROLE_CC]].addr, a, al);
                m->nbox[MLR_ROLE_CC]++;
            }
            break;
        }
        case 4:
            al = fz_take(&in, 300, &a);
            rc = mlr_msg_set_subject(msg, (const char *)a, al);
            if (rc == MLR_OK)
                m->subject = a, m->subject_len = al, m->has_subject = 1;
            break;
        case 5:
            al = fz_take(&in, 40, &a);
            bl = fz_take(&in, 300, &b);
            rc = mlr_msg_add_header(msg, (const char *)a, al, (const char *)b, bl, "headers");
            if (rc == MLR_OK) {
                if (m->nh >= MAXITEMS)
                    goto skip;
                m->hname[m->nh] = a, m->hnl[m->nh] = al;
                m->hval[m->nh] = b, m->hvl[m->nh] = bl;
                m->nh++;
            }
            break;
        case 6:
        case 7:
            al = fz_take(&in, 3000, &a);
            if (op % 13 == 6) {
                rc = mlr_msg_set_text(msg, (const char *)a, al);
                if (rc == MLR_OK)
                    m->text = a, m->text_len = al, m->has_text = 1;
            } else {
                rc = mlr_msg_set_html(msg, (const char *)a, al);
                if (rc == MLR_OK)
                    m->html = a, m->html_len = al, m->has_html = 1;
            }
            break;
        case 8: case 9: case 10: {
            partm *pm = &m->parts[m->nparts];
            mlr_src s;
            if (m->nparts >= MAXITEMS)
                goto skip;
            memset(pm, 0, sizeof *pm);
            memset(&s, 0, sizeof s);
            s.size = -1;
            pm->inl = op % 13 == 10;
            pm->ctype = ctypes[(op >> 4) & 3];
            pm->fnl = fz_take(&in, 100, &pm->fname);
            if (pm->inl)
                pm->cidl = fz_take(&in, 40, &pm->cid);
            if (op % 13 == 9) {
                size_t c, nc = fz_u8(&in) % 8, total = 0;
                pm->is_src = 1;
                for (c = 0; c < nc; c++) {
                    pm->s.lens[c] = fz_take(&in, 2000, &pm->s.chunks[c]);
                    total += pm->s.lens[c];
                }
                pm->s.n = nc;
                pm->s.fail_at = (op & 0x40) ? (int)(nc / 2) : -1;
                s.fn = read_src;
                s.ud = &pm->s;
                if (op & 0x80)
                    s.size = (int64_t)total;
            } else {
                pm->len = fz_take(&in, 3000, &pm->data);
                s.data = (const char *)pm->data;
                s.len = pm->len;
            }
            rc = mlr_msg_add_part(msg, &s, pm->ctype, pm->fnl ? (const char *)pm->fname : NULL,
                                  pm->fnl, pm->inl ? (const char *)pm->cid : NULL, pm->cidl,
                                  "attachments");
            if (rc == MLR_OK) {
                if (pm->is_src) {
                    has_src = 1;
                    m->src_fail |= pm->s.fail_at >= 0;
                    if (s.size < 0)
                        src_sized = 0;
                }
                if (pm->inl && pm->cidl >= 2 && pm->cid[0] == '<' && pm->cid[pm->cidl - 1] == '>')
                    pm->cid++, pm->cidl -= 2;
                m->nparts++;
            }
            break;
        }
        default:
            al = fz_take(&in, 80, &a);
            if (op & 16) {
                rc = mlr_msg_set_date_string(msg, (const char *)a, al);
                if (rc == MLR_OK)
                    m->date = a, m->date_len = al;
            } else {
                rc = mlr_msg_set_message_id(msg, (const char *)a, al);
                if (rc == MLR_OK)
                    m->msgid = a, m->msgid_len = al;
            }
            break;
        }
        if (rc == MLR_ERR_NOMEM) {
            FZ_ASSERT(h.failed);
            goto skip;
        }
        FZ_ASSERTF(rc == MLR_OK || rc == MLR_ERR_INPUT, "builder returned %d", rc);
        if (rc)
            FZ_ASSERT(mlr_msg_last_error(msg)->message[0]);
    }
    rc = mlr_msg_finish(msg);
    if (rc == MLR_ERR_NOMEM) {
        FZ_ASSERT(h.failed);
        goto skip;
    }
    if (rc) {
        FZ_ASSERTF(rc == MLR_ERR_INPUT, "finish returned %d", rc);
        FZ_ASSERTF(!h.failed, "allocation failure reported as an input error");
        goto skip;
    }
    FZ_ASSERT(m->nbox[MLR_ROLE_FROM] > 0);
    rc = render(msg, &out);
    if (rc == MLR_ERR_NOMEM) {
        FZ_ASSERT(h.failed);
        goto skip;
    }
    if (rc < 0) {
        FZ_ASSERTF(rc == MLR_ERR_IO && m->src_fail, "render failed with %d", rc);
        goto skip;
    }
    FZ_ASSERT(!h.failed);
    check(msg, m, &out);
    if (mlr_msg_size(msg))
        FZ_ASSERTF(mlr_msg_size(msg) == out.n, "size %llu, rendered %zu",
                   (unsigned long long)mlr_msg_size(msg), out.n);
    else
        FZ_ASSERT(has_src && !src_sized);
    {
        /* a second rendering: the same bytes, or a clean refusal to read
         * a producer twice */
        fz_str again = {0};
        rc = render(msg, &again);
        if (rc == MLR_ERR_NOMEM)   /* the failing allocation came this late */
            FZ_ASSERT(h.failed);
        else if (has_src)
            FZ_ASSERT(rc == MLR_ERR_INPUT);
        else
            FZ_ASSERT(rc == 0 && again.n == out.n && !memcmp(again.p, out.p, out.n));
        fz_str_free(&again);
    }
skip:
    mlr_msg_free(msg);
done:
    fz_heap_check_empty(&h);
    for (r = 0; r < MLR_ROLE_COUNT; r++)
        for (i = 0; i < MAXITEMS; i++) {
            fz_str_free(&m->boxes[r][i].name);
            fz_str_free(&m->boxes[r][i].addr);
        }
    free(m);
    fz_str_free(&out);
    return 0;
}
