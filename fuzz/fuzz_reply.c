/* fuzz_reply.c - the SMTP reply parser on arbitrary server bytes.
 *
 * The bytes are parsed three times: in one piece, in pieces cut by a
 * seeded generator, and one octet at a time. Every run must hand out the
 * same replies and stop with the same error (split invariance), every
 * reply must be well formed (code 200..559, text without CR or NUL, one
 * '\n' per extra line, within the limits), and errors must be sticky. */
#include <stdio.h>
#include <string.h>

#include "fuzz_util.h"
#include "smtp_reply.h"

/* Log one reply into a transcript. */
static void log_reply(fz_str *log, const mlr_reply *r)
{
    char head[64];
    size_t i, nl = 0, col = 0;
    FZ_ASSERTF(r->code >= 200 && r->code <= 559, "code %d", r->code);
    FZ_ASSERT(r->nlines >= 1 && r->nlines <= MLR_REPLY_MAX_LINES);
    FZ_ASSERT(r->text_len <= MLR_REPLY_MAX_BYTES);
    FZ_ASSERT(r->text[r->text_len] == '\0');
    for (i = 0; i < r->text_len; i++) {
        FZ_ASSERT(r->text[i] != '\0' && r->text[i] != '\r');
        if (r->text[i] == '\n') {
            nl++;
            col = 0;
        } else {
            FZ_ASSERT(++col <= MLR_REPLY_MAX_LINE);
        }
    }
    FZ_ASSERTF(nl + 1 == r->nlines, "%zu newlines for %zu lines", nl, r->nlines);
    /* an enhanced code, when present, is d.ddd.ddd and starts the text */
    if (r->enhanced[0]) {
        size_t el = strlen(r->enhanced);
        FZ_ASSERT(el >= 5 && el <= 9);
        FZ_ASSERT(r->text_len >= el && memcmp(r->text, r->enhanced, el) == 0);
        FZ_ASSERT(r->enhanced[0] == '2' || r->enhanced[0] == '4' || r->enhanced[0] == '5');
    }
    snprintf(head, sizeof head, "[%d %zu %s]", r->code, r->nlines, r->enhanced);
    fz_str_add(log, head, strlen(head));
    fz_str_add(log, r->text, r->text_len);
}

/* Parse buf in pieces; piece(i) gives the size of the next piece. */
static void run(const uint8_t *buf, size_t len, uint32_t seed, int mode, fz_str *log)
{
    fz_heap h;
    mlr_reply_parser p;
    size_t off = 0;
    int err = 0;
    fz_heap_init(&h, 0);
    mlr_reply_init(&p, &h.alloc);
    while (off < len && !err) {
        size_t piece = len - off, used = 0;
        if (mode == 1) {
            seed = seed * 1103515245u + 12345u;
            piece = 1 + (seed >> 16) % 97;
            if (piece > len - off)
                piece = len - off;
        } else if (mode == 2) {
            piece = 1;
        }
        while (piece > 0) {
            mlr_reply r;
            int rc = mlr_reply_parse(&p, buf + off, piece, &used, &r);
            FZ_ASSERT(used <= piece);
            if (rc < 0) {
                char e[32];
                size_t u2;
                FZ_ASSERT(rc == MLR_ERR_PROTOCOL);
                FZ_ASSERT(p.errmsg[0] != '\0');
                /* sticky */
                FZ_ASSERT(mlr_reply_parse(&p, buf, len, &u2, &r) == rc && u2 == 0);
                snprintf(e, sizeof e, "<error %d at %zu>", rc, off + used);
                fz_str_add(log, e, strlen(e));
                err = 1;
                break;
            }
            off += used;
            piece -= used;
            if (rc == 1) {
                log_reply(log, &r);
                FZ_ASSERT(!mlr_reply_partial(&p));
            } else {
                FZ_ASSERT(piece == 0);
            }
        }
    }
    if (!err && mlr_reply_partial(&p))
        fz_str_add(log, "<partial>", 9);
    mlr_reply_free(&p);
    fz_heap_check_empty(&h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_str a = {0}, b = {0}, c = {0};
    uint32_t seed;
    if (size < 1)
        return 0;
    seed = data[0];
    data++;
    size--;
    run(data, size, seed, 0, &a);
    run(data, size, seed, 1, &b);
    FZ_ASSERTF(a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0), "split run differs");
    if (size <= 4096) {
        run(data, size, seed, 2, &c);
        FZ_ASSERTF(a.n == c.n && (a.n == 0 || memcmp(a.p, c.p, a.n) == 0), "bytewise run differs");
    }
    fz_str_free(&a);
    fz_str_free(&b);
    fz_str_free(&c);
    return 0;
}
