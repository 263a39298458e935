/* mime_message.h - the message model and its streaming renderer.
 *
 * A message is built once (headers validated and encoded, structure fixed,
 * boundaries and Message-ID chosen) and can then be rendered any number of
 * times; every rendering produces the same bytes, except that a callback
 * source can only be read once. Rendering is pull-based: mlr_render_next
 * hands out the next piece of the message, and memory stays bounded by the
 * renderer's block size whatever the attachment sizes. */
#ifndef MIME_MESSAGE_H
#define MIME_MESSAGE_H

#include "mlr_common.h"

typedef struct mlr_msg mlr_msg;
typedef struct mlr_render mlr_render;

/* A producer of attachment bytes (the binding wraps a Lua function).
 * Returns 1 with (*p, *n) set (valid until the next call), 0 at the end,
 * or a negative mlr_err after writing a message into errbuf. */
typedef int (*mlr_source_fn)(void *ud, const uint8_t **p, size_t *n,
                             char *errbuf, size_t errlen);

/* One address: display name (UTF-8, may be empty) and addr-spec. */
typedef struct mlr_mailbox {
    const char *name;
    size_t name_len;
    const char *addr;
    size_t addr_len;
} mlr_mailbox;

/* Error detail of a failed builder call. */
typedef struct mlr_msg_error {
    char message[256];
    char field[64];
} mlr_msg_error;

mlr_msg *mlr_msg_new(const mlr_alloc *a);
void mlr_msg_free(mlr_msg *m);

/* Header setters: each validates (CR, LF, NUL, UTF-8, lengths), encodes
 * (RFC 2047) and folds. field names the Lua field for error reports.
 * Return MLR_OK, MLR_ERR_INPUT (detail in m's error) or MLR_ERR_NOMEM. */
int mlr_msg_add_mailboxes(mlr_msg *m, const char *header, const mlr_mailbox *list,
                          size_t n, const char *field);
int mlr_msg_add_text(mlr_msg *m, const char *header, const char *value, size_t len,
                     const char *field);
/* ... see mime_message.c for the full builder API. */

/* The error detail of the last failed call. */
const mlr_msg_error *mlr_msg_last_error(const mlr_msg *m);

/* Envelope: the sender's addr-spec and the deduplicated recipients
 * (to + cc + bcc, in order). Pointers stay valid while m lives. */
const char *mlr_msg_env_from(const mlr_msg *m);
size_t mlr_msg_env_count(const mlr_msg *m);
const char *mlr_msg_env_rcpt(const mlr_msg *m, size_t i);
/* True when an envelope address has non-ASCII octets (needs SMTPUTF8). */
int mlr_msg_needs_smtputf8(const mlr_msg *m);
/* Exact rendered size in octets when every source has a known size, else 0. */
uint64_t mlr_msg_size(const mlr_msg *m);

/* Start a rendering; NULL on allocation failure. */
mlr_render *mlr_render_new(const mlr_msg *m);
/* Next piece: 1 with (*p, *n) set (valid until the next call), 0 at the
 * end, negative mlr_err on failure (text from mlr_render_error). */
int mlr_render_next(mlr_render *r, const uint8_t **p, size_t *n);
const char *mlr_render_error(const mlr_render *r);
void mlr_render_free(mlr_render *r);

#endif
