/* fuzz_qp.c - the incremental quoted-printable encoder.
 *
 * The data is encoded in one call and in seeded pieces (each call into a
 * buffer of exactly mlr_qp_bound bytes, so ASan sees any write past the
 * documented scratch area); both must match and have the announced size.
 * The output must keep RFC 2045's rules (lines of at most 76 characters,
 * only printable ASCII, no white space before a line end, no bare CR or
 * LF) plus ours (no '.' or "From " at a line start), decode with a
 * reference decoder to the input with its line breaks made CRLF, and
 * equal, byte for byte, the output of the previous encoder (kept in
 * tests/qp_ref.c, compiled into this target); so must every level of the
 * block loop the CPU has, whole and in pieces. */
#include <stdlib.h>
#include <string.h>

#include "codec_qp.h"
#include "fuzz_util.h"

#include "../tests/qp_ref.c"

static void encode(const uint8_t *d, size_t n, uint32_t seed, fz_str *out)
{
    mlr_qp s;
    size_t off = 0;
    uint8_t *fin;
    mlr_qp_init(&s);
    while (off < n) {
        size_t piece = n - off, bound, w;
        uint8_t *buf, *own;
        if (seed) {
            seed = seed * 1103515245u + 12345u;
            piece = (seed >> 16) % ((seed & 0x100) ? 6 : 300);
            if (piece > n - off)
                piece = n - off;
        }
        bound = mlr_qp_bound(piece);
        buf = malloc(bound);
        own = malloc(piece ? piece : 1); /* its own block: ASan sees reads past it */
        if (piece)
            memcpy(own, d + off, piece);
        w = mlr_qp_encode(&s, own, piece, buf);
        FZ_ASSERTF(w <= bound, "wrote %zu, bound %zu", w, bound);
        fz_str_add(out, buf, w);
        free(own);
        free(buf);
        off += piece;
    }
    fin = malloc(MLR_QP_FINISH_MAX);
    fz_str_add(out, fin, mlr_qp_finish(&s, fin));
    free(fin);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_str a = {0}, b = {0}, dec = {0}, norm = {0};
    uint32_t seed;
    size_t i, col = 0;
    if (size < 1)
        return 0;
    seed = data[0] | 0x10000u;
    data++;
    size--;
    encode(data, size, 0, &a);
    encode(data, size, seed, &b);
    FZ_ASSERTF(a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0), "split output differs");
    FZ_ASSERT(a.n == mlr_qp_encoded_size(data, size));
    {
        /* the previous encoder, one call; every level of the block loop,
         * whole and in the seeded pieces */
        mlr_qp r;
        uint8_t *old = malloc(qpref_bound(size) + MLR_QP_FINISH_MAX);
        size_t got;
        int level, max = mlr_qp_max_level();
        qpref_init(&r);
        got = qpref_encode(&r, data, size, old);
        got += qpref_finish(&r, old + got);
        FZ_ASSERTF(got == a.n && (got == 0 || memcmp(old, a.p, got) == 0),
                   "output differs from the previous encoder's");
        free(old);
        for (level = 0; level <= max; level++) {
            fz_str c = {0};
            mlr_qp_force_level(level);
            encode(data, size, 0, &c);
            FZ_ASSERTF(c.n == a.n && (c.n == 0 || memcmp(c.p, a.p, c.n) == 0),
                       "level %d output differs", level);
            fz_str_free(&c);
            encode(data, size, seed, &c);
            FZ_ASSERTF(c.n == a.n && (c.n == 0 || memcmp(c.p, a.p, c.n) == 0),
                       "level %d output in pieces differs", level);
            fz_str_free(&c);
        }
        mlr_qp_force_level(-1);
    }
    FZ_ASSERTF(fz_bare_crlf(a.p, a.n) < 0, "bare CR or LF at %ld", fz_bare_crlf(a.p, a.n));
    for (i = 0; i < a.n; i++) {
        uint8_t c = a.p[i];
        if (c == '\r') {
            FZ_ASSERTF(i == 0 || (a.p[i - 1] != ' ' && a.p[i - 1] != '\t'),
                       "white space before a line break at %zu", i);
            col = 0;
            i++;
            continue;
        }
        FZ_ASSERTF(c == ' ' || c == '\t' || (c >= 33 && c <= 126), "octet %#x at %zu", c, i);
        if (col == 0) {
            FZ_ASSERTF(c != '.', "'.' at a line start (%zu)", i);
            FZ_ASSERTF(!(a.n - i >= 5 && memcmp(a.p + i, "From ", 5) == 0),
                       "\"From \" at a line start (%zu)", i);
        }
        FZ_ASSERTF(++col <= 76, "line longer than 76 at %zu", i);
    }
    FZ_ASSERT(a.n == 0 || (a.p[a.n - 1] != ' ' && a.p[a.n - 1] != '\t'));
    /* decode and compare with the input, line breaks made CRLF */
    for (i = 0; i < size; i++) {
        if (data[i] == '\r' || data[i] == '\n') {
            fz_str_add(&norm, "\r\n", 2);
            if (data[i] == '\r' && i + 1 < size && data[i + 1] == '\n')
                i++;
        } else {
            fz_str_add(&norm, data + i, 1);
        }
    }
    FZ_ASSERTF(fz_qp_decode(a.p, a.n, &dec) == 0, "output is not valid quoted-printable");
    FZ_ASSERTF(dec.n == norm.n && (dec.n == 0 || memcmp(dec.p, norm.p, dec.n) == 0),
               "decoded output differs from the input");
    fz_str_free(&a);
    fz_str_free(&b);
    fz_str_free(&dec);
    fz_str_free(&norm);
    return 0;
}
