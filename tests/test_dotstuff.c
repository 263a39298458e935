/* test_dotstuff.c - CRLF normalisation and dot-stuffing: fixed vectors,
 * the smuggling corpus, every split, worst-case expansion. */
#include <stdlib.h>
#include <string.h>

#include "codec_dotstuff.h"
#include "mlr_common.h"
#include "tap.h"

/* Stuff in[0..n) cut at the given points (cuts[] ascending, ncuts of
 * them); returns the output length or -1 on error. */
static long stuff_cuts(const char *in, size_t n, const size_t *cuts, size_t ncuts,
                       size_t max_line, char *out)
{
    mlr_dot s;
    size_t o = 0, prev = 0, i, w;
    mlr_dot_init(&s, max_line);
    for (i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : n;
        if (mlr_dot_encode(&s, (const uint8_t *)in + prev, end - prev, (uint8_t *)out + o, &w))
            return -1;
        o += w;
        prev = end;
    }
    o += mlr_dot_finish(&s, (uint8_t *)out + o);
    return (long)o;
}

/* Check a vector whole, at every single split and every pair of splits. */
static void vec(const char *in, size_t n, const char *want)
{
    char *out = malloc(2 * n + 16);
    size_t i, j, cuts[2];
    long len = stuff_cuts(in, n, NULL, 0, 0, out);
    int ok = len == (long)strlen(want) && !memcmp(out, want, (size_t)len);
    TAP_OK(ok, "stuffing %zu octets gives the expected wire bytes", n);
    ok = 1;
    for (i = 0; i <= n; i++)
        for (j = i; j <= n; j++) {
            cuts[0] = i;
            cuts[1] = j;
            len = stuff_cuts(in, n, cuts, 2, 0, out);
            if (len != (long)strlen(want) || memcmp(out, want, (size_t)len))
                ok = 0;
        }
    TAP_OK(ok, "...identical for every split into 1, 2 or 3 pieces");
    free(out);
}

/* The wire bytes: no bare CR or LF, exactly one end-of-data at the end. */
static int wire_ok(const char *o, size_t n)
{
    size_t i, eod = 0;
    for (i = 0; i < n; i++) {
        if (o[i] == '\r' && (i + 1 >= n || o[i + 1] != '\n'))
            return 0;
        if (o[i] == '\n' && (i == 0 || o[i - 1] != '\r'))
            return 0;
        if (o[i] == '\0')
            return 0;
        if (o[i] == '.' && (i == 0 || o[i - 1] == '\n') && i + 2 < n + 1 &&
            i + 1 < n && o[i + 1] == '\r')
            eod++;
    }
    return eod == 1 && n >= 3 && !memcmp(o + n - 3, ".\r\n", 3);
}

int main(void)
{
#define V(a, b) vec(a, sizeof(a) - 1, b)
    V("", ".\r\n");
    V("body", "body\r\n.\r\n");
    V("body\r\n", "body\r\n.\r\n");
    V(".", "..\r\n.\r\n");
    V(".\r\n", "..\r\n.\r\n");
    V("..", "...\r\n.\r\n");
    V(".x\r\n..y\r\n", "..x\r\n...y\r\n.\r\n");
    V("a.b\r\n.\r\nc", "a.b\r\n..\r\nc\r\n.\r\n");
    V("abc\n.jkl\rfoo\r\n..blue", "abc\r\n..jkl\r\nfoo\r\n...blue\r\n.\r\n");  /* DATA-02 */
    V("\r\n\r\n.\r\n", "\r\n\r\n..\r\n.\r\n");                                  /* DATA-04 */
    V("a\r", "a\r\n.\r\n");
    V("a\r\r\n", "a\r\n\r\n.\r\n");
    V("\n\n", "\r\n\r\n.\r\n");
    V("\r\r", "\r\n\r\n.\r\n");

    {
        /* DATA-03: the smtpsmug endings mid-body, then a smuggled message */
        static const char *ends[] = {"\n.\n", "\r.\r", "\r.\n", "\n.\r", "\n.\r\n",
                                     "\r\n.\n", "\r.\r\n", "\r\n.\r"};
        size_t k;
        int ok = 1;
        for (k = 0; k < sizeof ends / sizeof ends[0]; k++) {
            char in[256], out[600];
            long len;
            size_t n = (size_t)snprintf(in, sizeof in,
                                        "hello%sMAIL FROM:<spoof@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nevil\r\n.\r\n",
                                        ends[k]);
            size_t i;
            for (i = 0; i <= n; i++) {
                size_t cut = i;
                len = stuff_cuts(in, n, &cut, 1, 0, out);
                if (len < 0 || !wire_ok(out, (size_t)len))
                    ok = 0;
            }
        }
        TAP_OK(ok, "smuggling corpus: no bare CR/LF and one end-of-data, every split");
    }
    {
        /* DATA-05: NUL is refused, sticky */
        char out[64];
        mlr_dot s;
        size_t w;
        mlr_dot_init(&s, 0);
        TAP_OK(mlr_dot_encode(&s, (const uint8_t *)"\r\n\0.\r\n", 6, (uint8_t *)out, &w) == MLR_ERR_INPUT,
               "NUL octet refused");
        TAP_OK(mlr_dot_encode(&s, (const uint8_t *)"ok", 2, (uint8_t *)out, &w) == MLR_ERR_INPUT,
               "the error is sticky");
    }
    {
        /* DATA-07: line length */
        char in[1200], *out = malloc(4000);
        memset(in, 'x', sizeof in);
        TAP_OK(stuff_cuts(in, 998, NULL, 0, 998, out) == 1003, "a 998-octet line passes the 998 limit");
        TAP_OK(stuff_cuts(in, 999, NULL, 0, 998, out) == -1, "a 999-octet line fails it");
        in[0] = '.';
        TAP_OK(stuff_cuts(in, 998, NULL, 0, 998, out) == -1, "stuffing counts towards the limit");
        in[500] = '\n';
        TAP_OK(stuff_cuts(in, 1200, NULL, 0, 998, out) > 0, "line breaks reset the count");
        TAP_OK(stuff_cuts(in, 1200, NULL, 0, 0, out) > 0, "0 means no limit");
        free(out);
    }
    {
        /* DATA-08: 1 MiB of "\n." through one-octet calls, exact-size buffers */
        size_t n = 1u << 20, i, o = 0, w;
        char *in = malloc(n), *out = malloc(2 * n + 8), *ref = malloc(2 * n + 8);
        mlr_dot s;
        int ok = 1;
        long rl;
        for (i = 0; i < n; i++)
            in[i] = (i & 1) ? '.' : '\n';
        rl = stuff_cuts(in, n, NULL, 0, 0, ref);
        mlr_dot_init(&s, 0);
        for (i = 0; i < n; i++) {
            uint8_t tmp[MLR_DOT_BOUND(1)];
            if (mlr_dot_encode(&s, (const uint8_t *)in + i, 1, tmp, &w) || w > MLR_DOT_BOUND(1))
                ok = 0;
            memcpy(out + o, tmp, w);
            o += w;
        }
        o += mlr_dot_finish(&s, (uint8_t *)out + o);
        TAP_OK(ok && (long)o == rl && !memcmp(out, ref, o), "1 MiB of \\n. octet by octet equals one call");
        TAP_OK(rl == (long)(2 * n + 5) && wire_ok(ref, (size_t)rl), "worst case doubles the size, wire clean");
        free(in);
        free(out);
        free(ref);
    }
    return tap_done();
}
