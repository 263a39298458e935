/* dkim.c - DKIM signatures (RFC 6376, RFC 8463): signer, streaming body
 * canonicalization, header canonicalization and the DKIM-Signature field.
 * See dkim.h. */
#include "dkim.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#define MAX_KEY_FILE (64 * 1024)
#define FOLD_AT 76    /* fold the signature field before this column */
#define B_PIECE 72    /* octets of b= per folded line */

struct mlr_dkim {
    mlr_alloc a;         /* a copy: the signer may outlive nothing, but stays simple */
    EVP_PKEY *pkey;
    int alg, hc, bc;
    char *domain, *selector;
    char **headers;      /* user's list (as given), or NULL for the default set */
    size_t nheaders;
    int64_t t;
    size_t siglen;       /* signature octets (RSA modulus size, or 64) */
};

/* RFC 6376 5.4.1 recommends these; the MIME fields make the structure
 * tamper-evident too. From is signed once more than it occurs. */
static const char *const default_headers[] = {
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
    "mime-version", "content-type", "content-transfer-encoding", "content-id",
    "content-description", "in-reply-to", "references", "list-id", "list-help",
    "list-unsubscribe", "list-unsubscribe-post", "list-subscribe", "list-post",
    "list-owner", "list-archive", "resent-date", "resent-from", "resent-sender",
    "resent-to", "resent-cc", "resent-message-id", NULL};

/* ---- small helpers ---- */

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* Case-insensitive equality of s[0..n) with the NUL-terminated name. */
static int name_eq(const char *s, size_t n, const char *name)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (!name[i] || lower((unsigned char)s[i]) != lower((unsigned char)name[i]))
            return 0;
    return name[n] == '\0';
}

/* Put OpenSSL's last error reason into err. */
static void ossl_reason(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_get_error();
    char r[160];
    if (e) {
        ERR_error_string_n(e, r, sizeof r);
        snprintf(err, errlen, "%s: %s", what, r);
    } else {
        snprintf(err, errlen, "%s", what);
    }
    ERR_clear_error();
}

/* A domain or selector: dot-separated labels of letters, digits, '-' and
 * '_' (selectors may use it), at most 253 octets. */
static int valid_domain(const char *s)
{
    size_t i, n = strlen(s), label = 0;
    if (n == 0 || n > 253 || s[0] == '.' || s[n - 1] == '.')
        return 0;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '.') {
            if (label == 0)
                return 0;
            label = 0;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return 0;
        if (++label > 63)
            return 0;
    }
    return 1;
}

/* A header field name: printable ASCII without ':' (RFC 5322 ftext). */
static int valid_field_name(const char *s)
{
    size_t i, n = strlen(s);
    if (n == 0 || n > 76)
        return 0;
    for (i = 0; i < n; i++)
        if ((unsigned char)s[i] < 33 || (unsigned char)s[i] > 126 || s[i] == ':' || s[i] == ';')
            return 0;
    return 1;
}

static int no_passphrase(char *buf, int size, int rw, void *u)
{
    (void)buf;
    (void)size;
    (void)rw;
    (void)u;
    return 0;   /* encrypted keys are refused rather than prompting */
}

/* Load a private key from PEM text or from a file holding PEM. */
static EVP_PKEY *load_key(const char *key, size_t len, char *err, size_t errlen)
{
    BIO *bio;
    EVP_PKEY *pk;
    ERR_clear_error();
    if (len >= 10 && !memcmp(key, "-----BEGIN", 10)) {
        if (len > MAX_KEY_FILE) {
            snprintf(err, errlen, "key: PEM text too long");
            return NULL;
        }
        bio = BIO_new_mem_buf(key, (int)len);
    } else {
        if (strlen(key) != len || len == 0) {
            snprintf(err, errlen, "key: neither PEM text nor a file path");
            return NULL;
        }
        bio = BIO_new_file(key, "r");
        if (!bio) {
            ERR_clear_error();
            snprintf(err, errlen, "key: cannot open '%.120s' (give PEM text or a readable file)",
                     key);
            return NULL;
        }
    }
    if (!bio) {
        ossl_reason(err, errlen, "key");
        return NULL;
    }
    pk = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    BIO_free(bio);
    if (!pk)
        ossl_reason(err, errlen, "key: not a usable unencrypted PEM private key");
    return pk;
}

static void free_str(const mlr_alloc *a, char *s)
{
    if (s)
        mlr_free(a, s, strlen(s) + 1);
}

void mlr_dkim_free(mlr_dkim *d)
{
    size_t i;
    mlr_alloc a;
    if (!d)
        return;
    a = d->a;
    EVP_PKEY_free(d->pkey);
    free_str(&a, d->domain);
    free_str(&a, d->selector);
    for (i = 0; i < d->nheaders; i++)
        free_str(&a, d->headers[i]);
    if (d->headers)
        mlr_free(&a, d->headers, d->nheaders * sizeof *d->headers);
    mlr_free(&a, d, sizeof *d);
}

mlr_dkim *mlr_dkim_new(const mlr_alloc *a, const mlr_dkim_opts *o, int *rc, char *err,
                       size_t errlen)
{
    mlr_dkim *d;
    int type;
    size_t i, from = 0;
    *rc = MLR_ERR_INPUT;
    if (!o->domain || !valid_domain(o->domain)) {
        snprintf(err, errlen, "domain: not an ASCII domain name (use the A-label form)");
        return NULL;
    }
    if (!o->selector || !valid_domain(o->selector)) {
        snprintf(err, errlen, "selector: letters, digits, '-', '_' and dots only");
        return NULL;
    }
    if (!o->key) {
        snprintf(err, errlen, "key: required (PEM text or a file path)");
        return NULL;
    }
    if (o->headers) {
        if (o->nheaders == 0 || o->nheaders > MLR_DKIM_MAX_HEADERS) {
            snprintf(err, errlen, "headers: give 1 to %d header names", MLR_DKIM_MAX_HEADERS);
            return NULL;
        }
        for (i = 0; i < o->nheaders; i++) {
            if (!valid_field_name(o->headers[i])) {
                snprintf(err, errlen, "headers[%zu]: not a header field name", i + 1);
                return NULL;
            }
            from += name_eq(o->headers[i], strlen(o->headers[i]), "from");
        }
        if (!from) {
            snprintf(err, errlen, "headers: must include From (RFC 6376 5.4)");
            return NULL;
        }
    }
    *rc = MLR_ERR_NOMEM;
    d = mlr_malloc(a, sizeof *d);
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    memset(d, 0, sizeof *d);
    d->a = *a;
    d->hc = o->header_canon == MLR_DKIM_RELAXED;
    d->bc = o->body_canon == MLR_DKIM_RELAXED;
    d->t = o->time >= 0 ? o->time : (int64_t)time(NULL);
    d->domain = mlr_strndup(a, o->domain, strlen(o->domain));
    d->selector = mlr_strndup(a, o->selector, strlen(o->selector));
    if (!d->domain || !d->selector)
        goto nomem;
    if (o->headers) {
        d->headers = mlr_malloc(a, o->nheaders * sizeof *d->headers);
        if (!d->headers)
            goto nomem;
        memset(d->headers, 0, o->nheaders * sizeof *d->headers);
        d->nheaders = o->nheaders;
        for (i = 0; i < o->nheaders; i++)
            if (!(d->headers[i] = mlr_strndup(a, o->headers[i], strlen(o->headers[i]))))
                goto nomem;
    }
    *rc = MLR_ERR_INPUT;
    d->pkey = load_key(o->key, o->key_len, err, errlen);
    if (!d->pkey) {
        mlr_dkim_free(d);
        return NULL;
    }
    type = EVP_PKEY_base_id(d->pkey);
    d->alg = o->algorithm ? o->algorithm
             : type == EVP_PKEY_ED25519 ? MLR_DKIM_ED25519_SHA256 : MLR_DKIM_RSA_SHA256;
    if (d->alg == MLR_DKIM_RSA_SHA256 && type != EVP_PKEY_RSA) {
        snprintf(err, errlen, "key: rsa-sha256 needs an RSA key");
        mlr_dkim_free(d);
        return NULL;
    }
    if (d->alg == MLR_DKIM_ED25519_SHA256 && type != EVP_PKEY_ED25519) {
        snprintf(err, errlen, "key: ed25519-sha256 needs an Ed25519 key");
        mlr_dkim_free(d);
        return NULL;
    }
    if (d->alg == MLR_DKIM_RSA_SHA256 && EVP_PKEY_bits(d->pkey) < 1024) {
        snprintf(err, errlen, "key: RSA keys need at least 1024 bits (RFC 8301; 2048 advised)");
        mlr_dkim_free(d);
        return NULL;
    }
    d->siglen = (size_t)EVP_PKEY_size(d->pkey);
    *rc = MLR_OK;
    return d;
nomem:
    snprintf(err, errlen, "out of memory");
    mlr_dkim_free(d);
    return NULL;
}

int mlr_dkim_algorithm(const mlr_dkim *d) { return d->alg; }
int mlr_dkim_body_canon(const mlr_dkim *d) { return d->bc ? MLR_DKIM_RELAXED : MLR_DKIM_SIMPLE; }

/* ---- body ---- */

static const char crlfs[] = "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n";

static void bemit(mlr_dkim_body *b, const void *p, size_t n)
{
    EVP_DigestUpdate((EVP_MD_CTX *)b->md, p, n);
    b->hashed += n;
    b->any = 1;
}

/* Content starts or goes on in this line: release held-back empty lines
 * and white space first. */
static void bcontent(mlr_dkim_body *b)
{
    if (!b->content) {
        while (b->empty) {
            uint64_t k = b->empty > 16 ? 16 : b->empty;
            bemit(b, crlfs, (size_t)k * 2);
            b->empty -= k;
        }
        b->content = 1;
    }
    if (b->wsp) {
        bemit(b, " ", 1);
        b->wsp = 0;
    }
}

/* A CRLF ended the line. */
static void bline_end(mlr_dkim_body *b)
{
    b->wsp = 0;   /* relaxed: trailing white space goes */
    if (b->content)
        bemit(b, "\r\n", 2);
    else
        b->empty++;
    b->content = 0;
}

int mlr_dkim_body_init(mlr_dkim_body *b, int canon)
{
    memset(b, 0, sizeof *b);
    b->relaxed = canon == MLR_DKIM_RELAXED;
    b->md = EVP_MD_CTX_new();
    if (!b->md)
        return MLR_ERR_NOMEM;
    if (EVP_DigestInit_ex((EVP_MD_CTX *)b->md, EVP_sha256(), NULL) != 1) {
        mlr_dkim_body_free(b);
        return MLR_ERR_NOMEM;
    }
    return MLR_OK;
}

int mlr_dkim_body_update(mlr_dkim_body *b, const uint8_t *p, size_t n)
{
    size_t i = 0, j;
    const int relaxed = b->relaxed;
    while (i < n) {
        uint8_t c = p[i];
        if (b->cr) {
            b->cr = 0;
            if (c == '\n') {
                bline_end(b);
                i++;
                continue;
            }
            bcontent(b);   /* a lone CR is an ordinary octet */
            bemit(b, "\r", 1);
        }
        if (c == '\r') {
            b->cr = 1;
            i++;
            continue;
        }
        if (relaxed && (c == ' ' || c == '\t')) {
            b->wsp = 1;
            i++;
            continue;
        }
        /* a run of ordinary octets goes to the hash in one call */
        for (j = i + 1; j < n && p[j] != '\r' && !(relaxed && (p[j] == ' ' || p[j] == '\t'));
             j++)
            ;
        bcontent(b);
        bemit(b, p + i, j - i);
        i = j;
    }
    return MLR_OK;
}

void mlr_dkim_body_free(mlr_dkim_body *b)
{
    if (b->md) {
        EVP_MD_CTX_free((EVP_MD_CTX *)b->md);
        b->md = NULL;
    }
}

int mlr_dkim_body_final(mlr_dkim_body *b, uint8_t out[32])
{
    unsigned int len = 0;
    int ok;
    if (b->cr) {
        b->cr = 0;
        bcontent(b);
        bemit(b, "\r", 1);
    }
    if (b->content) {   /* an unterminated last line gets its CRLF */
        b->wsp = 0;
        bemit(b, "\r\n", 2);
        b->content = 0;
    }
    if (!b->relaxed && !b->any)
        bemit(b, "\r\n", 2);   /* simple: an empty body is one CRLF */
    ok = EVP_DigestFinal_ex((EVP_MD_CTX *)b->md, out, &len) == 1 && len == 32;
    mlr_dkim_body_free(b);
    return ok ? MLR_OK : MLR_ERR_NOMEM;
}

/* ---- headers ---- */

int mlr_dkim_canon_header(int canon, const char *f, size_t n, mlr_buf *out)
{
    size_t i = 0, name_end;
    int pending = 0, started = 0;
    if (canon != MLR_DKIM_RELAXED) {
        if (mlr_buf_add(out, f, n) || mlr_buf_add(out, "\r\n", 2))
            return MLR_ERR_NOMEM;
        return MLR_OK;
    }
    while (i < n && f[i] != ':')
        i++;
    name_end = i;
    while (name_end > 0 && (f[name_end - 1] == ' ' || f[name_end - 1] == '\t'))
        name_end--;
    for (i = 0; i < name_end; i++)
        if (mlr_buf_addc(out, (char)lower((unsigned char)f[i])))
            return MLR_ERR_NOMEM;
    if (mlr_buf_addc(out, ':'))
        return MLR_ERR_NOMEM;
    while (i < n && f[i] != ':')
        i++;
    for (i++; i < n; i++) {
        char c = f[i];
        if (c == '\r' || c == '\n')
            continue;   /* unfold */
        if (c == ' ' || c == '\t') {
            pending = 1;
            continue;
        }
        if (pending && started && mlr_buf_addc(out, ' '))
            return MLR_ERR_NOMEM;
        pending = 0;
        started = 1;
        if (mlr_buf_addc(out, c))
            return MLR_ERR_NOMEM;
    }
    return mlr_buf_add(out, "\r\n", 2) ? MLR_ERR_NOMEM : MLR_OK;
}

/* One header field of the block. */
typedef struct field {
    size_t off, len, name_len;
    int used;
} field;

/* Split a header block into fields; *nf fields into a new array (caller
 * frees with *cap). */
static int split_fields(const mlr_alloc *a, const char *h, size_t n, field **out, size_t *nf,
                        size_t *cap)
{
    size_t i = 0, k = 0, c = 16;
    field *fs = mlr_malloc(a, c * sizeof *fs);
    if (!fs)
        return MLR_ERR_NOMEM;
    while (i < n) {
        size_t start = i, colon = 0;
        int seen = 0;
        /* a field runs to the CRLF not followed by white space */
        while (i < n) {
            if (!seen && h[i] == ':') {
                colon = i;
                seen = 1;
            }
            if (h[i] == '\r' && i + 1 < n && h[i + 1] == '\n' &&
                (i + 2 >= n || (h[i + 2] != ' ' && h[i + 2] != '\t')))
                break;
            i++;
        }
        if (k == c) {
            field *g = mlr_realloc(a, fs, c * sizeof *fs, 2 * c * sizeof *fs);
            if (!g) {
                mlr_free(a, fs, c * sizeof *fs);
                return MLR_ERR_NOMEM;
            }
            fs = g;
            c *= 2;
        }
        fs[k].off = start;
        fs[k].len = i - start;
        fs[k].name_len = seen ? colon - start : 0;
        while (fs[k].name_len && (h[start + fs[k].name_len - 1] == ' ' ||
                                  h[start + fs[k].name_len - 1] == '\t'))
            fs[k].name_len--;
        fs[k].used = 0;
        k++;
        i += 2;
    }
    *out = fs;
    *nf = k;
    *cap = c;
    return MLR_OK;
}

/* The h= list for a header block, names separated by ':' into out. */
static int signed_names(const mlr_dkim *d, const char *h, const field *fs, size_t nf,
                        mlr_buf *out)
{
    size_t i, k;
    if (d->headers) {
        for (i = 0; i < d->nheaders; i++)
            if ((i && mlr_buf_addc(out, ':')) || mlr_buf_addstr(out, d->headers[i]))
                return MLR_ERR_NOMEM;
        return MLR_OK;
    }
    for (i = 0; i < nf; i++) {
        for (k = 0; default_headers[k]; k++)
            if (name_eq(h + fs[i].off, fs[i].name_len, default_headers[k]))
                break;
        if (!default_headers[k])
            continue;
        if ((out->len && mlr_buf_addc(out, ':')) || mlr_buf_addstr(out, default_headers[k]))
            return MLR_ERR_NOMEM;
    }
    /* From once more: a second From added in transit breaks the signature */
    if ((out->len && mlr_buf_addc(out, ':')) || mlr_buf_addstr(out, "from"))
        return MLR_ERR_NOMEM;
    return MLR_OK;
}

/* Folding writer for the signature field. */
typedef struct sfold {
    mlr_buf *b;
    size_t col;
    int rc;
} sfold;

/* Add item s[0..n) after separator sep, or on a new line when it would
 * pass FOLD_AT. */
static void fitem(sfold *f, const char *sep, const char *s, size_t n)
{
    size_t sl = strlen(sep);
    if (f->rc)
        return;
    if (f->col + sl + n > FOLD_AT && f->col > 1) {
        f->rc = mlr_buf_add(f->b, "\r\n ", 3);
        f->col = 1;
    } else {
        f->rc = mlr_buf_add(f->b, sep, sl);
        f->col += sl;
    }
    if (!f->rc)
        f->rc = mlr_buf_add(f->b, s, n);
    f->col += n;
}

/* Write the field with the given h= list, bh= and b= values (base64
 * text); *b_at is set to the offset just after "b=" (the end of the
 * signed part). The layout depends only on lengths. */
static int build_field(const mlr_dkim *d, const char *names, size_t names_len, const char *bh,
                       const char *b, size_t blen, mlr_buf *out, size_t *b_at)
{
    sfold f = {out, 0, 0};
    char tmp[300];
    size_t i, start;
    f.rc = mlr_buf_addstr(out, "DKIM-Signature:");
    f.col = 15;
    fitem(&f, " ", "v=1;", 4);
    snprintf(tmp, sizeof tmp, "a=%s;",
             d->alg == MLR_DKIM_ED25519_SHA256 ? "ed25519-sha256" : "rsa-sha256");
    fitem(&f, " ", tmp, strlen(tmp));
    snprintf(tmp, sizeof tmp, "c=%s/%s;", d->hc ? "relaxed" : "simple",
             d->bc ? "relaxed" : "simple");
    fitem(&f, " ", tmp, strlen(tmp));
    snprintf(tmp, sizeof tmp, "d=%s;", d->domain);
    fitem(&f, " ", tmp, strlen(tmp));
    snprintf(tmp, sizeof tmp, "s=%s;", d->selector);
    fitem(&f, " ", tmp, strlen(tmp));
    snprintf(tmp, sizeof tmp, "t=%lld;", (long long)d->t);
    fitem(&f, " ", tmp, strlen(tmp));
    /* h=: one item per name, so folds fall next to the colons */
    start = 0;
    for (i = 0; i <= names_len; i++) {
        if (i < names_len && names[i] != ':')
            continue;
        {
            size_t n = i - start, o = 0;
            char item[90];
            if (start == 0) {
                memcpy(item, "h=", 2);
                o = 2;
            }
            memcpy(item + o, names + start, n);
            item[o + n] = i < names_len ? ':' : ';';
            fitem(&f, start == 0 ? " " : "", item, o + n + 1);
        }
        start = i + 1;
    }
    snprintf(tmp, sizeof tmp, "bh=%s;", bh);
    fitem(&f, " ", tmp, strlen(tmp));
    {
        size_t first = blen < B_PIECE - 2 ? blen : B_PIECE - 2, o;
        memcpy(tmp, "b=", 2);
        memcpy(tmp + 2, b, first);
        /* "b=" starts the item: where it lands is known before the value */
        fitem(&f, " ", tmp, 2 + first);
        if (!f.rc)
            *b_at = out->len - first;
        for (o = first; o < blen; o += B_PIECE)
            fitem(&f, "", b + o, blen - o < B_PIECE ? blen - o : B_PIECE);
    }
    if (!f.rc)
        f.rc = mlr_buf_add(out, "\r\n", 2);
    return f.rc ? MLR_ERR_NOMEM : MLR_OK;
}

static size_t b64len(size_t n) { return 4 * ((n + 2) / 3); }

/* Fields and the h= list of a header block. */
static int prepare(const mlr_dkim *d, const char *head, size_t n, field **fs, size_t *nf,
                   size_t *cap, mlr_buf *names)
{
    int rc = split_fields(&d->a, head, n, fs, nf, cap);
    if (rc)
        return rc;
    rc = signed_names(d, head, *fs, *nf, names);
    if (rc)
        mlr_free(&d->a, *fs, *cap * sizeof **fs);
    return rc;
}

size_t mlr_dkim_header_len(const mlr_dkim *d, const char *head, size_t n)
{
    mlr_buf names, out, dummy;
    field *fs = NULL;
    size_t nf = 0, cap = 0, at = 0, len = 0, blen = b64len(d->siglen);
    mlr_buf_init(&names, &d->a);
    mlr_buf_init(&out, &d->a);
    mlr_buf_init(&dummy, &d->a);
    if (prepare(d, head, n, &fs, &nf, &cap, &names) == MLR_OK) {
        if (mlr_buf_reserve(&dummy, blen + 1) == MLR_OK) {
            memset(dummy.data, 'A', blen);
            dummy.data[blen] = '\0';
            if (build_field(d, names.data ? names.data : "", names.len,
                            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", dummy.data, blen, &out,
                            &at) == MLR_OK)
                len = out.len;
        }
        mlr_free(&d->a, fs, cap * sizeof *fs);
    }
    mlr_buf_free(&names);
    mlr_buf_free(&out);
    mlr_buf_free(&dummy);
    return len;
}

/* base64 of p[0..n) into a NUL-terminated string in b. */
static int b64(mlr_buf *b, const uint8_t *p, size_t n)
{
    size_t need = b64len(n);
    if (mlr_buf_reserve(b, need + 1))
        return MLR_ERR_NOMEM;
    EVP_EncodeBlock((unsigned char *)b->data + b->len, p, (int)n);
    b->len += need;
    b->data[b->len] = '\0';
    return MLR_OK;
}

/* Sign the 32-octet digest: RSASSA-PKCS1-v1_5 over SHA-256, or PureEdDSA
 * over the digest itself (RFC 8463 section 3). */
static int sign_digest(const mlr_dkim *d, const uint8_t dg[32], uint8_t *sig, size_t *slen,
                       char *err, size_t errlen)
{
    int ok = 0;
    ERR_clear_error();
    if (d->alg == MLR_DKIM_RSA_SHA256) {
        EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new(d->pkey, NULL);
        ok = pc && EVP_PKEY_sign_init(pc) == 1 &&
             EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PADDING) == 1 &&
             EVP_PKEY_CTX_set_signature_md(pc, EVP_sha256()) == 1 &&
             EVP_PKEY_sign(pc, sig, slen, dg, 32) == 1;
        EVP_PKEY_CTX_free(pc);
    } else {
        EVP_MD_CTX *mc = EVP_MD_CTX_new();
        ok = mc && EVP_DigestSignInit(mc, NULL, NULL, NULL, d->pkey) == 1 &&
             EVP_DigestSign(mc, sig, slen, dg, 32) == 1;
        EVP_MD_CTX_free(mc);
    }
    if (!ok) {
        ossl_reason(err, errlen, "dkim: signing failed");
        return MLR_ERR_INPUT;
    }
    return MLR_OK;
}

int mlr_dkim_sign(const mlr_dkim *d, const char *head, size_t n, const uint8_t bh[32],
                  mlr_buf *out, char *err, size_t errlen)
{
    mlr_buf names, canon, bhs, bs, field_buf;
    field *fs = NULL;
    size_t nf = 0, cap = 0, at = 0, i, k, slen = d->siglen, blen = b64len(d->siglen);
    uint8_t dg[32], *sig = NULL;
    unsigned int dl = 0;
    int rc;
    mlr_buf_init(&names, &d->a);
    mlr_buf_init(&canon, &d->a);
    mlr_buf_init(&bhs, &d->a);
    mlr_buf_init(&bs, &d->a);
    mlr_buf_init(&field_buf, &d->a);
    snprintf(err, errlen, "out of memory");
    rc = prepare(d, head, n, &fs, &nf, &cap, &names);
    if (rc)
        goto done;
    rc = MLR_ERR_NOMEM;
    if (b64(&bhs, bh, 32) || mlr_buf_reserve(&bs, blen + 1))
        goto done;
    memset(bs.data, 'A', blen);
    bs.data[blen] = '\0';
    /* the field with b= empty: the part up to "b=" is what gets signed */
    if (build_field(d, names.data ? names.data : "", names.len, bhs.data, bs.data, blen,
                    &field_buf, &at))
        goto done;
    /* header hash input: each name of h= picks the last unused instance */
    for (i = 0, k = 0; i <= names.len; i++) {
        size_t j;
        if (i < names.len && names.data[i] != ':')
            continue;
        for (j = nf; j-- > 0;) {
            field *f = &fs[j];
            if (!f->used && f->name_len && f->name_len == i - k) {
                size_t q;
                for (q = 0; q < f->name_len; q++)
                    if (lower((unsigned char)head[f->off + q]) !=
                        lower((unsigned char)names.data[k + q]))
                        break;
                if (q == f->name_len) {
                    f->used = 1;
                    if (mlr_dkim_canon_header(d->hc, head + f->off, f->len, &canon))
                        goto done;
                    break;
                }
            }
        }
        k = i + 1;
    }
    if (mlr_dkim_canon_header(d->hc, field_buf.data, at, &canon))
        goto done;
    canon.len -= 2;   /* the signature field is hashed without its CRLF */
    if (EVP_Digest(canon.data, canon.len, dg, &dl, EVP_sha256(), NULL) != 1 || dl != 32)
        goto done;
    sig = mlr_malloc(&d->a, slen);
    if (!sig)
        goto done;
    if ((rc = sign_digest(d, dg, sig, &slen, err, errlen)))
        goto done;
    rc = MLR_ERR_NOMEM;
    mlr_buf_reset(&bs);
    if (b64(&bs, sig, slen) || bs.len != blen) {
        if (bs.len != blen) {
            snprintf(err, errlen, "dkim: unexpected signature length");
            rc = MLR_ERR_INPUT;
        }
        goto done;
    }
    mlr_buf_reset(&field_buf);
    if (build_field(d, names.data ? names.data : "", names.len, bhs.data, bs.data, blen,
                    &field_buf, &at) ||
        mlr_buf_add(out, field_buf.data, field_buf.len))
        goto done;
    rc = MLR_OK;
done:
    if (fs)
        mlr_free(&d->a, fs, cap * sizeof *fs);
    if (sig)
        mlr_free(&d->a, sig, d->siglen);
    mlr_buf_free(&names);
    mlr_buf_free(&canon);
    mlr_buf_free(&bhs);
    mlr_buf_free(&bs);
    mlr_buf_free(&field_buf);
    return rc;
}

int mlr_dkim_dns_record(const mlr_dkim *d, mlr_buf *out)
{
    uint8_t raw[64], *der = NULL;
    int len;
    size_t rl = sizeof raw;
    int rc = MLR_ERR_NOMEM;
    if (d->alg == MLR_DKIM_ED25519_SHA256) {
        if (EVP_PKEY_get_raw_public_key(d->pkey, raw, &rl) != 1)
            return MLR_ERR_INPUT;
        if (mlr_buf_addstr(out, "v=DKIM1; k=ed25519; p=") || b64(out, raw, rl))
            return MLR_ERR_NOMEM;
        return MLR_OK;
    }
    len = i2d_PUBKEY(d->pkey, &der);
    if (len <= 0)
        return MLR_ERR_INPUT;
    if (!mlr_buf_addstr(out, "v=DKIM1; k=rsa; p=") && !b64(out, der, (size_t)len))
        rc = MLR_OK;
    OPENSSL_free(der);
    return rc;
}
