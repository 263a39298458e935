/* auth.c - SASL mechanisms for SMTP AUTH. See auth.h. */
#include "auth.h"

#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

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

/* Strongest first: the order used when the caller names no mechanism.
 * SCRAM-SHA-256 will go first once implemented (a row here). */
static const mech_ops mech_table[] = {
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
