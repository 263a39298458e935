/* test_fuzzfix_engine.c - regressions for SMTP engine bugs found by
 * fuzz/fuzz_engine.c. */
#include <string.h>

#include "smtp_engine.h"
#include "tap.h"

int main(void)
{
    mlr_smtp_opts o;
    mlr_smtp *e;
    const uint8_t *p = (const uint8_t *)"x";
    int err;
    char msg[128];
    memset(&o, 0, sizeof o);
    o.security = MLR_SEC_NONE;
    e = mlr_smtp_new(mlr_default_alloc(), &o, &err, msg, sizeof msg);
    TAP_OK(e != NULL, "engine created");
    /* Before the greeting nothing is queued and no output buffer exists:
     * pending() used to compute NULL + 0 (undefined behaviour). */
    TAP_OK(mlr_smtp_pending(e, &p) == 0 && p == NULL, "pending() before any output is empty");
    TAP_OK(mlr_smtp_feed(e, (const uint8_t *)"220 hi\r\n", 8) == MLR_OK, "greeting");
    TAP_OK(mlr_smtp_pending(e, &p) > 0 && p && !memcmp(p, "EHLO localhost\r\n", 16),
           "EHLO after the greeting");
    mlr_smtp_free(e);
    return tap_done();
}
