/* codec_dotstuff.h - incremental CRLF normaliser and SMTP dot-stuffer
 * (RFC 5321 sections 2.3.8, 4.1.1.4 and 4.5.2).
 *
 * Every bare CR and every bare LF becomes CRLF, a '.' at the start of any
 * line (the first one included) is doubled, and the end-of-data marker is
 * written only by mlr_dot_finish. The state carries across calls, so any
 * split of the input gives the same output. A NUL octet is refused (it
 * never goes into DATA); so is a line longer than max_line when set.
 * Started with mlr_dot_init_plain it only normalises (BDAT chunks carry
 * the octets as they are: no stuffing, no end marker). */
#ifndef CODEC_DOTSTUFF_H
#define CODEC_DOTSTUFF_H

#include <stddef.h>
#include <stdint.h>

typedef struct mlr_dot {
    size_t col;        /* octets on the current output line, CRLF excluded */
    size_t max_line;   /* 0 = no limit; else the longest line allowed */
    int cr;            /* the input ended in a CR whose LF may still come */
    int err;           /* sticky: 0, or a negative mlr_err */
    int stuff;         /* double a leading '.' (DATA); 0 for BDAT */
} mlr_dot;

/* Start a stuffer; max_line 0 for no line-length check (998 per RFC). */
void mlr_dot_init(mlr_dot *s, size_t max_line);
/* The same normaliser without dot-stuffing (for BDAT). */
void mlr_dot_init_plain(mlr_dot *s, size_t max_line);

/* Length of the leading run of p[0..n) holding no CR, LF or NUL (eight
 * octets at a time). */
size_t mlr_plain_run(const uint8_t *p, size_t n);

/* Largest output of one mlr_dot_encode call on n octets (n < SIZE_MAX/2). */
#define MLR_DOT_BOUND(n) (2 * (n) + 2)

/* Encode n octets into out (room for MLR_DOT_BOUND(n)); returns
 * MLR_OK with *outlen set, or MLR_ERR_INPUT for a NUL octet or an
 * overlong line (sticky; *outlen is then the count written before it). */
int mlr_dot_encode(mlr_dot *s, const uint8_t *in, size_t n, uint8_t *out,
                   size_t *outlen);

/* Finish: a CRLF when the last line is unterminated, then ".\r\n". Writes
 * at most MLR_DOT_FINISH_MAX octets and returns the count; the state is
 * ready for a new message. */
#define MLR_DOT_FINISH_MAX 5
size_t mlr_dot_finish(mlr_dot *s, uint8_t *out);

/* End the last line: a CRLF when it is unterminated (at most 2 octets,
 * the count returned), no end marker; the state is ready for more. */
size_t mlr_dot_end_line(mlr_dot *s, uint8_t *out);

#endif
