/* auth.h - SASL mechanisms for SMTP AUTH (RFC 4954): SCRAM-SHA-256
 * (RFC 7677 / RFC 5802, without channel binding), PLAIN (RFC 4616), LOGIN,
 * CRAM-MD5 (RFC 2195), XOAUTH2 and OAUTHBEARER (RFC 7628).
 *
 * The mechanisms work on raw octets; the engine does the base64 and the
 * line handling. A mechanism is one row of a table (name, credential it
 * needs, initial response, challenge step). SCRAM keeps per-exchange
 * state in the mlr_sasl (free it with mlr_sasl_clear) and must see the
 * server's signature before a 235 counts (mlr_sasl_complete).
 * Part of the C core: no lua.h. */
#ifndef AUTH_H
#define AUTH_H

#include "mlr_common.h"
#include "smtp_reply.h"   /* MLR_MECH_* */

/* Credentials and per-exchange state. The strings are borrowed. */
typedef struct mlr_sasl {
    unsigned mech;          /* one MLR_MECH_* bit */
    int step;               /* challenges answered so far */
    const char *user;
    size_t user_len;
    const char *secret;     /* password, or OAuth token for the OAuth mechanisms */
    size_t secret_len;
    const char *host;       /* server name and port, for OAUTHBEARER */
    unsigned port;
    /* SCRAM-SHA-256 */
    const char *nonce;      /* tests only: a fixed client nonce; NULL = random */
    mlr_buf scram;          /* client-first-bare, then the AuthMessage */
    uint8_t server_sig[32]; /* the ServerSignature the server must send */
    int verified;           /* it did: the server knows the password */
    char errmsg[160];       /* why the last step failed, or "" */
} mlr_sasl;

/* Wipe and free the exchange state (safe on a zeroed struct, and twice). */
void mlr_sasl_clear(mlr_sasl *s);

/* May a 2xx reply end the exchange? 0 while SCRAM has not verified the
 * server's signature, else 1. */
int mlr_sasl_complete(const mlr_sasl *s);

/* SASLprep (RFC 4013) as far as implemented: UTF-8 checked, non-ASCII
 * spaces mapped to SPACE, "mapped to nothing" characters removed,
 * prohibited characters (controls, private use, non-characters,
 * surrogates, tagging, bidi formatting) refused. Not done: NFKC
 * normalization, the bidi rule and the unassigned-code-point check (input
 * is passed through as it is). Appends to out (NULL: only check);
 * MLR_OK, MLR_ERR_INPUT, MLR_ERR_NOMEM. */
int mlr_saslprep(const char *in, size_t n, mlr_buf *out);

/* Does the mechanism use an OAuth token (1) or a password (0)? */
int mlr_sasl_uses_token(unsigned mech);

/* Pick a mechanism: the first of pref[0..npref) that the server offers
 * (or, when npref is 0, the strongest offered that fits the credential
 * kind); returns its MLR_MECH_* bit or 0 when none fits. */
unsigned mlr_sasl_choose(unsigned offered, const unsigned *pref, size_t npref,
                         int have_password, int have_token);

/* Check credentials for octets the mechanisms cannot carry: MLR_OK, or
 * MLR_ERR_INPUT (NUL, a control octet in a token, or for SCRAM what
 * SASLprep refuses). */
int mlr_sasl_check(const mlr_sasl *s);

/* The initial response (raw octets) into out: returns 1 when the
 * mechanism has one, 0 when it starts with an empty AUTH, MLR_ERR_NOMEM. */
int mlr_sasl_initial(mlr_sasl *s, mlr_buf *out);

/* Answer a decoded 334 challenge into out: MLR_OK, MLR_ERR_AUTH when the
 * mechanism has no answer left or the challenge is wrong (s->errmsg may
 * say why; the exchange must be cancelled with "*"), MLR_ERR_NOMEM. */
int mlr_sasl_step(mlr_sasl *s, const uint8_t *challenge, size_t n, mlr_buf *out);

/* Append the base64 (unwrapped) of in[0..n) to out: MLR_OK or MLR_ERR_NOMEM. */
int mlr_sasl_b64_append(mlr_buf *out, const uint8_t *in, size_t n);
/* Strict base64 decode of in[0..n) into out (room for 3*n/4+3 octets);
 * returns the decoded length or -1 when in is not valid base64. */
long mlr_sasl_b64_decode(const char *in, size_t n, uint8_t *out);

#endif
