/* test_scram.c - SCRAM-SHA-256: the RFC 7677 section 3 test vector through
 * the mechanism, SASLprep, refusals of bad server messages, and the engine
 * against a server played here (it reads the client's nonce and answers
 * with a correct, a wrong or no server signature). */
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth.h"
#include "smtp_engine.h"
#include "tap.h"

#define CNONCE "rOprNGfwEbeRWgbNEkqO"
#define SFIRST "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
#define CFINAL "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
#define SFINAL "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

static void sasl_setup(mlr_sasl *s, const char *user, const char *pw)
{
    memset(s, 0, sizeof *s);
    s->mech = MLR_MECH_SCRAM_SHA_256;
    s->user = user;
    s->user_len = strlen(user);
    s->secret = pw;
    s->secret_len = strlen(pw);
    s->nonce = CNONCE;
}

static int eq(const mlr_buf *b, const char *want)
{
    return b->len == strlen(want) && !memcmp(b->data, want, b->len);
}

static void rfc7677(void)
{
    mlr_sasl s;
    mlr_buf out;
    int rc;
    mlr_buf_init(&out, mlr_default_alloc());
    sasl_setup(&s, "user", "pencil");
    TAP_OK(mlr_sasl_choose(MLR_MECH_PLAIN | MLR_MECH_LOGIN | MLR_MECH_CRAM_MD5 |
                               MLR_MECH_SCRAM_SHA_256, NULL, 0, 1, 0) == MLR_MECH_SCRAM_SHA_256,
           "SCRAM-SHA-256 is chosen over CRAM-MD5, PLAIN and LOGIN when offered");
    rc = mlr_sasl_initial(&s, &out);
    TAP_OK(rc == 1 && eq(&out, "n,,n=user,r=" CNONCE), "RFC 7677: client-first");
    mlr_buf_reset(&out);
    rc = mlr_sasl_step(&s, (const uint8_t *)SFIRST, strlen(SFIRST), &out);
    TAP_OK(rc == MLR_OK && eq(&out, CFINAL), "RFC 7677: client-final with the proof (%.*s)",
           (int)out.len, out.data ? out.data : "");
    TAP_OK(!mlr_sasl_complete(&s), "not complete before the server signature");
    mlr_buf_reset(&out);
    rc = mlr_sasl_step(&s, (const uint8_t *)SFINAL, strlen(SFINAL), &out);
    TAP_OK(rc == MLR_OK && out.len == 0 && mlr_sasl_complete(&s),
           "RFC 7677: the server signature verifies; empty response");
    mlr_sasl_clear(&s);
    mlr_sasl_clear(&s);

    /* the same exchange with a wrong server signature */
    sasl_setup(&s, "user", "pencil");
    mlr_buf_reset(&out);
    mlr_sasl_initial(&s, &out);
    mlr_buf_reset(&out);
    mlr_sasl_step(&s, (const uint8_t *)SFIRST, strlen(SFIRST), &out);
    mlr_buf_reset(&out);
    rc = mlr_sasl_step(&s, (const uint8_t *)"v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", 46, &out);
    TAP_OK(rc == MLR_ERR_AUTH && !mlr_sasl_complete(&s) && strstr(s.errmsg, "signature is wrong"),
           "a wrong server signature is refused (%s)", s.errmsg);
    mlr_sasl_clear(&s);

    /* a wrong password gives a different proof */
    sasl_setup(&s, "user", "pencil2");
    mlr_buf_reset(&out);
    mlr_sasl_initial(&s, &out);
    mlr_buf_reset(&out);
    mlr_sasl_step(&s, (const uint8_t *)SFIRST, strlen(SFIRST), &out);
    TAP_OK(!eq(&out, CFINAL), "another password, another proof");
    mlr_sasl_clear(&s);
    mlr_buf_free(&out);
}

static void bad_server_first(void)
{
    static const struct {
        const char *msg, *why;
    } cases[] = {
        {"r=otherNonce123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce"},
        {"r=" CNONCE ",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce"},   /* not extended */
        {"r=" CNONCE "xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1", "iteration"},
        {"r=" CNONCE "xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=999999999", "iteration"},
        {"r=" CNONCE "xyz,s=!!!!,i=4096", "salt"},
        {"r=" CNONCE "xyz,i=4096", "malformed"},
        {"m=ext,r=" CNONCE "xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "extension"},
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mlr_sasl s;
        mlr_buf out;
        int rc;
        mlr_buf_init(&out, mlr_default_alloc());
        sasl_setup(&s, "user", "pencil");
        mlr_sasl_initial(&s, &out);
        mlr_buf_reset(&out);
        rc = mlr_sasl_step(&s, (const uint8_t *)cases[i].msg, strlen(cases[i].msg), &out);
        TAP_OK(rc == MLR_ERR_AUTH && strstr(s.errmsg, cases[i].why), "server-first refused: %s (%s)",
               cases[i].msg, s.errmsg);
        mlr_sasl_clear(&s);
        mlr_buf_free(&out);
    }
    {
        mlr_sasl s;
        mlr_buf out;
        mlr_buf_init(&out, mlr_default_alloc());
        sasl_setup(&s, "user", "pencil");
        mlr_sasl_initial(&s, &out);
        mlr_buf_reset(&out);
        mlr_sasl_step(&s, (const uint8_t *)SFIRST, strlen(SFIRST), &out);
        mlr_buf_reset(&out);
        TAP_OK(mlr_sasl_step(&s, (const uint8_t *)"e=invalid-proof", 15, &out) == MLR_ERR_AUTH &&
                   strstr(s.errmsg, "invalid-proof"),
               "server-final e= is a refusal (%s)", s.errmsg);
        mlr_sasl_clear(&s);
        mlr_buf_free(&out);
    }
}

static void saslprep(void)
{
    static const struct {
        const char *in, *out;
    } ok[] = {
        {"pencil", "pencil"},
        {"I\xc2\xadX", "IX"},                 /* soft hyphen mapped to nothing */
        {"a\xc2\xa0" "b", "a b"},             /* no-break space -> space */
        {"\xc3\xbc" "ber", "\xc3\xbc" "ber"}, /* other letters pass */
        {"user,=x", "user,=x"},               /* escaping is the saslname's job */
    };
    static const char *const bad[] = {"a\x07" "b", "\xc2\x85", "\xef\xbf\xbe", "\xee\x80\x80",
                                      "\xff", "\xc0\xaf", "\xe2\x80\x8e"};
    size_t i;
    for (i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        mlr_buf b;
        mlr_buf_init(&b, mlr_default_alloc());
        TAP_OK(mlr_saslprep(ok[i].in, strlen(ok[i].in), &b) == MLR_OK &&
                   b.len == strlen(ok[i].out) && !memcmp(b.data ? b.data : "", ok[i].out, b.len),
               "SASLprep case %zu", i + 1);
        mlr_buf_free(&b);
    }
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
        TAP_OK(mlr_saslprep(bad[i], strlen(bad[i]), NULL) == MLR_ERR_INPUT,
               "SASLprep refuses case %zu", i + 1);
    {
        mlr_sasl s;
        mlr_buf out;
        mlr_buf_init(&out, mlr_default_alloc());
        sasl_setup(&s, "a,b=c", "pencil");
        mlr_sasl_initial(&s, &out);
        TAP_OK(eq(&out, "n,,n=a=2Cb=3Dc,r=" CNONCE), "user name escaped as a saslname");
        mlr_sasl_clear(&s);
        mlr_buf_free(&out);
    }
}

/* ---- the engine against a SCRAM server played here ---- */

enum { GOOD_SIG, WRONG_SIG, NO_SIG, WRONG_SIG_THEN_235 };

/* Pending client bytes as a string (consumed). */
static size_t take(mlr_smtp *e, char *buf, size_t cap)
{
    const uint8_t *p;
    size_t n = mlr_smtp_pending(e, &p), k = n < cap - 1 ? n : cap - 1;
    memcpy(buf, p ? (const char *)p : "", k);
    buf[k] = '\0';
    mlr_smtp_consume(e, n);
    return k;
}

static void feed(mlr_smtp *e, const char *s) { mlr_smtp_feed(e, (const uint8_t *)s, strlen(s)); }

static void b64(const void *in, size_t n, char *out) { EVP_EncodeBlock((unsigned char *)out, in, (int)n); }

static void hmac(const uint8_t *k, size_t kl, const char *m, size_t n, uint8_t out[32])
{
    unsigned int l;
    HMAC(EVP_sha256(), k, (int)kl, (const unsigned char *)m, n, out, &l);
}

static void engine_case(int mode, const char *label)
{
    mlr_smtp_opts o;
    mlr_smtp *e;
    char buf[1024], dec[600], sfirst[700], line[1100], bare[600], am[2100];
    uint8_t salt[16] = "0123456789abcdef", sp[32], sk[32], sig[32];
    int err;
    long n;
    const mlr_smtp_status *st;
    memset(&o, 0, sizeof o);
    o.helo = "c";
    o.security = MLR_SEC_TLS;
    o.username = "user";
    o.username_len = 4;
    o.password = "pencil";
    o.password_len = 6;
    e = mlr_smtp_new(mlr_default_alloc(), &o, &err, buf, sizeof buf);
    feed(e, "220 mx\r\n");
    take(e, buf, sizeof buf);
    feed(e, "250-mx\r\n250 AUTH PLAIN LOGIN SCRAM-SHA-256\r\n");
    take(e, buf, sizeof buf);
    TAP_OK(!strncmp(buf, "AUTH SCRAM-SHA-256 ", 19), "%s: AUTH SCRAM-SHA-256 with an initial response", label);
    n = mlr_sasl_b64_decode(buf + 19, strlen(buf) - 21, (uint8_t *)dec);
    dec[n > 0 ? n : 0] = '\0';
    TAP_OK(n > 0 && !strncmp(dec, "n,,n=user,r=", 12) && strlen(dec) == 12 + 32,
           "%s: client-first with a 32-character nonce", label);
    snprintf(bare, sizeof bare, "%s", dec + 3);
    {
        char s64[40];
        b64(salt, 16, s64);
        snprintf(sfirst, sizeof sfirst, "r=%sSERVERPART,s=%s,i=4096", dec + 12, s64);
    }
    b64(sfirst, strlen(sfirst), dec);
    snprintf(line, sizeof line, "334 %s\r\n", dec);
    feed(e, line);
    take(e, buf, sizeof buf);
    n = mlr_sasl_b64_decode(buf, strlen(buf) - 2, (uint8_t *)dec);
    dec[n > 0 ? n : 0] = '\0';
    TAP_OK(n > 0 && !strncmp(dec, "c=biws,r=", 9) && strstr(dec, "SERVERPART,p="),
           "%s: client-final", label);
    /* the server's side: check the proof and make the signature */
    {
        char *p = strstr(dec, ",p=");
        uint8_t ck[32], stored[32], csig[32], proof[40];
        unsigned int l;
        size_t i;
        int ok = 1;
        *p = '\0';
        PKCS5_PBKDF2_HMAC("pencil", 6, salt, 16, 4096, EVP_sha256(), 32, sp);
        hmac(sp, 32, "Client Key", 10, ck);
        EVP_Digest(ck, 32, stored, &l, EVP_sha256(), NULL);
        snprintf(am, sizeof am, "%s,%s,%s", bare, sfirst, dec);
        hmac(stored, 32, am, strlen(am), csig);
        mlr_sasl_b64_decode(p + 3, strlen(p + 3), proof);
        for (i = 0; i < 32; i++)
            ok &= (proof[i] ^ csig[i]) == ck[i];
        TAP_OK(ok, "%s: the proof is right for the password", label);
        hmac(sp, 32, "Server Key", 10, sk);
        hmac(sk, 32, am, strlen(am), sig);
        if (mode != GOOD_SIG)
            sig[0] ^= 1;
    }
    if (mode == NO_SIG) {
        feed(e, "235 2.7.0 ok\r\n");
        st = mlr_smtp_status_get(e);
        TAP_OK(st->err == MLR_ERR_AUTH && !mlr_smtp_ready(e) && strstr(st->message, "without proving"),
               "%s: 235 without a server signature is an auth error (%s)", label, st->message);
        take(e, buf, sizeof buf);
        TAP_OK(!strcmp(buf, "QUIT\r\n"), "%s: then only QUIT", label);
        mlr_smtp_free(e);
        return;
    }
    {
        char v[80];
        b64(sig, 32, v + 2);
        v[0] = 'v';
        v[1] = '=';
        b64(v, strlen(v), dec);
        snprintf(line, sizeof line, "334 %s\r\n", dec);
        feed(e, line);
    }
    take(e, buf, sizeof buf);
    if (mode == GOOD_SIG) {
        TAP_OK(!strcmp(buf, "\r\n"), "%s: empty response after the server signature", label);
        feed(e, "235 2.7.0 ok\r\n");
        TAP_OK(mlr_smtp_ready(e) && mlr_smtp_auth_mech(e) == MLR_MECH_SCRAM_SHA_256,
               "%s: authenticated", label);
    } else {
        TAP_OK(!strcmp(buf, "*\r\n"), "%s: the exchange is cancelled", label);
        feed(e, mode == WRONG_SIG_THEN_235 ? "235 2.7.0 welcome anyway\r\n" : "501 5.7.0 cancelled\r\n");
        st = mlr_smtp_status_get(e);
        TAP_OK(st->err == MLR_ERR_AUTH && !mlr_smtp_ready(e) && strstr(st->message, "signature is wrong"),
               "%s: auth error (%s)", label, st->message);
    }
    mlr_smtp_free(e);
}

int main(void)
{
    rfc7677();
    bad_server_first();
    saslprep();
    engine_case(GOOD_SIG, "engine, right signature");
    engine_case(WRONG_SIG, "engine, wrong signature");
    engine_case(WRONG_SIG_THEN_235, "engine, wrong signature, server says 235");
    engine_case(NO_SIG, "engine, no signature, server says 235");
    return tap_done();
}
