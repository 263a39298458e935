/* smtp_reply.h - SMTP reply parser (RFC 5321 section 4.2) and EHLO
 * capability parser.
 *
 * The parser is incremental: feed it any split of the server's bytes and it
 * stops at the end of each complete reply. Memory is bounded whatever the
 * peer sends: one line buffer of MLR_REPLY_MAX_LINE octets and at most
 * MLR_REPLY_MAX_BYTES of reply text. Part of the C core: no lua.h. */
#ifndef SMTP_REPLY_H
#define SMTP_REPLY_H

#include "mlr_common.h"

#define MLR_REPLY_MAX_LINE 4096    /* octets in one line, CRLF excluded */
#define MLR_REPLY_MAX_LINES 1000   /* lines in one reply */
#define MLR_REPLY_MAX_BYTES 65536  /* octets in one reply, CRLFs included */

/* A complete reply. text holds the text of every line (what follows the
 * code and its separator) joined with '\n', NUL-terminated; it stays valid
 * until the next mlr_reply_parse call. */
typedef struct mlr_reply {
    int code;            /* 200..559 */
    char enhanced[16];   /* RFC 3463 code of the first line ("5.1.1") or "" */
    const char *text;
    size_t text_len;
    size_t nlines;
} mlr_reply;

typedef struct mlr_reply_parser {
    mlr_buf text;                      /* text of the reply being read */
    char line[MLR_REPLY_MAX_LINE + 1]; /* current line, without CR/LF */
    size_t line_len;
    int saw_cr;       /* the last octet was a CR */
    int code;         /* code of the reply being read, 0 before its first line */
    size_t nlines;    /* lines of the reply being read */
    size_t nbytes;    /* octets of the reply being read */
    int done;         /* the previous call returned a complete reply */
    int err;          /* sticky error (0 or negative mlr_err) */
    char errmsg[160];
} mlr_reply_parser;

void mlr_reply_init(mlr_reply_parser *p, const mlr_alloc *a);
void mlr_reply_free(mlr_reply_parser *p);
/* Forget any partial reply and the error (for a fresh start). */
void mlr_reply_reset(mlr_reply_parser *p);

/* Parse from buf[0..len). Stops right after the first complete reply.
 * Returns 1 when a reply is complete (*out filled, *used = octets taken,
 * possibly fewer than len), 0 when every octet was taken and the reply is
 * not complete yet, MLR_ERR_PROTOCOL for a malformed or oversized reply,
 * MLR_ERR_NOMEM. Errors are sticky (p->errmsg says why). */
int mlr_reply_parse(mlr_reply_parser *p, const uint8_t *buf, size_t len,
                    size_t *used, mlr_reply *out);

/* True when octets of an unfinished reply are buffered. */
int mlr_reply_partial(const mlr_reply_parser *p);

/* Extract an RFC 3463 enhanced code ("2.1.5") from the start of s into
 * out (16 octets); returns its length in s (incl. one following space) or 0. */
size_t mlr_reply_enhanced(const char *s, size_t n, char out[16]);

/* ---- EHLO capabilities ---- */

enum {
    MLR_CAP_SIZE = 1u << 0,
    MLR_CAP_PIPELINING = 1u << 1,
    MLR_CAP_8BITMIME = 1u << 2,
    MLR_CAP_SMTPUTF8 = 1u << 3,
    MLR_CAP_DSN = 1u << 4,
    MLR_CAP_ENHANCED = 1u << 5,   /* ENHANCEDSTATUSCODES */
    MLR_CAP_STARTTLS = 1u << 6,
    MLR_CAP_AUTH = 1u << 7,
    MLR_CAP_CHUNKING = 1u << 8
};

/* SASL mechanisms, as bits (see auth.h for their handling). */
enum {
    MLR_MECH_PLAIN = 1u << 0,
    MLR_MECH_LOGIN = 1u << 1,
    MLR_MECH_CRAM_MD5 = 1u << 2,
    MLR_MECH_XOAUTH2 = 1u << 3,
    MLR_MECH_OAUTHBEARER = 1u << 4,
    MLR_MECH_SCRAM_SHA_256 = 1u << 5
};

typedef struct mlr_caps {
    unsigned flags;   /* MLR_CAP_* */
    uint64_t size;    /* SIZE limit, 0 when none was given */
    unsigned mechs;   /* MLR_MECH_* offered (both AUTH and AUTH= forms) */
} mlr_caps;

/* Parse the text of a 250 EHLO reply (lines joined by '\n', the first line
 * being the server's greeting). Linear in len; unknown keywords ignored. */
void mlr_caps_parse(mlr_caps *c, const char *text, size_t len);

/* The MLR_MECH_* bit of a mechanism name (case-insensitive), 0 if unknown. */
unsigned mlr_mech_from_name(const char *name, size_t len);
/* The canonical name of one MLR_MECH_* bit ("PLAIN"), or NULL. */
const char *mlr_mech_name(unsigned mech);

#endif
