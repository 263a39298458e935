/* fuzz_util.c - see fuzz_util.h. */
#include "fuzz_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fz_die(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "\n*** invariant violated at %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    abort();
}

/* ---- checking allocator ---- */

#define HDR 16
#define MAGIC 0x6d6c7231u

typedef struct blk {
    size_t size;
    uint32_t magic;
} blk;

static void *heap_fn(void *ud, void *ptr, size_t osize, size_t nsize)
{
    fz_heap *h = ud;
    blk *b = ptr ? (blk *)((char *)ptr - HDR) : NULL;
    if (b) {
        FZ_ASSERTF(b->magic == MAGIC, "free/realloc of a block not from this allocator");
        FZ_ASSERTF(b->size == osize, "osize %zu given for a block of %zu bytes", osize, b->size);
    } else {
        FZ_ASSERTF(osize == 0 || nsize != 0, "free of NULL with osize");
    }
    if (nsize == 0) {
        if (b) {
            b->magic = 0;
            h->live--;
            h->bytes -= b->size;
            free(b);
        }
        return NULL;
    }
    if (!b || nsize > osize) {
        h->nallocs++;
        if (h->fail_at && h->nallocs == h->fail_at) {
            h->failed = 1;
            return NULL;
        }
    }
    if (nsize > SIZE_MAX - HDR)
        return NULL;
    {
        blk *nb = realloc(b, HDR + nsize);
        if (!nb)
            return NULL;
        if (!b) {
            h->live++;
        } else {
            h->bytes -= nb->size;
        }
        nb->size = nsize;
        nb->magic = MAGIC;
        h->bytes += nsize;
        return (char *)nb + HDR;
    }
}

void fz_heap_init(fz_heap *h, size_t fail_at)
{
    memset(h, 0, sizeof *h);
    h->fail_at = fail_at;
    h->alloc.fn = heap_fn;
    h->alloc.ud = h;
}

void fz_heap_check_empty(const fz_heap *h)
{
    FZ_ASSERTF(h->live == 0 && h->bytes == 0, "leak: %zu blocks, %zu bytes still allocated",
               h->live, h->bytes);
}

/* ---- input ---- */

uint8_t fz_u8(fz_in *in)
{
    if (in->n == 0)
        return 0;
    in->n--;
    return *in->p++;
}

uint16_t fz_u16(fz_in *in)
{
    uint16_t hi = fz_u8(in);
    return (uint16_t)(hi << 8 | fz_u8(in));
}

size_t fz_take(fz_in *in, size_t max, const uint8_t **out)
{
    size_t k = max > 255 ? fz_u16(in) : fz_u8(in);
    if (k > max)
        k = max ? k % (max + 1) : 0;
    if (k > in->n)
        k = in->n;
    *out = in->p;
    in->p += k;
    in->n -= k;
    return k;
}

size_t fz_rest(fz_in *in, const uint8_t **out)
{
    size_t k = in->n;
    *out = in->p;
    in->p += k;
    in->n = 0;
    return k;
}

/* ---- checks ---- */

long fz_bare_crlf(const uint8_t *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        if (s[i] == '\r') {
            if (i + 1 >= n || s[i + 1] != '\n')
                return (long)i;
            i++;
        } else if (s[i] == '\n') {
            return (long)i;
        }
    }
    return -1;
}

size_t fz_max_line(const uint8_t *s, size_t n)
{
    size_t i, col = 0, best = 0;
    for (i = 0; i < n; i++) {
        if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n') {
            if (col > best)
                best = col;
            col = 0;
            i++;
            continue;
        }
        col++;
    }
    return col > best ? col : best;
}

long fz_find(const uint8_t *s, size_t n, const void *needle, size_t nn)
{
    size_t i;
    if (nn == 0)
        return 0;
    for (i = 0; i + nn <= n; i++)
        if (s[i] == *(const uint8_t *)needle && memcmp(s + i, needle, nn) == 0)
            return (long)i;
    return -1;
}

void fz_str_add(fz_str *s, const void *p, size_t n)
{
    if (s->n + n + 1 > s->cap) {
        size_t c = s->cap ? s->cap : 64;
        while (c < s->n + n + 1)
            c *= 2;
        s->p = realloc(s->p, c);
        FZ_ASSERT(s->p != NULL);
        s->cap = c;
    }
    if (n)
        memcpy(s->p + s->n, p, n);
    s->n += n;
    s->p[s->n] = 0;
}

void fz_str_free(fz_str *s)
{
    free(s->p);
    memset(s, 0, sizeof *s);
}

/* ---- decoders ---- */

static int b64v(uint8_t c)
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

int fz_b64_decode(const uint8_t *s, size_t n, fz_str *out)
{
    int q[4], k = 0, done = 0;
    size_t i;
    fz_str_add(out, "", 0); /* never NULL, even when empty */
    for (i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (c == '\r' || c == '\n')
            continue;
        if (done)
            return -1;
        q[k] = c == '=' ? -2 : b64v(c);
        if (q[k] == -1)
            return -1;
        if (++k == 4) {
            uint8_t o[3];
            int nout = 3;
            if (q[0] < 0 || q[1] < 0 || (q[2] == -2 && q[3] != -2))
                return -1;
            if (q[3] == -2) {
                nout = q[2] == -2 ? 1 : 2;
                done = 1;
                /* the unused bits must be zero (canonical encoding) */
                if (nout == 1 && (q[1] & 15))
                    return -1;
                if (nout == 2 && (q[2] & 3))
                    return -1;
            }
            o[0] = (uint8_t)(q[0] << 2 | q[1] >> 4);
            o[1] = (uint8_t)((q[1] & 15) << 4 | (q[2] < 0 ? 0 : q[2] >> 2));
            o[2] = (uint8_t)((q[2] < 0 ? 0 : (q[2] & 3) << 6) | (q[3] < 0 ? 0 : q[3]));
            fz_str_add(out, o, (size_t)nout);
            k = 0;
        }
    }
    return k == 0 ? 0 : -1;
}

static int hexv(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int fz_qp_decode(const uint8_t *s, size_t n, fz_str *out)
{
    size_t i;
    fz_str_add(out, "", 0); /* never NULL, even when empty */
    for (i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (c == '=') {
            if (i + 2 < n && s[i + 1] == '\r' && s[i + 2] == '\n') {
                i += 2;
                continue;
            }
            if (i + 2 < n && hexv(s[i + 1]) >= 0 && hexv(s[i + 2]) >= 0) {
                uint8_t v = (uint8_t)(hexv(s[i + 1]) << 4 | hexv(s[i + 2]));
                fz_str_add(out, &v, 1);
                i += 2;
                continue;
            }
            return -1;
        }
        if (c == '\r') {
            if (i + 1 >= n || s[i + 1] != '\n')
                return -1;
            fz_str_add(out, "\r\n", 2);
            i++;
            continue;
        }
        if (c != ' ' && c != '\t' && (c < 33 || c > 126))
            return -1;
        fz_str_add(out, &c, 1);
    }
    return 0;
}

int fz_is_ew(const uint8_t *w, size_t n)
{
    return n >= 12 && w[0] == '=' && w[1] == '?' && w[n - 2] == '?' && w[n - 1] == '=';
}

static int phrase_q_ok(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '!' || c == '*' || c == '+' || c == '-' || c == '/' || c == '=' || c == '_';
}

int fz_ew_decode(const uint8_t *w, size_t n, int phrase, fz_str *out)
{
    size_t i;
    const uint8_t *t;
    size_t tn;
    if (n > 75 || !fz_is_ew(w, n))
        return -1;
    /* charset "utf-8" (any case), then the encoding letter */
    if (n < 12 || strncmp((const char *)w + 2, "utf-8?", 6) != 0)
        return -1;
    t = w + 10;
    tn = n - 12;
    if (w[8] == 'b' || w[8] == 'B') {
        if (w[9] != '?')
            return -1;
        return fz_b64_decode(t, tn, out);
    }
    if ((w[8] != 'q' && w[8] != 'Q') || w[9] != '?')
        return -1;
    for (i = 0; i < tn; i++) {
        uint8_t c = t[i];
        if (c <= 32 || c >= 127 || c == '?')
            return -1;
        if (phrase && !phrase_q_ok(c))
            return -1;
        if (c == '_') {
            fz_str_add(out, " ", 1);
        } else if (c == '=') {
            uint8_t v;
            if (i + 2 >= tn || hexv(t[i + 1]) < 0 || hexv(t[i + 2]) < 0)
                return -1;
            v = (uint8_t)(hexv(t[i + 1]) << 4 | hexv(t[i + 2]));
            fz_str_add(out, &v, 1);
            i += 2;
        } else {
            fz_str_add(out, &c, 1);
        }
    }
    return 0;
}

int fz_unstructured_decode(const uint8_t *s, size_t n, fz_str *out)
{
    size_t i = 0;
    int prev_ew = 0;
    fz_str_add(out, "", 0); /* never NULL, even when empty */
    while (i < n) {
        size_t ws = i, tok;
        while (i < n && (s[i] == ' ' || s[i] == '\t'))
            i++;
        tok = i;
        while (i < n && s[i] != ' ' && s[i] != '\t')
            i++;
        if (tok < i && fz_is_ew(s + tok, i - tok)) {
            if (!prev_ew)
                fz_str_add(out, s + ws, tok - ws);
            if (fz_ew_decode(s + tok, i - tok, 0, out))
                return -1;
            prev_ew = 1;
        } else {
            fz_str_add(out, s + ws, i - ws);
            prev_ew = 0;
        }
    }
    return 0;
}

void fz_unfold(const uint8_t *s, size_t n, fz_str *out)
{
    size_t i, start = 0;
    fz_str_add(out, "", 0); /* never NULL, even when empty */
    for (i = 0; i + 2 < n; i++) {
        if (s[i] == '\r' && s[i + 1] == '\n' && (s[i + 2] == ' ' || s[i + 2] == '\t')) {
            fz_str_add(out, s + start, i - start);
            start = i + 2;
            i++;
        }
    }
    fz_str_add(out, s + start, n - start);
}
