/* codec_dotstuff.c - CRLF normalisation and dot-stuffing for DATA.
 * See codec_dotstuff.h. */
#include "codec_dotstuff.h"

#include <string.h>

#include "mlr_common.h"

/* Octets that need a decision: CR, LF, NUL, and '.' (only at line start). */

void mlr_dot_init(mlr_dot *s, size_t max_line)
{
    s->col = 0;
    s->max_line = max_line;
    s->cr = 0;
    s->err = 0;
    s->stuff = 1;
}

void mlr_dot_init_plain(mlr_dot *s, size_t max_line)
{
    mlr_dot_init(s, max_line);
    s->stuff = 0;
}

/* Length of the leading run of p holding no CR, LF or NUL: eight octets
 * at a time (a zero-byte test on the word XORed with each of them), then
 * octet by octet. Bulk data such as base64 lines is mostly such runs. */
size_t mlr_plain_run(const uint8_t *p, size_t n)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    size_t i = 0;
    while (n - i >= 8) {
        uint64_t v, a, b;
        memcpy(&v, p + i, 8);
        a = v ^ (ones * '\n');
        b = v ^ (ones * '\r');
        if ((((v - ones) & ~v) | ((a - ones) & ~a) | ((b - ones) & ~b)) & highs)
            break;
        i += 8;
    }
    while (i < n && p[i] != '\r' && p[i] != '\n' && p[i] != '\0')
        i++;
    return i;
}

int mlr_dot_encode(mlr_dot *s, const uint8_t *in, size_t n, uint8_t *out,
                   size_t *outlen)
{
    size_t i = 0, o = 0, start, run;
    if (s->err) {
        *outlen = 0;
        return s->err;
    }
    while (i < n) {
        uint8_t c = in[i];
        if (s->cr) {  /* a CR is pending: it ends the line either way */
            s->cr = 0;
            out[o++] = '\r';
            out[o++] = '\n';
            s->col = 0;
            if (c == '\n') {
                i++;
                continue;
            }
        }
        if (c == '\r' && i + 1 < n && in[i + 1] == '\n') { /* CRLF: the common case */
            out[o++] = '\r';
            out[o++] = '\n';
            s->col = 0;
            i += 2;
            continue;
        }
        if (c == '\r') {
            s->cr = 1;
            i++;
            continue;
        }
        if (c == '\n') {  /* bare LF */
            out[o++] = '\r';
            out[o++] = '\n';
            s->col = 0;
            i++;
            continue;
        }
        if (c == '\0') {
            s->err = MLR_ERR_INPUT;
            *outlen = o;
            return s->err;
        }
        if (c == '.' && s->col == 0 && s->stuff) {
            out[o++] = '.';
            s->col = 1;
        }
        /* copy a run of ordinary octets (dots inside a line included) */
        start = i++;
        i += mlr_plain_run(in + i, n - i);
        run = i - start;
        memcpy(out + o, in + start, run);
        o += run;
        s->col += run;
        if (s->max_line && s->col > s->max_line) {
            s->err = MLR_ERR_INPUT;
            *outlen = o;
            return s->err;
        }
    }
    *outlen = o;
    return MLR_OK;
}

size_t mlr_dot_end_line(mlr_dot *s, uint8_t *out)
{
    size_t o = 0;
    if (s->cr || s->col > 0) {
        out[o++] = '\r';
        out[o++] = '\n';
    }
    s->cr = 0;
    s->col = 0;
    return o;
}

size_t mlr_dot_finish(mlr_dot *s, uint8_t *out)
{
    size_t o = mlr_dot_end_line(s, out);
    out[o++] = '.';
    out[o++] = '\r';
    out[o++] = '\n';
    s->cr = 0;
    s->col = 0;
    return o;
}
