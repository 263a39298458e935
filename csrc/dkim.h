/* dkim.h - DKIM signing (RFC 6376) with rsa-sha256 and ed25519-sha256
 * (RFC 8463), streaming.
 *
 * Three pieces: a signer (key, domain, selector, algorithm,
 * canonicalization, signed header names), an incremental body
 * canonicalizer that hashes the body as it goes past in chunks of any
 * split, and the signature header built from a finished header block and
 * the body hash. The header's length depends only on the signer and the
 * header block (never on the hash values), so a message's exact size is
 * known before anything is hashed. l= is never used: the whole body is
 * always signed. Part of the C core: no lua.h.
 *
 * Errors are negative mlr_err values: MLR_ERR_INPUT (bad key, domain,
 * selector, header list; message in the caller's buffer), MLR_ERR_NOMEM,
 * MLR_ERR_TLS never (OpenSSL failures while signing are MLR_ERR_INPUT
 * with OpenSSL's reason). */
#ifndef DKIM_H
#define DKIM_H

#include "mlr_common.h"

enum { MLR_DKIM_RSA_SHA256 = 1, MLR_DKIM_ED25519_SHA256 = 2 };
enum { MLR_DKIM_SIMPLE = 0, MLR_DKIM_RELAXED = 1 };

#define MLR_DKIM_MAX_HEADERS 64

typedef struct mlr_dkim mlr_dkim;

typedef struct mlr_dkim_opts {
    const char *domain;          /* d= (ASCII domain) */
    const char *selector;        /* s= */
    const char *key;             /* PEM text ("-----BEGIN ...") or a file path */
    size_t key_len;
    int algorithm;               /* 0: from the key's type */
    int header_canon, body_canon;   /* MLR_DKIM_SIMPLE / MLR_DKIM_RELAXED */
    const char *const *headers;  /* names to sign; NULL: the RFC 6376 5.4.1 set */
    size_t nheaders;
    int64_t time;                /* t=; negative: now */
} mlr_dkim_opts;

/* Make a signer. Returns NULL with *rc = MLR_ERR_INPUT (reason in err) or
 * MLR_ERR_NOMEM. The key is checked here: its type must fit the algorithm,
 * RSA keys need at least 1024 bits. */
mlr_dkim *mlr_dkim_new(const mlr_alloc *a, const mlr_dkim_opts *o, int *rc, char *err,
                       size_t errlen);
void mlr_dkim_free(mlr_dkim *d);
int mlr_dkim_algorithm(const mlr_dkim *d);
/* The body canonicalization (MLR_DKIM_SIMPLE / MLR_DKIM_RELAXED). */
int mlr_dkim_body_canon(const mlr_dkim *d);

/* Incremental body canonicalizer + SHA-256. Lines end at CRLF only (a lone
 * CR or LF is an ordinary octet); trailing empty lines are held back until
 * more content proves they are not trailing, so state crosses chunks. */
typedef struct mlr_dkim_body {
    void *md;             /* EVP_MD_CTX */
    int relaxed;
    int cr;               /* the last octet was a CR (its LF may come next) */
    int wsp;              /* relaxed: white space held back inside the line */
    int content;          /* the current line has content */
    int any;              /* something was hashed */
    uint64_t empty;       /* empty lines held back */
    uint64_t hashed;      /* octets hashed (for tests) */
} mlr_dkim_body;

/* MLR_OK or MLR_ERR_NOMEM. */
int mlr_dkim_body_init(mlr_dkim_body *b, int canon);
int mlr_dkim_body_update(mlr_dkim_body *b, const uint8_t *p, size_t n);
/* The SHA-256 of the canonical body; frees the hash state. */
int mlr_dkim_body_final(mlr_dkim_body *b, uint8_t out[32]);
/* Free without finishing (safe on a zeroed or finished struct). */
void mlr_dkim_body_free(mlr_dkim_body *b);

/* Canonicalize one header field (name ":" value, folded lines included,
 * without its final CRLF) into out, followed by CRLF. */
int mlr_dkim_canon_header(int canon, const char *field, size_t n, mlr_buf *out);

/* The DKIM-Signature field (with its CRLF) for a header block head[0..n)
 * (the fields only, each ending in CRLF, without the empty line) and the
 * body hash bh: appended to out. MLR_OK, MLR_ERR_INPUT (err says why),
 * MLR_ERR_NOMEM. */
int mlr_dkim_sign(const mlr_dkim *d, const char *head, size_t n, const uint8_t bh[32],
                  mlr_buf *out, char *err, size_t errlen);
/* The length mlr_dkim_sign's field will have for this header block. */
size_t mlr_dkim_header_len(const mlr_dkim *d, const char *head, size_t n);

/* The DNS TXT record text for the signer's public key
 * ("v=DKIM1; k=rsa; p=..."), appended to out. */
int mlr_dkim_dns_record(const mlr_dkim *d, mlr_buf *out);

#endif
