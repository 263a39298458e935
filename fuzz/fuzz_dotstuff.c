/* fuzz_dotstuff.c - the CRLF normaliser and dot-stuffer for DATA.
 *
 * The body is stuffed in one call and in seeded pieces (each call into a
 * buffer of exactly MLR_DOT_BOUND bytes). Both runs must agree on success
 * or failure and, on success, on every output byte. The output must hold
 * no bare CR, bare LF or NUL, end with exactly one terminator (the only
 * line that is a lone "."), keep lines within max_line, and give back the
 * normalised body when un-stuffed. A failure must have a cause: a NUL or
 * a line over max_line. */
#include <stdlib.h>
#include <string.h>

#include "codec_dotstuff.h"
#include "fuzz_util.h"

static const size_t max_lines[4] = {0, 998, 8, 76};

/* Stuff d in pieces into out; returns the sticky error (0 on success). */
static int stuff(const uint8_t *d, size_t n, size_t max_line, uint32_t seed, fz_str *out)
{
    mlr_dot s;
    size_t off = 0;
    uint8_t *fin;
    int rc = 0;
    mlr_dot_init(&s, max_line);
    while (off < n) {
        size_t piece = n - off, w = 0;
        uint8_t *buf;
        if (seed) {
            seed = seed * 1103515245u + 12345u;
            piece = (seed >> 16) % ((seed & 0x100) ? 4 : 100);
            if (piece > n - off)
                piece = n - off;
        }
        buf = malloc(MLR_DOT_BOUND(piece));
        rc = mlr_dot_encode(&s, d + off, piece, buf, &w);
        FZ_ASSERT(w <= MLR_DOT_BOUND(piece));
        fz_str_add(out, buf, w);
        free(buf);
        if (rc) {
            size_t w2 = 1;
            FZ_ASSERT(rc == MLR_ERR_INPUT);
            FZ_ASSERT(mlr_dot_encode(&s, d, n, out->p, &w2) == rc && w2 == 0); /* sticky */
            return rc;
        }
        off += piece;
    }
    fin = malloc(MLR_DOT_FINISH_MAX);
    fz_str_add(out, fin, mlr_dot_finish(&s, fin));
    free(fin);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_str a = {0}, b = {0}, norm = {0}, un = {0};
    size_t max_line, i, ls, dots = 0, longest = 0, col = 0;
    uint32_t seed;
    int ra, rb, has_nul;
    if (size < 1)
        return 0;
    max_line = max_lines[data[0] & 3];
    seed = (uint32_t)(data[0] >> 2) | 0x10000u;
    data++;
    size--;
    ra = stuff(data, size, max_line, 0, &a);
    rb = stuff(data, size, max_line, seed, &b);
    FZ_ASSERTF(ra == rb, "whole: %d, in pieces: %d", ra, rb);

    /* the normalised body, and what stuffing makes of its line lengths */
    has_nul = memchr(data, 0, size) != NULL;
    for (i = 0; i < size; i++) {
        if (data[i] == '\r' || data[i] == '\n') {
            fz_str_add(&norm, "\r\n", 2);
            if (data[i] == '\r' && i + 1 < size && data[i + 1] == '\n')
                i++;
            col = 0;
        } else {
            if (col == 0 && data[i] == '.')
                col++;
            fz_str_add(&norm, data + i, 1);
            if (++col > longest)
                longest = col;
        }
    }
    if (ra) {
        FZ_ASSERTF(has_nul || (max_line && longest > max_line), "refused without a cause");
        goto out;
    }
    FZ_ASSERT(!has_nul && !(max_line && longest > max_line));
    FZ_ASSERTF(a.n == b.n && memcmp(a.p, b.p, a.n) == 0, "split output differs");
    FZ_ASSERTF(fz_bare_crlf(a.p, a.n) < 0, "bare CR or LF at %ld", fz_bare_crlf(a.p, a.n));
    FZ_ASSERT(memchr(a.p, 0, a.n) == NULL);
    FZ_ASSERT(a.n >= 3 && memcmp(a.p + a.n - 3, ".\r\n", 3) == 0);
    FZ_ASSERT(a.n == 3 || (a.n >= 5 && memcmp(a.p + a.n - 5, "\r\n.\r\n", 5) == 0));
    /* walk the lines: only the last is a lone ".", un-stuff the others */
    for (ls = 0; ls < a.n;) {
        long e = fz_find(a.p + ls, a.n - ls, "\r\n", 2);
        size_t len;
        FZ_ASSERT(e >= 0);
        len = (size_t)e;
        if (max_line)
            FZ_ASSERTF(len <= max_line, "line of %zu > %zu", len, max_line);
        if (len == 1 && a.p[ls] == '.') {
            dots++;
            FZ_ASSERTF(ls + 3 == a.n, "a lone '.' line before the end (offset %zu)", ls);
        } else if (len > 0 && a.p[ls] == '.') {
            FZ_ASSERTF(len >= 2 && a.p[ls + 1] == '.', "unstuffed dot at %zu", ls);
            fz_str_add(&un, a.p + ls + 1, len - 1);
            fz_str_add(&un, "\r\n", 2);
        } else {
            fz_str_add(&un, a.p + ls, len + 2);
        }
        ls += len + 2;
    }
    FZ_ASSERT(dots == 1);
    /* the body comes back, with a CRLF added after an unterminated last line */
    if (norm.n && !(norm.n >= 2 && memcmp(norm.p + norm.n - 2, "\r\n", 2) == 0))
        fz_str_add(&norm, "\r\n", 2);
    FZ_ASSERTF(un.n == norm.n && (un.n == 0 || memcmp(un.p, norm.p, un.n) == 0),
               "un-stuffed output differs from the normalised body");
out:
    fz_str_free(&a);
    fz_str_free(&b);
    fz_str_free(&norm);
    fz_str_free(&un);
    return 0;
}
