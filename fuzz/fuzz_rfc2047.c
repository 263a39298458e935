/* fuzz_rfc2047.c - header field encoding: unstructured values (RFC 2047
 * encoded words and folding), display-name phrases, and file-name
 * parameters (RFC 2231 and the RFC 2047 name= fallback).
 *
 * And a caller's Content-Type value (mode byte 0xC8..0xCF), which must be
 * refused or written back as one field that reads back the same.
 *
 * Input: a mode byte, a name length, then the name and the value. The
 * field written must be exactly one field (CRLF only at its end or before
 * white space), have no bare CR or LF and no line over 998 octets; its
 * encoded words must be at most 75 characters, each decode to whole UTF-8
 * characters, and stay within 76 columns; and decoding the field with the
 * reference decoders here must give back the value. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "fuzz_util.h"
#include "mime_header.h"

/* Check the shape of a field in b and return its unfolded text (CRLF
 * removed). */
static void check_field(const mlr_buf *b, size_t start, fz_str *un)
{
    const uint8_t *s = (const uint8_t *)b->data + start;
    size_t n = b->len - start, i;
    FZ_ASSERT(n >= 2 && s[n - 2] == '\r' && s[n - 1] == '\n');
    FZ_ASSERTF(fz_bare_crlf(s, n) < 0, "bare CR or LF");
    FZ_ASSERT(memchr(s, 0, n) == NULL);
    for (i = 0; i + 2 < n; i++)
        if (s[i] == '\r')
            FZ_ASSERTF(s[i + 2] == ' ' || s[i + 2] == '\t',
                       "a CRLF not followed by white space: the field gained a line");
    FZ_ASSERT(fz_max_line(s, n) <= MLR_LINE_MAX);
    fz_unfold(s, n - 2, un);
}

/* Every encoded word in s is at most 75 characters, decodes to valid
 * UTF-8 on its own, and no line holding one is over 76 columns (the
 * first line may hold a long field name). */
static void check_words(const uint8_t *s, size_t n, int phrase)
{
    size_t i = 0, line = 0, col = 0, first_max = 0;
    int line_has_ew = 0;
    /* the field name is not scanned: it may hold "=?" */
    while (i < n && s[i] != ':')
        i++;
    col = i;
    first_max = i + 1 > 76 ? i + 1 : 76;
    while (i < n) {
        if (s[i] == '\r') {
            FZ_ASSERTF(!line_has_ew || col <= 76 || (line == 0 && col <= first_max),
                       "line %zu of %zu columns with encoded words", line, col);
            line++;
            col = 0;
            line_has_ew = 0;
            i += 2;
            continue;
        }
        if (n - i >= 12 && memcmp(s + i, "=?utf-8?", 8) == 0) {
            /* "=?utf-8?q?" then text then "?=": the text has no "?" */
            size_t q = i + 10, end;
            fz_str d = {0};
            {
                long e2 = fz_find(s + q, n - q, "?=", 2);
                FZ_ASSERT(e2 >= 0);
                end = q + (size_t)e2 + 2;
                FZ_ASSERTF(end - i <= 75, "encoded word of %zu characters", end - i);
                FZ_ASSERTF(fz_ew_decode(s + i, end - i, phrase, &d) == 0,
                           "malformed encoded word");
                FZ_ASSERTF(mlr_utf8_valid((const char *)d.p, d.n),
                           "an encoded word splits a UTF-8 character");
                fz_str_free(&d);
                line_has_ew = 1;
                col += end - i;
                i = end;
                continue;
            }
        }
        col++;
        i++;
    }
}

static void same(const fz_str *got, const uint8_t *want, size_t n, const char *what)
{
    FZ_ASSERTF(got->n == n && (n == 0 || memcmp(got->p, want, n) == 0), "%s: decoded value differs",
               what);
}

static void unstructured(const uint8_t *name, size_t nl, const uint8_t *v, size_t n)
{
    fz_heap h;
    mlr_buf b;
    char err[128];
    fz_str un = {0}, dec = {0};
    int valid, rc;
    fz_heap_init(&h, 0);
    mlr_buf_init(&b, &h.alloc);
    valid = mlr_hdr_check_name((const char *)name, nl, err, sizeof err) == MLR_OK &&
            mlr_hdr_check_value((const char *)v, n, err, sizeof err) == MLR_OK;
    rc = mlr_hdr_unstructured(&b, (const char *)name, nl, (const char *)v, n, err, sizeof err);
    if (!valid || rc) {
        FZ_ASSERT(rc == MLR_ERR_INPUT && err[0]);
        goto out;
    }
    check_field(&b, 0, &un);
    check_words((const uint8_t *)b.data, b.len, 0);
    FZ_ASSERT(un.n >= nl + 1 && memcmp(un.p, name, nl) == 0 && un.p[nl] == ':');
    FZ_ASSERTF(fz_unstructured_decode(un.p + nl + 1, un.n - nl - 1, &dec) == 0,
               "value does not decode");
    if (fz_find(un.p + nl + 1, un.n - nl - 1, "=?", 2) >= 0) {
        /* encoded: " " then the words, which hold the whole value */
        FZ_ASSERT(dec.n >= 1 && dec.p[0] == ' ');
        FZ_ASSERTF(dec.n == n + 1 && memcmp(dec.p + 1, v, n) == 0, "encoded value differs");
    } else if (n == 0 || v[0] == ' ' || v[0] == '\t') {
        same(&dec, v, n, "plain value");
    } else {
        FZ_ASSERT(dec.n == n + 1 && dec.p[0] == ' ');
        FZ_ASSERTF(memcmp(dec.p + 1, v, n) == 0, "plain value differs");
    }
out:
    mlr_buf_free(&b);
    fz_heap_check_empty(&h);
    fz_str_free(&un);
    fz_str_free(&dec);
}

static void phrase(const uint8_t *v, size_t n)
{
    fz_heap h;
    mlr_buf b;
    mlr_fold f;
    char err[128];
    fz_str un = {0}, dec = {0};
    int rc;
    size_t i;
    if (n == 0 || mlr_hdr_check_value((const char *)v, n, err, sizeof err))
        return;
    fz_heap_init(&h, 0);
    mlr_buf_init(&b, &h.alloc);
    rc = mlr_fold_start(&f, &b, "To", 2);
    if (!rc)
        rc = mlr_fold_phrase(&f, " ", 1, (const char *)v, n);
    if (!rc)
        rc = mlr_fold_end(&f);
    if (rc) {
        FZ_ASSERT(rc == MLR_ERR_INPUT);
        goto out;
    }
    check_field(&b, 0, &un);
    check_words((const uint8_t *)b.data, b.len, 1);
    FZ_ASSERT(un.n >= 4 && memcmp(un.p, "To: ", 4) == 0);
    if (un.p[4] == '"') {
        /* a quoted string, escapes undone */
        for (i = 5; i < un.n && un.p[i] != '"'; i++) {
            if (un.p[i] == '\\')
                i++;
            FZ_ASSERT(i < un.n);
            fz_str_add(&dec, un.p + i, 1);
        }
        FZ_ASSERTF(i + 1 == un.n, "text after the quoted phrase");
        same(&dec, v, n, "quoted phrase");
    } else if (fz_find(un.p, un.n, "=?", 2) >= 0) {
        FZ_ASSERT(fz_unstructured_decode(un.p + 3, un.n - 3, &dec) == 0);
        FZ_ASSERT(dec.n >= 1 && dec.p[0] == ' ');
        FZ_ASSERTF(dec.n == n + 1 && memcmp(dec.p + 1, v, n) == 0, "encoded phrase differs");
    } else {
        /* atoms: RFC 5322 atext separated by single spaces */
        for (i = 4; i < un.n; i++)
            FZ_ASSERTF(un.p[i] == ' ' || (un.p[i] > 32 && un.p[i] < 127 &&
                                          !strchr("()<>[]:;@\\,.\"", un.p[i])),
                       "a special in an unquoted phrase");
        FZ_ASSERTF(un.n - 4 == n && memcmp(un.p + 4, v, n) == 0, "atom phrase differs");
    }
out:
    mlr_buf_free(&b);
    fz_heap_check_empty(&h);
    fz_str_free(&un);
    fz_str_free(&dec);
}

static int hexv(uint8_t c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Percent-decode an RFC 2231 value section s[0..n) into out. */
static void pct(const uint8_t *s, size_t n, fz_str *out)
{
    size_t i;
    for (i = 0; i < n; i++) {
        if (s[i] == '%') {
            uint8_t c;
            FZ_ASSERT(i + 2 < n && hexv(s[i + 1]) >= 0 && hexv(s[i + 2]) >= 0);
            c = (uint8_t)(hexv(s[i + 1]) << 4 | hexv(s[i + 2]));
            fz_str_add(out, &c, 1);
            i += 2;
        } else {
            FZ_ASSERTF(s[i] > 32 && s[i] < 127 && !strchr("*'%()<>@,;:\\\"/[]?={}", s[i]),
                       "'%c' unencoded in an extended value", s[i]);
            fz_str_add(out, s + i, 1);
        }
    }
}

static void param(const uint8_t *v, size_t n, int ew_fallback)
{
    fz_heap h;
    mlr_buf b;
    mlr_fold f;
    char err[128];
    fz_str un = {0}, dec = {0};
    const uint8_t *p;
    size_t pn, i;
    const char *attr = ew_fallback ? "name" : "filename";
    size_t al = strlen(attr);
    int rc;
    if (mlr_hdr_check_value((const char *)v, n, err, sizeof err))
        return;
    fz_heap_init(&h, 0);
    mlr_buf_init(&b, &h.alloc);
    rc = mlr_fold_start(&f, &b, "Content-Disposition", 19);
    if (!rc)
        rc = mlr_fold_add(&f, " ", 1, "attachment", 10);
    if (!rc)
        rc = mlr_fold_param(&f, attr, (const char *)v, n, ew_fallback);
    if (!rc)
        rc = mlr_fold_end(&f);
    if (rc) {
        FZ_ASSERT(rc == MLR_ERR_INPUT);
        goto out;
    }
    check_field(&b, 0, &un);
    check_words((const uint8_t *)b.data, b.len, 1);
    FZ_ASSERT(un.n > 33 && memcmp(un.p, "Content-Disposition: attachment; ", 33) == 0);
    p = un.p + 33;
    pn = un.n - 33;
    FZ_ASSERT(pn > al && memcmp(p, attr, al) == 0);
    p += al;
    pn -= al;
    if (p[0] == '=') {
        /* attr="..." : quoted text, or quoted encoded words */
        fz_str q = {0};
        FZ_ASSERT(pn >= 3 && p[1] == '"' && p[pn - 1] == '"');
        for (i = 2; i + 1 < pn; i++) {
            FZ_ASSERT(p[i] != '"');
            if (p[i] == '\\')
                i++;
            fz_str_add(&q, p + i, 1);
        }
        int plain = n <= 60;
        for (i = 0; i < n; i++)
            if (v[i] < 0x20 || v[i] >= 0x7f)
                plain = 0;
        if (fz_find(v, n, "=?", 2) >= 0)
            plain = 0; /* it would read as an encoded word */
        FZ_ASSERT(plain || ew_fallback);
        if (!plain) {
            FZ_ASSERT(fz_unstructured_decode(q.p, q.n, &dec) == 0);
        } else {
            fz_str_add(&dec, q.p, q.n);
        }
        fz_str_free(&q);
        same(&dec, v, n, "quoted parameter");
    } else if (p[0] == '*' && p[1] == '=') {
        FZ_ASSERT(!ew_fallback && pn >= 9 && memcmp(p, "*=utf-8''", 9) == 0);
        pct(p + 9, pn - 9, &dec);
        same(&dec, v, n, "extended parameter");
    } else {
        /* attr*0*=utf-8''...; attr*1*=...; each section whole characters */
        unsigned sec = 0;
        FZ_ASSERT(!ew_fallback);
        for (;;) {
            char head[40];
            size_t hl, end;
            int last;
            fz_str part = {0};
            snprintf(head, sizeof head, "*%u*=%s", sec, sec ? "" : "utf-8''");
            hl = strlen(head);
            FZ_ASSERTF(pn >= hl && memcmp(p, head, hl) == 0, "section %u header", sec);
            for (end = hl; end < pn && p[end] != ';'; end++)
                ;
            last = end == pn;
            pct(p + hl, end - hl, &part);
            FZ_ASSERTF(mlr_utf8_valid((const char *)part.p, part.n),
                       "an RFC 2231 section splits a character");
            fz_str_add(&dec, part.p, part.n);
            fz_str_free(&part);
            if (last)
                break;
            FZ_ASSERT(end + 2 + al < pn && p[end + 1] == ' ' &&
                      memcmp(p + end + 2, attr, al) == 0);
            p += end + 2 + al;
            pn -= end + 2 + al;
            sec++;
        }
        same(&dec, v, n, "continued parameter");
    }
out:
    mlr_buf_free(&b);
    fz_heap_check_empty(&h);
    fz_str_free(&un);
    fz_str_free(&dec);
}

/* A caller's Content-Type value (mlr_fold_ctype): refused, or written as
 * exactly one field, ASCII, without a name= parameter, that is accepted
 * again and written the same (the written form is a fixed point). */
static void ctype(const uint8_t *v, size_t n)
{
    fz_heap h;
    mlr_buf b, b2;
    mlr_fold f;
    char err[200];
    fz_str un = {0};
    int rc, rc2;
    fz_heap_init(&h, 0);
    mlr_buf_init(&b, &h.alloc);
    mlr_buf_init(&b2, &h.alloc);
    rc = mlr_fold_start(&f, &b, "Content-Type", 12);
    if (!rc)
        rc = mlr_fold_ctype(&f, (const char *)v, n, err, sizeof err);
    rc2 = mlr_fold_ctype(NULL, (const char *)v, n, err, sizeof err);
    FZ_ASSERTF((rc == MLR_OK) == (rc2 == MLR_OK), "checking and writing disagree");
    if (rc == MLR_OK)
        rc = mlr_fold_end(&f);
    if (rc) {
        FZ_ASSERT(rc == MLR_ERR_INPUT && memcmp(err, "content_type ", 13) == 0);
        goto out;
    }
    check_field(&b, 0, &un);
    FZ_ASSERT(mlr_is_ascii(b.data, b.len));
    FZ_ASSERT(un.n > 14 && memcmp(un.p, "Content-Type: ", 14) == 0);
    {
        /* no parameter (outside quoted strings) is a name= */
        size_t i;
        int inq = 0;
        for (i = 14; i < un.n; i++) {
            if (inq && un.p[i] == '\\')
                i++;
            else if (un.p[i] == '"')
                inq = !inq;
            else if (!inq && un.p[i] == ';' && i + 7 <= un.n)
                FZ_ASSERTF(strncasecmp((const char *)un.p + i + 2, "name=", 5) != 0,
                           "a name= parameter was written");
        }
        FZ_ASSERT(!inq);
    }
    rc = mlr_fold_start(&f, &b2, "Content-Type", 12);
    if (!rc)
        rc = mlr_fold_ctype(&f, (const char *)un.p + 13, un.n - 13, err, sizeof err);
    if (!rc)
        rc = mlr_fold_end(&f);
    FZ_ASSERTF(rc == MLR_OK, "the written value is refused: %s", err);
    FZ_ASSERTF(b2.len == b.len && memcmp(b2.data, b.data, b.len) == 0,
               "writing the written value again changes it");
out:
    mlr_buf_free(&b);
    mlr_buf_free(&b2);
    fz_str_free(&un);
    fz_heap_check_empty(&h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_in in = {data, size};
    const uint8_t *name, *v;
    size_t nl, n;
    uint8_t mode = fz_u8(&in);
    if ((mode & 0xF8) == 0xC8) {   /* a rare mode byte: older seeds keep their meaning */
        n = fz_rest(&in, &v);
        ctype(v, n);
        return 0;
    }
    switch (mode & 3) {
    case 0:
        nl = fz_take(&in, 90, &name);
        n = fz_rest(&in, &v);
        if (nl == 0) {
            name = (const uint8_t *)"Subject";
            nl = 7;
        }
        unstructured(name, nl, v, n);
        break;
    case 1:
        n = fz_rest(&in, &v);
        phrase(v, n);
        break;
    default:
        n = fz_rest(&in, &v);
        param(v, n, mode & 1);
        break;
    }
    return 0;
}
