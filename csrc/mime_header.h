/* mime_header.h - header field encoding: UTF-8 checks, RFC 2047 encoded
 * words, folding under 78 columns, RFC 2231 parameters.
 *
 * Every function appends a complete field ("Name: value\r\n", folded) to a
 * buffer. Input is checked first: CR, LF and NUL anywhere are refused (a
 * header can never gain a line), and text must be valid UTF-8. Lengths come
 * from the caller, never from strlen, so an embedded NUL cannot hide what
 * follows it. */
#ifndef MIME_HEADER_H
#define MIME_HEADER_H

#include "mlr_common.h"

/* Folded lines stay at or under this many columns (CRLF excluded) unless a
 * single unbreakable ASCII word is longer. */
#define MLR_FOLD_COLS 76
/* Hard limit of RFC 5322: 998 octets per line, CRLF excluded. */
#define MLR_LINE_MAX 998

/* 1 when [s, s+n) is valid UTF-8 (no overlongs, surrogates, > U+10FFFF). */
int mlr_utf8_valid(const char *s, size_t n);
/* 1 when [s, s+n) is pure ASCII. */
int mlr_is_ascii(const char *s, size_t n);

/* Check a header name: printable ASCII 33..126 without ':'; 0 or
 * MLR_ERR_INPUT with a reason in err. */
int mlr_hdr_check_name(const char *name, size_t n, char *err, size_t errlen);
/* Check a value for CR, LF, NUL and invalid UTF-8. */
int mlr_hdr_check_value(const char *v, size_t n, char *err, size_t errlen);

/* Folding writer: appends tokens, breaking before whitespace when a line
 * would pass MLR_FOLD_COLS. */
typedef struct mlr_fold {
    mlr_buf *b;
    size_t col;     /* columns used on the current line */
    int line_has_token;
} mlr_fold;

/* Start a field "name:" in b. */
int mlr_fold_start(mlr_fold *f, mlr_buf *b, const char *name, size_t n);
/* Append ws (may be empty: no break possible there) and then tok. */
int mlr_fold_add(mlr_fold *f, const char *ws, size_t wslen, const char *tok, size_t toklen);
/* Append encoded words for UTF-8 text [s, s+n) (B or Q, whichever is
 * shorter; never splitting a character; each word at most 75 chars),
 * the first one preceded by ws. */
int mlr_fold_words(mlr_fold *f, const char *ws, size_t wslen, const char *s, size_t n);
/* Finish the field with CRLF. */
int mlr_fold_end(mlr_fold *f);

/* Append "Name: value" for an unstructured value (Subject, custom
 * headers): ASCII stays as is and is folded at its whitespace; text with
 * non-ASCII, control characters or "=?" becomes encoded words. */
int mlr_hdr_unstructured(mlr_buf *b, const char *name, size_t nlen, const char *v, size_t n,
                         char *err, size_t errlen);

/* Append a display name as a phrase: atoms as is, else a quoted string
 * (with '"' and '\' escaped), or encoded words when non-ASCII. */
int mlr_fold_phrase(mlr_fold *f, const char *ws, size_t wslen, const char *s, size_t n);

/* Append ";" name="value" parameters for a file name: a quoted ASCII
 * value when it is short and printable, else RFC 2231 continuations
 * (attr*0*=utf-8''...). With ew_fallback, non-ASCII values are written as
 * a quoted string of RFC 2047 words instead (the "name=" fallback). */
int mlr_fold_param(mlr_fold *f, const char *attr, const char *v, size_t n, int ew_fallback);

/* Append " type/subtype; attribute=value..." for a Content-Type value given
 * by the caller: parsed (RFC 2045 tokens, values as tokens or quoted
 * strings, white space around ';' and '=') and written back with each
 * value a token where it can be one, else a quoted string with '"' and '\'
 * escaped. Refused with MLR_ERR_INPUT (reason in err, starting with
 * "content_type"): anything else, non-ASCII or control characters, a
 * repeated attribute, RFC 2231 attributes (with '*'), name= (the file name
 * is a field of its own) and multipart types. With f NULL it only checks. */
int mlr_fold_ctype(mlr_fold *f, const char *s, size_t n, char *err, size_t errlen);

#endif
