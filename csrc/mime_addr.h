/* mime_addr.h - mailbox parsing and validation.
 *
 * Accepts "Name <local@domain>", "\"Quoted, Name\" <local@domain>" and a
 * bare "local@domain"; validates the addr-spec against RFC 5321 (dot-string
 * or quoted local part of at most 64 octets, a domain of at most 255, a
 * path of at most 256). Anything ambiguous - unbalanced quotes or angle
 * brackets, comments, groups, two addresses, specials in an unquoted name -
 * is refused rather than guessed. One linear pass, no recursion. */
#ifndef MIME_ADDR_H
#define MIME_ADDR_H

#include "mlr_common.h"

#define MLR_LOCAL_MAX 64
#define MLR_DOMAIN_MAX 255
#define MLR_ADDR_MAX 254 /* a path is at most 256 octets with its < > */

/* Validate an addr-spec; sets *utf8 when it has non-ASCII octets. A quoted
 * local part may hold only what a dot-string may (plus dots anywhere), so
 * that no server can read SMTP parameters in it; a non-ASCII domain label
 * is checked for length by mlr_addr_idna. MLR_OK or MLR_ERR_INPUT with a
 * reason in err. */
int mlr_addr_check(const char *s, size_t n, int *utf8, char *err, size_t errlen);

/* Append the addr-spec s[0..n) (valid by mlr_addr_check, or "") to out in
 * the form the wire and the headers use. A non-ASCII domain is processed
 * by UTS #46 (non-transitional, libidn2) and, when the local part is
 * ASCII, written as its A-label ("xn--..."), so that the address needs no
 * SMTPUTF8; with a non-ASCII local part the address is kept as given (it
 * needs SMTPUTF8 anyway), its domain only checked. *utf8_local is set when
 * the local part has non-ASCII octets. MLR_OK, MLR_ERR_INPUT (an invalid
 * international domain name: a disallowed code point, a label over 63
 * octets once encoded, bidi or joiner rules; reason in err) or
 * MLR_ERR_NOMEM. */
int mlr_addr_idna(const char *s, size_t n, mlr_buf *out, int *utf8_local, char *err,
                  size_t errlen);

/* Parse one mailbox string. On success *name (unquoted display name, may be
 * empty) and *addr point into freshly allocated NUL-terminated copies the
 * caller frees with mlr_free(a, p, len + 1). */
int mlr_addr_parse(const mlr_alloc *a, const char *s, size_t n, char **name, size_t *name_len,
                   char **addr, size_t *addr_len, char *err, size_t errlen);

#endif
