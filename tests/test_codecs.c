/* test_codecs.c - C-level tests of the base64 and quoted-printable body
 * encoders: known vectors, every 2-way and many 3-way splits of sample
 * inputs giving identical output, naive reference encoders written here
 * from the rules, strict decoders for round trips, output invariants,
 * exact sizes and the bound functions (checked with a canary region).
 * The SIMD base64 levels are checked against the portable encoder, and
 * the quoted-printable encoder against its previous version (qp_ref.c),
 * byte for byte, over adversarial and random inputs and their splits. */
#include "codec_base64.h"
#include "codec_qp.h"
#include "qp_ref.h"
#include "tap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CANARY 0xA5 /* never produced: both encoders emit ASCII only */
#define SLACK 64

/* Deterministic xorshift so failures reproduce. */
static uint64_t rng_state = 0x9E3779B97F4A7C15u;

/* Next pseudo-random value. */
static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

/* Uniform-enough value in [0, n). */
static size_t rnd_below(size_t n) { return n ? (size_t)(rnd() % n) : 0; }

/* Growable output collector with its own failure flags. */
typedef struct sink {
    uint8_t *data;
    size_t len, cap;
    int overflow;  /* an encoder wrote past what it returned or its bound */
} sink;

/* Room for n more bytes; the tests abort on allocation failure. */
static void sink_reserve(sink *k, size_t n)
{
    if (k->len + n > k->cap) {
        size_t cap = k->cap ? k->cap : 256;
        while (cap < k->len + n)
            cap *= 2;
        k->data = realloc(k->data, cap);
        if (!k->data)
            abort();
        k->cap = cap;
    }
}

/* Scratch output for one call: bound + SLACK, canary-filled, so a store
 * beyond the returned count or beyond the bound is caught. */
static uint8_t *scratch(size_t need)
{
    uint8_t *b = malloc(need + SLACK);
    if (!b)
        abort();
    memset(b, CANARY, need + SLACK);
    return b;
}

/* strict: nothing may be stored past got (base64); otherwise bytes past
 * got are scratch, but nothing may be stored past the bound (QP). */
static void sink_take(sink *k, uint8_t *b, size_t got, size_t bound, int strict)
{
    size_t i;
    if (got > bound)
        k->overflow = 1;
    for (i = strict ? got : bound; i < bound + SLACK; i++)
        if (b[i] != CANARY) {
            k->overflow = 1;
            break;
        }
    sink_reserve(k, got + 1);
    memcpy(k->data + k->len, b, got);
    k->len += got;
    free(b);
}

/* ---- base64 helpers ---- */

/* Encode in pieces at the given cut points (sorted, within [0, n]). Each
 * piece is copied to a block of its exact size first, so that under ASan
 * a read outside the piece (the SIMD loads) is caught. */
static void b64_pieces(const uint8_t *in, size_t n, unsigned line_len,
                       const size_t *cuts, size_t ncuts, sink *k)
{
    mlr_b64 s;
    size_t prev = 0, c;
    uint8_t *b;
    mlr_b64_init(&s, line_len);
    for (c = 0; c <= ncuts; c++) {
        size_t end = c < ncuts ? cuts[c] : n;
        size_t bound = mlr_b64_bound(end - prev, line_len);
        uint8_t *piece = malloc(end > prev ? end - prev : 1);
        if (!piece)
            abort();
        if (end > prev)
            memcpy(piece, in + prev, end - prev);
        b = scratch(bound);
        sink_take(k, b, mlr_b64_encode(&s, piece, end - prev, b), bound, 1);
        free(piece);
        prev = end;
    }
    b = scratch(MLR_B64_FINISH_MAX);
    sink_take(k, b, mlr_b64_finish(&s, b), MLR_B64_FINISH_MAX, 1);
}

/* Textbook 6-bit-at-a-time encoder, the reference for the fast one. */
static void b64_ref(const uint8_t *in, size_t n, unsigned line_len, sink *k)
{
    static const char al[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i, col = 0;
    sink_reserve(k, n * 2 + 8);
    for (i = 0; i < n; i += 3) {
        uint32_t x = (uint32_t)in[i] << 16;
        char q[4];
        int j;
        if (i + 1 < n)
            x |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            x |= in[i + 2];
        q[0] = al[x >> 18];
        q[1] = al[(x >> 12) & 63];
        q[2] = i + 1 < n ? al[(x >> 6) & 63] : '=';
        q[3] = i + 2 < n ? al[x & 63] : '=';
        for (j = 0; j < 4; j++)
            k->data[k->len++] = (uint8_t)q[j];
        col += 4;
        if (line_len && col == line_len) {
            k->data[k->len++] = '\r';
            k->data[k->len++] = '\n';
            col = 0;
        }
    }
    if (line_len && col) {
        k->data[k->len++] = '\r';
        k->data[k->len++] = '\n';
    }
}

/* ---- quoted-printable helpers ---- */

/* Encode in pieces at the given cut points (sorted, within [0, n]). */
static void qp_pieces(const uint8_t *in, size_t n, const size_t *cuts,
                      size_t ncuts, sink *k)
{
    mlr_qp s;
    size_t prev = 0, c;
    uint8_t *b;
    mlr_qp_init(&s);
    for (c = 0; c <= ncuts; c++) {
        size_t end = c < ncuts ? cuts[c] : n;
        size_t bound = mlr_qp_bound(end - prev);
        uint8_t *piece = malloc(end > prev ? end - prev : 1);
        if (!piece)
            abort();
        if (end > prev)
            memcpy(piece, in + prev, end - prev);
        b = scratch(bound);
        sink_take(k, b, mlr_qp_encode(&s, piece, end - prev, b), bound, 0);
        free(piece);
        prev = end;
    }
    b = scratch(MLR_QP_FINISH_MAX);
    sink_take(k, b, mlr_qp_finish(&s, b), MLR_QP_FINISH_MAX, 0);
}

/* Byte-at-a-time feeding: the hardest split of all. */
static void qp_bytewise(const uint8_t *in, size_t n, sink *k)
{
    mlr_qp s;
    size_t i;
    uint8_t *b;
    mlr_qp_init(&s);
    for (i = 0; i < n; i++) {
        size_t bound = mlr_qp_bound(1);
        b = scratch(bound);
        sink_take(k, b, mlr_qp_encode(&s, in + i, 1, b), bound, 0);
    }
    b = scratch(MLR_QP_FINISH_MAX);
    sink_take(k, b, mlr_qp_finish(&s, b), MLR_QP_FINISH_MAX, 0);
}

/* Append bytes (for the reference encoder). */
static void put(sink *k, const char *p, size_t n)
{
    sink_reserve(k, n);
    memcpy(k->data + k->len, p, n);
    k->len += n;
}

/* Reference QP encoder written line by line from the rules in
 * codec_qp.h, with the whole input in view (no state, no fast path). */
static void qp_ref(const uint8_t *in, size_t n, sink *k)
{
    static const char hx[] = "0123456789ABCDEF";
    size_t pos = 0;
    while (pos < n) {
        size_t end = pos, j, col = 0;
        int has_break;
        while (end < n && in[end] != '\r' && in[end] != '\n')
            end++;
        has_break = end < n;
        for (j = pos; j < end; j++) {
            unsigned c = in[j];
            int last = j + 1 == end;
            int ws = c == ' ' || c == '\t';
            int enc = ws ? last : !(c >= 33 && c <= 126 && c != '=');
            size_t len = enc ? 3 : 1;
            if (col > 0 && (col + len > 76 || (col + len == 76 && !last))) {
                put(k, "=\r\n", 3);
                col = 0;
            }
            if (col == 0 && !enc &&
                (c == '.' || (c == 'F' && end - j >= 5 && memcmp(in + j, "From ", 5) == 0))) {
                enc = 1;
                len = 3;
            }
            if (enc) {
                char e[3];
                e[0] = '=';
                e[1] = hx[c >> 4];
                e[2] = hx[c & 15];
                put(k, e, 3);
            } else {
                char ch = (char)c;
                put(k, &ch, 1);
            }
            col += len;
        }
        if (has_break) {
            put(k, "\r\n", 2);
            end += (in[end] == '\r' && end + 1 < n && in[end + 1] == '\n') ? 2 : 1;
        }
        pos = end;
    }
}

/* Input with every line break turned into CRLF: what decoding must give. */
static void crlf_normalize(const uint8_t *in, size_t n, sink *k)
{
    size_t i;
    sink_reserve(k, 2 * n + 1);
    for (i = 0; i < n; i++) {
        if (in[i] == '\r' || in[i] == '\n') {
            k->data[k->len++] = '\r';
            k->data[k->len++] = '\n';
            if (in[i] == '\r' && i + 1 < n && in[i + 1] == '\n')
                i++;
        } else {
            k->data[k->len++] = in[i];
        }
    }
}

/* Value of an upper-case hex digit, or -1. */
static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1; /* lower case is not what we emit */
}

/* Strict QP decoder: "=XX" (upper-case hex), "=" CRLF soft breaks, CRLF
 * kept as is; anything else after '=' is an error (-1). */
static long qp_decode(const uint8_t *in, size_t n, uint8_t *out)
{
    size_t i, o = 0;
    for (i = 0; i < n; i++) {
        if (in[i] != '=') {
            out[o++] = in[i];
            continue;
        }
        if (i + 2 < n && in[i + 1] == '\r' && in[i + 2] == '\n') {
            i += 2;
            continue;
        }
        if (i + 2 >= n || hexval(in[i + 1]) < 0 || hexval(in[i + 2]) < 0)
            return -1;
        out[o++] = (uint8_t)(hexval(in[i + 1]) << 4 | hexval(in[i + 2]));
        i += 2;
    }
    return (long)o;
}

/* Checks every output rule; returns NULL or what was broken. */
static const char *qp_invariants(const uint8_t *o, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t e = i, len;
        while (e < n && o[e] != '\r' && o[e] != '\n')
            e++;
        if (e < n && !(o[e] == '\r' && e + 1 < n && o[e + 1] == '\n'))
            return "bare CR or LF";
        len = e - i;
        if (len > 76)
            return "line longer than 76";
        if (len > 0 && (o[e - 1] == ' ' || o[e - 1] == '\t'))
            return "trailing white space";
        if (len > 0 && o[i] == '.')
            return "line starts with '.'";
        if (len >= 5 && memcmp(o + i, "From ", 5) == 0)
            return "line starts with \"From \"";
        for (; i < e; i++) {
            uint8_t c = o[i];
            if (!((c >= 33 && c <= 126) || c == ' ' || c == '\t'))
                return "byte outside the QP alphabet";
            if (c == '=') {
                if (i + 1 == e) {
                    if (e == n)
                        return "soft break at the very end";
                    continue; /* soft break */
                }
                if (i + 2 >= e || hexval(o[i + 1]) < 0 || hexval(o[i + 2]) < 0)
                    return "'=' not followed by two hex digits";
            }
        }
        i = e < n ? e + 2 : e;
    }
    return NULL;
}

/* Byte-identical outputs? */
static int same(const sink *a, const sink *b)
{
    return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

/* Release and zero, so a sink can be reused. */
static void sink_free(sink *k)
{
    free(k->data);
    memset(k, 0, sizeof *k);
}

/* ---- the tests ---- */

/* RFC 4648 section 10, wrapped and unwrapped, and decoded back. */
static void test_b64_vectors(void)
{
    static const struct {
        const char *in, *out;
    } v[] = {
        {"", ""},           {"f", "Zg=="},         {"fo", "Zm8="},
        {"foo", "Zm9v"},    {"foob", "Zm9vYg=="},  {"fooba", "Zm9vYmE="},
        {"foobar", "Zm9vYmFy"},
    };
    size_t i;
    for (i = 0; i < sizeof v / sizeof v[0]; i++) {
        sink k = {0};
        size_t n = strlen(v[i].in);
        uint8_t dec[16];
        long d;
        b64_pieces((const uint8_t *)v[i].in, n, 0, NULL, 0, &k);
        TAP_OK(k.len == strlen(v[i].out) && memcmp(k.data, v[i].out, k.len) == 0,
               "RFC 4648 vector \"%s\" unwrapped", v[i].in);
        sink_free(&k);
        b64_pieces((const uint8_t *)v[i].in, n, 76, NULL, 0, &k);
        TAP_OK(k.len == strlen(v[i].out) + (n ? 2 : 0) &&
                   memcmp(k.data, v[i].out, strlen(v[i].out)) == 0 &&
                   (n == 0 || memcmp(k.data + k.len - 2, "\r\n", 2) == 0),
               "RFC 4648 vector \"%s\" wrapped ends in CRLF", v[i].in);
        sink_free(&k);
        d = mlr_b64_decode(v[i].out, strlen(v[i].out), dec);
        TAP_OK(d == (long)n && memcmp(dec, v[i].in, n) == 0, "decode \"%s\"", v[i].out);
    }
}

/* A wrapped output checked against coreutils, to pin the line format. */
static void test_b64_known_wrapped(void)
{
    /* bytes 0..99 through coreutils `base64 -w 76`, LF turned into CRLF */
    static const char want[] =
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4\r\n"
        "OTo7PD0+P0BBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5fYGFiYw==\r\n";
    uint8_t in[100];
    sink k = {0};
    size_t i;
    for (i = 0; i < 100; i++)
        in[i] = (uint8_t)i;
    b64_pieces(in, 100, 76, NULL, 0, &k);
    TAP_OK(k.len == sizeof want - 1 && memcmp(k.data, want, k.len) == 0,
           "bytes 0..99 match coreutils base64 -w 76");
    sink_free(&k);
}

/* The decoder is strict about padding and alphabet, lenient on CRLF. */
static void test_b64_decode_rejects(void)
{
    static const char *bad[] = {"Zg=", "Zg", "Z===", "Zg==Zg==", "Zm9v!", "=Zg=", "Zm=v"};
    uint8_t out[32];
    size_t i;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
        TAP_OK(mlr_b64_decode(bad[i], strlen(bad[i]), out) == -1, "decode rejects \"%s\"", bad[i]);
    TAP_OK(mlr_b64_decode("Zm9v\r\nYmFy\r\n", 12, out) == 6 && memcmp(out, "foobar", 6) == 0,
           "decode skips CRLF");
}

/* Every 2-split and many 3-splits of one input, for one line length. */
static void b64_splits(const uint8_t *in, size_t n, unsigned line_len, const char *name)
{
    sink ref = {0}, whole = {0};
    size_t a, b, tries;
    int ok2 = 1, ok3 = 1, bad = 0;

    b64_ref(in, n, line_len, &ref);
    b64_pieces(in, n, line_len, NULL, 0, &whole);
    TAP_OK(same(&ref, &whole), "base64/%u %s: matches the reference", line_len, name);
    TAP_OK(mlr_b64_encoded_size(n, line_len) == whole.len,
           "base64/%u %s: encoded_size %llu", line_len, name, (unsigned long long)whole.len);
    for (a = 0; a <= n; a++) {
        sink k = {0};
        b64_pieces(in, n, line_len, &a, 1, &k);
        ok2 &= same(&k, &whole);
        bad |= k.overflow;
        sink_free(&k);
    }
    tries = n < 120 ? (n + 1) * (n + 1) : 3000;
    for (a = 0; a < tries; a++) {
        size_t cut[2];
        sink k = {0};
        if (n < 120) {
            cut[0] = a / (n + 1);
            cut[1] = a % (n + 1);
            if (cut[1] < cut[0])
                continue;
        } else {
            cut[0] = rnd_below(n + 1);
            cut[1] = cut[0] + rnd_below(n + 1 - cut[0]);
        }
        b64_pieces(in, n, line_len, cut, 2, &k);
        ok3 &= same(&k, &whole);
        bad |= k.overflow;
        sink_free(&k);
    }
    {
        /* one byte at a time */
        size_t *cuts = malloc((n + 1) * sizeof *cuts);
        sink k = {0};
        for (b = 0; b < n; b++)
            cuts[b] = b;
        b64_pieces(in, n, line_len, cuts, n, &k);
        ok2 &= same(&k, &whole);
        bad |= k.overflow;
        free(cuts);
        sink_free(&k);
    }
    TAP_OK(ok2, "base64/%u %s: every 2-split and bytewise give the same output", line_len, name);
    TAP_OK(ok3, "base64/%u %s: 3-splits give the same output", line_len, name);
    TAP_OK(!bad && !whole.overflow, "base64/%u %s: never writes past count or bound", line_len, name);
    sink_free(&ref);
    sink_free(&whole);
}

/* Sizes around the 3-byte group and the 57-byte line. */
static void test_b64_samples(void)
{
    static const size_t sizes[] = {0, 1, 2, 3, 4, 56, 57, 58, 113, 114, 115, 171, 1000};
    uint8_t buf[1000];
    size_t i;
    char name[32];
    for (i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)rnd();
    for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        snprintf(name, sizeof name, "%zu random bytes", sizes[i]);
        b64_splits(buf, sizes[i], 76, name);
        b64_splits(buf, sizes[i], 0, name);
    }
    b64_splits(buf, 300, 4, "300 bytes, 4-char lines");
    b64_splits(buf, 300, 64, "300 bytes, 64-char lines");
}

/* Random data and cut points against the reference and the decoder. */
static void test_b64_random(void)
{
    int iter, ok_rt = 1, ok_ref = 1, ok_size = 1, ok_bound = 1;
    for (iter = 0; iter < 400; iter++) {
        size_t n = iter < 200 ? (size_t)iter : rnd_below(iter < 390 ? 5000 : 300000);
        unsigned line_len = (iter % 3 == 0) ? 0 : 76;
        uint8_t *in = malloc(n + 1), *dec;
        size_t cut[4], c, i;
        sink k = {0}, ref = {0};
        long d;
        for (i = 0; i < n; i++)
            in[i] = (uint8_t)rnd();
        for (c = 0; c < 4; c++)
            cut[c] = rnd_below(n + 1);
        for (c = 1; c < 4; c++) /* tiny insertion sort */
            for (i = c; i > 0 && cut[i] < cut[i - 1]; i--) {
                size_t t = cut[i];
                cut[i] = cut[i - 1];
                cut[i - 1] = t;
            }
        b64_pieces(in, n, line_len, cut, 4, &k);
        b64_ref(in, n, line_len, &ref);
        ok_ref &= same(&k, &ref);
        ok_size &= mlr_b64_encoded_size(n, line_len) == k.len;
        ok_bound &= !k.overflow;
        dec = malloc(3 * (k.len / 4) + 3);
        d = mlr_b64_decode((const char *)k.data, k.len, dec);
        ok_rt &= d == (long)n && (n == 0 || memcmp(dec, in, n) == 0);
        free(dec);
        free(in);
        sink_free(&k);
        sink_free(&ref);
    }
    TAP_OK(ok_ref, "base64: 400 random inputs in 5 pieces match the reference");
    TAP_OK(ok_rt, "base64: 400 random inputs round-trip through the decoder");
    TAP_OK(ok_size, "base64: encoded_size is exact for 400 random inputs");
    TAP_OK(ok_bound, "base64: bound respected for 400 random inputs");
    TAP_OK(mlr_b64_encoded_size(57, 76) == 78 && mlr_b64_encoded_size(58, 76) == 84 &&
               mlr_b64_encoded_size((uint64_t)1 << 40, 0) == (((uint64_t)1 << 40) + 2) / 3 * 4,
           "base64: encoded_size at line edges and 1 TiB");
    TAP_OK(mlr_b64_bound((size_t)-1 / 3, 4) > (size_t)-1 / 3, "base64: bound does not overflow");
}

/* Name of a base64 level, for test names. */
static const char *b64_level_name(int level)
{
    static const char *names[] = {"scalar", "SSSE3", "AVX2", "AVX-512 VBMI"};
    return names[level];
}

/* Every SIMD level against the portable encoder: every length 0..300
 * whole and in every 2-split, every 3-split up to 64 bytes, for several
 * line lengths; then long random inputs in random pieces. */
static void test_b64_levels(void)
{
    static const unsigned lens[] = {76, 0, 4, 8, 12, 64, 72, 996};
    enum { SHORT = 300, LONG_ITERS = 60 };
    int max = mlr_b64_max_level(), level;
    uint8_t *buf = malloc(SHORT);
    size_t i;

    for (i = 0; i < SHORT; i++)
        buf[i] = (uint8_t)rnd();
    TAP_OK(mlr_b64_force_level(0) == 0 && mlr_b64_force_level(99) == max &&
               mlr_b64_force_level(-1) == max,
           "base64: levels 0..%d here (best: %s), force_level clamps", max, b64_level_name(max));
    for (level = 1; level <= max; level++) {
        int ok_whole = 1, ok2 = 1, ok3 = 1, ok_long = 1, bad = 0;
        size_t li, n, a, b;
        for (li = 0; li < sizeof lens / sizeof lens[0]; li++) {
            unsigned ll = lens[li];
            for (n = 0; n <= SHORT; n++) {
                sink want = {0}, got = {0};
                mlr_b64_force_level(0);
                b64_pieces(buf, n, ll, NULL, 0, &want);
                mlr_b64_force_level(level);
                b64_pieces(buf, n, ll, NULL, 0, &got);
                ok_whole &= same(&got, &want);
                bad |= got.overflow;
                for (a = 0; a <= n; a++) {
                    sink k = {0};
                    b64_pieces(buf, n, ll, &a, 1, &k);
                    ok2 &= same(&k, &want);
                    bad |= k.overflow;
                    sink_free(&k);
                }
                for (a = 0; n <= 64 && a <= n; a++)
                    for (b = a; b <= n; b++) {
                        size_t cut[2];
                        sink k = {0};
                        cut[0] = a;
                        cut[1] = b;
                        b64_pieces(buf, n, ll, cut, 2, &k);
                        ok3 &= same(&k, &want);
                        bad |= k.overflow;
                        sink_free(&k);
                    }
                sink_free(&want);
                sink_free(&got);
            }
        }
        for (i = 0; i < LONG_ITERS; i++) {
            size_t len = 1000 + rnd_below(200000), cut[8], c, j;
            unsigned ll = lens[i % (sizeof lens / sizeof lens[0])];
            uint8_t *in = malloc(len);
            sink want = {0}, got = {0};
            for (j = 0; j < len; j++)
                in[j] = (uint8_t)rnd();
            for (c = 0; c < 8; c++)
                cut[c] = rnd_below(len + 1);
            for (c = 1; c < 8; c++)
                for (j = c; j > 0 && cut[j] < cut[j - 1]; j--) {
                    size_t t = cut[j];
                    cut[j] = cut[j - 1];
                    cut[j - 1] = t;
                }
            mlr_b64_force_level(0);
            b64_pieces(in, len, ll, cut, 8, &want);
            mlr_b64_force_level(level);
            b64_pieces(in, len, ll, cut, 8, &got);
            ok_long &= same(&got, &want);
            bad |= got.overflow;
            sink_free(&got);
            b64_pieces(in, len, ll, NULL, 0, &got);
            ok_long &= same(&got, &want);
            bad |= got.overflow;
            sink_free(&got);
            sink_free(&want);
            free(in);
        }
        TAP_OK(ok_whole, "base64 %s: lengths 0..%d match the scalar encoder", b64_level_name(level), SHORT);
        TAP_OK(ok2, "base64 %s: every 2-split of lengths 0..%d matches", b64_level_name(level), SHORT);
        TAP_OK(ok3, "base64 %s: every 3-split of lengths 0..64 matches", b64_level_name(level));
        TAP_OK(ok_long, "base64 %s: %d long random inputs, whole and in 9 pieces, match",
               b64_level_name(level), LONG_ITERS);
        TAP_OK(!bad, "base64 %s: never writes past count or bound", b64_level_name(level));
    }
    mlr_b64_force_level(-1);
    free(buf);
}

/* Full QP check of one input: reference, invariants, decode, sizes and
 * identical output for every 2-split, bytewise and many 3-splits. */
static void qp_check(const uint8_t *in, size_t n, const char *name)
{
    sink ref = {0}, whole = {0}, norm = {0}, k = {0};
    uint8_t *dec;
    const char *why;
    long d;
    size_t a, tries;
    int ok2 = 1, ok3 = 1, bad = 0;

    qp_ref(in, n, &ref);
    qp_pieces(in, n, NULL, 0, &whole);
    TAP_OK(same(&ref, &whole), "qp %s: matches the reference", name);
    why = qp_invariants(whole.data, whole.len);
    TAP_OK(why == NULL, "qp %s: output invariants%s%s", name, why ? ": " : "", why ? why : "");
    crlf_normalize(in, n, &norm);
    dec = malloc(whole.len + 1);
    d = qp_decode(whole.data, whole.len, dec);
    TAP_OK(d == (long)norm.len && (norm.len == 0 || memcmp(dec, norm.data, norm.len) == 0),
           "qp %s: decodes to the input with CRLF line ends", name);
    free(dec);
    TAP_OK(mlr_qp_encoded_size(in, n) == whole.len, "qp %s: encoded_size is exact", name);

    for (a = 0; a <= n; a++) {
        sink p = {0};
        qp_pieces(in, n, &a, 1, &p);
        ok2 &= same(&p, &whole);
        bad |= p.overflow;
        sink_free(&p);
    }
    qp_bytewise(in, n, &k);
    ok2 &= same(&k, &whole);
    bad |= k.overflow;
    tries = n < 150 ? (n + 1) * (n + 1) : 4000;
    for (a = 0; a < tries; a++) {
        size_t cut[2];
        sink p = {0};
        if (n < 150) {
            cut[0] = a / (n + 1);
            cut[1] = a % (n + 1);
            if (cut[1] < cut[0])
                continue;
        } else {
            cut[0] = rnd_below(n + 1);
            cut[1] = cut[0] + rnd_below(n + 1 - cut[0]);
        }
        qp_pieces(in, n, cut, 2, &p);
        ok3 &= same(&p, &whole);
        bad |= p.overflow;
        sink_free(&p);
    }
    TAP_OK(ok2, "qp %s: every 2-split and bytewise give the same output", name);
    TAP_OK(ok3, "qp %s: 3-splits give the same output", name);
    TAP_OK(!bad && !whole.overflow, "qp %s: never writes past the bound", name);
    sink_free(&ref);
    sink_free(&whole);
    sink_free(&norm);
    sink_free(&k);
}

/* One input, whole, must give exactly want. */
static void qp_expect_n(const char *in, size_t n, const char *want, const char *name)
{
    sink k = {0};
    qp_pieces((const uint8_t *)in, n, NULL, 0, &k);
    TAP_OK(k.len == strlen(want) && memcmp(k.data, want, k.len) == 0, "qp %s: exact output", name);
    if (!(k.len == strlen(want) && memcmp(k.data, want, k.len) == 0))
        printf("# got \"%.*s\"\n", (int)k.len, (const char *)k.data);
    sink_free(&k);
}

/* qp_expect_n for C strings. */
static void qp_expect(const char *in, const char *want, const char *name)
{
    qp_expect_n(in, strlen(in), want, name);
}

/* Hand-checked outputs for each rule of codec_qp.h. */
static void test_qp_exact(void)
{
    qp_expect("", "", "empty");
    qp_expect("a", "a", "one byte");
    qp_expect("a=b", "a=3Db", "equals sign");
    qp_expect("hi \r\nyou\t\n", "hi=20\r\nyou=09\r\n", "trailing white space");
    qp_expect("x ", "x=20", "white space at the end");
    qp_expect("a b\tc", "a b\tc", "inner white space");
    qp_expect("a\rb\nc\r\nd\n\re", "a\r\nb\r\nc\r\nd\r\n\r\ne", "CR, LF, CRLF, LF CR");
    qp_expect(".\r\n..\r\na.\r\n", "=2E\r\n=2E.\r\na.\r\n", "dots at line start");
    qp_expect("From me\nFrom\nFro\nxFrom ", "=46rom me\r\nFrom\r\nFro\r\nxFrom=20",
              "From at line start");
    qp_expect("caf\xc3\xa9 \xe2\x82\xac", "caf=C3=A9 =E2=82=AC", "UTF-8");
    qp_expect_n("\x00\x7f\xff", 3, "=00=7F=FF", "controls and high bytes");
    qp_expect("0123456789012345678901234567890123456789012345678901234567890123456789012345",
              "0123456789012345678901234567890123456789012345678901234567890123456789012345",
              "76 chars fit at the end");
    qp_expect("01234567890123456789012345678901234567890123456789012345678901234567890123456",
              "012345678901234567890123456789012345678901234567890123456789012345678901234=\r\n56",
              "77 chars get a soft break");
    qp_expect("0123456789012345678901234567890123456789012345678901234567890123456789012=",
              "0123456789012345678901234567890123456789012345678901234567890123456789012=3D",
              "'=' ends a 76-char line");
    qp_expect("01234567890123456789012345678901234567890123456789012345678901234567890123=x",
              "01234567890123456789012345678901234567890123456789012345678901234567890123=\r\n=3Dx",
              "'=' moves to the next line");
    qp_expect("012345678901234567890123456789012345678901234567890123456789012345678901234.From x",
              "012345678901234567890123456789012345678901234567890123456789012345678901234=\r\n"
              "=2EFrom x",
              "dot after a soft break");
    qp_expect("012345678901234567890123456789012345678901234567890123456789012345678901234From x",
              "012345678901234567890123456789012345678901234567890123456789012345678901234=\r\n"
              "=46rom x",
              "From after a soft break");
}

/* A sample text built from pieces, with an exact length per line. */
static size_t line_of(uint8_t *p, size_t len, char fill, const char *brk)
{
    size_t i;
    for (i = 0; i < len; i++)
        p[i] = (uint8_t)fill;
    memcpy(p + len, brk, strlen(brk));
    return len + strlen(brk);
}

/* Tricky samples through qp_check: breaks, edges of column 76, '=', UTF-8. */
static void test_qp_samples(void)
{
    static const char *texts[] = {
        "",
        "a",
        "ab",
        " ",
        "\r",
        "\n",
        "\r\n",
        "\n\r",
        "\r\r\n\n",
        "Hello, World!\r\nSecond line\nthird\rfourth\r\n",
        "trailing  \r\nspaces\t \nand tabs\t\r\nend ",
        ".\r\n.hidden\n..\r.",
        "From the start\nFrom\nFrom  \nFrom \nFrom x\n From\nFrom",
        "Gr\xc3\xbc\xc3\x9f" "e aus M\xc3\xbc" "nchen \xe2\x82\xac 5 \xe4\xbd\xa0\xe5\xa5\xbd\r\n",
        "a=b==c=\r\n=\n=",
    };
    uint8_t buf[4096];
    size_t i, n;
    char name[64];
    static const char *brks[] = {"\r\n", "\n", "\r"};

    for (i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        snprintf(name, sizeof name, "sample %zu", i);
        qp_check((const uint8_t *)texts[i], strlen(texts[i]), name);
    }
    /* lines of exactly 74..78 chars of each kind, with each line break */
    for (i = 0; i < 3; i++) {
        size_t len;
        n = 0;
        for (len = 73; len <= 78; len++) {
            n += line_of(buf + n, len, 'x', brks[i]);
            n += line_of(buf + n, len - 1, 'y', "");
            n += line_of(buf + n, 1, ' ', brks[(i + 1) % 3]);
            n += line_of(buf + n, len - 1, 'z', "");
            n += line_of(buf + n, 1, '=', brks[(i + 2) % 3]);
            n += line_of(buf + n, len - 2, 'w', "");
            n += line_of(buf + n, 1, '.', "=");
            n += line_of(buf + n, 1, '\t', brks[i]);
        }
        snprintf(name, sizeof name, "long lines with %s breaks",
                 i == 0 ? "CRLF" : i == 1 ? "LF" : "CR");
        qp_check(buf, n, name);
    }
    /* a long text: words, UTF-8, mixed breaks, dots and From at starts */
    {
        static const char *words[] = {"the", "quick", "From", ".", "=", "\xc3\xbc",
                                      "\xe2\x82\xac", "\xe4\xbd\xa0", "brown", "fox", "a",
                                      "longerwordhere", "\t", " "};
        n = 0;
        while (n < 3000) {
            size_t w = rnd_below(sizeof words / sizeof words[0]);
            size_t r = rnd_below(20);
            memcpy(buf + n, words[w], strlen(words[w]));
            n += strlen(words[w]);
            if (r == 0)
                n += line_of(buf + n, 0, 0, brks[rnd_below(3)]);
            else if (r < 15)
                buf[n++] = ' ';
        }
        qp_check(buf, n, "long mixed text");
    }
}

/* Random text from a chosen alphabet, biased toward the tricky bytes. */
static void random_text(uint8_t *p, size_t n, int kind)
{
    static const char tricky[] = "  \t\r\n\r\n.F=From ";
    size_t i;
    for (i = 0; i < n; i++) {
        uint64_t r = rnd();
        switch (kind) {
        case 0: /* binary */
            p[i] = (uint8_t)r;
            break;
        case 1: /* tricky bytes only */
            p[i] = (uint8_t)tricky[r % (sizeof tricky - 1)];
            break;
        case 2: /* text with occasional tricky and non-ASCII bytes */
            if (r % 10 == 0)
                p[i] = (uint8_t)tricky[(r >> 8) % (sizeof tricky - 1)];
            else if (r % 37 == 1)
                p[i] = (uint8_t)(0x80 | (r >> 16));
            else
                p[i] = (uint8_t)('a' + (r >> 8) % 26);
            break;
        default: /* long lines, few breaks */
            p[i] = (r % 200 == 0) ? '\n' : (r % 7 == 0) ? ' ' : (uint8_t)('A' + (r >> 8) % 26);
            break;
        }
    }
}

/* Random texts of four kinds, cut in 7 pieces, checked every way. */
static void test_qp_random(void)
{
    int iter, ok_ref = 1, ok_rt = 1, ok_inv = 1, ok_size = 1, ok_bound = 1;
    for (iter = 0; iter < 2000; iter++) {
        size_t n = iter < 1600 ? rnd_below(400) : rnd_below(100000);
        uint8_t *in = malloc(n + 1), *dec;
        size_t cut[6], c, i;
        sink k = {0}, ref = {0}, norm = {0};
        long d;
        random_text(in, n, iter % 4);
        for (c = 0; c < 6; c++)
            cut[c] = rnd_below(n + 1);
        for (c = 1; c < 6; c++)
            for (i = c; i > 0 && cut[i] < cut[i - 1]; i--) {
                size_t t = cut[i];
                cut[i] = cut[i - 1];
                cut[i - 1] = t;
            }
        qp_pieces(in, n, cut, 6, &k);
        qp_ref(in, n, &ref);
        ok_ref &= same(&k, &ref);
        ok_inv &= qp_invariants(k.data, k.len) == NULL;
        ok_size &= mlr_qp_encoded_size(in, n) == k.len;
        ok_bound &= !k.overflow;
        crlf_normalize(in, n, &norm);
        dec = malloc(k.len + 1);
        d = qp_decode(k.data, k.len, dec);
        ok_rt &= d == (long)norm.len && (norm.len == 0 || memcmp(dec, norm.data, norm.len) == 0);
        free(dec);
        free(in);
        sink_free(&k);
        sink_free(&ref);
        sink_free(&norm);
    }
    TAP_OK(ok_ref, "qp: 2000 random inputs in 7 pieces match the reference");
    TAP_OK(ok_inv, "qp: 2000 random outputs keep the invariants");
    TAP_OK(ok_rt, "qp: 2000 random inputs round-trip through the decoder");
    TAP_OK(ok_size, "qp: encoded_size is exact for 2000 random inputs");
    TAP_OK(ok_bound, "qp: bound respected for 2000 random inputs");
}

/* Worst cases for the bound: all-encoded bytes fed in small pieces. */
static void test_qp_bound_worst(void)
{
    uint8_t in[997];
    int ok = 1;
    size_t piece;
    memset(in, 0xff, sizeof in);
    for (piece = 1; piece <= 9; piece++) {
        sink k = {0};
        size_t cuts[997], nc = 0, p;
        for (p = piece; p < sizeof in; p += piece)
            cuts[nc++] = p;
        qp_pieces(in, sizeof in, cuts, nc, &k);
        ok &= !k.overflow && k.len == mlr_qp_encoded_size(in, sizeof in);
        sink_free(&k);
    }
    TAP_OK(ok, "qp: bound holds for all-encoded input in pieces of 1..9");
}

/* The previous encoder (qp_ref.c) on the whole input, as one call. */
static void qp_old(const uint8_t *in, size_t n, sink *k)
{
    mlr_qp s;
    uint8_t *b = malloc(qpref_bound(n) + MLR_QP_FINISH_MAX);
    size_t got;
    if (!b)
        abort();
    qpref_init(&s);
    got = qpref_encode(&s, in, n, b);
    got += qpref_finish(&s, b + got);
    sink_reserve(k, got + 1); /* never NULL, even for empty output */
    put(k, (const char *)b, got);
    free(b);
}

/* Adversarial text: lines of lengths around the 76-column edge made of
 * plain runs, '=', UTF-8, blanks (also at the end), '.', "From ", tabs,
 * controls and every line break; kind picks the mix. */
static size_t adversarial_text(uint8_t *p, size_t cap, int kind)
{
    static const char *bits[] = {"=", "\xc3\xbc", "\xe2\x82\xac", " ", "\t", ".", "From ",
                                 "F", "\x01", "\x7f", "==", "  ", " \t", "a", "\xff"};
    static const char *brks[] = {"\r\n", "\n", "\r", "\n\r", "\r\r\n"};
    size_t n = 0;
    while (n + 200 < cap) {
        size_t len = 60 + rnd_below(30), start = n, b;
        if (kind == 1)
            len = 73 + rnd_below(6); /* right at the edge */
        if (rnd_below(4) == 0 && n + 5 < cap) { /* line start specials */
            const char *s0 = bits[5 + rnd_below(3)];
            memcpy(p + n, s0, strlen(s0));
            n += strlen(s0);
        }
        while (n - start < len) {
            if (rnd_below(kind == 2 ? 2 : 8) == 0) {
                const char *b0 = bits[rnd_below(sizeof bits / sizeof bits[0])];
                memcpy(p + n, b0, strlen(b0));
                n += strlen(b0);
            } else {
                p[n++] = (uint8_t)('a' + rnd_below(26));
            }
        }
        for (b = rnd_below(3); b > 0; b--) /* trailing blanks */
            p[n++] = rnd_below(2) ? ' ' : '\t';
        if (rnd_below(10) != 0) {
            const char *b1 = brks[rnd_below(sizeof brks / sizeof brks[0])];
            memcpy(p + n, b1, strlen(b1));
            n += strlen(b1);
        }
    }
    return n;
}

/* Check one input against the previous encoder: whole, bytewise, every
 * 2-split, and every 3-split (short inputs) or random ones. */
static int qp_vs_old(const uint8_t *in, size_t n, int all3, int *bad)
{
    sink want = {0}, k = {0};
    size_t a, b;
    int ok = 1;
    qp_old(in, n, &want);
    qp_pieces(in, n, NULL, 0, &k);
    ok &= same(&k, &want);
    *bad |= k.overflow;
    sink_free(&k);
    qp_bytewise(in, n, &k);
    ok &= same(&k, &want);
    *bad |= k.overflow;
    sink_free(&k);
    for (a = 0; a <= n; a++) {
        qp_pieces(in, n, &a, 1, &k);
        ok &= same(&k, &want);
        *bad |= k.overflow;
        sink_free(&k);
    }
    for (a = 0; a <= n; a++)
        for (b = a; b <= n; b += all3 ? 1 : 1 + rnd_below(n / 4 + 1)) {
            size_t cut[2];
            cut[0] = a;
            cut[1] = b;
            qp_pieces(in, n, cut, 2, &k);
            ok &= same(&k, &want);
            *bad |= k.overflow;
            sink_free(&k);
        }
    sink_free(&want);
    return ok;
}

/* The encoder against its previous version, byte for byte, at one level. */
static void qp_vs_old_level(int level)
{
    static const char *names[] = {"portable", "SSE2", "AVX-512 VBMI2"};
    enum { CAP = 1 << 19 };
    uint8_t *buf = malloc(CAP);
    int ok_short = 1, ok_adv = 1, ok_long = 1, bad = 0, iter, kind;
    size_t n, i;
    const char *name = names[level];

    mlr_qp_force_level(level);

    /* short inputs over a tiny alphabet of the bytes that matter */
    for (iter = 0; iter < 3000; iter++) {
        static const char alpha[] = "  \t\r\n.F=rom\xc3x";
        n = rnd_below(iter < 2000 ? 24 : 90);
        for (i = 0; i < n; i++)
            buf[i] = (uint8_t)alpha[rnd_below(sizeof alpha - 1)];
        ok_short &= qp_vs_old(buf, n, n <= 24, &bad);
    }
    /* random text of every kind, lengths 0..300 */
    for (iter = 0; iter < 400; iter++) {
        n = rnd_below(301);
        random_text(buf, n, iter % 4);
        ok_short &= qp_vs_old(buf, n, 0, &bad);
    }
    /* all escapes (the widest output per block) and all '=' */
    for (n = 0; n <= 200; n++) {
        memset(buf, n % 2 ? 0xff : '=', n);
        ok_short &= qp_vs_old(buf, n, 0, &bad);
    }
    /* adversarial lines, a few hundred bytes to a few KiB */
    for (iter = 0; iter < 120; iter++) {
        n = adversarial_text(buf, 300 + rnd_below(iter < 100 ? 600 : 2000), iter % 3);
        ok_adv &= qp_vs_old(buf, n, 0, &bad);
    }
    /* long inputs in many random pieces */
    for (iter = 0; iter < 21; iter++) {
        size_t cut[16], c, j;
        sink want = {0}, k = {0};
        kind = iter % 7;
        if (kind < 3) {
            n = adversarial_text(buf, CAP - rnd_below(CAP / 2), kind);
        } else {
            n = 1000 + rnd_below(CAP - 1000);
            random_text(buf, n, kind - 3);
        }
        for (c = 0; c < 16; c++)
            cut[c] = rnd_below(n + 1);
        for (c = 1; c < 16; c++)
            for (j = c; j > 0 && cut[j] < cut[j - 1]; j--) {
                size_t t = cut[j];
                cut[j] = cut[j - 1];
                cut[j - 1] = t;
            }
        qp_old(buf, n, &want);
        qp_pieces(buf, n, cut, 16, &k);
        ok_long &= same(&k, &want);
        bad |= k.overflow;
        sink_free(&k);
        qp_pieces(buf, n, NULL, 0, &k);
        ok_long &= same(&k, &want);
        bad |= k.overflow;
        ok_long &= mlr_qp_encoded_size(buf, n) == k.len;
        sink_free(&k);
        sink_free(&want);
    }
    TAP_OK(ok_short, "qp %s: 3601 short inputs, every split, match the previous encoder", name);
    TAP_OK(ok_adv, "qp %s: 120 adversarial texts, every 2-split, match the previous encoder", name);
    TAP_OK(ok_long, "qp %s: 21 long texts up to 512 KiB, whole and in 17 pieces, match the previous encoder",
           name);
    TAP_OK(!bad, "qp %s: never writes past the bound against the previous encoder", name);
    mlr_qp_force_level(-1);
    free(buf);
}

/* Every level of the block loop this CPU has against the previous encoder. */
static void test_qp_vs_old(void)
{
    int max = mlr_qp_max_level(), level;
    TAP_OK(mlr_qp_force_level(0) == 0 && mlr_qp_force_level(99) == max &&
               mlr_qp_force_level(-1) == max,
           "qp: levels 0..%d here, force_level clamps", max);
    for (level = 0; level <= max; level++)
        qp_vs_old_level(level);
}

/* Runs every group; the exit code says whether any check failed. */
int main(void)
{
    test_b64_vectors();
    test_b64_known_wrapped();
    test_b64_decode_rejects();
    test_b64_samples();
    test_b64_random();
    test_b64_levels();
    test_qp_exact();
    test_qp_samples();
    test_qp_random();
    test_qp_bound_worst();
    test_qp_vs_old();
    return tap_done();
}
