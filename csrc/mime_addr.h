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

/* Validate an addr-spec; sets *utf8 when it has non-ASCII octets (needs
 * SMTPUTF8). MLR_OK or MLR_ERR_INPUT with a reason in err. */
int mlr_addr_check(const char *s, size_t n, int *utf8, char *err, size_t errlen);

/* Parse one mailbox string. On success *name (unquoted display name, may be
 * empty) and *addr point into freshly allocated NUL-terminated copies the
 * caller frees with mlr_free(a, p, len + 1). */
int mlr_addr_parse(const mlr_alloc *a, const char *s, size_t n, char **name, size_t *name_len,
                   char **addr, size_t *addr_len, char *err, size_t errlen);

#endif
