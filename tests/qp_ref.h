/* qp_ref.h - the quoted-printable encoder as it was before the run-based
 * fast path (tests/qp_ref.c), kept as the reference that the current
 * encoder must match byte for byte. For tests and fuzz targets only. */
#ifndef QP_REF_H
#define QP_REF_H

#include "codec_qp.h"

void qpref_init(mlr_qp *s);
size_t qpref_bound(size_t n);
size_t qpref_encode(mlr_qp *s, const uint8_t *in, size_t n, uint8_t *out);
size_t qpref_finish(mlr_qp *s, uint8_t *out);
uint64_t qpref_encoded_size(const uint8_t *in, size_t n);

#endif
