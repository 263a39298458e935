/* mime_header.c - header field encoding: checks, RFC 2047 words, folding,
 * RFC 2231 parameters. See mime_header.h for the rules. */
#include "mime_header.h"
#include "codec_base64.h"

#include <stdio.h>
#include <string.h>

#define EW_OVERHEAD 12 /* "=?utf-8?b?" + "?=" */
#define EW_MAX 75      /* RFC 2047 section 2: an encoded word is at most 75 chars */

static void set_err(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
}

/* Length of the UTF-8 sequence starting with lead byte c (input is valid). */
static size_t u8len(unsigned char c)
{
    if (c < 0x80)
        return 1;
    if (c < 0xE0)
        return 2;
    if (c < 0xF0)
        return 3;
    return 4;
}

int mlr_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t k, j;
        unsigned long cp;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            k = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            k = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (n - i < k)
            return 0;
        for (j = 1; j < k; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if ((k == 3 && cp < 0x800) || (k == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k;
    }
    return 1;
}

int mlr_is_ascii(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return 0;
    return 1;
}

int mlr_hdr_check_name(const char *name, size_t n, char *err, size_t errlen)
{
    size_t i;
    if (n == 0 || n > 76) {
        set_err(err, errlen, n ? "header name is too long" : "header name is empty");
        return MLR_ERR_INPUT;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c < 33 || c > 126 || c == ':') {
            set_err(err, errlen, "header name must be printable ASCII without ':' or spaces");
            return MLR_ERR_INPUT;
        }
    }
    return MLR_OK;
}

int mlr_hdr_check_value(const char *v, size_t n, char *err, size_t errlen)
{
    size_t i;
    for (i = 0; i < n; i++) {
        char c = v[i];
        if (c == '\r' || c == '\n' || c == '\0') {
            set_err(err, errlen,
                    c == '\0' ? "contains a NUL byte" : "contains a CR or LF (header injection)");
            return MLR_ERR_INPUT;
        }
    }
    if (!mlr_utf8_valid(v, n)) {
        set_err(err, errlen, "is not valid UTF-8");
        return MLR_ERR_INPUT;
    }
    return MLR_OK;
}

int mlr_fold_start(mlr_fold *f, mlr_buf *b, const char *name, size_t n)
{
    int rc;
    f->b = b;
    f->line_has_token = 1;
    if ((rc = mlr_buf_add(b, name, n)) || (rc = mlr_buf_addc(b, ':')))
        return rc;
    f->col = n + 1;
    return MLR_OK;
}

int mlr_fold_add(mlr_fold *f, const char *ws, size_t wslen, const char *tok, size_t toklen)
{
    int rc;
    /* Break only where there is whitespace, never twice in a row, and never
     * to leave a line of whitespace alone. */
    if (f->col > 0 && wslen > 0 && toklen > 0 && f->col + wslen + toklen > MLR_FOLD_COLS) {
        if ((rc = mlr_buf_add(f->b, "\r\n", 2)))
            return rc;
        f->col = 0;
    }
    if (f->col + wslen + toklen > MLR_LINE_MAX)
        return MLR_ERR_INPUT;
    if ((rc = mlr_buf_add(f->b, ws, wslen)) || (rc = mlr_buf_add(f->b, tok, toklen)))
        return rc;
    f->col += wslen + toklen;
    return MLR_OK;
}

int mlr_fold_end(mlr_fold *f) { return mlr_buf_add(f->b, "\r\n", 2); }

/* Characters Q encoding may leave as is in any header context (RFC 2047
 * section 5 (3), the strictest rule: phrases). */
static int q_literal(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '!' || c == '*' || c == '+' || c == '-' || c == '/';
}

static size_t q_cost(unsigned char c) { return (c == ' ' || q_literal(c)) ? 1 : 3; }

/* Whether Q encoding gives shorter words than B for the whole text. */
static int prefer_q(const char *s, size_t n)
{
    size_t i, q = 0;
    for (i = 0; i < n; i++)
        q += q_cost((unsigned char)s[i]);
    return q <= (n + 2) / 3 * 4;
}

/* Encode the next word of s starting at *pos into word (>= EW_MAX+1 bytes)
 * with at most payload_max payload characters; takes at least one whole
 * UTF-8 character. Returns the word length. */
static size_t ew_next(const char *s, size_t n, size_t *pos, int useq, size_t payload_max,
                      char *word)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i = *pos, end = i, cost = 0, len;
    while (end < n) {
        size_t k = u8len((unsigned char)s[end]), c = 0, j;
        if (k > n - end)
            k = n - end;
        if (useq) {
            for (j = 0; j < k; j++)
                c += q_cost((unsigned char)s[end + j]);
            if (end > i && cost + c > payload_max)
                break;
            cost += c;
        } else if (end > i && (end + k - i + 2) / 3 * 4 > payload_max) {
            break;
        }
        end += k;
    }
    memcpy(word, useq ? "=?utf-8?q?" : "=?utf-8?b?", 10);
    len = 10;
    if (useq) {
        for (; i < end; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c == ' ') {
                word[len++] = '_';
            } else if (q_literal(c)) {
                word[len++] = (char)c;
            } else {
                word[len++] = '=';
                word[len++] = hex[c >> 4];
                word[len++] = hex[c & 15];
            }
        }
    } else {
        mlr_b64 b;
        mlr_b64_init(&b, 0);
        len += mlr_b64_encode(&b, (const uint8_t *)s + i, end - i, (uint8_t *)word + len);
        len += mlr_b64_finish(&b, (uint8_t *)word + len);
    }
    word[len++] = '?';
    word[len++] = '=';
    *pos = end;
    return len;
}

int mlr_fold_words(mlr_fold *f, const char *ws, size_t wslen, const char *s, size_t n)
{
    char word[EW_MAX + 16];
    size_t pos = 0;
    int useq = prefer_q(s, n), rc;
    if (n == 0)
        return MLR_OK;
    while (pos < n) {
        size_t avail, len;
        if (f->col + wslen + EW_OVERHEAD + 12 > MLR_FOLD_COLS)
            avail = MLR_FOLD_COLS - wslen; /* the word goes on a new line */
        else
            avail = MLR_FOLD_COLS - f->col - wslen;
        if (avail > EW_MAX)
            avail = EW_MAX;
        len = ew_next(s, n, &pos, useq, avail - EW_OVERHEAD, word);
        if ((rc = mlr_fold_add(f, ws, wslen, word, len)))
            return rc;
        ws = " ";
        wslen = 1;
    }
    return MLR_OK;
}

static int is_wsp(char c) { return c == ' ' || c == '\t'; }

/* RFC 5322 atext. */
static int is_atext(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

int mlr_hdr_unstructured(mlr_buf *b, const char *name, size_t nlen, const char *v, size_t n,
                         char *err, size_t errlen)
{
    mlr_fold f;
    size_t i, longest = 0, run = 0;
    int encode = 0, rc;
    if ((rc = mlr_hdr_check_name(name, nlen, err, errlen)) ||
        (rc = mlr_hdr_check_value(v, n, err, errlen)))
        return rc;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c >= 0x80 || (c < 0x20 && c != '\t') || c == 0x7F ||
            (c == '=' && i + 1 < n && v[i + 1] == '?'))
            encode = 1;
        run = is_wsp((char)c) ? 0 : run + 1;
        if (run > longest)
            longest = run;
    }
    /* A word that cannot fit a line even after folding must be encoded
     * (encoded words can be split); so must a value that is all blank. */
    if (longest + nlen + 2 > MLR_LINE_MAX)
        encode = 1;
    /* leading blanks would merge with the one after the colon and be lost */
    if (n > 0 && is_wsp(v[0]))
        encode = 1;
    if ((rc = mlr_fold_start(&f, b, name, nlen)))
        return rc;
    if (encode) {
        rc = mlr_fold_words(&f, " ", 1, v, n);
    } else {
        i = 0;
        rc = MLR_OK;
        while (i < n && rc == MLR_OK) {
            size_t ws = i, w;
            while (i < n && is_wsp(v[i]))
                i++;
            w = i;
            while (i < n && !is_wsp(v[i]))
                i++;
            if (ws == 0 && w == 0)
                rc = mlr_fold_add(&f, " ", 1, v, i);
            else
                rc = mlr_fold_add(&f, v + ws, w - ws, v + w, i - w);
        }
    }
    if (rc == MLR_ERR_INPUT)
        set_err(err, errlen, "value has a line too long to fold");
    return rc ? rc : mlr_fold_end(&f);
}

int mlr_fold_phrase(mlr_fold *f, const char *ws, size_t wslen, const char *s, size_t n)
{
    size_t i;
    int atoms = 1, quotable = 1, rc;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80 || (c < 0x20 && c != '\t') || c == 0x7F)
            quotable = 0;
        if (c == ' ') {
            if (i == 0 || i + 1 == n || s[i + 1] == ' ')
                atoms = 0;
        } else if (!is_atext(c)) {
            atoms = 0;
        }
    }
    for (i = 0; i + 1 < n; i++)
        if (s[i] == '=' && s[i + 1] == '?')
            quotable = 0; /* would read as an encoded word: encode it */
    if (!quotable)
        return mlr_fold_words(f, ws, wslen, s, n);
    if (atoms) {
        i = 0;
        while (i < n) {
            size_t w = i;
            while (i < n && s[i] != ' ')
                i++;
            if ((rc = mlr_fold_add(f, ws, wslen, s + w, i - w)))
                return rc;
            ws = " ";
            wslen = 1;
            if (i < n)
                i++;
        }
        return MLR_OK;
    }
    /* A quoted string, split into tokens at its spaces (FWS is allowed
     * inside a quoted string and unfolding restores it exactly). */
    {
        mlr_buf tok;
        mlr_buf_init(&tok, f->b->a);
        rc = mlr_buf_addc(&tok, '"');
        for (i = 0; i < n && rc == MLR_OK; i++) {
            char c = s[i];
            if (c == ' ' && tok.len > 0 && i > 0 && s[i - 1] != ' ') {
                rc = mlr_fold_add(f, ws, wslen, tok.data, tok.len);
                ws = " ";
                wslen = 1;
                mlr_buf_reset(&tok);
                continue;
            }
            if (c == '"' || c == '\\')
                rc = mlr_buf_addc(&tok, '\\');
            if (rc == MLR_OK)
                rc = mlr_buf_addc(&tok, c);
        }
        if (rc == MLR_OK)
            rc = mlr_buf_addc(&tok, '"');
        if (rc == MLR_OK)
            rc = mlr_fold_add(f, ws, wslen, tok.data, tok.len);
        mlr_buf_free(&tok);
        return rc;
    }
}

/* RFC 2231 attribute-char: may stand unencoded in an extended value. */
static int attr_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$&+-.^_`|~", c) != NULL);
}

int mlr_fold_param(mlr_fold *f, const char *attr, const char *v, size_t n, int ew_fallback)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t alen = strlen(attr), i;
    int plain = n <= 60, rc;
    mlr_buf tok;
    for (i = 0; i < n && plain; i++)
        if ((unsigned char)v[i] < 0x20 || (unsigned char)v[i] >= 0x7F)
            plain = 0;
    for (i = 0; plain && i + 1 < n; i++)
        if (v[i] == '=' && v[i + 1] == '?')
            plain = 0; /* would read as an encoded word: encode it */
    if ((rc = mlr_fold_add(f, "", 0, ";", 1)))
        return rc;
    mlr_buf_init(&tok, f->b->a);
    if (plain) {
        /* attr="value" with '"' and '\' escaped */
        rc = mlr_buf_add(&tok, attr, alen);
        if (!rc)
            rc = mlr_buf_add(&tok, "=\"", 2);
        for (i = 0; i < n && !rc; i++) {
            if (v[i] == '"' || v[i] == '\\')
                rc = mlr_buf_addc(&tok, '\\');
            if (!rc)
                rc = mlr_buf_addc(&tok, v[i]);
        }
        if (!rc)
            rc = mlr_buf_addc(&tok, '"');
        if (!rc)
            rc = mlr_fold_add(f, " ", 1, tok.data, tok.len);
    } else if (ew_fallback) {
        /* attr="=?utf-8?..?= =?utf-8?..?=": the widely read RFC 2047 form */
        char word[EW_MAX + 16];
        size_t pos = 0;
        int useq = prefer_q(v, n), first = 1;
        while (pos < n && !rc) {
            size_t len = ew_next(v, n, &pos, useq, 48, word);
            mlr_buf_reset(&tok);
            if (first)
                rc = mlr_buf_add(&tok, attr, alen), rc = rc ? rc : mlr_buf_add(&tok, "=\"", 2);
            if (!rc)
                rc = mlr_buf_add(&tok, word, len);
            if (!rc && pos >= n)
                rc = mlr_buf_addc(&tok, '"');
            if (!rc)
                rc = mlr_fold_add(f, " ", 1, tok.data, tok.len);
            first = 0;
        }
    } else {
        /* RFC 2231: attr*0*=utf-8''%XX..; attr*1*=...; never splitting a
         * character between sections. */
        size_t pos = 0;
        unsigned sec = 0;
        char head[64];
        int multi;
        size_t total = 0;
        for (i = 0; i < n; i++)
            total += attr_char((unsigned char)v[i]) ? 1 : 3;
        multi = total > 50;
        while (pos < n && !rc) {
            size_t used = 0;
            mlr_buf_reset(&tok);
            if (multi)
                snprintf(head, sizeof head, "%s*%u*=%s", attr, sec, sec ? "" : "utf-8''");
            else
                snprintf(head, sizeof head, "%s*=utf-8''", attr);
            rc = mlr_buf_addstr(&tok, head);
            while (pos < n && !rc) {
                size_t k = u8len((unsigned char)v[pos]), c = 0, j;
                if (k > n - pos)
                    k = n - pos;
                for (j = 0; j < k; j++)
                    c += attr_char((unsigned char)v[pos + j]) ? 1 : 3;
                if (used > 0 && used + c > 50)
                    break;
                for (j = 0; j < k && !rc; j++) {
                    unsigned char ch = (unsigned char)v[pos + j];
                    if (attr_char(ch)) {
                        rc = mlr_buf_addc(&tok, (char)ch);
                    } else {
                        char e[3] = {'%', hex[ch >> 4], hex[ch & 15]};
                        rc = mlr_buf_add(&tok, e, 3);
                    }
                }
                used += c;
                pos += k;
            }
            if (!rc && pos < n)
                rc = mlr_buf_addc(&tok, ';');
            if (!rc)
                rc = mlr_fold_add(f, " ", 1, tok.data, tok.len);
            sec++;
        }
    }
    mlr_buf_free(&tok);
    return rc;
}

/* ---- Content-Type values ---- */

#define CT_MAX_LEN 900    /* longer values are refused, not folded into many lines */
#define CT_MAX_PARAMS 32

/* An RFC 2045 token character (printable ASCII but SPACE and tspecials). */
static int ct_tchar(unsigned char c)
{
    return c > 32 && c < 127 && !strchr("()<>@,;:\\\"/[]?=", c);
}

/* ASCII case-insensitive equality of a[0..n) and b[0..m). */
static int ct_same(const char *a, size_t n, const char *b, size_t m)
{
    size_t i;
    if (n != m)
        return 0;
    for (i = 0; i < n; i++) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z')
            x = (char)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (char)(y + 32);
        if (x != y)
            return 0;
    }
    return 1;
}

static int ct_fail(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "content_type %s", msg);
    return MLR_ERR_INPUT;
}

/* The length of the token at s[i..n). */
static size_t ct_token(const char *s, size_t i, size_t n)
{
    size_t j = i;
    while (j < n && ct_tchar((unsigned char)s[j]))
        j++;
    return j - i;
}

int mlr_fold_ctype(mlr_fold *f, const char *s, size_t n, char *err, size_t errlen)
{
    size_t i = 0, t, st, attr[CT_MAX_PARAMS], alen[CT_MAX_PARAMS], np = 0, k, out;
    mlr_buf tok;
    int rc = MLR_OK;
    if (n > CT_MAX_LEN)
        return ct_fail(err, errlen, "is too long");
    for (k = 0; k < n; k++)
        if ((unsigned char)s[k] >= 127 || ((unsigned char)s[k] < 32 && s[k] != '\t'))
            return ct_fail(err, errlen, "must be printable ASCII (no control characters)");
    while (i < n && is_wsp(s[i]))
        i++;
    t = i;
    i += ct_token(s, i, n);
    if (i == t || i >= n || s[i] != '/')
        return ct_fail(err, errlen, "must look like type/subtype");
    st = ++i;
    i += ct_token(s, i, n);
    if (i == st)
        return ct_fail(err, errlen, "must look like type/subtype");
    if (ct_same(s + t, st - 1 - t, "multipart", 9))
        return ct_fail(err, errlen, "cannot be multipart/* (mailer builds the structure)");
    if (f && (rc = mlr_fold_add(f, " ", 1, s + t, i - t)))
        return rc;
    out = 1 + i - t;   /* the value as written (" type/subtype"...), checked as it grows */
    mlr_buf_init(&tok, f ? f->b->a : mlr_default_alloc());
    while (rc == MLR_OK) {
        size_t a, al, v, vl;
        int quoted = 0;
        while (i < n && is_wsp(s[i]))
            i++;
        if (i >= n)
            break;
        if (s[i] != ';') {
            rc = ct_fail(err, errlen, "must be type/subtype, then \"; attribute=value\" parameters");
            break;
        }
        i++;
        while (i < n && is_wsp(s[i]))
            i++;
        a = i;
        al = ct_token(s, i, n);
        i += al;
        while (i < n && is_wsp(s[i]))
            i++;
        if (al == 0 || i >= n || s[i] != '=') {
            rc = ct_fail(err, errlen, "has a parameter that is not attribute=value (or a stray ';')");
            break;
        }
        i++;
        while (i < n && is_wsp(s[i]))
            i++;
        v = i;
        if (i < n && s[i] == '"') {
            /* a quoted string: the value is what it holds, unescaped */
            quoted = 1;
            for (v = ++i; i < n && s[i] != '"'; i++)
                if (s[i] == '\\' && ++i >= n)
                    break;
            if (i >= n) {
                rc = ct_fail(err, errlen, "has an unbalanced '\"'");
                break;
            }
            vl = i++ - v;
            if (i < n && !is_wsp(s[i]) && s[i] != ';') {
                rc = ct_fail(err, errlen, "has text after a quoted parameter value");
                break;
            }
        } else {
            vl = ct_token(s, i, n);
            i += vl;
            if (vl == 0 || (i < n && !is_wsp(s[i]) && s[i] != ';')) {
                rc = ct_fail(err, errlen, "has a parameter value that needs quotes");
                break;
            }
        }
        if (memchr(s + a, '*', al)) {
            rc = ct_fail(err, errlen, "has an RFC 2231 parameter (attribute*=): give plain values");
            break;
        }
        if (ct_same(s + a, al, "name", 4)) {
            rc = ct_fail(err, errlen, "has a name= parameter: give the file name as filename");
            break;
        }
        for (k = 0; k < np; k++)
            if (ct_same(s + a, al, s + attr[k], alen[k]))
                break;
        if (k < np) {
            rc = ct_fail(err, errlen, "has the same parameter twice");
            break;
        }
        if (np == CT_MAX_PARAMS) {
            rc = ct_fail(err, errlen, "has too many parameters");
            break;
        }
        attr[np] = a;
        alen[np++] = al;
        {   /* "; attribute=value" as it will be written (quotes, escapes): the
               written value must read back within the limit too */
            size_t j, uc = 0, sp = 0;
            int plain = 1;
            for (j = v; j < v + vl; j++) {
                if (quoted && s[j] == '\\')
                    j++;
                uc++;
                sp += s[j] == '"' || s[j] == '\\';
                plain &= ct_tchar((unsigned char)s[j]);
            }
            out += 2 + al + 1 + (plain && uc ? uc : uc + sp + 2);
            if (out > CT_MAX_LEN) {
                rc = ct_fail(err, errlen, "is too long once written with its quotes");
                break;
            }
        }
        if (!f)
            continue;
        /* attribute=value, the value a token when it can be one, else a
         * quoted string with '"' and '\' escaped */
        mlr_buf_reset(&tok);
        rc = mlr_buf_add(&tok, s + a, al);
        if (!rc)
            rc = mlr_buf_addc(&tok, '=');
        {
            mlr_buf val;
            size_t j, plain;
            mlr_buf_init(&val, tok.a);
            for (j = v; j < v + vl && !rc; j++) {
                if (quoted && s[j] == '\\')
                    j++;
                rc = mlr_buf_addc(&val, s[j]);
            }
            plain = val.len > 0 && ct_token(val.data ? val.data : "", 0, val.len) == val.len;
            if (!rc && !plain)
                rc = mlr_buf_addc(&tok, '"');
            for (j = 0; j < val.len && !rc; j++) {
                if (!plain && (val.data[j] == '"' || val.data[j] == '\\'))
                    rc = mlr_buf_addc(&tok, '\\');
                if (!rc)
                    rc = mlr_buf_addc(&tok, val.data[j]);
            }
            if (!rc && !plain)
                rc = mlr_buf_addc(&tok, '"');
            mlr_buf_free(&val);
        }
        if (!rc)
            rc = mlr_fold_add(f, "", 0, ";", 1);
        if (!rc)
            rc = mlr_fold_add(f, " ", 1, tok.data, tok.len);
    }
    mlr_buf_free(&tok);
    return rc;
}
