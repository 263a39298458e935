/* test_content_type.c - Content-Type values given by the caller: parsed
 * and written back with each parameter value quoted where it must be, or
 * refused (mlr_fold_ctype). */
#include <string.h>

#include "mime_header.h"
#include "tap.h"

/* The field written for value ct (unfolded), or NULL when refused. */
static const char *field(const char *ct, size_t n, char *out, size_t cap)
{
    mlr_buf b;
    mlr_fold f;
    char err[200];
    size_t i, o = 0;
    int rc;
    mlr_buf_init(&b, mlr_default_alloc());
    mlr_fold_start(&f, &b, "Content-Type", 12);
    rc = mlr_fold_ctype(&f, ct, n, err, sizeof err);
    if (rc == MLR_OK)
        rc = mlr_fold_end(&f);
    TAP_OK(mlr_fold_ctype(NULL, ct, n, err, sizeof err) == rc, "check-only agrees for [%s]", ct);
    if (rc) {
        mlr_buf_free(&b);
        TAP_OK(strncmp(err, "content_type ", 13) == 0, "reason names content_type: %s", err);
        return NULL;
    }
    for (i = 0; i < b.len && o + 1 < cap; i++) {
        if (b.data[i] == '\r' && i + 2 < b.len && b.data[i + 1] == '\n' && b.data[i + 2] == ' ')
            i++;   /* unfold: CRLF SP -> SP */
        else if (b.data[i] != '\r' && b.data[i] != '\n')
            out[o++] = b.data[i];
    }
    out[o] = '\0';
    mlr_buf_free(&b);
    return out;
}

int main(void)
{
    static const struct {
        const char *in, *want;
    } good[] = {
        {"text/plain", "Content-Type: text/plain"},
        {"  image/png  ", "Content-Type: image/png"},
        {"text/plain;charset=UTF-8;  format=flowed ",
         "Content-Type: text/plain; charset=UTF-8; format=flowed"},
        {"text/plain; charset=\"us-ascii\"", "Content-Type: text/plain; charset=us-ascii"},
        {"application/x-thing; title=\"a \\\"b\\\" c; d=e\"",
         "Content-Type: application/x-thing; title=\"a \\\"b\\\" c; d=e\""},
        {"application/pdf; x=\"\"", "Content-Type: application/pdf; x=\"\""},
        {"text/plain ; a = b", "Content-Type: text/plain; a=b"},
        {"application/x-y; v=\"back\\\\slash\"", "Content-Type: application/x-y; v=\"back\\\\slash\""},
    };
    static const char *const bad[] = {
        "", "text", "text/", "/plain", "text /plain", "text/ plain", "text/pl/ain",
        "text/plain (comment)", "text/plain; name=evil.exe", "text/plain; NAME=\"evil.exe\"",
        "text/plain; name*=utf-8''evil.exe", "text/plain; x*0=a", "text/plain; x=\"unbalanced",
        "text/plain; charset=utf-8; Charset=latin1", "text/plain; charset", "text/plain; a=b c",
        "text/plain; x=\xc3\xa9", "text/plain; =x", "text/plain;; x=y", "text/plain; x=\"a\"b",
        "text/plain; x=y;", "text/plain; x=\"\x01\"", "text/plain\x7f", "Multipart/Mixed; boundary=x",
        "text/plain; x=a\"b", "text/plain; x=[y]", "text/plain, text/html",
    };
    char out[2000];
    size_t i;
    for (i = 0; i < sizeof good / sizeof good[0]; i++) {
        const char *got = field(good[i].in, strlen(good[i].in), out, sizeof out);
        TAP_OK(got && !strcmp(got, good[i].want), "[%s] -> [%s] (got [%s])", good[i].in,
               good[i].want, got ? got : "refused");
    }
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
        TAP_OK(field(bad[i], strlen(bad[i]), out, sizeof out) == NULL, "refused: [%s]", bad[i]);
    /* a NUL inside the given length is refused, not a place to stop */
    TAP_OK(field("text/plain\0; name=evil", 22, out, sizeof out) == NULL, "a NUL is refused");
    /* too many, or too long */
    {
        char many[1200];
        size_t o = (size_t)sprintf(many, "text/plain");
        for (i = 0; i < 33; i++)
            o += (size_t)sprintf(many + o, "; p%zu=v", i);
        TAP_OK(field(many, o, out, sizeof out) == NULL, "33 parameters are refused");
        memset(many, 'a', 950);
        memcpy(many, "text/plain; x=", 14);
        TAP_OK(field(many, 950, out, sizeof out) == NULL, "950 octets are refused");
    }
    return tap_done();
}
