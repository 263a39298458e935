/* fuzz_addr.c - the mailbox parser and the addr-spec validator.
 *
 * mlr_addr_check is compared with a reference validator written here
 * from the rules in mime_addr.h (RFC 5321 Mailbox: dot-string or quoted
 * local part of at most 64 octets, the quotes holding only dot-string
 * characters but '='; domain of LDH labels of at most 63 or UTF-8 labels,
 * 255 in all, or an address literal; 254 octets in all; no CR, LF, NUL or
 * invalid UTF-8). mlr_addr_idna must keep the local part and give a
 * valid address, all ASCII when the local part is. mlr_addr_parse must
 * only hand out addresses that pass the validator and occur verbatim in
 * the input, and a display name that comes back unchanged when written as
 * a header phrase and parsed again. The checking allocator verifies sizes and leaks. */
#include <string.h>

#include "fuzz_util.h"
#include "mime_addr.h"
#include "mime_header.h"

static int atext(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c >= 0x80 || (c && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/* Reference addr-spec validator: 1 valid, 0 not. */
static int ref_valid(const uint8_t *s, size_t n)
{
    size_t i, at, dn, lab = 0;
    const uint8_t *d;
    if (n == 0 || n > 254 || memchr(s, '\r', n) || memchr(s, '\n', n) || memchr(s, 0, n) ||
        !mlr_utf8_valid((const char *)s, n))
        return 0;
    if (s[0] == '"') {
        /* inside the quotes only what a dot-string holds, '=' excepted */
        for (i = 1; i < n && s[i] != '"'; i++)
            if ((!atext(s[i]) && s[i] != '.') || s[i] == '=')
                return 0;
        if (i >= n)
            return 0;
        at = i + 1;
        if (at >= n || s[at] != '@')
            return 0;
    } else {
        for (i = 0; i < n && s[i] != '@'; i++) {
            if (s[i] == '.') {
                if (i == 0 || s[i - 1] == '.')
                    return 0;
            } else if (!atext(s[i])) {
                return 0;
            }
        }
        if (i == 0 || i >= n || s[i - 1] == '.')
            return 0;
        at = i;
    }
    if (at > 64)
        return 0;
    d = s + at + 1;
    dn = n - at - 1;
    if (dn == 0 || dn > 255)
        return 0;
    if (d[0] == '[') {
        if (dn < 3 || d[dn - 1] != ']')
            return 0;
        for (i = 1; i + 1 < dn; i++)
            if (!strchr("0123456789abcdefABCDEF.:vIP", d[i]) || d[i] == 0)
                return 0;
        return 1;
    }
    for (i = 0; i <= dn; i++) {
        if (i == dn || d[i] == '.') {
            size_t k;
            int ascii = 1;
            if (lab == 0 || d[i - 1] == '-' || d[i - lab] == '-')
                return 0;
            /* a non-ASCII label is limited by its A-label, not here */
            for (k = i - lab; k < i; k++)
                ascii &= d[k] < 0x80;
            if (ascii && lab > 63)
                return 0;
            lab = 0;
            continue;
        }
        if (!((d[i] >= 'a' && d[i] <= 'z') || (d[i] >= 'A' && d[i] <= 'Z') ||
              (d[i] >= '0' && d[i] <= '9') || d[i] == '-' || d[i] >= 0x80))
            return 0;
        lab++;
    }
    return 1;
}

/* Write "To: name <addr>" with the header code, parse it back. */
static void round_trip(fz_heap *h, const char *name, size_t nl, const char *addr, size_t al)
{
    mlr_buf b;
    mlr_fold f;
    fz_str un = {0}, dec = {0};
    char *n2, *a2, err[128];
    size_t n2l, a2l;
    int rc;
    mlr_buf_init(&b, &h->alloc);
    rc = mlr_fold_start(&f, &b, "To", 2);
    if (!rc && nl)
        rc = mlr_fold_phrase(&f, " ", 1, name, nl);
    if (!rc) {
        char ang[260];
        size_t k = 0;
        if (nl)
            ang[k++] = '<';
        memcpy(ang + k, addr, al);
        k += al;
        if (nl)
            ang[k++] = '>';
        rc = mlr_fold_add(&f, " ", 1, ang, k);
    }
    if (!rc)
        rc = mlr_fold_end(&f);
    if (rc) {
        FZ_ASSERT(rc == MLR_ERR_INPUT); /* a name too long to fold */
        mlr_buf_free(&b);
        return;
    }
    FZ_ASSERT(fz_bare_crlf((const uint8_t *)b.data, b.len) < 0);
    FZ_ASSERT(fz_max_line((const uint8_t *)b.data, b.len) <= MLR_LINE_MAX);
    FZ_ASSERT(b.len >= 5 && memcmp(b.data + b.len - 2, "\r\n", 2) == 0);
    fz_unfold((const uint8_t *)b.data, b.len - 2, &un);
    FZ_ASSERTF(memchr(un.p, '\r', un.n) == NULL && memchr(un.p, '\n', un.n) == NULL,
               "the field has more than one line");
    FZ_ASSERT(memcmp(un.p, "To:", 3) == 0);
    if (nl == 0) {
        /* a bare addr-spec: written as is (the parser would refuse a bare
         * IPv6 literal's ':', which is a known limitation, not ours) */
        FZ_ASSERT(un.n == 4 + al && un.p[3] == ' ' && memcmp(un.p + 4, addr, al) == 0);
        mlr_buf_free(&b);
        fz_str_free(&un);
        return;
    }
    rc = mlr_addr_parse(&h->alloc, (const char *)un.p + 3, un.n - 3, &n2, &n2l, &a2, &a2l, err,
                        sizeof err);
    FZ_ASSERTF(rc == MLR_OK, "rendered mailbox does not parse: %s: [%s]", err, un.p);
    FZ_ASSERT(a2l == al && memcmp(a2, addr, al) == 0);
    /* the name comes back as written, or as encoded words that decode to it */
    if (n2l && fz_find((const uint8_t *)n2, n2l, "=?", 2) >= 0) {
        FZ_ASSERT(fz_unstructured_decode((const uint8_t *)n2, n2l, &dec) == 0);
        FZ_ASSERTF(dec.n == nl && memcmp(dec.p, name, nl) == 0, "display name changed");
    } else {
        FZ_ASSERTF(n2l == nl && memcmp(n2, name, nl) == 0, "display name changed");
    }
    mlr_free(&h->alloc, n2, n2l + 1);
    mlr_free(&h->alloc, a2, a2l + 1);
    mlr_buf_free(&b);
    fz_str_free(&un);
    fz_str_free(&dec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_heap h;
    char err[128], *name = NULL, *addr = NULL;
    size_t nl = 0, al = 0;
    int utf8 = 0, rc, ref;
    fz_heap_init(&h, 0);

    rc = mlr_addr_check((const char *)data, size, &utf8, err, sizeof err);
    ref = ref_valid(data, size);
    FZ_ASSERTF((rc == MLR_OK) == ref, "mlr_addr_check says %d, reference %d", rc, ref);
    FZ_ASSERT(rc == MLR_OK || rc == MLR_ERR_INPUT);
    if (rc == MLR_OK) {
        /* the IDNA form: the local part unchanged; an ASCII local part
         * gets an ASCII domain (the A-label), a valid address again */
        mlr_buf b;
        int local8 = 0;
        mlr_buf_init(&b, &h.alloc);
        rc = mlr_addr_idna((const char *)data, size, &b, &local8, err, sizeof err);
        FZ_ASSERT(rc == MLR_OK || rc == MLR_ERR_INPUT);
        if (rc == MLR_OK) {
            long at = fz_find((const uint8_t *)b.data, b.len, "@", 1);
            FZ_ASSERTF(ref_valid((const uint8_t *)b.data, b.len), "IDNA form is not valid");
            FZ_ASSERT(at > 0 && (size_t)at < size && memcmp(b.data, data, (size_t)at) == 0);
            FZ_ASSERT(local8 == !mlr_is_ascii(b.data, (size_t)at));
            if (!local8)
                FZ_ASSERTF(mlr_is_ascii(b.data, b.len), "non-ASCII domain left with an ASCII local part");
        }
        mlr_buf_free(&b);
    }

    rc = mlr_addr_parse(&h.alloc, (const char *)data, size, &name, &nl, &addr, &al, err,
                        sizeof err);
    if (rc == MLR_OK) {
        FZ_ASSERT(name && addr && name[nl] == 0 && addr[al] == 0);
        FZ_ASSERT(fz_find(data, size, addr, al) >= 0);
        FZ_ASSERTF(ref_valid((const uint8_t *)addr, al), "parser handed out an invalid address");
        FZ_ASSERT(mlr_hdr_check_value(name, nl, err, sizeof err) == MLR_OK);
        round_trip(&h, name, nl, addr, al);
        mlr_free(&h.alloc, name, nl + 1);
        mlr_free(&h.alloc, addr, al + 1);
    } else {
        FZ_ASSERT(rc == MLR_ERR_INPUT && !name && !addr && err[0]);
    }
    fz_heap_check_empty(&h);
    return 0;
}
