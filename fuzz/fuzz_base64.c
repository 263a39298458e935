/* fuzz_base64.c - the incremental base64 encoder and the one-shot decoder.
 *
 * Input: a line-length choice, a split seed, then the data. The data is
 * encoded in one call and again in seeded pieces (each call writing into
 * a buffer of exactly mlr_b64_bound bytes, so ASan sees any overrun); both
 * must match, have the announced size, keep the line discipline, and
 * decode back to the data with a reference decoder and with the
 * library's. Every SIMD level the CPU has must give the portable
 * encoder's output, whole and in the seeded pieces (each piece copied to
 * a block of its own size, so ASan sees a read outside it). The raw input
 * is also fed to the library's decoder, which must agree with the
 * reference whenever the reference accepts it. */
#include <stdlib.h>
#include <string.h>

#include "codec_base64.h"
#include "fuzz_util.h"

static const unsigned line_lens[8] = {76, 0, 4, 8, 64, 72, 76, 996};

/* Encode data in pieces (seed 0: one piece) into out. */
static void encode(const uint8_t *d, size_t n, unsigned ll, uint32_t seed, fz_str *out)
{
    mlr_b64 s;
    size_t off = 0;
    uint8_t *fin;
    mlr_b64_init(&s, ll);
    while (off < n) {
        size_t piece = n - off, bound, w;
        uint8_t *buf, *own;
        if (seed) {
            seed = seed * 1103515245u + 12345u;
            piece = (seed >> 16) % 200;
            if (piece > n - off)
                piece = n - off;
        }
        bound = mlr_b64_bound(piece, ll);
        buf = malloc(bound ? bound : 1);
        own = malloc(piece ? piece : 1);
        if (piece)
            memcpy(own, d + off, piece);
        w = mlr_b64_encode(&s, own, piece, buf);
        FZ_ASSERTF(w <= bound, "wrote %zu, bound %zu", w, bound);
        fz_str_add(out, buf, w);
        free(own);
        free(buf);
        off += piece;
    }
    fin = malloc(MLR_B64_FINISH_MAX);
    fz_str_add(out, fin, mlr_b64_finish(&s, fin));
    free(fin);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_str a = {0}, b = {0}, dec = {0};
    unsigned ll;
    uint32_t seed;
    size_t i, col = 0;
    uint8_t *lib;
    long ln;
    int level, max;
    if (size < 2)
        return 0;
    ll = line_lens[data[0] & 7];
    seed = data[1] | 0x100u;
    data += 2;
    size -= 2;

    max = mlr_b64_max_level();
    mlr_b64_force_level(0);
    encode(data, size, ll, 0, &a);
    for (level = 1; level <= max; level++) {
        mlr_b64_force_level(level);
        encode(data, size, ll, 0, &b);
        FZ_ASSERTF(a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0),
                   "level %d output differs from the portable encoder's", level);
        fz_str_free(&b);
        encode(data, size, ll, seed, &b);
        FZ_ASSERTF(a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0),
                   "level %d output in pieces differs from the portable encoder's", level);
        fz_str_free(&b);
    }
    mlr_b64_force_level(-1);
    encode(data, size, ll, seed, &b);
    FZ_ASSERTF(a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0), "split output differs");
    FZ_ASSERT(a.n == mlr_b64_encoded_size(size, ll));
    /* line discipline: full lines of ll characters, CRLF after each,
     * the last line included; no line breaks at all when ll is 0 */
    for (i = 0; i < a.n; i++) {
        if (a.p[i] == '\r') {
            FZ_ASSERT(ll && i + 1 < a.n && a.p[i + 1] == '\n');
            FZ_ASSERT(col > 0 && col <= ll && (col == ll || i + 2 == a.n));
            col = 0;
            i++;
            continue;
        }
        FZ_ASSERT(a.p[i] != '\n');
        col++;
    }
    FZ_ASSERT(col == 0 || ll == 0);
    /* round trips */
    FZ_ASSERT(fz_b64_decode(a.p, a.n, &dec) == 0);
    FZ_ASSERT(dec.n == size && (size == 0 || memcmp(dec.p, data, size) == 0));
    lib = malloc(3 * (a.n / 4) + 3);
    ln = mlr_b64_decode((const char *)a.p, a.n, lib);
    FZ_ASSERT(ln == (long)size && (size == 0 || memcmp(lib, data, size) == 0));
    free(lib);
    /* the library decoder on arbitrary text */
    fz_str_free(&dec);
    lib = malloc(3 * (size / 4) + 3);
    ln = mlr_b64_decode((const char *)data, size, lib);
    FZ_ASSERT(ln <= (long)(3 * (size / 4) + 3));
    if (fz_b64_decode(data, size, &dec) == 0)
        FZ_ASSERTF(ln == (long)dec.n && (ln == 0 || memcmp(lib, dec.p, dec.n) == 0),
                   "library decoder disagrees with the reference");
    free(lib);
    fz_str_free(&a);
    fz_str_free(&b);
    fz_str_free(&dec);
    return 0;
}
