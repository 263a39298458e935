/* test_fuzzfix_header.c - regressions for header-encoding bugs found by
 * fuzz/fuzz_rfc2047.c. */
#include <string.h>

#include "mime_header.h"
#include "tap.h"

/* Render "Content-Type: x/y; <attr>=..." for value v. */
static void param(const char *attr, const char *v, int ew_fallback, mlr_buf *b)
{
    mlr_fold f;
    mlr_buf_init(b, mlr_default_alloc());
    mlr_fold_start(&f, b, "Content-Type", 12);
    mlr_fold_add(&f, " ", 1, "x/y", 3);
    mlr_fold_param(&f, attr, v, strlen(v), ew_fallback);
    mlr_fold_end(&f);
}

int main(void)
{
    /* A file name that is itself an encoded word must not go out as a
     * plain quoted string: readers that decode words in parameters would
     * show "../evil" instead of the name given. */
    const char *v = "=?utf-8?b?Li4vZXZpbA==?=";
    mlr_buf b;
    param("name", v, 1, &b);
    TAP_OK(strstr(b.data, "Li4vZXZpbA==") == NULL,
           "name= fallback encodes a value holding \"=?\"");
    TAP_OK(strstr(b.data, "name=\"=?utf-8?") != NULL, "name= is written as encoded words");
    mlr_buf_free(&b);
    param("filename", v, 0, &b);
    TAP_OK(strstr(b.data, "filename*=utf-8''%3D%3Futf-8%3Fb%3FLi4vZXZpbA%3D%3D%3F%3D") != NULL,
           "filename uses RFC 2231 for a value holding \"=?\"");
    mlr_buf_free(&b);
    /* plain names stay plain */
    param("filename", "report.pdf", 0, &b);
    TAP_OK(strstr(b.data, "filename=\"report.pdf\"") != NULL, "plain name stays quoted");
    mlr_buf_free(&b);
    param("filename", "a=b?c.txt", 0, &b);
    TAP_OK(strstr(b.data, "filename=\"a=b?c.txt\"") != NULL, "'=' and '?' apart stay plain");
    mlr_buf_free(&b);
    return tap_done();
}
