/* fuzz_sasl.c - SASL challenge handling: the strict base64 decoder of 334
 * challenges (compared with the reference decoder) and every mechanism's
 * answer to arbitrary decoded challenges, round after round. Answers must
 * be bounded and every mechanism must give up (MLR_ERR_AUTH) within a few
 * rounds, so a server cannot keep the exchange going. */
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "fuzz_util.h"

/* A SCRAM server-first message asking for more than 100000 PBKDF2
 * rounds: accepted up to the engine's cap by design (costly, not a bug),
 * skipped here so that it does not read as a timeout. */
static int slow_scram(const uint8_t *c, size_t n)
{
    long at = fz_find(c, n, ",i=", 3);
    size_t i, digits = 0;
    if (at < 0)
        return 0;
    for (i = (size_t)at + 3; i < n && c[i] >= '0' && c[i] <= '9'; i++)
        digits++;
    if (digits > 5)
        return 1;
    return digits == 5 && c[at + 3] > '1';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_in in = {data, size};
    fz_heap h;
    mlr_sasl s;
    mlr_buf out;
    fz_str ref = {0};
    const uint8_t *ch;
    size_t n, round;
    uint8_t mech = fz_u8(&in);
    uint8_t *dec;
    long dn;
    int rc;

    /* the decoder on raw challenge text */
    n = fz_take(&in, 600, &ch);
    dec = malloc(3 * n / 4 + 3);
    dn = mlr_sasl_b64_decode((const char *)ch, n, dec);
    FZ_ASSERT(dn <= (long)(3 * n / 4 + 3));
    if (dn >= 0 && fz_b64_decode(ch, n, &ref) == 0)
        FZ_ASSERTF(ref.n == (size_t)dn && (dn == 0 || !memcmp(ref.p, dec, ref.n)),
                   "decoders disagree");
    if (dn >= 0)
        FZ_ASSERT(memchr(ch, '\r', n) == NULL && memchr(ch, '\n', n) == NULL);
    free(dec);
    fz_str_free(&ref);

    /* a mechanism answering challenges */
    fz_heap_init(&h, 0);
    mlr_buf_init(&out, &h.alloc);
    memset(&s, 0, sizeof s);
    s.mech = 1u << (mech % 6);
    s.user = "user@example.com";
    s.user_len = 16;
    s.secret = "s3cr3t";
    s.secret_len = 6;
    s.host = "smtp.example.com";
    s.port = 587;
    s.nonce = "fyko+d2lbbFgONRv9qkxdawL"; /* fixed, so server nonces can extend it */
    if (mlr_sasl_check(&s) == MLR_OK) {
        rc = mlr_sasl_initial(&s, &out);
        FZ_ASSERT(rc == 0 || rc == 1);
        for (round = 0; round < 6 && in.n; round++) {
            n = fz_take(&in, 300, &ch);
            if (s.mech == MLR_MECH_SCRAM_SHA_256 && slow_scram(ch, n))
                break;
            mlr_buf_reset(&out);
            rc = mlr_sasl_step(&s, ch, n, &out);
            FZ_ASSERT(rc == MLR_OK || rc == MLR_ERR_AUTH);
            FZ_ASSERT(out.len <= 1024);
            if (rc == MLR_ERR_AUTH)
                break;
        }
        FZ_ASSERTF(round < 6, "a mechanism answered six challenges");
    }
    mlr_sasl_clear(&s);
    mlr_buf_free(&out);
    fz_heap_check_empty(&h);
    return 0;
}
