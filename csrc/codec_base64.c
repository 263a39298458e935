/* codec_base64.c - incremental base64 encoder and a small strict decoder.
 *
 * Speed comes from a 4096-entry table that turns 12 input bits into two
 * output characters, and from encoding whole output lines straight from
 * the input whenever the encoder sits at a line start with nothing
 * carried; the carried-bytes and partial-line cases take a slower path
 * that ends up back in the fast one. */
#include "codec_base64.h"

#include <string.h>

/* Character for a 6-bit value, as an integer constant expression so the
 * pair table below can be built at compile time. */
#define B64C(v)                                                             \
    ((v) < 26 ? 'A' + (v)                                                   \
     : (v) < 52 ? 'a' + ((v) - 26)                                          \
     : (v) < 62 ? '0' + ((v) - 52)                                          \
     : (v) == 62 ? '+' : '/')

#define P1(h, l) {(char)B64C(h), (char)B64C(l)}
#define P4(h, l) P1(h, l), P1(h, (l) + 1), P1(h, (l) + 2), P1(h, (l) + 3)
#define P16(h, l) P4(h, l), P4(h, (l) + 4), P4(h, (l) + 8), P4(h, (l) + 12)
#define P64(h) P16(h, 0), P16(h, 16), P16(h, 32), P16(h, 48)
#define R4(h) P64(h), P64((h) + 1), P64((h) + 2), P64((h) + 3)
#define R16(h) R4(h), R4((h) + 4), R4((h) + 8), R4((h) + 12)

/* Two output characters for every 12-bit value: pairs[v] = c(v>>6) c(v&63).
 * 8 KiB, so it stays in L1 while a body is encoded. */
static const char pairs[4096][2] = {R16(0), R16(16), R16(32), R16(48)};

static const char alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Load 8 bytes as a big-endian integer; memcpy keeps it free of
 * alignment and aliasing trouble and compiles to one load + bswap. */
static inline uint64_t load_be64(const uint8_t *p)
{
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t x;
    memcpy(&x, p, 8);
    return __builtin_bswap64(x);
#else
    return (uint64_t)p[0] << 56 | (uint64_t)p[1] << 48 | (uint64_t)p[2] << 40 |
           (uint64_t)p[3] << 32 | (uint64_t)p[4] << 24 | (uint64_t)p[5] << 16 |
           (uint64_t)p[6] << 8 | (uint64_t)p[7];
#endif
}

/* Encode g whole 3-byte groups (4g characters). Two groups at a time use
 * one 8-byte load, which is only done while a third group follows, so it
 * never reads past in + 3g. */
static inline uint8_t *enc_groups(const uint8_t *in, size_t g, uint8_t *out)
{
    while (g >= 3) {
        uint64_t x = load_be64(in);
        memcpy(out, pairs[(x >> 52) & 0xfff], 2);
        memcpy(out + 2, pairs[(x >> 40) & 0xfff], 2);
        memcpy(out + 4, pairs[(x >> 28) & 0xfff], 2);
        memcpy(out + 6, pairs[(x >> 16) & 0xfff], 2);
        in += 6;
        out += 8;
        g -= 2;
    }
    while (g > 0) {
        uint32_t x = (uint32_t)in[0] << 16 | (uint32_t)in[1] << 8 | in[2];
        memcpy(out, pairs[x >> 12], 2);
        memcpy(out + 2, pairs[x & 0xfff], 2);
        in += 3;
        out += 4;
        g--;
    }
    return out;
}

/* Encode whole 76-character lines (57 input bytes each) with CRLF; the
 * constant group count lets the compiler unroll the line completely. */
static uint8_t *enc_lines76(const uint8_t *in, size_t lines, uint8_t *out)
{
    while (lines-- > 0) {
        out = enc_groups(in, 19, out);
        out[0] = '\r';
        out[1] = '\n';
        out += 2;
        in += 57;
    }
    return out;
}

/* Start an encoder. */
void mlr_b64_init(mlr_b64 *s, unsigned line_len)
{
    s->ncarry = 0;
    s->col = 0;
    s->line_len = line_len;
    s->carry[0] = s->carry[1] = 0;
}

/* Worst case of one encode call: the carry makes at most one more group
 * and the starting column at most one more line end. */
size_t mlr_b64_bound(size_t n, unsigned line_len)
{
    size_t chars = (n / 3 + 1) * 4;
    if (line_len == 0)
        return chars;
    return chars + 2 * (chars / line_len + 1);
}

/* Emit the line end when a group filled the current line. */
static inline uint8_t *after_group(mlr_b64 *s, uint8_t *o)
{
    s->col += 4;
    if (s->col == s->line_len) {
        o[0] = '\r';
        o[1] = '\n';
        o += 2;
        s->col = 0;
    }
    return o;
}

/* Encode n bytes: finish a carried group, finish a partial line, then do
 * whole lines on the fast path, then the partial tail and new carry. */
size_t mlr_b64_encode(mlr_b64 *s, const uint8_t *in, size_t n, uint8_t *out)
{
    uint8_t *o = out;
    size_t g;

    if (s->ncarry > 0) {
        uint8_t grp[3];
        size_t need = 3 - s->ncarry;
        if (n < need) {
            memcpy(s->carry + s->ncarry, in, n);
            s->ncarry += (unsigned)n;
            return 0;
        }
        memcpy(grp, s->carry, s->ncarry);
        memcpy(grp + s->ncarry, in, need);
        in += need;
        n -= need;
        s->ncarry = 0;
        o = enc_groups(grp, 1, o);
        if (s->line_len)
            o = after_group(s, o);
    }

    if (s->line_len == 0) {
        g = n / 3;
        o = enc_groups(in, g, o);
        in += 3 * g;
        n -= 3 * g;
    } else {
        size_t per_line = (size_t)s->line_len / 4; /* groups per line */
        if (s->col != 0) {
            g = (s->line_len - s->col) / 4;
            if (g > n / 3)
                g = n / 3;
            o = enc_groups(in, g, o);
            in += 3 * g;
            n -= 3 * g;
            s->col += (unsigned)(4 * g);
            if (s->col == s->line_len) {
                *o++ = '\r';
                *o++ = '\n';
                s->col = 0;
            }
        }
        if (s->col == 0) {
            size_t lines = n / (3 * per_line);
            if (per_line == 19) {
                o = enc_lines76(in, lines, o);
            } else {
                size_t k;
                for (k = 0; k < lines; k++) {
                    o = enc_groups(in + 3 * per_line * k, per_line, o);
                    *o++ = '\r';
                    *o++ = '\n';
                }
            }
            in += 3 * per_line * lines;
            n -= 3 * per_line * lines;
            /* fewer than a line's worth is left: the tail stays on one line */
            g = n / 3;
            o = enc_groups(in, g, o);
            in += 3 * g;
            n -= 3 * g;
            s->col = (unsigned)(4 * g);
        }
    }

    /* 0..2 bytes left (or a partial line still open with < 3 bytes) */
    memcpy(s->carry, in, n);
    s->ncarry = (unsigned)n;
    return (size_t)(o - out);
}

/* Flush with padding; the last line always gets its CRLF when wrapping. */
size_t mlr_b64_finish(mlr_b64 *s, uint8_t *out)
{
    uint8_t *o = out;
    if (s->ncarry > 0) {
        uint32_t x = (uint32_t)s->carry[0] << 16;
        if (s->ncarry == 2)
            x |= (uint32_t)s->carry[1] << 8;
        *o++ = (uint8_t)alphabet[x >> 18];
        *o++ = (uint8_t)alphabet[(x >> 12) & 63];
        *o++ = s->ncarry == 2 ? (uint8_t)alphabet[(x >> 6) & 63] : '=';
        *o++ = '=';
        s->col += 4;
    }
    if (s->line_len != 0 && s->col != 0) {
        *o++ = '\r';
        *o++ = '\n';
    }
    mlr_b64_init(s, s->line_len);
    return (size_t)(o - out);
}

/* Exact size: 4 characters per started group plus CRLF per started line. */
uint64_t mlr_b64_encoded_size(uint64_t n, unsigned line_len)
{
    uint64_t chars = (n / 3 + (n % 3 != 0)) * 4;
    if (line_len == 0)
        return chars;
    return chars + 2 * ((chars + line_len - 1) / line_len);
}

/* Value of a base64 character, or -1. */
static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Strict one-shot decoder: whole 4-character groups, '=' only as the
 * padding of the last group, CR and LF skipped anywhere. */
long mlr_b64_decode(const char *in, size_t n, uint8_t *out)
{
    uint8_t *o = out;
    uint32_t acc = 0;
    unsigned k = 0, pad = 0;
    size_t i;

    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        int v;
        if (c == '\r' || c == '\n')
            continue;
        if (c == '=') {
            /* padding may fill positions 2-3 or 3 of a group, nothing after */
            if (k < 2)
                return -1;
            pad++;
            k++;
            acc <<= 6;
            if (k == 4) {
                *o++ = (uint8_t)(acc >> 16);
                if (pad == 1)
                    *o++ = (uint8_t)(acc >> 8);
                k = 0;
                acc = 0;
            }
            continue;
        }
        if (pad > 0)
            return -1;
        v = b64_value(c);
        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        if (++k == 4) {
            *o++ = (uint8_t)(acc >> 16);
            *o++ = (uint8_t)(acc >> 8);
            *o++ = (uint8_t)acc;
            k = 0;
            acc = 0;
        }
    }
    if (k != 0)
        return -1;
    return (long)(o - out);
}
