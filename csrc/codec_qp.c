/* codec_qp.c - incremental quoted-printable encoder for text bodies.
 *
 * Every output decision for an input byte needs at most the next four
 * bytes (a space: is a line break next?; a token ending in column 76: is
 * it the last of its line?; an 'F' at a line start: is it "From "?), so
 * the encoder holds back at most four undecided bytes between calls and
 * decides them with the same code once more input (or finish) arrives.
 * That single decision function is what makes every split of the input
 * give the same output. The bulk of the text goes through a loop over
 * 16-byte blocks (below) that makes the same decisions for the common
 * cases and hands every rare one to qp_step. */
#include "codec_qp.h"

#include <string.h>
#if defined(__GNUC__) && defined(__x86_64__)
#define QP_X86 1
#include <immintrin.h>
#else
#define QP_X86 0
#endif

#define QP_MAX_LINE 76 /* RFC 2045 limit, including a soft break's '=' */

/* Byte classes: literal, always encoded, white space, line break. */
enum { QP_LIT = 0, QP_ENC = 1, QP_WS = 2, QP_BRK = 3 };

static const char hex[] = "0123456789ABCDEF";

/* Class of each byte away from a line start: printable ASCII but '=' is
 * literal, space and tab depend on what follows, CR/LF break the line.
 * Built at compile time so the encoder has no global state to set up. */
static const unsigned char cls[256] = {
#define Q(c) ((c) == '\r' || (c) == '\n' ? QP_BRK                           \
              : (c) == ' ' || (c) == '\t' ? QP_WS                           \
              : (c) >= 33 && (c) <= 126 && (c) != '=' ? QP_LIT : QP_ENC)
#define Q4(b) Q(b), Q((b) + 1), Q((b) + 2), Q((b) + 3)
#define Q16(b) Q4(b), Q4((b) + 4), Q4((b) + 8), Q4((b) + 12)
#define Q64(b) Q16(b), Q16((b) + 16), Q16((b) + 32), Q16((b) + 48)
    Q64(0), Q64(64), Q64(128), Q64(192)
#undef Q64
#undef Q16
#undef Q4
#undef Q
};

/* Start an encoder. */
void mlr_qp_init(mlr_qp *s)
{
    memset(s, 0, sizeof *s);
}

/* Each input byte becomes at most 3 characters; a soft break (3 more)
 * follows at least 25 tokens; up to 4 bytes held from the last call are
 * decided here too; 8 spare bytes cover the fast path's wide stores. */
size_t mlr_qp_bound(size_t n)
{
    size_t m = n + 4;
    return 3 * m + 3 * (m / 24 + 2) + 8;
}

/* Does "From " start at in[0] ('F' already seen)? 1 yes, 0 no, -1 not
 * yet known. */
static int from_at(const uint8_t *in, size_t avail, int end)
{
    static const char tail[] = "rom ";
    size_t k;
    for (k = 1; k < 5; k++) {
        if (k >= avail)
            return end ? 0 : -1;
        if (in[k] != (uint8_t)tail[k - 1])
            return 0;
    }
    return 1;
}

/* "=XX" with upper-case hex: RFC 2045 allows no other spelling. */
static inline uint8_t *put_hex(uint8_t *o, unsigned c)
{
    o[0] = '=';
    o[1] = (uint8_t)hex[c >> 4];
    o[2] = (uint8_t)hex[c & 15];
    return o + 3;
}

/* The reference decision for in[0], with avail bytes visible and end set
 * when nothing follows them: 1 = consumed the byte, 0 = wrote a soft break
 * only (in[0] is retried at column 0), -1 = needs more input. */
static int qp_step(mlr_qp *s, const uint8_t *in, size_t avail, int end, uint8_t **op)
{
    uint8_t *o = *op;
    unsigned c = in[0];
    int next_brk, enc;
    unsigned len;

    if (c == '\r' || c == '\n') {
        if (c == '\n' && s->pending_cr) {
            s->pending_cr = 0; /* second half of a CRLF */
            return 1;
        }
        o[0] = '\r';
        o[1] = '\n';
        *op = o + 2;
        s->col = 0;
        s->pending_cr = c == '\r';
        return 1;
    }
    if (avail > 1)
        next_brk = in[1] == '\r' || in[1] == '\n';
    else
        next_brk = end ? 1 : -1;

    if (c == ' ' || c == '\t') {
        if (next_brk < 0)
            return -1;
        enc = next_brk; /* trailing white space must not survive transport */
    } else {
        enc = cls[c] != QP_LIT;
    }
    if (s->col == 0 && !enc) {
        if (c == '.') {
            enc = 1;
        } else if (c == 'F') {
            enc = from_at(in, avail, end);
            if (enc < 0)
                return -1;
        }
    }
    len = enc ? 3 : 1;
    if (s->col + len > QP_MAX_LINE - 1) {
        /* column 76 is only for the last token before a hard break */
        if (s->col + len > QP_MAX_LINE || next_brk == 0) {
            o[0] = '=';
            o[1] = '\r';
            o[2] = '\n';
            *op = o + 3;
            s->col = 0;
            return 0;
        }
        if (next_brk < 0)
            return -1;
    }
    if (enc)
        o = put_hex(o, c);
    else
        *o++ = (uint8_t)c;
    *op = o;
    s->col += len;
    s->pending_cr = 0;
    return 1;
}

/* ---- the block loop ----
 *
 * Away from the ends of the visible input the encoder works on blocks of
 * 16 bytes. Each block is classified at once (8-byte words portably,
 * SSE2 on x86-64, AVX-512 VBMI2 where the CPU has it, picked at run
 * time): where the first "stop" is (CR, LF, tab: bytes whose output
 * depends on what follows), and which bytes before it need "=XX". The
 * bytes before the stop are written as long as they fit before column
 * 76: a block without escapes is one 16-byte store, one with escapes goes
 * byte by byte through the sym table (no branch per byte but the line
 * limit). A space is copied as it is; when a line break follows it after
 * all, the break's handler turns it into "=20" (or backs it up for
 * qp_step when that does not fit). What stops a block -- a line break,
 * a byte that no longer fits, a tab, a '.' or 'F' at a line start -- is
 * handled inline for the first two and by qp_step, the reference
 * decision, for the rest. On VBMI2 a line, or the first 75 columns of
 * a long one, is done at once from one classification of the next 128
 * bytes (line_vbmi2). */

#define QP_B 16              /* bytes per block */
#define QP_MARGIN (QP_B + 5) /* visible bytes a block needs: itself + lookahead */

/* Output of each byte inside a block: the byte itself for 32..126 but
 * '=', else "=XX"; the length (1 or 3) in the 4th byte, so one 4-byte
 * store writes the token and the length comes from the same entry. */
#define LIT(c) ((c) >= 32 && (c) <= 126 && (c) != '=')
#define HX(v) ((v) < 10 ? '0' + (v) : 'A' + ((v) - 10))
#define S1(c)                                                               \
    {(uint8_t)(LIT(c) ? (c) : '='), (uint8_t)(LIT(c) ? 0 : HX((c) >> 4)),      \
     (uint8_t)(LIT(c) ? 0 : HX((c) & 15)), (uint8_t)(LIT(c) ? 1 : 3)}
#define S4(c) S1(c), S1((c) + 1), S1((c) + 2), S1((c) + 3)
#define S16(c) S4(c), S4((c) + 4), S4((c) + 8), S4((c) + 12)
#define S64(c) S16(c), S16((c) + 16), S16((c) + 32), S16((c) + 48)
static const uint8_t sym[256][4] = {S64(0), S64(64), S64(128), S64(192)};
#undef S64
#undef S16
#undef S4
#undef S1
#undef HX
#undef LIT

/* Index of the lowest set bit of a nonzero mask. */
static inline unsigned ctz32(unsigned m)
{
#if defined(__GNUC__)
    return (unsigned)__builtin_ctz(m);
#else
    unsigned k = 0;
    while (!(m & 1))
        m >>= 1, k++;
    return k;
#endif
}

/* Set bits of a 16-bit mask; bit arithmetic, as __builtin_popcount is a
 * library call where the popcnt instruction is not in the baseline. */
static inline unsigned popcount16(unsigned m)
{
    m = m - ((m >> 1) & 0x5555u);
    m = (m & 0x3333u) + ((m >> 2) & 0x3333u);
    m = (m + (m >> 4)) & 0x0f0fu;
    return (m + (m >> 8)) & 0x1fu;
}

/* Write in[j..t) through the sym table while the tokens fit before
 * column 76 (col + len <= 75); returns where it stopped. */
static inline size_t put_tokens(const uint8_t *in, size_t j, size_t t, unsigned *colp, uint8_t **op)
{
    uint8_t *o = *op;
    unsigned col = *colp;
    for (; j < t; j++) {
        const uint8_t *e = sym[in[j]];
        if (col + e[3] > QP_MAX_LINE - 1)
            break;
        memcpy(o, e, 4); /* the 4th byte is scratch */
        o += e[3];
        col += e[3];
    }
    *op = o;
    *colp = col;
    return j;
}

/* Write all 16 bytes of a block through the sym table (they fit). */
static inline void put_block(const uint8_t *in, unsigned *colp, uint8_t **op)
{
    uint8_t *o = *op, *o0 = o;
    size_t j;
    for (j = 0; j < QP_B; j++) {
        const uint8_t *e = sym[in[j]];
        memcpy(o, e, 4); /* the 4th byte is scratch */
        o += e[3];
    }
    *op = o;
    *colp += (unsigned)(o - o0);
}

/* One block, given its masks: bit j of stop for CR, LF or tab at in[j]
 * (bit QP_B always set), bit j of esc for a byte needing "=XX". raw: the
 * 16 input bytes were already stored at *op. Returns the bytes taken. */
static inline size_t qp_block(const uint8_t *in, unsigned stop, unsigned esc, int raw,
                              unsigned *colp, uint8_t **op)
{
    unsigned col = *colp;
    unsigned room = col < QP_MAX_LINE - 1 ? QP_MAX_LINE - 1 - col : 0;
    size_t t = ctz32(stop), f;
    esc &= (1u << t) - 1; /* only escapes before the stop matter */
    f = esc ? ctz32(esc) : t;
    /* the plain prefix before the first escape */
    if (f > room)
        f = room;
    if (!raw)
        memcpy(*op, in, QP_B);
    *op += f;
    *colp = col + (unsigned)f;
    if (f == t || !esc || f == room)
        return f;
    return put_tokens(in, f, t, colp, op);
}

/* Block classification, portable: 8 bytes per word, one flag bit per
 * lane, gathered into a byte mask by a multiply. */
#define ONES ((uint64_t)0x0101010101010101u)
#define LOW7 ((uint64_t)0x7F7F7F7F7F7F7F7Fu)
#define HIGHS ((uint64_t)0x8080808080808080u)

/* 8 bytes as a little-endian integer, so lane k is byte k everywhere. */
static inline uint64_t load_le64(const uint8_t *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    x = __builtin_bswap64(x);
#endif
    return x;
}

/* High bit of each lane that is not zero; exact per lane (7-bit sums
 * cannot carry into the next lane). */
static inline uint64_t lanes_nonzero(uint64_t y)
{
    return (((y & LOW7) + LOW7) | y) & HIGHS;
}

/* High bit of each lane whose byte is not 32..126 but '='. */
static inline uint64_t lanes_nonplain(uint64_t x)
{
    uint64_t lo = x & LOW7;
    uint64_t ge32 = lo + ONES * (128 - 32);
    uint64_t ge127 = lo + ONES * (128 - 127);
    uint64_t ne = lanes_nonzero(x ^ (ONES * '='));
    return ~(ge32 & ~ge127 & ne & ~x) & HIGHS;
}

/* The lanes' high bits as an 8-bit mask, lane k to bit k. */
static inline unsigned lane_bits(uint64_t m)
{
    return (unsigned)(((m >> 7) * (uint64_t)0x0102040810204080u) >> 56);
}

/* High bit of each lane whose byte is 9..13 (tab, LF, VT, FF, CR). */
static inline uint64_t lanes_ctl(uint64_t x)
{
    uint64_t lo = x & LOW7;
    return (lo + ONES * (128 - 9)) & ~(lo + ONES * (128 - 14)) & ~x & HIGHS;
}

/* Stop and escape masks of 16 bytes (words a, b; their non-plain lanes
 * na, nb), portable. VT and FF count as stops here (one range test
 * instead of three): qp_stop sends them to qp_step, which escapes them
 * as it does any control. */
static inline void classify_swar(uint64_t a, uint64_t b, uint64_t na, uint64_t nb,
                                 unsigned *stop, unsigned *esc)
{
    unsigned np = lane_bits(na) | lane_bits(nb) << 8;
    unsigned st = lane_bits(lanes_ctl(a)) | lane_bits(lanes_ctl(b)) << 8;
    *stop = st | 1u << QP_B;
    *esc = np & ~st;
}

/* A stop after a block: in[0] is a line break or a byte that does not
 * fit on the line (col > 0 then); in[1] is visible. Returns the bytes
 * consumed (0: only a soft break was written), -1 when qp_step must
 * decide in[0] (a tab), -2 when the space just written must be taken
 * back and decided by qp_step ("=20" does not fit). */
static inline int qp_stop(const uint8_t *in, const uint8_t *start, unsigned *colp, uint8_t **op)
{
    unsigned c = in[0], col = *colp, len;
    uint8_t *o = *op;
    int next_brk = in[1] == '\r' || in[1] == '\n';

    if (c == '\r' || c == '\n') {
        /* a space written as is before this break is trailing after all */
        if (col > 0 && o > start && o[-1] == ' ') {
            if (col > QP_MAX_LINE - 2)
                return -2;
            o = put_hex(o - 1, ' ');
        }
        o[0] = '\r';
        o[1] = '\n';
        *op = o + 2;
        *colp = 0;
        return c == '\r' && in[1] == '\n' ? 2 : 1;
    }
    if (c < 32)
        return -1; /* a tab (or VT, FF from the portable classifier) */
    /* column 76 is only for the last token before a hard break */
    len = sym[c][3];
    if (c == ' ' && next_brk)
        len = 3;
    if (col + len == QP_MAX_LINE && next_brk) {
        if (len == 3)
            o = put_hex(o, c);
        else
            *o++ = (uint8_t)c;
        *op = o;
        *colp = QP_MAX_LINE;
        return 1;
    }
    o[0] = '=';
    o[1] = '\r';
    o[2] = '\n';
    *op = o + 3;
    *colp = 0;
    return 0;
}

/* The block loop over in[0..n), n > QP_MARGIN; the state has no pending
 * CR. Returns the bytes consumed; stops QP_MARGIN bytes before the end,
 * without a space written as is at the end of its output (it is taken
 * back, for the caller to decide with what follows). BLOCK is true when
 * it took the whole block in[i..i+16), else it sets k to the bytes it
 * took; either way it advances o and col. LINE, at a line start, may do
 * a whole line at once and continue. */
#define QP_BLOCKS(name, attr, LINE, BLOCK)                                  \
    attr static size_t name(mlr_qp *s, const uint8_t *in, size_t n, uint8_t **op) \
    {                                                                       \
        uint8_t *o = *op, *start = *op;                                     \
        unsigned col = s->col;                                              \
        size_t i = 0;                                                       \
        while (i + QP_MARGIN <= n) {                                        \
            size_t k;                                                       \
            int r;                                                          \
            if (col == 0) {                                                 \
                if (in[i] == '.' || in[i] == 'F')                           \
                    goto step;                                              \
                LINE;                                                       \
            }                                                               \
            /* whole blocks: a constant step, so the next load does not   \
             * wait for this block's arithmetic; no call in this loop, so \
             * the vector constants stay in registers */                   \
            while (BLOCK) {                                                 \
                i += QP_B;                                                  \
                if (i + QP_MARGIN > n)                                      \
                    goto out;                                               \
            }                                                               \
            i += k;                                                         \
            r = qp_stop(in + i, start, &col, &o);                           \
            if (r >= 0) {                                                   \
                i += (size_t)r;                                             \
                continue;                                                   \
            }                                                               \
            if (r == -2) {                                                  \
                o--;                                                        \
                i--;                                                        \
                col--;                                                      \
            }                                                               \
        step: /* at least 5 bytes are visible: qp_step always decides; \
               * o's address goes out through a copy, so o stays in a     \
               * register in the loop */                                    \
            s->col = col;                                                   \
            {                                                               \
                uint8_t *o2 = o;                                            \
                i += (size_t)qp_step(s, in + i, n - i, 0, &o2);             \
                o = o2;                                                     \
            }                                                               \
            col = s->col;                                                   \
        }                                                                   \
    out:                                                                    \
        if (col > 0 && o > start && o[-1] == ' ') {                         \
            o--;                                                            \
            i--;                                                            \
            col--;                                                          \
        }                                                                   \
        s->col = col;                                                       \
        *op = o;                                                            \
        return i;                                                           \
    }

/* Masks of 16 bytes, portable; an all-plain block that fits is checked
 * first, with one test per word. */
static inline int block_swar(const uint8_t *in, unsigned *colp, uint8_t **op, size_t *kp)
{
    uint64_t a = load_le64(in), b = load_le64(in + 8);
    uint64_t na = lanes_nonplain(a), nb = lanes_nonplain(b);
    unsigned stop, esc;
    if ((na | nb) == 0 && *colp + QP_B <= QP_MAX_LINE - 1) {
        memcpy(*op, in, QP_B);
        *op += QP_B;
        *colp += QP_B;
        return 1;
    }
    classify_swar(a, b, na, nb, &stop, &esc);
    if (stop == 1u << QP_B && *colp + QP_B + 2 * popcount16(esc) <= QP_MAX_LINE - 1) {
        put_block(in, colp, op);
        return 1;
    }
    *kp = qp_block(in, stop, esc, 0, colp, op);
    return 0;
}
QP_BLOCKS(qp_blocks_swar, , (void)0, block_swar(in + i, &col, &o, &k))

#if QP_X86
/* Masks of 16 bytes with SSE2 (baseline on x86-64); the bytes are stored
 * at o on the way, for the plain prefix. True when the whole block was
 * taken; else *kp is the count taken. */
static inline int block_sse2(const uint8_t *in, unsigned *colp, uint8_t **op, size_t *kp)
{
    __m128i v = _mm_loadu_si128((const __m128i *)(const void *)in);
    __m128i plain = _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8(31)),
                                  _mm_cmplt_epi8(v, _mm_set1_epi8(127)));
    __m128i brk;
    unsigned pm, stop, esc;
    plain = _mm_andnot_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('=')), plain);
    pm = (unsigned)_mm_movemask_epi8(plain);
    _mm_storeu_si128((__m128i *)(void *)*op, v); /* past the taken bytes: scratch */
    /* most blocks: all plain (a space too), and room for them */
    if (pm == 0xffffu && *colp + QP_B <= QP_MAX_LINE - 1) {
        *op += QP_B;
        *colp += QP_B;
        return 1;
    }
    brk = _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('\r')),
                       _mm_cmpeq_epi8(v, _mm_set1_epi8('\n')));
    brk = _mm_or_si128(brk, _mm_cmpeq_epi8(v, _mm_set1_epi8('\t')));
    stop = (unsigned)_mm_movemask_epi8(brk);
    esc = ~(pm | stop) & 0xffffu;
    if (esc == 0) {
        /* plain up to a stop, or up to the line's end */
        unsigned col = *colp, room = col < QP_MAX_LINE - 1 ? QP_MAX_LINE - 1 - col : 0;
        unsigned k = ctz32(stop | 1u << QP_B);
        k = k < room ? k : room;
        *op += k;
        *colp = col + k;
        *kp = k;
        return 0;
    }
    if (stop == 0 && *colp + QP_B + 2 * popcount16(esc) <= QP_MAX_LINE - 1) {
        put_block(in, colp, op);
        return 1;
    }
    *kp = qp_block(in, stop | 1u << QP_B, esc, 1, colp, op);
    return 0;
}
QP_BLOCKS(qp_blocks_base, , (void)0, block_sse2(in + i, &col, &o, &k))

#define TGT_VBMI2 \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vbmi2,bmi,bmi2,popcnt")))

/* Output slots of a block: three per input byte, the first always used
 * (the byte, or '='), the other two (hex digits) for escaped bytes. */
#define SLOT0 ((uint64_t)0x249249249249u)

/* Source of slot q: the byte / '=' (0..15), high hex (16..31), low hex
 * (32..47) of input byte q / 3. */
static const uint8_t slot_src[64] = {
    0,  16, 32, 1,  17, 33, 2,  18, 34, 3,  19, 35, 4,  20, 36, 5,
    21, 37, 6,  22, 38, 7,  23, 39, 8,  24, 40, 9,  25, 41, 10, 26,
    42, 11, 27, 43, 12, 28, 44, 13, 29, 45, 14, 30, 46, 15, 31, 47,
};

/* The tokens of the 16 bytes in v (esc: which need "=XX") written at o
 * by one compress of their slots; up to 64 bytes are stored. Returns the
 * end of the 16 tokens. */
TGT_VBMI2 static inline uint8_t *expand_vbmi2(__m128i v, unsigned esc, uint8_t *o)
{
    const __m128i hexd = _mm_setr_epi8('0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'A',
                                       'B', 'C', 'D', 'E', 'F');
    const __m128i low4 = _mm_set1_epi8(15);
    uint64_t used = SLOT0 | _pdep_u64(esc, SLOT0 << 1) | _pdep_u64(esc, SLOT0 << 2);
    __m128i first = _mm_mask_blend_epi8((__mmask16)esc, v, _mm_set1_epi8('='));
    __m128i hi = _mm_shuffle_epi8(hexd, _mm_and_si128(_mm_srli_epi16(v, 4), low4));
    __m128i lo = _mm_shuffle_epi8(hexd, _mm_and_si128(v, low4));
    __m512i src = _mm512_inserti32x4(_mm512_castsi128_si512(first), hi, 1);
    src = _mm512_inserti32x4(src, lo, 2);
    src = _mm512_permutexvar_epi8(_mm512_loadu_si512((const void *)slot_src), src);
    _mm512_storeu_si512((void *)o, _mm512_maskz_compress_epi8(used, src));
    return o + QP_B + 2 * (unsigned)_mm_popcnt_u32(esc);
}

/* One block with AVX-512 VBMI2: every byte is laid out as its three
 * slots and the used slots are compressed together (vpcompressb), so
 * escapes cost no branch. Stores up to 64 bytes at o (scratch past the
 * taken ones). When the block has a stop or does not fit, how many
 * tokens fit before column 76 is a popcount over the token ends. */
TGT_VBMI2 static inline int block_vbmi2(const uint8_t *in, unsigned *colp, uint8_t **op,
                                        size_t *kp)
{
    __m128i v = _mm_loadu_si128((const __m128i *)(const void *)in);
    unsigned plain = (unsigned)(_mm_cmpgt_epi8_mask(v, _mm_set1_epi8(31)) &
                                _mm_cmplt_epi8_mask(v, _mm_set1_epi8(127)) &
                                _mm_cmpneq_epi8_mask(v, _mm_set1_epi8('=')));
    unsigned brk, esc, col = *colp, len;
    uint64_t e1, e2, used;
    /* most blocks: all plain (a space too), and room for them */
    if (plain == 0xffffu && col + QP_B <= QP_MAX_LINE - 1) {
        _mm_storeu_si128((__m128i *)(void *)*op, v);
        *op += QP_B;
        *colp = col + QP_B;
        return 1;
    }
    brk = (unsigned)(_mm_cmpeq_epi8_mask(v, _mm_set1_epi8('\r')) |
                     _mm_cmpeq_epi8_mask(v, _mm_set1_epi8('\n')) |
                     _mm_cmpeq_epi8_mask(v, _mm_set1_epi8('\t')));
    esc = ~(plain | brk) & 0xffffu;
    len = QP_B + 2 * (unsigned)_mm_popcnt_u32(esc);
    if (esc == 0) {
        /* most blocks: the bytes as they are, as on SSE2 */
        unsigned room = col < QP_MAX_LINE - 1 ? QP_MAX_LINE - 1 - col : 0, k;
        _mm_storeu_si128((__m128i *)(void *)*op, v);
        if (brk == 0 && col + QP_B <= QP_MAX_LINE - 1) {
            *op += QP_B;
            *colp = col + QP_B;
            return 1;
        }
        k = (unsigned)__builtin_ctz(brk | 1u << QP_B);
        k = k < room ? k : room;
        *op += k;
        *colp = col + k;
        *kp = k;
        return 0;
    }
    e1 = _pdep_u64(esc, SLOT0 << 1);
    e2 = _pdep_u64(esc, SLOT0 << 2);
    used = SLOT0 | e1 | e2;
    expand_vbmi2(v, esc, *op);
    if (brk == 0 && col + len <= QP_MAX_LINE - 1) {
        *op += len;
        *colp = col + len;
        return 1;
    }
    {
        unsigned t = (unsigned)__builtin_ctz(brk | 1u << QP_B);
        unsigned room = col < QP_MAX_LINE - 1 ? QP_MAX_LINE - 1 - col : 0;
        uint64_t ends = _pext_u64((SLOT0 & ~(e1 >> 1)) | e2, used);
        unsigned fit = (unsigned)_mm_popcnt_u64(_bzhi_u64(ends, room));
        unsigned k = fit < t ? fit : t;
        len = k + 2 * (unsigned)_mm_popcnt_u32(esc & ((1u << k) - 1));
        *op += len;
        *colp = col + len;
        *kp = k;
        return 0;
    }
}
/* Tokens of in[0..k) written at o (esc: which of them need "=XX"; bit j
 * of the pair lo, hi for in[j]): one compress per 16 bytes, or plain
 * stores when there is no escape. Stores up to 64 bytes past the tokens. */
TGT_VBMI2 static inline void put_line_vbmi2(const uint8_t *in, unsigned k, uint64_t esc_lo,
                                           uint64_t esc_hi, __m512i z0, __m512i z1, uint8_t *o)
{
    unsigned c;
    if ((esc_lo | esc_hi) == 0) {
        _mm512_storeu_si512((void *)o, z0);
        if (k > 64)
            _mm512_storeu_si512((void *)(o + 64), z1);
        return;
    }
    for (c = 0; c < k; c += QP_B) {
        unsigned e = (unsigned)((c < 64 ? esc_lo >> c : esc_hi >> (c - 64)) & 0xffffu);
        o = expand_vbmi2(_mm_loadu_si128((const __m128i *)(const void *)(in + c)), e, o);
    }
}

/* At a line start, a line from one classification of the next 128
 * bytes, when its break (CR, LF or CRLF) is among them and no tab comes
 * first. When its tokens (a trailing space as "=20") take at most 76
 * columns, the line is written with its CRLF. When they take more, the
 * tokens that fit in 75 columns are written with a soft break: columns
 * at the 16-byte chunk edges are popcounts of the escapes, and within the
 * chunk where column 75 falls the token ends are found as in block_vbmi2.
 * Returns the bytes consumed, or 0 to leave the line to the block loop
 * (no break within 128 bytes, a tab, a trailing space that does not
 * fit). Needs 128 + QP_MARGIN visible bytes. */
TGT_VBMI2 static inline size_t line_vbmi2(const uint8_t *in, size_t avail, uint8_t **op)
{
    __m512i z0, z1;
    uint64_t brk0, brk1, tab0, tab1, esc0, esc1;
    unsigned t, sp, len, fit, j, col;
    uint8_t *o = *op;
    if (avail < 128 + QP_MARGIN)
        return 0;
    z0 = _mm512_loadu_si512((const void *)in);
    z1 = _mm512_loadu_si512((const void *)(in + 64));
#define BRK(z) (_mm512_cmpeq_epi8_mask(z, _mm512_set1_epi8('\r')) | \
                _mm512_cmpeq_epi8_mask(z, _mm512_set1_epi8('\n')))
#define TAB(z) _mm512_cmpeq_epi8_mask(z, _mm512_set1_epi8('\t'))
#define PLAIN(z) (_mm512_cmpgt_epi8_mask(z, _mm512_set1_epi8(31)) & \
                  _mm512_cmplt_epi8_mask(z, _mm512_set1_epi8(127)) & \
                  _mm512_cmpneq_epi8_mask(z, _mm512_set1_epi8('=')))
    tab0 = TAB(z0);
    tab1 = TAB(z1);
    brk0 = BRK(z0) | tab0;
    brk1 = BRK(z1) | tab1;
    if ((brk0 | brk1) == 0)
        return 0; /* longer than the window: leave it early */
    t = brk0 ? (unsigned)_tzcnt_u64(brk0) : 64 + (unsigned)_tzcnt_u64(brk1);
    if (t < 64 ? (tab0 >> t) & 1 : (tab1 >> (t - 64)) & 1)
        return 0;
    esc0 = ~PLAIN(z0) & (t < 64 ? _bzhi_u64(~(uint64_t)0, t) : ~(uint64_t)0);
    esc1 = t > 64 ? ~PLAIN(z1) & _bzhi_u64(~(uint64_t)0, t - 64) : 0;
#undef BRK
#undef TAB
#undef PLAIN
    sp = t > 0 && in[t - 1] == ' ';
    len = t + 2 * (unsigned)(_mm_popcnt_u64(esc0) + _mm_popcnt_u64(esc1)) + 2 * sp;
    if (len <= QP_MAX_LINE) {
        put_line_vbmi2(in, t, esc0, esc1, z0, z1, o);
        o = *op + len - 2 * sp;
        if (sp)
            o = put_hex(o - 1, ' ');
        o[0] = '\r';
        o[1] = '\n';
        *op = o + 2;
        return t + 1 + (in[t] == '\r' && in[t + 1] == '\n');
    }
    /* a long line: column 75 falls in chunk j (at most 4: each chunk
     * takes at least 16 columns), which starts at column col */
    col = 0;
    for (j = 1; j <= 4; j++) {
        unsigned edge = 16 * j + 2 * (unsigned)_mm_popcnt_u64(esc0 & _bzhi_u64(~(uint64_t)0, 16 * j));
        if (edge > QP_MAX_LINE - 1)
            break;
        col = edge;
    }
    j--;
    {
        unsigned e = (unsigned)((j < 4 ? esc0 >> (16 * j) : esc1) & 0xffffu);
        uint64_t e1 = _pdep_u64(e, SLOT0 << 1), e2 = _pdep_u64(e, SLOT0 << 2);
        uint64_t ends = _pext_u64((SLOT0 & ~(e1 >> 1)) | e2, SLOT0 | e1 | e2);
        fit = 16 * j + (unsigned)_mm_popcnt_u64(_bzhi_u64(ends, QP_MAX_LINE - 1 - col));
    }
    if (fit >= t)
        return 0; /* only a trailing space does not fit: qp_step's case */
    /* in[fit] is not the last token before the break: the line would
     * take at most 76 columns then; so it goes after a soft break */
    esc0 &= _bzhi_u64(~(uint64_t)0, fit);
    esc1 = fit > 64 ? esc1 & _bzhi_u64(~(uint64_t)0, fit - 64) : 0;
    len = fit + 2 * (unsigned)(_mm_popcnt_u64(esc0) + _mm_popcnt_u64(esc1));
    put_line_vbmi2(in, fit, esc0, esc1, z0, z1, o);
    o = *op + len;
    o[0] = '=';
    o[1] = '\r';
    o[2] = '\n';
    *op = o + 3;
    return fit;
}

QP_BLOCKS(qp_blocks_vbmi2, TGT_VBMI2,
          {
              size_t lk = line_vbmi2(in + i, n - i, &o);
              if (lk) {
                  i += lk;
                  continue;
              }
          },
          block_vbmi2(in + i, &col, &o, &k))

#endif /* QP_X86 */

/* Level the CPU supports (see codec_qp.h). */
int mlr_qp_max_level(void)
{
#if QP_X86
    if (__builtin_cpu_supports("avx512vbmi2") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("bmi2"))
        return MLR_QP_AVX512VBMI2;
    return MLR_QP_SSE2;
#else
    return MLR_QP_PORTABLE;
#endif
}

/* -1: the best level, else the one tests asked for. */
static int qp_forced = -1;

/* Force a level for tests and benchmarks (-1: automatic again). */
int mlr_qp_force_level(int level)
{
    int max = mlr_qp_max_level();
    qp_forced = level < 0 ? -1 : level > max ? max : level;
    return qp_forced < 0 ? max : qp_forced;
}

/* The block loop for this CPU. */
static size_t qp_blocks(mlr_qp *s, const uint8_t *in, size_t n, uint8_t **op)
{
    switch (qp_forced >= 0 ? qp_forced : mlr_qp_max_level()) {
#if QP_X86
    case MLR_QP_AVX512VBMI2:
        return qp_blocks_vbmi2(s, in, n, op);
    case MLR_QP_SSE2:
        return qp_blocks_base(s, in, n, op);
#endif
    default:
        return qp_blocks_swar(s, in, n, op);
    }
}

/* Encode in[0..n) as far as the visible bytes allow; returns how many
 * bytes were consumed (the rest must be offered again with more input).
 * The block loop does the bulk; qp_step decides the rest one byte at a
 * time: a pending CR, the last bytes, and everything when end is set. */
static size_t qp_run(mlr_qp *s, const uint8_t *in, size_t n, int end, uint8_t **op)
{
    size_t i = 0;
    while (i < n && s->pending_cr) {
        int r = qp_step(s, in + i, n - i, end, op);
        if (r < 0)
            return i;
        i += (size_t)r;
    }
    if (n - i > QP_MARGIN)
        i += qp_blocks(s, in + i, n - i, op);
    while (i < n) {
        int r = qp_step(s, in + i, n - i, end, op);
        if (r < 0)
            break;
        i += (size_t)r;
    }
    return i;
}

/* Feed held bytes first (one new byte at a time, so at most 5 are ever
 * held), then run on the caller's buffer and keep its undecided tail. */
size_t mlr_qp_encode(mlr_qp *s, const uint8_t *in, size_t n, uint8_t *out)
{
    uint8_t *o = out;
    size_t used;

    while (s->nhead > 0 && n > 0) {
        s->head[s->nhead++] = *in++;
        n--;
        used = qp_run(s, s->head, s->nhead, 0, &o);
        s->nhead -= (unsigned)used;
        memmove(s->head, s->head + used, s->nhead);
    }
    if (s->nhead > 0)
        return (size_t)(o - out);
    used = qp_run(s, in, n, 0, &o);
    s->nhead = (unsigned)(n - used);
    memcpy(s->head, in + used, s->nhead);
    return (size_t)(o - out);
}

/* Decide the held bytes as the end of the text; no line break is added. */
size_t mlr_qp_finish(mlr_qp *s, uint8_t *out)
{
    uint8_t *o = out;
    qp_run(s, s->head, s->nhead, 1, &o);
    mlr_qp_init(s);
    return (size_t)(o - out);
}

/* Run the encoder into a scratch buffer and count: exact by construction. */
uint64_t mlr_qp_encoded_size(const uint8_t *in, size_t n)
{
    enum { CHUNK = 1024 };
    uint8_t buf[3 * (CHUNK + 4) + 3 * ((CHUNK + 4) / 24 + 2) + 8];
    mlr_qp s;
    uint64_t total = 0;

    mlr_qp_init(&s);
    while (n > 0) {
        size_t k = n < CHUNK ? n : CHUNK;
        total += mlr_qp_encode(&s, in, k, buf);
        in += k;
        n -= k;
    }
    total += mlr_qp_finish(&s, buf);
    return total;
}
