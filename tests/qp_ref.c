/* qp_ref.c - reference for the quoted-printable tests: everything below
 * the marker is csrc/codec_qp.c as of commit a81c141, unchanged; the
 * macros give its public functions qpref_* names so that it links beside
 * the current encoder. Compiled into test_codecs and fuzz_qp only. */
#include "qp_ref.h"

#define mlr_qp_init qpref_init
#define mlr_qp_bound qpref_bound
#define mlr_qp_encode qpref_encode
#define mlr_qp_finish qpref_finish
#define mlr_qp_encoded_size qpref_encoded_size

/* ---- codec_qp.c as of a81c141 ---- */
/* codec_qp.c - incremental quoted-printable encoder for text bodies.
 *
 * Every output decision for an input byte needs at most the next four
 * bytes (a space: is a line break next?; a token ending in column 76: is
 * it the last of its line?; an 'F' at a line start: is it "From "?), so
 * the encoder holds back at most four undecided bytes between calls and
 * decides them with the same code once more input (or finish) arrives.
 * That single decision function is what makes every split of the input
 * give the same output; a fast path copies runs of plain text mid-line. */
#include "codec_qp.h"

#include <string.h>
#if defined(__SSE2__) && defined(__GNUC__)
#include <emmintrin.h>
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

/* "=XX" of every byte, padded to 4 so an escape is one 4-byte store. */
#define HX(v) ((v) < 10 ? '0' + (v) : 'A' + ((v) - 10))
#define E1(c) {'=', (uint8_t)HX((c) >> 4), (uint8_t)HX((c) & 15), 0}
#define E4(c) E1(c), E1((c) + 1), E1((c) + 2), E1((c) + 3)
#define E16(c) E4(c), E4((c) + 4), E4((c) + 8), E4((c) + 12)
#define E64(c) E16(c), E16((c) + 16), E16((c) + 32), E16((c) + 48)
static const uint8_t esc[256][4] = {E64(0), E64(64), E64(128), E64(192)};
#undef E64
#undef E16
#undef E4
#undef E1
#undef HX

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

/* High bit set in each lane whose byte is not plain (32..126 but '=').
 * Lanes are computed on 7 bits so no carry crosses into the next lane,
 * which makes the mask exact per byte, not just per word. */
static inline uint64_t nonplain(uint64_t x)
{
    uint64_t lo = x & LOW7;
    uint64_t ge32 = lo + ONES * (128 - 32);
    uint64_t ge127 = lo + ONES * (128 - 127);
    uint64_t y = x ^ (ONES * '=');
    uint64_t ne = ((y & LOW7) + LOW7) | y;
    return ~(ge32 & ~ge127 & ne & ~x) & HIGHS;
}

/* Index of the lowest lane flagged in a nonzero mask. */
static inline unsigned first_lane(uint64_t m)
{
#if defined(__GNUC__)
    return (unsigned)__builtin_ctzll(m) >> 3;
#else
    unsigned k = 0;
    while (!(m & 0x80))
        m >>= 8, k++;
    return k;
#endif
}

/* Copy plain bytes (32..126 but '=') from in to o while they last, at
 * most lim of them; avail >= lim bytes are readable. Whole words are
 * stored even when the run ends inside one: the bytes past it are scratch
 * that later output overwrites, which keeps the loop short. Returns the
 * run length. */
static inline size_t copy_plain(const uint8_t *in, size_t lim, size_t avail, uint8_t *o)
{
    size_t k = 0;
#if defined(__SSE2__) && defined(__GNUC__)
    /* same scan 16 bytes at a time where SSE2 is baseline (x86-64) */
    while (k + 16 <= avail) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(in + k));
        __m128i ok = _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8(31)),
                                   _mm_cmplt_epi8(v, _mm_set1_epi8(127)));
        unsigned m;
        size_t t;
        ok = _mm_andnot_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('=')), ok);
        m = ~(unsigned)_mm_movemask_epi8(ok) & 0xffffu;
        _mm_storeu_si128((__m128i *)(void *)(o + k), v); /* past the run: scratch */
        if (m == 0 && k + 16 <= lim) {
            k += 16;
            continue;
        }
        t = m ? (size_t)__builtin_ctz(m) : 16;
        if (t > lim - k)
            t = lim - k;
        return k + t;
    }
#endif
    while (k + 8 <= avail) {
        uint64_t x = load_le64(in + k);
        uint64_t m = nonplain(x);
        size_t t;
        memcpy(o + k, in + k, 8); /* bytes past the run are scratch */
        if (m == 0 && k + 8 <= lim) {
            k += 8;
            continue;
        }
        t = m ? first_lane(m) : 8;
        if (t > lim - k)
            t = lim - k;
        return k + t;
    }
    while (k < lim && (cls[in[k]] == QP_LIT || in[k] == ' ')) {
        o[k] = in[k];
        k++;
    }
    return k;
}

/* Encode in[0..n) as far as the visible bytes allow; returns how many
 * bytes were consumed (the rest must be offered again with more input).
 * Common cases are done inline; anything near the line limit, a line
 * start '.' or 'F', or a decision needing unseen bytes goes to qp_step. */
static size_t qp_run(mlr_qp *s, const uint8_t *in, size_t n, int end, uint8_t **op)
{
    uint8_t *o = *op, *start = *op;
    size_t i = 0;
    unsigned col = s->col;
    int pend = s->pending_cr; /* a local copy: stores through o may alias s */

    while (i < n) {
        unsigned c = in[i];
        if (pend || (col == 0 && (c == '.' || c == 'F')))
            goto slow;
        if (col < QP_MAX_LINE - 1) {
            /* the last visible byte is left out of the run, so a space
             * ending it always has a known successor (see QP_BRK below) */
            size_t lim = QP_MAX_LINE - 1 - col, r;
            if (lim > n - i - 1)
                lim = n - i - 1;
            r = copy_plain(in + i, lim, n - i, o);
            o += r;
            i += r;
            col += (unsigned)r;
            if (i >= n)
                break;
            c = in[i];
        }
        switch (cls[c]) {
        case QP_ENC:
            if (col > QP_MAX_LINE - 4)
                goto slow;
            /* UTF-8 comes in sequences: stay here while they last */
            do {
                memcpy(o, esc[c], 4); /* the 4th byte is scratch */
                o += 3;
                col += 3;
                i++;
            } while (i < n && col <= QP_MAX_LINE - 4 && cls[c = in[i]] == QP_ENC);
            continue;
        case QP_WS:
            if (col > QP_MAX_LINE - 4 || i + 1 >= n)
                goto slow;
            if (in[i + 1] == '\r' || in[i + 1] == '\n') {
                o = put_hex(o, c);
                col += 3;
            } else {
                *o++ = (uint8_t)c;
                col++;
            }
            i++;
            continue;
        case QP_BRK:
            /* A literal space just before a break can only come from the
             * run above (every other path knew its successor): it is
             * trailing after all. Encode it, or hand it to qp_step when
             * =20 does not fit. Checked here, once per line, rather than
             * after every run. */
            if (o > start && o[-1] == ' ' && col > 0) {
                if (col > QP_MAX_LINE - 2) {
                    o--;
                    i--;
                    col--;
                    goto slow;
                }
                o = put_hex(o - 1, ' ');
                col += 2;
            }
            if (c == '\r') {
                if (i + 1 >= n)
                    goto slow; /* may be half of a CRLF split across calls */
                if (in[i + 1] == '\n')
                    i++;
            }
            o[0] = '\r';
            o[1] = '\n';
            o += 2;
            col = 0;
            i++;
            continue;
        default:
            break;
        }
    slow:
        s->col = col;
        {
            int r = qp_step(s, in + i, n - i, end, &o);
            col = s->col;
            pend = s->pending_cr;
            if (r < 0)
                break;
            i += (size_t)r;
        }
    }
    s->col = col;
    *op = o;
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
