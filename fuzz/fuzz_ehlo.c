/* fuzz_ehlo.c - the EHLO capability parser against a reference written
 * here from RFC 5321 / RFC 4954: the same flags, mechanisms and SIZE for
 * any text, in linear time (libFuzzer's -timeout catches blow-ups). */
#include <string.h>

#include "fuzz_util.h"
#include "smtp_reply.h"

static int upper(int c) { return c >= 'a' && c <= 'z' ? c - 32 : c; }

/* Does the keyword k[0..n) equal w, ignoring case? */
static int kw(const uint8_t *k, size_t n, const char *w)
{
    size_t i;
    if (strlen(w) != n)
        return 0;
    for (i = 0; i < n; i++)
        if (upper(k[i]) != w[i])
            return 0;
    return 1;
}

static const struct {
    const char *name;
    unsigned bit;
} caps[] = {{"SIZE", MLR_CAP_SIZE},         {"PIPELINING", MLR_CAP_PIPELINING},
            {"8BITMIME", MLR_CAP_8BITMIME}, {"SMTPUTF8", MLR_CAP_SMTPUTF8},
            {"DSN", MLR_CAP_DSN},           {"ENHANCEDSTATUSCODES", MLR_CAP_ENHANCED},
            {"STARTTLS", MLR_CAP_STARTTLS}, {"AUTH", MLR_CAP_AUTH},
            {"CHUNKING", MLR_CAP_CHUNKING}};

static const struct {
    const char *name;
    unsigned bit;
} mechs[] = {{"PLAIN", MLR_MECH_PLAIN},
             {"LOGIN", MLR_MECH_LOGIN},
             {"CRAM-MD5", MLR_MECH_CRAM_MD5},
             {"XOAUTH2", MLR_MECH_XOAUTH2},
             {"OAUTHBEARER", MLR_MECH_OAUTHBEARER},
             {"SCRAM-SHA-256", MLR_MECH_SCRAM_SHA_256}};

/* The reference: capability lines after the greeting line, keyword up to
 * the first space or '=', then its argument. */
static void ref_parse(const uint8_t *t, size_t n, unsigned *flags, unsigned *mbits,
                      uint64_t *size, int *size_exact)
{
    size_t i = 0, ls, k, a, j, w;
    *flags = *mbits = 0;
    *size = 0;
    *size_exact = 1;
    while (i < n && t[i] != '\n')
        i++;
    while (i < n) {
        ls = ++i;
        while (i < n && t[i] != '\n')
            i++;
        for (k = ls; k < i && t[k] != ' ' && t[k] != '='; k++)
            ;
        a = k < i ? k + 1 : i;
        for (j = 0; j < sizeof caps / sizeof caps[0]; j++)
            if (kw(t + ls, k - ls, caps[j].name))
                *flags |= caps[j].bit;
        if (kw(t + ls, k - ls, "SIZE")) {
            size_t d = 0;
            uint64_t v = 0;
            while (a + d < i && t[a + d] >= '0' && t[a + d] <= '9' && d < 19) {
                v = v * 10 + (uint64_t)(t[a + d] - '0');
                d++;
            }
            *size = v;
            *size_exact = !(d == 19 || (a + d < i && t[a + d] >= '0' && t[a + d] <= '9'));
        }
        if (kw(t + ls, k - ls, "AUTH")) {
            j = a;
            while (j < i) {
                while (j < i && t[j] == ' ')
                    j++;
                w = j;
                while (j < i && t[j] != ' ')
                    j++;
                for (k = 0; k < sizeof mechs / sizeof mechs[0]; k++)
                    if (j > w && kw(t + w, j - w, mechs[k].name))
                        *mbits |= mechs[k].bit;
            }
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mlr_caps c;
    unsigned flags, mbits, i;
    uint64_t sz;
    int exact;
    mlr_caps_parse(&c, (const char *)data, size);
    ref_parse(data, size, &flags, &mbits, &sz, &exact);
    FZ_ASSERTF(c.flags == flags, "flags %#x, reference %#x", c.flags, flags);
    FZ_ASSERTF(c.mechs == mbits, "mechs %#x, reference %#x", c.mechs, mbits);
    if (exact)
        FZ_ASSERTF(c.size == sz, "SIZE %llu, reference %llu", (unsigned long long)c.size,
                   (unsigned long long)sz);
    /* mechanism names round-trip */
    for (i = 0; i < 6; i++) {
        const char *nm = mlr_mech_name(1u << i);
        FZ_ASSERT(nm && mlr_mech_from_name(nm, strlen(nm)) == 1u << i);
    }
    if (size <= 32)
        FZ_ASSERT(mlr_mech_from_name((const char *)data, size) == 0 ||
                  mlr_mech_name(mlr_mech_from_name((const char *)data, size)) != NULL);
    return 0;
}
