/* test_fuzzfix_sasl.c - regressions for SASL bugs found by
 * fuzz/fuzz_sasl.c. */
#include <string.h>

#include "auth.h"
#include "tap.h"

int main(void)
{
    /* A SCRAM server-first message ending in a bad iteration count: the
     * error message used to print the count with "%.9s", reading past the
     * end of the (not NUL-terminated) challenge. */
    static const char first[] = "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4+=";
    char buf[sizeof first + 16];
    mlr_sasl s;
    mlr_buf out;
    int rc;
    memset(&s, 0, sizeof s);
    s.mech = MLR_MECH_SCRAM_SHA_256;
    s.user = "user";
    s.user_len = 4;
    s.secret = "pencil";
    s.secret_len = 6;
    s.nonce = "fyko+d2lbbFgONRv9qkxdawL";
    mlr_buf_init(&out, mlr_default_alloc());
    TAP_OK(mlr_sasl_initial(&s, &out) == 1, "client-first");
    memcpy(buf, first, sizeof first - 1);
    memcpy(buf + sizeof first - 1, "OVERREAD", 9); /* what lies past the challenge */
    mlr_buf_reset(&out);
    rc = mlr_sasl_step(&s, (const uint8_t *)buf, sizeof first - 1, &out);
    TAP_OK(rc == MLR_ERR_AUTH, "a bad iteration count is refused");
    TAP_OK(strstr(s.errmsg, "count 4+= refused") != NULL, "the message quotes the count: %s",
           s.errmsg);
    TAP_OK(strstr(s.errmsg, "OVER") == NULL, "nothing past the challenge is read");
    mlr_sasl_clear(&s);
    mlr_buf_free(&out);
    return tap_done();
}
