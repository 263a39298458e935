/* codec_qp.h - incremental quoted-printable encoder (RFC 2045 section 6.7)
 * for text. Line breaks in the input (CRLF, bare CR, bare LF) become CRLF
 * hard breaks; output lines are at most 76 characters including the '=' of
 * a soft break; space and tab before a hard break or at the end are
 * encoded; '=' and bytes outside 33..126 are encoded. A '.' or "From " at
 * the start of an output line is encoded too, so the result survives
 * dot-stuffing and mbox handling unchanged. State carries across calls:
 * every split of the input gives the same output. */
#ifndef CODEC_QP_H
#define CODEC_QP_H

#include <stddef.h>
#include <stdint.h>

/* Private state; zeroed by mlr_qp_init. */
typedef struct mlr_qp {
    unsigned col;        /* characters on the current output line */
    int pending_cr;      /* last input byte was CR (maybe half of CRLF) */
    uint8_t head[5];     /* input bytes not yet decided (lookahead of <= 4) */
    unsigned nhead;
} mlr_qp;

void mlr_qp_init(mlr_qp *s);

/* Largest output mlr_qp_encode can write for n input bytes (n up to
 * SIZE_MAX / 4). out must have this much room: bytes past the returned
 * count may be used as scratch (wide stores), never past the bound. */
size_t mlr_qp_bound(size_t n);

/* Encode n bytes; returns the count written to out. */
size_t mlr_qp_encode(mlr_qp *s, const uint8_t *in, size_t n, uint8_t *out);

/* Flush held state; writes at most MLR_QP_FINISH_MAX bytes. No CRLF is
 * added: a text without a final line break gets none. */
#define MLR_QP_FINISH_MAX 32
size_t mlr_qp_finish(mlr_qp *s, uint8_t *out);

/* Exact size of encode + finish of a whole input, without keeping it. */
uint64_t mlr_qp_encoded_size(const uint8_t *in, size_t n);

/* Implementations of the encoder's block loop (levels), for tests and
 * benchmarks; the encoder otherwise uses the best one the CPU has. Every
 * level gives the same output. */
#define MLR_QP_PORTABLE 0    /* 8-byte words, the only one off x86-64 */
#define MLR_QP_SSE2 1
#define MLR_QP_AVX512VBMI2 2

/* Highest level this build and CPU can run. */
int mlr_qp_max_level(void);

/* Make every encoder use level (lowered to mlr_qp_max_level) from now
 * on, or the best one again with -1; returns the level now in use. Not
 * thread-safe: for tests and benchmarks only. */
int mlr_qp_force_level(int level);

#endif
