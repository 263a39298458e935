/* codec_base64.c - incremental base64 encoder and a small strict decoder.
 *
 * The portable encoder uses a 4096-entry table that turns 12 input bits
 * into two output characters. On x86 the runs of whole groups (lines and
 * the spans between them) go to SSSE3, AVX2 or AVX-512 VBMI code picked
 * at run time; each is built with a target attribute, so the file needs
 * no -m flags and runs on any x86-64. Every path encodes whole output
 * lines straight from the input whenever the encoder sits at a line start
 * with nothing carried; the carried-bytes and partial-line cases take a
 * slower path that ends up back in the fast one. The SIMD code reads only
 * the input it encodes and writes only the output it returns. */
#include "codec_base64.h"

#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define B64_X86 1
#include <immintrin.h>
#else
#define B64_X86 0
#endif

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

/* ---- SIMD encoders (x86) ----
 *
 * All three start from one layout: each 3-byte group (a, b, c) is spread
 * over a 32-bit lane as the bytes b, a, c, b, from which the four 6-bit
 * values are cut (by two multiplies on SSSE3 and AVX2, by one multishift
 * on AVX-512 VBMI) and then turned into characters. A run of g groups is
 * done in whole blocks of 4, 8 or 16 groups; its last partial block is a
 * whole block that overlaps the one before it (AVX-512 masks it instead
 * when the run is shorter than a block), so nothing outside the run is
 * read or written. A 76-column line (19 groups) is two AVX-512 blocks or
 * three AVX2 blocks, then CRLF. */

/* Encoders of g groups and of whole lines, for one instruction set. */
typedef struct b64_simd {
    uint8_t *(*span)(const uint8_t *in, size_t g, uint8_t *out);
    uint8_t *(*lines)(const uint8_t *in, size_t lines, size_t per_line, uint8_t *out);
} b64_simd;

#if B64_X86

#define TGT_SSSE3 __attribute__((target("ssse3")))
#define TGT_AVX2 __attribute__((target("avx2")))
#define TGT_VBMI __attribute__((target("avx512f,avx512bw,avx512vbmi")))

/* 6-bit values to characters, 16 at a time: the value's range (A-Z,
 * a-z, 0-9, '+', '/') picks the offset to add from a 16-entry table. */
TGT_SSSE3 static inline __m128i ascii128(__m128i v)
{
    const __m128i off = _mm_setr_epi8(65, 71, -4, -4, -4, -4, -4, -4, -4, -4, -4, -4,
                                      -19, -16, 0, 0);
    __m128i k = _mm_subs_epu8(v, _mm_set1_epi8(51)); /* 0, 0, 1..10, 11, 12 */
    k = _mm_sub_epi8(k, _mm_cmpgt_epi8(v, _mm_set1_epi8(25)));
    return _mm_add_epi8(v, _mm_shuffle_epi8(off, k));
}

/* The four 6-bit values of each b, a, c, b lane, one per byte in order:
 * the 16-bit halves hold two values each at known bit offsets, which one
 * high and one low multiply move to the bottom of their bytes. */
TGT_SSSE3 static inline __m128i split128(__m128i v)
{
    __m128i hi = _mm_mulhi_epu16(_mm_and_si128(v, _mm_set1_epi32(0x0fc0fc00)),
                                 _mm_set1_epi32(0x04000040));
    __m128i lo = _mm_mullo_epi16(_mm_and_si128(v, _mm_set1_epi32(0x003f03f0)),
                                 _mm_set1_epi32(0x01000010));
    return _mm_or_si128(hi, lo);
}

/* 16 characters from the 12 bytes that shuf picks out of v. */
TGT_SSSE3 static inline void block12(__m128i v, __m128i shuf, uint8_t *out)
{
    v = _mm_shuffle_epi8(v, shuf);
    _mm_storeu_si128((__m128i *)(void *)out, ascii128(split128(v)));
}

/* 16 bytes from p, unaligned. */
TGT_SSSE3 static inline __m128i load128(const uint8_t *p)
{
    return _mm_loadu_si128((const __m128i *)(const void *)p);
}

/* g groups, 4 at a time. A block is encoded from a 16-byte load, taking
 * bytes 0..11 while 16 bytes remain and bytes 4..11 of a load 4 bytes
 * earlier after that; runs under 16 bytes go to the table. */
TGT_SSSE3 static inline uint8_t *span_ssse3_inl(const uint8_t *in, size_t g, uint8_t *out)
{
    const __m128i lo = _mm_setr_epi8(1, 0, 2, 1, 4, 3, 5, 4, 7, 6, 8, 7, 10, 9, 11, 10);
    const __m128i hi = _mm_add_epi8(lo, _mm_set1_epi8(4));
    size_t len = 3 * g, off = 0;
    uint8_t *end = out + 4 * g;

    if (len < 16)
        return enc_groups(in, g, out);
    for (; off + 16 <= len; off += 12, out += 16)
        block12(load128(in + off), lo, out);
    if (off + 12 <= len) {
        block12(load128(in + off - 4), hi, out);
        off += 12;
    }
    if (off < len) /* 1..3 groups: a block ending at the run's end */
        block12(load128(in + len - 16), hi, end - 16);
    return end;
}

/* 32 characters for the 24 bytes at in; the halves are loaded from in
 * and in + 8 (taking bytes 0..11 and 4..15), so nothing past in + 24 is
 * read. */
TGT_AVX2 static inline void block24(const uint8_t *in, uint8_t *out)
{
    const __m256i shuf = _mm256_setr_epi8(1, 0, 2, 1, 4, 3, 5, 4, 7, 6, 8, 7, 10, 9, 11, 10,
                                          5, 4, 6, 5, 8, 7, 9, 8, 11, 10, 12, 11, 14, 13, 15, 14);
    const __m256i off = _mm256_setr_epi8(65, 71, -4, -4, -4, -4, -4, -4, -4, -4, -4, -4, -19,
                                         -16, 0, 0, 65, 71, -4, -4, -4, -4, -4, -4, -4, -4, -4,
                                         -4, -19, -16, 0, 0);
    __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(load128(in)), load128(in + 8), 1);
    __m256i hi, lo, k;
    v = _mm256_shuffle_epi8(v, shuf);
    hi = _mm256_mulhi_epu16(_mm256_and_si256(v, _mm256_set1_epi32(0x0fc0fc00)),
                            _mm256_set1_epi32(0x04000040));
    lo = _mm256_mullo_epi16(_mm256_and_si256(v, _mm256_set1_epi32(0x003f03f0)),
                            _mm256_set1_epi32(0x01000010));
    v = _mm256_or_si256(hi, lo);
    k = _mm256_subs_epu8(v, _mm256_set1_epi8(51));
    k = _mm256_sub_epi8(k, _mm256_cmpgt_epi8(v, _mm256_set1_epi8(25)));
    v = _mm256_add_epi8(v, _mm256_shuffle_epi8(off, k));
    _mm256_storeu_si256((__m256i *)(void *)out, v);
}

/* g groups, 8 at a time; shorter runs take the SSSE3 code. */
TGT_AVX2 static inline uint8_t *span_avx2_inl(const uint8_t *in, size_t g, uint8_t *out)
{
    size_t len = 3 * g, off;
    uint8_t *end = out + 4 * g;

    if (g < 8)
        return span_ssse3_inl(in, g, out);
    for (off = 0; off + 24 <= len; off += 24, out += 32)
        block24(in + off, out);
    if (off < len)
        block24(in + len - 24, end - 32);
    return end;
}

/* Each group's b, a, c, b lane for vpermb, and the alphabet for it. */
static const uint8_t vbmi_spread[64] = {
    1,  0,  2,  1,  4,  3,  5,  4,  7,  6,  8,  7,  10, 9,  11, 10,
    13, 12, 14, 13, 16, 15, 17, 16, 19, 18, 20, 19, 22, 21, 23, 22,
    25, 24, 26, 25, 28, 27, 29, 28, 31, 30, 32, 31, 34, 33, 35, 34,
    37, 36, 38, 37, 40, 39, 41, 40, 43, 42, 44, 43, 46, 45, 47, 46,
};

/* 64 characters for the 48 bytes in v: one permute spreads the groups,
 * one multishift cuts the 6-bit values (bit offsets 10, 4, 22, 16 in
 * each lane), one permute looks them up in the alphabet. */
TGT_VBMI static inline __m512i enc48(__m512i v)
{
    const __m512i spread = _mm512_loadu_si512((const void *)vbmi_spread);
    const __m512i chars = _mm512_loadu_si512((const void *)alphabet);
    v = _mm512_permutexvar_epi8(spread, v);
    v = _mm512_multishift_epi64_epi8(_mm512_set1_epi64(0x3036242a1016040aLL), v);
    return _mm512_permutexvar_epi8(v, chars);
}

/* g groups, 16 at a time; masked loads and stores keep every access
 * inside the run. */
TGT_VBMI static inline uint8_t *span_vbmi_inl(const uint8_t *in, size_t g, uint8_t *out)
{
    const __mmask64 m48 = ((__mmask64)1 << 48) - 1;
    size_t len = 3 * g, off;
    uint8_t *end = out + 4 * g;

    for (off = 0; off + 48 <= len; off += 48, out += 64) {
        __m512i v = off + 64 <= len ? _mm512_loadu_si512((const void *)(in + off))
                                    : _mm512_maskz_loadu_epi8(m48, in + off);
        _mm512_storeu_si512((void *)out, enc48(v));
    }
    if (off < len) {
        if (off > 0) {
            _mm512_storeu_si512((void *)(end - 64), enc48(_mm512_maskz_loadu_epi8(m48, in + len - 48)));
        } else {
            __m512i v = _mm512_maskz_loadu_epi8(((__mmask64)1 << len) - 1, in);
            _mm512_mask_storeu_epi8(out, ((__mmask64)1 << (4 * g)) - 1, enc48(v));
        }
    }
    return end;
}

/* Whole lines of per_line groups, each followed by CRLF; the constant 19
 * (76 columns) gets its own loop so the compiler lays the line out. */
#define B64_LINES(name, span, tgt)                                                      \
    tgt static uint8_t *name(const uint8_t *in, size_t lines, size_t per_line, uint8_t *out) \
    {                                                                                   \
        if (per_line == 19) {                                                           \
            for (; lines > 0; lines--, in += 57) {                                      \
                out = span(in, 19, out);                                                \
                out[0] = '\r';                                                          \
                out[1] = '\n';                                                          \
                out += 2;                                                               \
            }                                                                           \
            return out;                                                                 \
        }                                                                               \
        for (; lines > 0; lines--, in += 3 * per_line) {                                \
            out = span(in, per_line, out);                                              \
            out[0] = '\r';                                                              \
            out[1] = '\n';                                                              \
            out += 2;                                                                   \
        }                                                                               \
        return out;                                                                     \
    }
B64_LINES(lines_ssse3, span_ssse3_inl, TGT_SSSE3)
B64_LINES(lines_avx2, span_avx2_inl, TGT_AVX2)
B64_LINES(lines_vbmi, span_vbmi_inl, TGT_VBMI)
#undef B64_LINES

/* Out-of-line spans for the table below. */
TGT_SSSE3 static uint8_t *span_ssse3(const uint8_t *in, size_t g, uint8_t *out)
{
    return span_ssse3_inl(in, g, out);
}
TGT_AVX2 static uint8_t *span_avx2(const uint8_t *in, size_t g, uint8_t *out)
{
    return span_avx2_inl(in, g, out);
}
TGT_VBMI static uint8_t *span_vbmi(const uint8_t *in, size_t g, uint8_t *out)
{
    return span_vbmi_inl(in, g, out);
}

/* Indexed by level - 1. */
static const b64_simd simd_impl[3] = {
    {span_ssse3, lines_ssse3},
    {span_avx2, lines_avx2},
    {span_vbmi, lines_vbmi},
};

#endif /* B64_X86 */

/* Level the CPU supports (libgcc / compiler-rt read cpuid and XCR0 once,
 * before main; each call here is a few loads). */
int mlr_b64_max_level(void)
{
#if B64_X86
    if (__builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512bw"))
        return MLR_B64_AVX512VBMI;
    if (__builtin_cpu_supports("avx2"))
        return MLR_B64_AVX2;
    if (__builtin_cpu_supports("ssse3"))
        return MLR_B64_SSSE3;
#endif
    return MLR_B64_SCALAR;
}

/* -1: pick the best level per call; else the level tests asked for. */
static int forced_level = -1;

/* Force a level for tests and benchmarks (-1: automatic again). */
int mlr_b64_force_level(int level)
{
    int max = mlr_b64_max_level();
    forced_level = level < 0 ? -1 : level > max ? max : level;
    return forced_level < 0 ? max : forced_level;
}

/* The SIMD encoder to use now, or NULL for the portable one. */
static const b64_simd *b64_pick(void)
{
#if B64_X86
    int level = forced_level >= 0 ? forced_level : mlr_b64_max_level();
    return level > 0 ? &simd_impl[level - 1] : NULL;
#else
    return NULL;
#endif
}

/* g groups with the chosen encoder. */
static inline uint8_t *run_groups(const b64_simd *x, const uint8_t *in, size_t g, uint8_t *out)
{
    return x ? x->span(in, g, out) : enc_groups(in, g, out);
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
    const b64_simd *x = b64_pick();
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
        o = run_groups(x, in, g, o);
        in += 3 * g;
        n -= 3 * g;
    } else {
        size_t per_line = (size_t)s->line_len / 4; /* groups per line */
        if (s->col != 0) {
            g = (s->line_len - s->col) / 4;
            if (g > n / 3)
                g = n / 3;
            o = run_groups(x, in, g, o);
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
            if (x) {
                o = x->lines(in, lines, per_line, o);
            } else if (per_line == 19) {
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
            o = run_groups(x, in, g, o);
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
