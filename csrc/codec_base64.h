/* codec_base64.h - incremental base64 encoder (RFC 2045 section 6.8).
 *
 * The encoder carries up to two input bytes and the output column across
 * calls, so any split of the input gives the same output. With line_len
 * (a multiple of 4, e.g. 76) every output line ends in CRLF, the last one
 * included; with line_len 0 the output is one unbroken line, no CRLF. */
#ifndef CODEC_BASE64_H
#define CODEC_BASE64_H

#include <stddef.h>
#include <stdint.h>

typedef struct mlr_b64 {
    uint8_t carry[2];   /* input bytes not yet forming a 3-byte group */
    unsigned ncarry;    /* 0..2 */
    unsigned col;       /* characters on the current output line */
    unsigned line_len;  /* 0 = no wrapping; else multiple of 4 */
} mlr_b64;

/* Start an encoder; line_len 0 or a positive multiple of 4. */
void mlr_b64_init(mlr_b64 *s, unsigned line_len);

/* Largest output mlr_b64_encode can write for n input bytes (no overflow
 * for n up to SIZE_MAX / 3). */
size_t mlr_b64_bound(size_t n, unsigned line_len);

/* Encode n bytes; writes at most mlr_b64_bound(n) bytes to out and returns
 * the count written. */
size_t mlr_b64_encode(mlr_b64 *s, const uint8_t *in, size_t n, uint8_t *out);

/* Flush the carried bytes (with '=' padding) and the final CRLF when
 * wrapping; writes at most MLR_B64_FINISH_MAX bytes. The state is reset. */
#define MLR_B64_FINISH_MAX 6
size_t mlr_b64_finish(mlr_b64 *s, uint8_t *out);

/* Exact size of the complete encoding of n bytes (encode + finish). */
uint64_t mlr_b64_encoded_size(uint64_t n, unsigned line_len);

/* Encoder implementations (levels), for tests and benchmarks; the
 * encoder otherwise always uses the best one the CPU has. Every level
 * gives the same output. */
#define MLR_B64_SCALAR 0     /* portable C, the only one off x86 */
#define MLR_B64_SSSE3 1
#define MLR_B64_AVX2 2
#define MLR_B64_AVX512VBMI 3

/* Highest level this build and CPU can run. */
int mlr_b64_max_level(void);

/* Make every encoder use level (lowered to mlr_b64_max_level) from now
 * on, or the best one again with -1; returns the level now in use. Not
 * thread-safe: for tests and benchmarks only. */
int mlr_b64_force_level(int level);

/* One-shot decoder for tests and small values: ignores CR/LF, returns the
 * decoded length or -1 on a malformed input. out needs 3*(n/4)+3 bytes. */
long mlr_b64_decode(const char *in, size_t n, uint8_t *out);

#endif
