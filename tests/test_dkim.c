/* test_dkim.c - DKIM: body canonicalization against the RFC 6376 3.4.5
 * example and edge cases, fed whole and split at every offset; header
 * canonicalization; the signature field (predicted length, folding, bh=,
 * b= checked with OpenSSL against a canonical input written out here);
 * signer errors. End-to-end verification by real verifiers is in
 * spec/dkim_spec.lua. */
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "dkim.h"
#include "tap.h"

/* SHA-256 of s[0..n). */
static void sha(const char *s, size_t n, uint8_t out[32])
{
    unsigned int l;
    EVP_Digest(s, n, out, &l, EVP_sha256(), NULL);
}

/* Body hash of in[0..n) fed in pieces cut at a and b (offsets). */
static void body_hash(int canon, const char *in, size_t n, size_t a, size_t b, uint8_t out[32])
{
    mlr_dkim_body bd;
    mlr_dkim_body_init(&bd, canon);
    if (a > n)
        a = n;
    if (b < a)
        b = a;
    if (b > n)
        b = n;
    mlr_dkim_body_update(&bd, (const uint8_t *)in, a);
    mlr_dkim_body_update(&bd, (const uint8_t *)in + a, b - a);
    mlr_dkim_body_update(&bd, (const uint8_t *)in + b, n - b);
    mlr_dkim_body_final(&bd, out);
}

/* Every split of the input (one and two cuts) gives the hash of want. */
static void body_case(const char *label, int canon, const char *in, const char *want)
{
    uint8_t w[32], got[32];
    size_t n = strlen(in), a, b;
    int ok = 1, whole;
    sha(want, strlen(want), w);
    body_hash(canon, in, n, n, n, got);
    whole = !memcmp(w, got, 32);
    TAP_OK(whole, "body %s (%s): canonical form as expected", label,
           canon == MLR_DKIM_RELAXED ? "relaxed" : "simple");
    for (a = 0; a <= n; a++)
        for (b = a; b <= n; b++) {
            body_hash(canon, in, n, a, b, got);
            if (memcmp(w, got, 32))
                ok = 0;
        }
    TAP_OK(ok, "body %s (%s): same hash for all %zu two-cut splits", label,
           canon == MLR_DKIM_RELAXED ? "relaxed" : "simple", (n + 1) * (n + 2) / 2);
}

static void bodies(void)
{
    /* RFC 6376 3.4.5 */
    body_case("RFC 6376 example", MLR_DKIM_RELAXED, " C \r\nD \t E\r\n\r\n\r\n", " C\r\nD E\r\n");
    body_case("RFC 6376 example", MLR_DKIM_SIMPLE, " C \r\nD \t E\r\n\r\n\r\n", " C \r\nD \t E\r\n");
    body_case("empty", MLR_DKIM_SIMPLE, "", "\r\n");
    body_case("empty", MLR_DKIM_RELAXED, "", "");
    body_case("only empty lines", MLR_DKIM_SIMPLE, "\r\n\r\n\r\n", "\r\n");
    body_case("only blank lines", MLR_DKIM_RELAXED, "\r\n  \r\n\t\r\n", "");
    body_case("blank lines inside kept", MLR_DKIM_RELAXED, "a\r\n \r\n\r\nb\r\n\r\n", "a\r\n\r\n\r\nb\r\n");
    body_case("blank lines inside kept", MLR_DKIM_SIMPLE, "a\r\n \r\n\r\nb\r\n\r\n", "a\r\n \r\n\r\nb\r\n");
    body_case("no final CRLF", MLR_DKIM_SIMPLE, "abc\r\ndef", "abc\r\ndef\r\n");
    body_case("no final CRLF", MLR_DKIM_RELAXED, "abc  \r\ndef \t", "abc\r\ndef\r\n");
    body_case("lone CR and LF are octets", MLR_DKIM_SIMPLE, "a\rb\nc\r\n\r\n", "a\rb\nc\r\n");
    body_case("lone CR and LF are octets", MLR_DKIM_RELAXED, "a \r b\n c\r", "a \r b\n c\r\r\n");
    body_case("CR CR LF", MLR_DKIM_RELAXED, "x\r\r\n\r\n", "x\r\r\n");
    body_case("leading white space", MLR_DKIM_RELAXED, "  x  y\r\n", " x y\r\n");
    {
        /* many held-back empty lines that turn out not to be trailing */
        static char in[3000], want[3000];
        size_t i, o = 0;
        in[0] = 'a';
        for (i = 0; i < 600; i++)
            memcpy(in + 1 + 2 * i, "\r\n", 2);
        memcpy(in + 1201, "b\r\n\r\n", 5);
        memcpy(want, in, 1204);
        o = 1204;
        want[o] = '\0';
        in[1206] = '\0';
        {
            uint8_t w[32], got[32];
            sha(want, o, w);
            body_hash(MLR_DKIM_RELAXED, in, 1206, 7, 900, got);
            TAP_OK(!memcmp(w, got, 32), "600 empty lines before content are hashed, the trailing one is not");
        }
    }
}

static void headers(void)
{
    mlr_buf b;
    mlr_buf_init(&b, mlr_default_alloc());
    mlr_dkim_canon_header(MLR_DKIM_RELAXED, "A: X", 4, &b);
    mlr_dkim_canon_header(MLR_DKIM_RELAXED, "B : Y\t\r\n\tZ  ", 12, &b);
    TAP_OK(b.len == 12 && !memcmp(b.data, "a:X\r\nb:Y Z\r\n", 12), "RFC 6376 3.4.5 relaxed headers");
    mlr_buf_reset(&b);
    mlr_dkim_canon_header(MLR_DKIM_SIMPLE, "B : Y\t\r\n\tZ  ", 12, &b);
    TAP_OK(b.len == 14 && !memcmp(b.data, "B : Y\t\r\n\tZ  \r\n", 14), "simple headers unchanged");
    mlr_buf_reset(&b);
    mlr_dkim_canon_header(MLR_DKIM_RELAXED, "Subject:", 8, &b);
    TAP_OK(b.len == 10 && !memcmp(b.data, "subject:\r\n", 10), "relaxed empty value");
    mlr_buf_free(&b);
}

/* A fresh key as PEM text. */
static char *make_key(int type, int bits)
{
    EVP_PKEY *pk = NULL;
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_id(type, NULL);
    BIO *bio = BIO_new(BIO_s_mem());
    char *p, *out;
    long n;
    EVP_PKEY_keygen_init(c);
    if (type == EVP_PKEY_RSA)
        EVP_PKEY_CTX_set_rsa_keygen_bits(c, bits);
    EVP_PKEY_keygen(c, &pk);
    PEM_write_bio_PrivateKey(bio, pk, NULL, NULL, 0, NULL, NULL);
    n = BIO_get_mem_data(bio, &p);
    out = malloc((size_t)n + 1);
    memcpy(out, p, (size_t)n);
    out[n] = '\0';
    BIO_free(bio);
    EVP_PKEY_free(pk);
    EVP_PKEY_CTX_free(c);
    return out;
}

/* Relaxed canonical form of a field (test's own, written plainly). */
static size_t relax(const char *f, size_t n, char *out)
{
    size_t i = 0, o = 0;
    int sp = 0, started = 0;
    while (f[i] != ':') {
        char c = f[i++];
        out[o++] = (char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
    }
    out[o++] = ':';
    for (i++; i < n; i++) {
        if (f[i] == '\r' || f[i] == '\n')
            continue;
        if (f[i] == ' ' || f[i] == '\t') {
            sp = 1;
            continue;
        }
        if (sp && started)
            out[o++] = ' ';
        sp = 0;
        started = 1;
        out[o++] = f[i];
    }
    return o;
}


static void sign_case(int type, int hc)
{
    static const char head[] = "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                               "From: a@example.com\r\nTo: b@example.com\r\n"
                               "Subject: hi  there\r\nX-Other: x\r\n";
    char *pem = make_key(type, 2048);
    mlr_dkim_opts o;
    mlr_dkim *d;
    mlr_buf out;
    uint8_t bh[32];
    char err[200];
    int rc;
    const char *label = type == EVP_PKEY_RSA ? "rsa" : "ed25519";
    memset(&o, 0, sizeof o);
    o.domain = "example.com";
    o.selector = "sel-1";
    o.key = pem;
    o.key_len = strlen(pem);
    o.header_canon = hc;
    o.body_canon = MLR_DKIM_RELAXED;
    o.time = 1700000000;
    d = mlr_dkim_new(mlr_default_alloc(), &o, &rc, err, sizeof err);
    TAP_OK(d != NULL, "%s signer created (%s)", label, d ? "" : err);
    if (!d)
        return;
    TAP_OK(mlr_dkim_algorithm(d) == (type == EVP_PKEY_RSA ? MLR_DKIM_RSA_SHA256 : MLR_DKIM_ED25519_SHA256),
           "%s: algorithm taken from the key", label);
    sha("x\r\n", 3, bh);
    mlr_buf_init(&out, mlr_default_alloc());
    rc = mlr_dkim_sign(d, head, sizeof head - 1, bh, &out, err, sizeof err);
    TAP_OK(rc == MLR_OK, "%s: signed (%s)", label, rc ? err : "");
    TAP_OK(out.len == mlr_dkim_header_len(d, head, sizeof head - 1),
           "%s: predicted length %zu = actual %zu", label, mlr_dkim_header_len(d, head, sizeof head - 1),
           out.len);
    {
        /* lines shorter than 78, one field, expected tags */
        size_t i, col = 0, maxcol = 0;
        for (i = 0; i < out.len; i++) {
            if (out.data[i] == '\r')
                col = 0;
            else if (out.data[i] != '\n' && ++col > maxcol)
                maxcol = col;
        }
        TAP_OK(maxcol < 78, "%s: folded under 78 columns (longest %zu)", label, maxcol);
        TAP_OK(strstr(out.data, "h=date:from:to:subject:from;") != NULL &&
                   strstr(out.data, "t=1700000000;") && strstr(out.data, "d=example.com;") &&
                   strstr(out.data, "s=sel-1;") && !strstr(out.data, "l=") &&
                   strstr(out.data, hc ? "c=relaxed/relaxed;" : "c=simple/relaxed;"),
               "%s: tags (default h= with From oversigned, no l=)", label);
    }
    {
        /* verify b= with OpenSSL over the canonical input built here */
        char canon[4000], sigtxt[1000], *bpos = strstr(out.data, " b=") + 3;
        uint8_t sig[600], dg[32];
        size_t o2 = 0, sl = 0, i;
        const char *lines[] = {"Date: Mon, 1 Jan 2024 00:00:00 +0000", "From: a@example.com",
                               "To: b@example.com", "Subject: hi  there"};
        BIO *bio = BIO_new_mem_buf(pem, -1);
        EVP_PKEY *pk = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
        int ok;
        for (i = 0; i < 4; i++) {
            if (hc) {
                o2 += relax(lines[i], strlen(lines[i]), canon + o2);
            } else {
                memcpy(canon + o2, lines[i], strlen(lines[i]));
                o2 += strlen(lines[i]);
            }
            memcpy(canon + o2, "\r\n", 2);
            o2 += 2;
        }
        if (hc) {
            o2 += relax(out.data, (size_t)(bpos - out.data), canon + o2);
        } else {
            memcpy(canon + o2, out.data, (size_t)(bpos - out.data));
            o2 += (size_t)(bpos - out.data);
        }
        for (i = 0; bpos[i] && bpos[i] != ';'; i++)
            if (bpos[i] != ' ' && bpos[i] != '\r' && bpos[i] != '\n')
                sigtxt[sl++] = bpos[i];
        sigtxt[sl] = '\0';
        sl = (size_t)EVP_DecodeBlock(sig, (unsigned char *)sigtxt, (int)sl);
        sl -= (sigtxt[strlen(sigtxt) - 1] == '=') + (sigtxt[strlen(sigtxt) - 2] == '=');
        sha(canon, o2, dg);
        if (type == EVP_PKEY_RSA) {
            EVP_MD_CTX *mc = EVP_MD_CTX_new();
            ok = EVP_DigestVerifyInit(mc, NULL, EVP_sha256(), NULL, pk) == 1 &&
                 EVP_DigestVerify(mc, sig, sl, (const uint8_t *)canon, o2) == 1;
            EVP_MD_CTX_free(mc);
        } else {
            EVP_MD_CTX *mc = EVP_MD_CTX_new();
            ok = EVP_DigestVerifyInit(mc, NULL, NULL, NULL, pk) == 1 &&
                 EVP_DigestVerify(mc, sig, sl, dg, 32) == 1;
            EVP_MD_CTX_free(mc);
        }
        TAP_OK(ok, "%s (%s headers): b= verifies over the canonical header input", label,
               hc ? "relaxed" : "simple");
        EVP_PKEY_free(pk);
        BIO_free(bio);
    }
    {
        mlr_buf rec;
        mlr_buf_init(&rec, mlr_default_alloc());
        TAP_OK(mlr_dkim_dns_record(d, &rec) == MLR_OK &&
                   !strncmp(rec.data, type == EVP_PKEY_RSA ? "v=DKIM1; k=rsa; p=MII" : "v=DKIM1; k=ed25519; p=",
                            type == EVP_PKEY_RSA ? 21 : 22) &&
                   (type == EVP_PKEY_RSA || rec.len == 22 + 44),
               "%s: DNS record %.40s...", label, rec.data ? rec.data : "");
        mlr_buf_free(&rec);
    }
    mlr_buf_free(&out);
    mlr_dkim_free(d);
    free(pem);
}

static void errors(void)
{
    char *rsa = make_key(EVP_PKEY_RSA, 2048), *ed = make_key(EVP_PKEY_ED25519, 0),
         *small = make_key(EVP_PKEY_RSA, 768);
    static const char *const hs[] = {"to", "subject"};
    static const char *const bad[] = {"from", "x y"};
    struct {
        const char *label, *domain, *selector, *key;
        int alg;
        const char *const *h;
        size_t nh;
        const char *want;
    } cases[] = {
        {"bad domain", "exa mple.com", "s", rsa, 0, NULL, 0, "domain"},
        {"non-ASCII domain", "b\xc3\xbc" "cher.de", "s", rsa, 0, NULL, 0, "domain"},
        {"bad selector", "example.com", "s;x", rsa, 0, NULL, 0, "selector"},
        {"garbage key", "example.com", "s", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", 0, NULL, 0, "key"},
        {"missing key file", "example.com", "s", "/nonexistent/key.pem", 0, NULL, 0, "cannot open"},
        {"rsa alg, ed key", "example.com", "s", ed, MLR_DKIM_RSA_SHA256, NULL, 0, "RSA key"},
        {"ed alg, rsa key", "example.com", "s", rsa, MLR_DKIM_ED25519_SHA256, NULL, 0, "Ed25519"},
        {"small RSA key", "example.com", "s", small, 0, NULL, 0, "1024"},
        {"headers without From", "example.com", "s", rsa, 0, hs, 2, "From"},
        {"bad header name", "example.com", "s", rsa, 0, bad, 2, "headers[2]"},
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mlr_dkim_opts o;
        char err[200] = "";
        int rc = 0;
        mlr_dkim *d;
        memset(&o, 0, sizeof o);
        o.domain = cases[i].domain;
        o.selector = cases[i].selector;
        o.key = cases[i].key;
        o.key_len = strlen(cases[i].key);
        o.algorithm = cases[i].alg;
        o.headers = cases[i].h;
        o.nheaders = cases[i].nh;
        o.time = -1;
        d = mlr_dkim_new(mlr_default_alloc(), &o, &rc, err, sizeof err);
        TAP_OK(!d && rc == MLR_ERR_INPUT && strstr(err, cases[i].want), "refused: %s (%s)",
               cases[i].label, err);
        mlr_dkim_free(d);
    }
    free(rsa);
    free(ed);
    free(small);
}

int main(void)
{
    bodies();
    headers();
    sign_case(EVP_PKEY_RSA, MLR_DKIM_RELAXED);
    sign_case(EVP_PKEY_RSA, MLR_DKIM_SIMPLE);
    sign_case(EVP_PKEY_ED25519, MLR_DKIM_RELAXED);
    sign_case(EVP_PKEY_ED25519, MLR_DKIM_SIMPLE);
    errors();
    return tap_done();
}
