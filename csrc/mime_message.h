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

#include "dkim.h"
#include "mlr_common.h"

typedef struct mlr_msg mlr_msg;
typedef struct mlr_render mlr_render;

/* A producer of attachment bytes called by the renderer (C callers).
 * Returns 1 with (*p, *n) set (valid until the next call), 0 at the end,
 * or a negative mlr_err after writing a message into errbuf. The Lua
 * binding uses push sources instead (mlr_src.push): the renderer never
 * calls into Lua, it returns MLR_RENDER_NEED and the caller supplies. */
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
/* From now on, attachment data and text/html strings given to the builder
 * stay valid (unchanged) as long as the message: they are used in place,
 * not copied (a text is copied only when its line ends need CRLF). */
void mlr_msg_borrow_strings(mlr_msg *m, int on);

/* Address roles, in the order their headers are written. */
enum { MLR_ROLE_FROM, MLR_ROLE_SENDER, MLR_ROLE_REPLY_TO, MLR_ROLE_TO, MLR_ROLE_CC,
       MLR_ROLE_BCC, MLR_ROLE_COUNT };

/* Where a part's bytes come from. */
typedef struct mlr_src {
    const char *data;   /* memory (copied by the message) */
    size_t len;
    const char *path;   /* a file, streamed at render time */
    mlr_source_fn fn;   /* a producer, read once */
    void *ud;
    int push;           /* a push source: bytes come through mlr_render_supply */
    unsigned push_id;   /* the caller's number for it (mlr_render_need) */
    int64_t size;       /* producer's announced size, or -1; a producer that
                           yields a different number of octets fails the
                           rendering with MLR_ERR_INPUT */
} mlr_src;

/* Builder calls. Each returns MLR_OK, MLR_ERR_INPUT (detail from
 * mlr_msg_last_error, field set from the field argument) or MLR_ERR_NOMEM.
 * Strings are (pointer, length) pairs: NUL bytes are data, not ends. */

/* Add an address to a role. With name == NULL, s is a mailbox string
 * ("Name <a@b>" or "a@b"); else s is a bare addr-spec and name the
 * display name. A non-ASCII domain is stored as its A-label when the
 * local part is ASCII (mlr_addr_idna); an invalid one is MLR_ERR_INPUT. */
int mlr_msg_add_address(mlr_msg *m, int role, const char *s, size_t n, const char *name,
                        size_t name_len, const char *field);
int mlr_msg_set_subject(mlr_msg *m, const char *s, size_t n);
/* Date as a time stamp, or as a ready RFC 5322 string. */
int mlr_msg_set_date_time(mlr_msg *m, int64_t t);
int mlr_msg_set_date_string(mlr_msg *m, const char *s, size_t n);
/* Message-ID with or without its angle brackets. */
int mlr_msg_set_message_id(mlr_msg *m, const char *s, size_t n);
/* A custom header; structural and field-backed names are refused. */
int mlr_msg_add_header(mlr_msg *m, const char *name, size_t nlen, const char *v, size_t vlen,
                       const char *field);
/* The text and html bodies (UTF-8). */
int mlr_msg_set_text(mlr_msg *m, const char *s, size_t n);
int mlr_msg_set_html(mlr_msg *m, const char *s, size_t n);
/* The text (html 0) or html body streamed from a file (src->path: a first
 * pass checks that it is UTF-8 and measures its quoted-printable size) or
 * a push source (sent as is, unchecked; its encoded size is unknown);
 * always quoted-printable, line ends made CRLF by the encoder. */
int mlr_msg_set_body_src(mlr_msg *m, int html, const mlr_src *src);
/* An attachment (cid == NULL) or an inline part (cid set). content_type
 * must be given ("type/subtype"); filename may be NULL. */
int mlr_msg_add_part(mlr_msg *m, const mlr_src *src, const char *content_type,
                     const char *filename, size_t filename_len, const char *cid,
                     size_t cid_len, const char *field);
/* Make the message the file at path, sent as is (a message rendered
 * earlier, e.g. by a queue): no headers are made, the addresses given
 * (one from, any to/cc/bcc) are only the envelope, and 8-bit octets in
 * the file ask for BODY=8BITMIME. Instead of any body or part. */
int mlr_msg_set_raw(mlr_msg *m, const char *path, const char *field);
/* The message needs BODY=8BITMIME (SMTPUTF8 headers, or a raw file with
 * 8-bit octets). */
int mlr_msg_needs_8bit(const mlr_msg *m);

/* Fix the structure, boundaries, Date and Message-ID; required before
 * rendering. */
int mlr_msg_finish(mlr_msg *m);

/* The rendered value of a top-level header (unfolded), or NULL; the
 * result is written into out (NUL-terminated) and its length returned
 * through *len. */
const char *mlr_msg_header(const mlr_msg *m, const char *name, size_t nlen, mlr_buf *out);

/* The error detail of the last failed call. */
const mlr_msg_error *mlr_msg_last_error(const mlr_msg *m);

/* Envelope: the sender's addr-spec and the deduplicated recipients
 * (to + cc + bcc, in order). Pointers stay valid while m lives. */
const char *mlr_msg_env_from(const mlr_msg *m);
size_t mlr_msg_env_count(const mlr_msg *m);
const char *mlr_msg_env_rcpt(const mlr_msg *m, size_t i);
/* True when an address of any role has a non-ASCII local part: the
 * message needs SMTPUTF8. (International domains never do: they are kept
 * as A-labels when the local part is ASCII, see mlr_addr_idna.) */
int mlr_msg_needs_smtputf8(const mlr_msg *m);
/* The Message-ID field's value ("<...>"), NULL for a raw message. */
const char *mlr_msg_message_id(const mlr_msg *m);
/* Exact rendered size in octets when every source has a known size, else 0
 * (the DKIM-Signature field included when the message is signed). */
uint64_t mlr_msg_size(const mlr_msg *m);

/* Sign every rendering with d (before mlr_msg_finish; the message takes
 * d over, also on failure): MLR_OK or MLR_ERR_STATE. A signed rendering
 * starts with the DKIM-Signature field; its first mlr_render_next runs a
 * hashing pass over the body first (files and memory are read twice; a
 * producer source is copied to an unlinked temporary file in $TMPDIR or
 * /tmp during that pass and read back from there, so it can be rendered
 * again). Memory stays bounded either way. */
int mlr_msg_set_dkim(mlr_msg *m, mlr_dkim *d);
/* The size when signed with d instead (d NULL: the message's own signer). */
uint64_t mlr_msg_size_dkim(const mlr_msg *m, const mlr_dkim *d);

/* Start a rendering; NULL on allocation failure. */
mlr_render *mlr_render_new(mlr_msg *m);
/* A rendering signed with d (borrowed; must outlive the rendering) instead
 * of the message's own signer; d NULL: as mlr_render_new. */
mlr_render *mlr_render_new_dkim(mlr_msg *m, const mlr_dkim *d);
/* Next piece: 1 with (*p, *n) set (valid until the next call), 0 at the
 * end, negative mlr_err on failure (text from mlr_render_error; failures
 * are sticky), or:
 *   MLR_RENDER_NEED  a push source must be supplied first: mlr_render_need
 *                    names it, mlr_render_supply hands its bytes in;
 *   MLR_RENDER_BUSY  (stepped renderings only) a bounded piece of work was
 *                    done (a slice of the DKIM hashing pass); call again.
 * A rendering that is not stepped runs the hashing pass in one call. */
#define MLR_RENDER_NEED 2
#define MLR_RENDER_BUSY 3
int mlr_render_next(mlr_render *r, const uint8_t **p, size_t *n);
/* The push_id of the source a MLR_RENDER_NEED waits for, or -1. */
long mlr_render_need(const mlr_render *r);
/* Hand in the next bytes of the source mlr_render_need named: n > 0 bytes
 * (borrowed until mlr_render_next next returns MLR_RENDER_NEED, 0 or an
 * error), n == 0 with end set for its end; n == 0 without end is an empty
 * read and changes nothing. Returns MLR_OK, MLR_ERR_STATE when nothing
 * was needed, or MLR_ERR_INPUT (sticky) when the source went past its
 * announced size. */
int mlr_render_supply(mlr_render *r, const uint8_t *p, size_t n, int end);
/* The source failed (raised or returned nil, err): sticky MLR_ERR_IO. */
void mlr_render_supply_error(mlr_render *r, const char *msg);
/* Stepped: the hashing pass of a signed rendering returns MLR_RENDER_BUSY
 * after each bounded slice instead of running to its end in one call. */
void mlr_render_set_stepped(mlr_render *r, int on);
const char *mlr_render_error(const mlr_render *r);
/* Free a rendering; safe after its message was freed (it only frees its own). */
void mlr_render_free(mlr_render *r);
/* Put a rendering at rest: its file is closed and its signing state
 * dropped, its buffers kept; safe after its message was freed. */
void mlr_render_rest(mlr_render *r);
/* Start a rendering at rest (or NULL) over m signed with d (as
 * mlr_render_new_dkim), reusing its buffers when its allocator is m's;
 * returns the rendering (r itself or a new one, r then freed), or NULL
 * on allocation failure (r freed). Many messages, one block of memory. */
mlr_render *mlr_render_reuse(mlr_render *r, mlr_msg *m, const mlr_dkim *d);

#endif
