/* fuzz_util.h - helpers shared by the libFuzzer targets: a checking
 * allocator, an input reader, invariant checks, and small reference
 * decoders (base64, quoted-printable, RFC 2047 words, RFC 2231 values)
 * written independently of the library so that round trips mean
 * something. */
#ifndef FUZZ_UTIL_H
#define FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "mlr_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Abort with a message (libFuzzer then saves the input as a crash). */
void fz_die(const char *file, int line, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((noreturn, format(printf, 3, 4)))
#endif
    ;
#define FZ_ASSERT(cond)                                                     \
    do {                                                                    \
        if (!(cond))                                                        \
            fz_die(__FILE__, __LINE__, "%s", #cond);                        \
    } while (0)
#define FZ_ASSERTF(cond, ...)                                               \
    do {                                                                    \
        if (!(cond))                                                        \
            fz_die(__FILE__, __LINE__, __VA_ARGS__);                        \
    } while (0)

/* A checking allocator: every block carries its size, and a free or
 * realloc with the wrong osize aborts (the binding hands the core Lua's
 * allocator, which may rely on osize). Optionally fails the fail_at-th
 * allocation (1-based; 0 = never). */
typedef struct fz_heap {
    size_t live;        /* blocks allocated and not freed */
    size_t bytes;       /* their total size */
    size_t nallocs;     /* allocations and growing reallocs so far */
    size_t fail_at;
    int failed;         /* an allocation was refused */
    mlr_alloc alloc;
} fz_heap;

void fz_heap_init(fz_heap *h, size_t fail_at);
/* Abort when something is still allocated. */
void fz_heap_check_empty(const fz_heap *h);

/* Input reader over the fuzzer's bytes; reads past the end give zeros. */
typedef struct fz_in {
    const uint8_t *p;
    size_t n;
} fz_in;

uint8_t fz_u8(fz_in *in);
uint16_t fz_u16(fz_in *in);
/* Take up to max bytes, the count given by the next byte (or two bytes
 * when max > 255). */
size_t fz_take(fz_in *in, size_t max, const uint8_t **out);
/* Take everything that is left. */
size_t fz_rest(fz_in *in, const uint8_t **out);

/* Offset of the first bare CR or bare LF, or -1. */
long fz_bare_crlf(const uint8_t *s, size_t n);
/* Longest line (CRLF-terminated lines; CRLF excluded). */
size_t fz_max_line(const uint8_t *s, size_t n);
/* Offset of needle in s, or -1. */
long fz_find(const uint8_t *s, size_t n, const void *needle, size_t nn);

/* Growable byte string for the decoders (malloc-based). */
typedef struct fz_str {
    uint8_t *p;
    size_t n, cap;
} fz_str;
void fz_str_add(fz_str *s, const void *p, size_t n);
void fz_str_free(fz_str *s);

/* Strict base64: 4-char groups, '=' only as final padding, CR LF ignored;
 * appends to out; 0 or -1. */
int fz_b64_decode(const uint8_t *s, size_t n, fz_str *out);
/* Quoted-printable as the encoder writes it: "=XX" upper-case hex, soft
 * breaks "=\r\n", hard breaks CRLF kept; 0 or -1 on anything else
 * (including bytes outside 33..126 but space and tab). */
int fz_qp_decode(const uint8_t *s, size_t n, fz_str *out);
/* One RFC 2047 encoded word "=?utf-8?q?...?=" or "?b?"; phrase: the Q
 * text must use only the characters RFC 2047 5(3) allows in a phrase.
 * 0 or -1. */
int fz_ew_decode(const uint8_t *w, size_t n, int phrase, fz_str *out);
/* Is [w, w+n) an encoded word (syntactically)? */
int fz_is_ew(const uint8_t *w, size_t n);
/* Decode an unstructured header value (already unfolded): encoded words
 * decoded, white space between two adjacent encoded words dropped. */
int fz_unstructured_decode(const uint8_t *s, size_t n, fz_str *out);
/* Unfold a header field: drop every CRLF that is followed by SP or HT. */
void fz_unfold(const uint8_t *s, size_t n, fz_str *out);

#endif
