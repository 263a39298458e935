/* test_smtp_reply.c - the SMTP reply parser and EHLO capability parser:
 * valid replies in every split, every hard limit, malformed codes. */
#include <stdlib.h>
#include <string.h>

#include "smtp_reply.h"
#include "tap.h"

/* Parse all of s (fed in pieces of `step` octets, 0 = at once); returns
 * the last parse result, the number of replies seen, and the last reply. */
static int parse_all(const char *s, size_t n, size_t step, int *nreplies, int *code,
                     char *text, size_t textcap, char *enh)
{
    mlr_reply_parser p;
    mlr_reply r;
    size_t off = 0, used;
    int rc = 0;
    *nreplies = 0;
    mlr_reply_init(&p, mlr_default_alloc());
    while (off < n) {
        size_t piece = step ? (n - off < step ? n - off : step) : n - off;
        size_t poff = 0;
        while (poff < piece) {
            rc = mlr_reply_parse(&p, (const uint8_t *)s + off + poff, piece - poff, &used, &r);
            poff += used;
            if (rc < 0)
                goto out;
            if (rc == 1) {
                (*nreplies)++;
                *code = r.code;
                snprintf(text, textcap, "%s", r.text);
                strcpy(enh, r.enhanced);
            }
        }
        off += piece;
    }
out:
    mlr_reply_free(&p);
    return rc;
}

/* A reply that must parse identically whatever the split. */
static void good(const char *s, int want_code, const char *want_text, const char *want_enh)
{
    size_t n = strlen(s), step;
    int nr, code = 0, rc, ok = 1;
    char text[256], enh[16];
    for (step = 0; step <= n; step++) {
        text[0] = enh[0] = '\0';
        rc = parse_all(s, n, step, &nr, &code, text, sizeof text, enh);
        if (rc != 1 || nr != 1 || code != want_code || strcmp(text, want_text) ||
            strcmp(enh, want_enh))
            ok = 0;
    }
    TAP_OK(ok, "reply of %zu octets parses to %d (%zu text octets) in every split", n, want_code,
           strlen(want_text));
}

/* Input that must be a protocol error whatever the split. */
static void bad(const char *label, const char *s, size_t n)
{
    size_t step;
    int nr, code, ok = 1;
    char text[64], enh[16];
    for (step = 0; step <= (n < 64 ? n : 64); step++)
        if (parse_all(s, n, step, &nr, &code, text, sizeof text, enh) != MLR_ERR_PROTOCOL)
            ok = 0;
    TAP_OK(ok, "%s is a protocol error", label);
}

/* Feed a generator of len octets in 64 KiB pieces; returns the result. */
static int flood(const char *unit, size_t unit_len, size_t total, size_t *consumed)
{
    static char chunk[65536];
    mlr_reply_parser p;
    mlr_reply r;
    size_t i, used, fed = 0;
    int rc = 0;
    for (i = 0; i < sizeof chunk; i++)
        chunk[i] = unit[i % unit_len];
    mlr_reply_init(&p, mlr_default_alloc());
    while (fed < total) {
        rc = mlr_reply_parse(&p, (const uint8_t *)chunk, sizeof chunk, &used, &r);
        fed += used;
        if (rc != 0)
            break;
    }
    *consumed = fed;
    TAP_OK(p.text.cap <= 2 * MLR_REPLY_MAX_BYTES, "flood kept its text buffer bounded (%zu)", p.text.cap);
    mlr_reply_free(&p);
    return rc;
}

int main(void)
{
    size_t used;
    int rc;

    good("250 OK\r\n", 250, "OK", "");
    good("250\r\n", 250, "", "");
    good("250 \r\n", 250, "", "");
    good("250-mx.example.com\r\n250-PIPELINING\r\n250 SIZE 100\r\n", 250,
         "mx.example.com\nPIPELINING\nSIZE 100", "");
    good("550 5.1.1 No such user\r\n", 550, "5.1.1 No such user", "5.1.1");
    good("250 2.0.0 Ok: queued as ABC\r\n", 250, "2.0.0 Ok: queued as ABC", "2.0.0");
    good("451 4.7.123 try later\n", 451, "4.7.123 try later", "4.7.123");
    good("250 2.0 not enhanced\r\n", 250, "2.0 not enhanced", "");
    good("250 2.0.0000 four digits\r\n", 250, "2.0.0000 four digits", "");
    good("220-first\r\n220-\r\n220 last\r\n", 220, "first\n\nlast", "");

    bad("199 x", "199 x\r\n", 7);
    bad("600 x", "600 x\r\n", 7);
    bad("2500 x", "2500 x\r\n", 8);
    bad("25 x", "25 x\r\n", 6);
    bad("abc", "abc\r\n", 5);
    bad("250x", "250x\r\n", 6);
    bad("260 (second digit)", "260 x\r\n", 7);
    bad("code change mid-reply", "250-a\r\n550 b\r\n", 14);
    bad("NUL inside a line", "250 a\0b\r\n", 9);
    bad("bare CR", "250 a\rb\r\n", 9);
    bad("empty line", "\r\n", 2);

    {
        /* line of exactly 4096 octets is fine, 4097 is not */
        char *s = malloc(5000);
        int nr, code;
        char text[8], enh[16];
        memcpy(s, "250 ", 4);
        memset(s + 4, 'a', 4092);
        memcpy(s + 4096, "\r\n", 2);
        rc = parse_all(s, 4098, 0, &nr, &code, text, sizeof text, enh);
        TAP_OK(rc == 1 && code == 250, "a 4096-octet line is accepted");
        memset(s + 4, 'a', 4093);
        memcpy(s + 4097, "\r\n", 2);
        bad("a 4097-octet line", s, 4099);
        free(s);
    }
    {
        /* 1000 lines are fine, 1001 are not; 64 KiB per reply */
        mlr_buf b;
        int nr, code, i;
        char text[8], enh[16];
        mlr_buf_init(&b, mlr_default_alloc());
        for (i = 0; i < 999; i++)
            mlr_buf_addstr(&b, "250-x\r\n");
        mlr_buf_addstr(&b, "250 x\r\n");
        rc = parse_all(b.data, b.len, 0, &nr, &code, text, sizeof text, enh);
        TAP_OK(rc == 1 && nr == 1, "a 1000-line reply is accepted");
        mlr_buf_reset(&b);
        for (i = 0; i < 1000; i++)
            mlr_buf_addstr(&b, "250-x\r\n");
        mlr_buf_addstr(&b, "250 x\r\n");
        bad("a 1001-line reply", b.data, b.len);
        mlr_buf_reset(&b);
        for (i = 0; i < 20; i++) {
            mlr_buf_addstr(&b, "250-");
            while (b.len % 4000 != 3998)
                mlr_buf_addc(&b, 'y');
            mlr_buf_addstr(&b, "\r\n");
        }
        mlr_buf_addstr(&b, "250 end\r\n");
        bad("a reply over 64 KiB", b.data, b.len);
        mlr_buf_free(&b);
    }
    {
        /* attacks.md RPL-01 / RPL-02: 10 MiB without CRLF, endless 250-x */
        size_t consumed;
        rc = flood("a", 1, 10u << 20, &consumed);
        TAP_OK(rc == MLR_ERR_PROTOCOL && consumed <= 4100, "10 MiB line stops at the cap (%zu octets read)", consumed);
        rc = flood("250-x\r\n", 7, 10u << 20, &consumed);
        TAP_OK(rc == MLR_ERR_PROTOCOL && consumed <= 8000, "endless 250-x stops at 1000 lines (%zu octets read)", consumed);
        rc = flood("250-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n", 68, 10u << 20, &consumed);
        TAP_OK(rc == MLR_ERR_PROTOCOL && consumed <= 65536 + 1, "endless long lines stop at 64 KiB (%zu octets read)", consumed);
    }
    {
        /* two replies in one buffer: stops after the first; the error is sticky */
        mlr_reply_parser p;
        mlr_reply r;
        const char *two = "250 a\r\n251 b\r\n";
        mlr_reply_init(&p, mlr_default_alloc());
        rc = mlr_reply_parse(&p, (const uint8_t *)two, 14, &used, &r);
        TAP_OK(rc == 1 && used == 7 && r.code == 250, "parser stops after the first reply");
        rc = mlr_reply_parse(&p, (const uint8_t *)two + 7, 7, &used, &r);
        TAP_OK(rc == 1 && used == 7 && r.code == 251 && !strcmp(r.text, "b"), "then parses the second");
        TAP_OK(!mlr_reply_partial(&p), "nothing partial after a complete reply");
        rc = mlr_reply_parse(&p, (const uint8_t *)"25", 2, &used, &r);
        TAP_OK(rc == 0 && mlr_reply_partial(&p), "a fragment is partial");
        rc = mlr_reply_parse(&p, (const uint8_t *)"x\r\n", 3, &used, &r);
        TAP_OK(rc == MLR_ERR_PROTOCOL, "fragment + junk is an error");
        rc = mlr_reply_parse(&p, (const uint8_t *)"250 ok\r\n", 8, &used, &r);
        TAP_OK(rc == MLR_ERR_PROTOCOL, "errors are sticky");
        mlr_reply_reset(&p);
        rc = mlr_reply_parse(&p, (const uint8_t *)"250 ok\r\n", 8, &used, &r);
        TAP_OK(rc == 1, "reset clears the error");
        mlr_reply_free(&p);
    }
    {
        mlr_caps c;
        const char *t = "mx.example.com greets you\nPIPELINING\nsize 35882577\n8BITMIME\n"
                        "SMTPUTF8\nDSN\nENHANCEDSTATUSCODES\nSTARTTLS\nAUTH PLAIN LOGIN\n"
                        "AUTH=CRAM-MD5 XOAUTH2\nX-UNKNOWN foo\nCHUNKING";
        mlr_caps_parse(&c, t, strlen(t));
        TAP_OK(c.flags == (MLR_CAP_SIZE | MLR_CAP_PIPELINING | MLR_CAP_8BITMIME | MLR_CAP_SMTPUTF8 |
                           MLR_CAP_DSN | MLR_CAP_ENHANCED | MLR_CAP_STARTTLS | MLR_CAP_AUTH |
                           MLR_CAP_CHUNKING), "every capability recognised (flags %#x)", c.flags);
        TAP_OK(c.size == 35882577, "SIZE value parsed");
        TAP_OK(c.mechs == (MLR_MECH_PLAIN | MLR_MECH_LOGIN | MLR_MECH_CRAM_MD5 | MLR_MECH_XOAUTH2),
               "AUTH and the old AUTH= form both parsed");
        t = "mx PIPELINING STARTTLS";
        mlr_caps_parse(&c, t, strlen(t));
        TAP_OK(c.flags == 0, "the greeting line is not a capability");
        t = "mx\nSIZE\nSIZE99999999999999999999999";
        mlr_caps_parse(&c, t, strlen(t));
        TAP_OK((c.flags & MLR_CAP_SIZE) && c.size == 0, "SIZE without a number or absurd = no limit");
    }
    {
        /* RPL-05: AUTH followed by 1 MiB of spaces and X: linear */
        size_t n = (1u << 20) + 16;
        char *t = malloc(n);
        mlr_caps c;
        memcpy(t, "mx\nAUTH", 7);
        memset(t + 7, ' ', n - 7 - 6);
        memcpy(t + n - 6, "PLAIN", 5);
        t[n - 1] = 'X';
        mlr_caps_parse(&c, t, n);
        TAP_OK((c.flags & MLR_CAP_AUTH) && c.mechs == 0, "1 MiB of spaces in AUTH parsed (PLAINX is unknown)");
        free(t);
    }
    {
        char enh[16];
        TAP_OK(mlr_reply_enhanced("5.7.1 no", 8, enh) == 6 && !strcmp(enh, "5.7.1"), "enhanced 5.7.1");
        TAP_OK(mlr_reply_enhanced("3.1.1 x", 7, enh) == 0, "class 3 is not enhanced");
        TAP_OK(mlr_reply_enhanced("2.1.5", 5, enh) == 5 && !strcmp(enh, "2.1.5"), "enhanced alone");
        TAP_OK(mlr_mech_from_name("cram-md5", 8) == MLR_MECH_CRAM_MD5, "mechanism names are case-insensitive");
    }
    return tap_done();
}
