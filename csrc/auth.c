/* auth.c - SASL mechanisms for SMTP AUTH. See auth.h. */
#include "auth.h"

#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#define SCRAM_MIN_ITER 4096       /* RFC 7677 section 4: at least 4096 */
#define SCRAM_MAX_ITER 10000000   /* a hostile server must not stall us */

typedef struct mech_ops {
    unsigned bit;
    int token;      /* needs an OAuth token rather than a password */
    int (*initial)(mlr_sasl *s, mlr_buf *out);         /* 1, 0 or error */
    int (*step)(mlr_sasl *s, const uint8_t *ch, size_t n, mlr_buf *out);
} mech_ops;

/* PLAIN: authzid (empty) NUL authcid NUL password. */
static int plain_initial(mlr_sasl *s, mlr_buf *out)
{
    if (mlr_buf_addc(out, '\0') || mlr_buf_add(out, s->user, s->user_len) ||
        mlr_buf_addc(out, '\0') || mlr_buf_add(out, s->secret, s->secret_len))
        return MLR_ERR_NOMEM;
    return 1;
}

/* PLAIN after its initial response: a further challenge has no answer. */
static int plain_step(mlr_sasl *s, const uint8_t *ch, size_t n, mlr_buf *out)
{
    (void)s;
    (void)ch;
    (void)n;
    (void)out;
    return MLR_ERR_AUTH;
}

static int no_initial(mlr_sasl *s, mlr_buf *out)
{
    (void)s;
    (void)out;
    return 0;
}

/* LOGIN: the user name, then the password; nothing after that. */
static int login_step(mlr_sasl *s, const uint8_t *ch, size_t n, mlr_buf *out)
{
    (void)ch;
    (void)n;
    if (s->step == 0)
        return mlr_buf_add(out, s->user, s->user_len) ? MLR_ERR_NOMEM : MLR_OK;
    if (s->step == 1)
        return mlr_buf_add(out, s->secret, s->secret_len) ? MLR_ERR_NOMEM : MLR_OK;
    return MLR_ERR_AUTH;
}

/* CRAM-MD5: "user hex(HMAC-MD5(password, challenge))". */
static int cram_step(mlr_sasl *s, const uint8_t *ch, size_t n, mlr_buf *out)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0, i;
    char h[2 * EVP_MAX_MD_SIZE];
    if (s->step > 0 || n == 0 || s->secret_len > INT32_MAX)
        return MLR_ERR_AUTH;
    if (!HMAC(EVP_md5(), s->secret, (int)s->secret_len, ch, n, mac, &maclen))
        return MLR_ERR_AUTH;
    for (i = 0; i < maclen; i++) {
        h[2 * i] = hex[mac[i] >> 4];
        h[2 * i + 1] = hex[mac[i] & 15];
    }
    if (mlr_buf_add(out, s->user, s->user_len) || mlr_buf_addc(out, ' ') ||
        mlr_buf_add(out, h, 2 * (size_t)maclen))
        return MLR_ERR_NOMEM;
    return MLR_OK;
}

/* XOAUTH2: "user=U^Aauth=Bearer T^A^A". */
static int xoauth2_initial(mlr_sasl *s, mlr_buf *out)
{
    if (mlr_buf_addstr(out, "user=") || mlr_buf_add(out, s->user, s->user_len) ||
        mlr_buf_addstr(out, "\001auth=Bearer ") ||
        mlr_buf_add(out, s->secret, s->secret_len) || mlr_buf_addstr(out, "\001\001"))
        return MLR_ERR_NOMEM;
    return 1;
}

/* XOAUTH2 / OAUTHBEARER after the initial response: a 334 carries a JSON
 * error, answered once with an empty (XOAUTH2) or ^A (OAUTHBEARER) response
 * so that the server sends its final failure reply. (When the initial
 * response was too long for the AUTH line, the engine itself sends it after
 * the first 334; the mechanism only sees the challenges after that.) */
static int oauth_step(mlr_sasl *s, const uint8_t *ch, size_t n, mlr_buf *out)
{
    (void)ch;
    (void)n;
    if (s->step > 0)
        return MLR_ERR_AUTH;
    if (s->mech == MLR_MECH_OAUTHBEARER)
        return mlr_buf_addc(out, '\001') ? MLR_ERR_NOMEM : MLR_OK;
    return MLR_OK;  /* XOAUTH2: an empty response */
}

/* Append the gs2 authzid, escaping ',' and '=' (RFC 5801). */
static int add_saslname(mlr_buf *out, const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        int rc = s[i] == ',' ? mlr_buf_addstr(out, "=2C")
                 : s[i] == '=' ? mlr_buf_addstr(out, "=3D")
                               : mlr_buf_addc(out, s[i]);
        if (rc)
            return rc;
    }
    return MLR_OK;
}

/* OAUTHBEARER: "n,a=U,^Ahost=H^Aport=P^Aauth=Bearer T^A^A". */
static int oauthbearer_initial(mlr_sasl *s, mlr_buf *out)
{
    char port[16];
    snprintf(port, sizeof port, "%u", s->port);
    if (mlr_buf_addstr(out, "n,a=") || add_saslname(out, s->user, s->user_len) ||
        mlr_buf_addstr(out, ",\001"))
        return MLR_ERR_NOMEM;
    if (s->host && s->host[0] &&
        (mlr_buf_addstr(out, "host=") || mlr_buf_addstr(out, s->host) ||
         mlr_buf_addc(out, '\001')))
        return MLR_ERR_NOMEM;
    if (s->port && (mlr_buf_addstr(out, "port=") || mlr_buf_addstr(out, port) ||
                    mlr_buf_addc(out, '\001')))
        return MLR_ERR_NOMEM;
    if (mlr_buf_addstr(out, "auth=Bearer ") || mlr_buf_add(out, s->secret, s->secret_len) ||
        mlr_buf_addstr(out, "\001\001"))
        return MLR_ERR_NOMEM;
    return 1;
}

/* ---- SASLprep (RFC 4013, partly: see auth.h) ---- */

/* Decode one UTF-8 sequence at s[0..n): the code point, or -1 when invalid
 * (overlong, surrogate, beyond U+10FFFF, truncated). *len gets its size. */
static long utf8_next(const unsigned char *s, size_t n, size_t *len)
{
    long c;
    size_t k, need;
    if (s[0] < 0x80) {
        *len = 1;
        return s[0];
    }
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        need = 1;
        c = s[0] & 0x1f;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        need = 2;
        c = s[0] & 0x0f;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        need = 3;
        c = s[0] & 0x07;
    } else {
        return -1;
    }
    if (n < need + 1)
        return -1;
    for (k = 1; k <= need; k++) {
        if ((s[k] & 0xc0) != 0x80)
            return -1;
        c = (c << 6) | (s[k] & 0x3f);
    }
    if ((need == 2 && c < 0x800) || (need == 3 && c < 0x10000) || c > 0x10ffff ||
        (c >= 0xd800 && c <= 0xdfff))
        return -1;
    *len = need + 1;
    return c;
}

/* RFC 3454 B.1: commonly mapped to nothing. */
static int mapped_to_nothing(long c)
{
    return c == 0xad || c == 0x34f || c == 0x1806 || (c >= 0x180b && c <= 0x180d) ||
           (c >= 0x200b && c <= 0x200d) || c == 0x2060 || (c >= 0xfe00 && c <= 0xfe0f) ||
           c == 0xfeff;
}

/* RFC 3454 C.1.2: non-ASCII space characters. */
static int non_ascii_space(long c)
{
    return c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200b) || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

/* RFC 4013 section 2.3 prohibited output: C.2.1 - C.9. */
static int prohibited(long c)
{
    return c < 0x20 || c == 0x7f || (c >= 0x80 && c <= 0x9f) ||                 /* C.2 */
           c == 0x6dd || c == 0x70f || c == 0x180e || c == 0x200c || c == 0x200d ||
           c == 0x2028 || c == 0x2029 || (c >= 0x2060 && c <= 0x2063) ||
           (c >= 0x206a && c <= 0x206f) || c == 0xfeff || (c >= 0xfff9 && c <= 0xfffd) ||
           (c >= 0x1d173 && c <= 0x1d17a) ||
           (c >= 0xe000 && c <= 0xf8ff) || c >= 0xf0000 ||                        /* C.3 */
           (c >= 0xfdd0 && c <= 0xfdef) || (c & 0xfffe) == 0xfffe ||              /* C.4 */
           (c >= 0x2ff0 && c <= 0x2ffb) ||                                        /* C.7 */
           c == 0x340 || c == 0x341 || c == 0x200e || c == 0x200f ||              /* C.8 */
           (c >= 0x202a && c <= 0x202e) ||
           c == 0xe0001 || (c >= 0xe0020 && c <= 0xe007f);                        /* C.9 */
}

int mlr_saslprep(const char *in, size_t n, mlr_buf *out)
{
    const unsigned char *s = (const unsigned char *)in;
    size_t i = 0, len;
    while (i < n) {
        long c = utf8_next(s + i, n - i, &len);
        if (c < 0)
            return MLR_ERR_INPUT;
        if (!mapped_to_nothing(c)) {
            if (non_ascii_space(c)) {
                if (out && mlr_buf_addc(out, ' '))
                    return MLR_ERR_NOMEM;
            } else if (prohibited(c)) {
                return MLR_ERR_INPUT;
            } else if (out && mlr_buf_add(out, in + i, len)) {
                return MLR_ERR_NOMEM;
            }
        }
        i += len;
    }
    return MLR_OK;
}

/* ---- SCRAM-SHA-256 (RFC 5802, RFC 7677), no channel binding ("n,,") ---- */

void mlr_sasl_clear(mlr_sasl *s)
{
    if (s->scram.data) {
        OPENSSL_cleanse(s->scram.data, s->scram.cap);
        mlr_buf_free(&s->scram);
    }
    OPENSSL_cleanse(s->server_sig, sizeof s->server_sig);
    s->verified = 0;
}

int mlr_sasl_complete(const mlr_sasl *s)
{
    return s->mech != MLR_MECH_SCRAM_SHA_256 || s->verified;
}

/* HMAC-SHA-256 of msg under key into out (32 octets). */
static int hmac256(const uint8_t *key, size_t klen, const void *msg, size_t n, uint8_t out[32])
{
    unsigned int len = 0;
    return HMAC(EVP_sha256(), key, (int)klen, msg, n, out, &len) && len == 32;
}

/* Client-first: "n,,n=<user>,r=<nonce>"; the bare part is kept. */
static int scram_initial(mlr_sasl *s, mlr_buf *out)
{
    uint8_t rnd[24];
    char nonce[40];
    mlr_buf user;
    int rc;
    mlr_sasl_clear(s);
    s->errmsg[0] = '\0';
    mlr_buf_init(&s->scram, out->a);
    mlr_buf_init(&user, out->a);
    if (s->nonce) {
        snprintf(nonce, sizeof nonce, "%.32s", s->nonce);
    } else {
        if (RAND_bytes(rnd, sizeof rnd) != 1)
            return MLR_ERR_NOMEM;
        EVP_EncodeBlock((unsigned char *)nonce, rnd, sizeof rnd);   /* 32 chars, no ',' */
    }
    rc = mlr_saslprep(s->user, s->user_len, &user);
    if (rc == MLR_OK)
        rc = mlr_buf_addstr(&s->scram, "n=");
    if (rc == MLR_OK)
        rc = add_saslname(&s->scram, user.data ? user.data : "", user.len);
    mlr_buf_free(&user);
    if (rc == MLR_OK)
        rc = mlr_buf_addstr(&s->scram, ",r=");
    if (rc == MLR_OK)
        rc = mlr_buf_addstr(&s->scram, nonce);
    if (rc == MLR_OK)
        rc = mlr_buf_addstr(out, "n,,");
    if (rc == MLR_OK)
        rc = mlr_buf_add(out, s->scram.data, s->scram.len);
    if (rc)
        return rc == MLR_ERR_INPUT ? MLR_ERR_INPUT : MLR_ERR_NOMEM;
    return 1;
}

/* The value of attribute a ("r", "s", ...) in a comma-separated message:
 * pointer and length, or NULL. */
static const char *scram_attr(const char *m, size_t n, char a, size_t *len)
{
    size_t i = 0;
    while (i + 1 < n) {
        size_t j = i;
        while (j < n && m[j] != ',')
            j++;
        if (m[i] == a && m[i + 1] == '=') {
            *len = j - i - 2;
            return m + i + 2;
        }
        i = j + 1;
    }
    return NULL;
}

/* Server-first -> client-final; remembers the expected ServerSignature. */
static int scram_client_final(mlr_sasl *s, const uint8_t *ch, size_t n, mlr_buf *out)
{
    const char *m = (const char *)ch, *r, *salt64, *it;
    size_t rl = 0, sl = 0, il = 0, i, nonce_len;   /* set by scram_attr when found */
    uint8_t salt[256], sp[32], ck[32], sk[32], stored[32], csig[32], proof[32];
    unsigned int dl = 0;
    unsigned long iter = 0;
    mlr_buf pw;
    long saltlen;
    int rc = MLR_ERR_AUTH;
    const char *cnonce = memchr(s->scram.data, ',', s->scram.len);
    cnonce = cnonce ? cnonce + 3 : "";   /* after ",r=" in the bare client-first */
    nonce_len = s->scram.len - (size_t)(cnonce - s->scram.data);
    if (memchr(m, '\0', n) || (n >= 2 && m[0] == 'm' && m[1] == '=')) {
        snprintf(s->errmsg, sizeof s->errmsg, "the server sent a SCRAM extension we do not support");
        return MLR_ERR_AUTH;
    }
    r = scram_attr(m, n, 'r', &rl);
    salt64 = scram_attr(m, n, 's', &sl);
    it = scram_attr(m, n, 'i', &il);
    if (!r || !salt64 || !it || rl <= nonce_len || memcmp(r, cnonce, nonce_len) ||
        sl == 0 || sl > 340 || il == 0 || il > 9) {
        snprintf(s->errmsg, sizeof s->errmsg,
                 "malformed SCRAM server-first message (or its nonce does not extend ours)");
        return MLR_ERR_AUTH;
    }
    for (i = 0; i < rl; i++)
        if ((unsigned char)r[i] < 0x21 || (unsigned char)r[i] > 0x7e) {
            snprintf(s->errmsg, sizeof s->errmsg, "invalid SCRAM server nonce");
            return MLR_ERR_AUTH;
        }
    for (i = 0; i < il; i++) {
        if (it[i] < '0' || it[i] > '9') {
            iter = 0;
            break;
        }
        iter = iter * 10 + (unsigned long)(it[i] - '0');
    }
    if (iter < SCRAM_MIN_ITER || iter > SCRAM_MAX_ITER) {
        snprintf(s->errmsg, sizeof s->errmsg,
                 "SCRAM iteration count %.*s refused (accepted: %d to %d)", (int)il, it,
                 SCRAM_MIN_ITER, SCRAM_MAX_ITER); /* it is not NUL-terminated */
        return MLR_ERR_AUTH;
    }
    saltlen = mlr_sasl_b64_decode(salt64, sl, salt);
    if (saltlen <= 0) {
        snprintf(s->errmsg, sizeof s->errmsg, "invalid SCRAM salt");
        return MLR_ERR_AUTH;
    }
    mlr_buf_init(&pw, s->scram.a);
    if ((rc = mlr_saslprep(s->secret, s->secret_len, &pw)) != MLR_OK) {
        mlr_buf_free(&pw);
        return rc == MLR_ERR_INPUT ? MLR_ERR_AUTH : rc;
    }
    rc = MLR_ERR_NOMEM;
    if (PKCS5_PBKDF2_HMAC(pw.data ? pw.data : "", (int)pw.len, salt, (int)saltlen, (int)iter,
                          EVP_sha256(), 32, sp) != 1)
        goto done;
    if (!hmac256(sp, 32, "Client Key", 10, ck) || !hmac256(sp, 32, "Server Key", 10, sk) ||
        EVP_Digest(ck, 32, stored, &dl, EVP_sha256(), NULL) != 1)
        goto done;
    /* AuthMessage = client-first-bare "," server-first "," client-final-without-proof */
    if (mlr_buf_addc(&s->scram, ',') || mlr_buf_add(&s->scram, m, n) ||
        mlr_buf_addstr(&s->scram, ",c=biws,r=") || mlr_buf_add(&s->scram, r, rl))
        goto done;
    if (!hmac256(stored, 32, s->scram.data, s->scram.len, csig) ||
        !hmac256(sk, 32, s->scram.data, s->scram.len, s->server_sig))
        goto done;
    for (i = 0; i < 32; i++)
        proof[i] = ck[i] ^ csig[i];
    if (mlr_buf_addstr(out, "c=biws,r=") || mlr_buf_add(out, r, rl) ||
        mlr_buf_addstr(out, ",p=") || mlr_sasl_b64_append(out, proof, 32))
        goto done;
    rc = MLR_OK;
done:
    OPENSSL_cleanse(sp, sizeof sp);
    OPENSSL_cleanse(ck, sizeof ck);
    OPENSSL_cleanse(sk, sizeof sk);
    OPENSSL_cleanse(stored, sizeof stored);
    OPENSSL_cleanse(proof, sizeof proof);
    if (pw.data)
        OPENSSL_cleanse(pw.data, pw.cap);
    mlr_buf_free(&pw);
    return rc;
}

/* Server-final: "v=<ServerSignature>" must match; "e=..." is a refusal. */
static int scram_verify(mlr_sasl *s, const uint8_t *ch, size_t n, mlr_buf *out)
{
    const char *m = (const char *)ch;
    uint8_t sig[48];
    long len;
    (void)out;
    if (n >= 2 && m[0] == 'e' && m[1] == '=') {
        snprintf(s->errmsg, sizeof s->errmsg, "the server refused: %.*s",
                 (int)(n - 2 > 100 ? 100 : n - 2), m + 2);
        return MLR_ERR_AUTH;
    }
    if (n < 2 || m[0] != 'v' || m[1] != '=' || n - 2 > 60 ||
        (len = mlr_sasl_b64_decode(m + 2, n - 2, sig)) != 32 ||
        CRYPTO_memcmp(sig, s->server_sig, 32) != 0) {
        snprintf(s->errmsg, sizeof s->errmsg,
                 "the server's SCRAM signature is wrong: it does not know the password "
                 "(an impostor?)");
        return MLR_ERR_AUTH;
    }
    s->verified = 1;
    return MLR_OK;   /* an empty response; the server then says 235 */
}

static int scram_step(mlr_sasl *s, const uint8_t *ch, size_t n, mlr_buf *out)
{
    if (s->step == 0)
        return scram_client_final(s, ch, n, out);
    if (s->step == 1)
        return scram_verify(s, ch, n, out);
    return MLR_ERR_AUTH;
}

/* Strongest first: the order used when the caller names no mechanism. */
static const mech_ops mech_table[] = {
    {MLR_MECH_SCRAM_SHA_256, 0, scram_initial, scram_step},
    {MLR_MECH_OAUTHBEARER, 1, oauthbearer_initial, oauth_step},
    {MLR_MECH_XOAUTH2, 1, xoauth2_initial, oauth_step},
    {MLR_MECH_CRAM_MD5, 0, no_initial, cram_step},
    {MLR_MECH_PLAIN, 0, plain_initial, plain_step},
    {MLR_MECH_LOGIN, 0, no_initial, login_step},
};

/* The table row of a mechanism, or NULL when it is not implemented. */
static const mech_ops *find(unsigned mech)
{
    size_t i;
    for (i = 0; i < sizeof mech_table / sizeof mech_table[0]; i++)
        if (mech_table[i].bit == mech)
            return &mech_table[i];
    return NULL;
}

int mlr_sasl_uses_token(unsigned mech)
{
    const mech_ops *m = find(mech);
    return m && m->token;
}

unsigned mlr_sasl_choose(unsigned offered, const unsigned *pref, size_t npref,
                         int have_password, int have_token)
{
    size_t i;
    if (npref) {
        for (i = 0; i < npref; i++) {
            const mech_ops *m = find(pref[i]);
            if (m && (offered & m->bit) && (m->token ? have_token : have_password))
                return m->bit;
        }
        return 0;
    }
    for (i = 0; i < sizeof mech_table / sizeof mech_table[0]; i++) {
        const mech_ops *m = &mech_table[i];
        if ((offered & m->bit) && (m->token ? have_token : have_password))
            return m->bit;
    }
    return 0;
}

int mlr_sasl_check(const mlr_sasl *s)
{
    size_t i;
    if (memchr(s->user, '\0', s->user_len) || memchr(s->secret, '\0', s->secret_len))
        return MLR_ERR_INPUT;
    if (mlr_sasl_uses_token(s->mech))
        for (i = 0; i < s->secret_len; i++)
            if ((unsigned char)s->secret[i] < 0x20 || s->secret[i] == 0x7f)
                return MLR_ERR_INPUT;
    if (mlr_sasl_uses_token(s->mech))
        for (i = 0; i < s->user_len; i++)
            if ((unsigned char)s->user[i] < 0x20)
                return MLR_ERR_INPUT;
    if (s->mech == MLR_MECH_SCRAM_SHA_256 &&
        (mlr_saslprep(s->user, s->user_len, NULL) || mlr_saslprep(s->secret, s->secret_len, NULL)))
        return MLR_ERR_INPUT;
    return MLR_OK;
}

int mlr_sasl_initial(mlr_sasl *s, mlr_buf *out)
{
    const mech_ops *m = find(s->mech);
    if (!m)
        return MLR_ERR_AUTH;
    return m->initial(s, out);
}

int mlr_sasl_step(mlr_sasl *s, const uint8_t *challenge, size_t n, mlr_buf *out)
{
    const mech_ops *m = find(s->mech);
    int rc;
    if (!m)
        return MLR_ERR_AUTH;
    rc = m->step(s, challenge, n, out);
    if (rc == MLR_OK)
        s->step++;
    return rc;
}

int mlr_sasl_b64_append(mlr_buf *out, const uint8_t *in, size_t n)
{
    size_t need;
    int rc;
    if (n > (SIZE_MAX / 4) * 3 - 3 || n > INT32_MAX / 2)
        return MLR_ERR_NOMEM;
    need = 4 * ((n + 2) / 3);
    if ((rc = mlr_buf_reserve(out, need + 1)))
        return rc;
    if (n)
        EVP_EncodeBlock((unsigned char *)out->data + out->len, in, (int)n);
    out->len += need;
    out->data[out->len] = '\0';
    return MLR_OK;
}

long mlr_sasl_b64_decode(const char *in, size_t n, uint8_t *out)
{
    size_t i, pad = 0;
    int len;
    if (n % 4 || n > INT32_MAX / 2)
        return -1;
    for (i = 0; i < n; i++) {
        char c = in[i];
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                 (c >= '0' && c <= '9') || c == '+' || c == '/';
        if (c == '=' && i >= n - 2) {
            pad++;
            continue;
        }
        if (!ok || pad)
            return -1;
    }
    if (n == 0)
        return 0;
    len = EVP_DecodeBlock(out, (const unsigned char *)in, (int)n);
    if (len < 0 || (size_t)len < pad)
        return -1;
    return (long)len - (long)pad;
}
