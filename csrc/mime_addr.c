/* mime_addr.c - mailbox parsing, RFC 5321 address validation, and the
 * IDNA form of international domains (libidn2). */
#include "mime_addr.h"
#include "mime_header.h"

#include <stdio.h>
#include <string.h>

#include <idn2.h>

static int fail(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
    return MLR_ERR_INPUT;
}

static int is_atext(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c >= 0x80 || (c && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

static int is_wsp(char c) { return c == ' ' || c == '\t'; }

/* Validate a domain: dot-separated labels of letters, digits, '-' (or
 * UTF-8), or an address literal in brackets. */
static int check_domain(const char *d, size_t n, char *err, size_t errlen)
{
    size_t i, label = 0;
    if (n == 0)
        return fail(err, errlen, "address has an empty domain");
    if (n > MLR_DOMAIN_MAX)
        return fail(err, errlen, "address domain is longer than 255 octets");
    if (d[0] == '[') {
        if (d[n - 1] != ']' || n < 3)
            return fail(err, errlen, "address literal is not closed with ']'");
        for (i = 1; i + 1 < n; i++) {
            unsigned char c = (unsigned char)d[i];
            if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
                  c == '.' || c == ':' || c == 'v' || c == 'I' || c == 'P'))
                return fail(err, errlen, "address literal has invalid characters");
        }
        return MLR_OK;
    }
    for (i = 0; i <= n; i++) {
        unsigned char c = i < n ? (unsigned char)d[i] : '.';
        if (c == '.') {
            if (label == 0)
                return fail(err, errlen, "address domain has an empty label");
            if (d[i - 1] == '-' || d[i - label] == '-')
                return fail(err, errlen, "address domain label starts or ends with '-'");
            /* a U-label's limit is that of its A-label (mlr_addr_idna) */
            if (label > 63 && mlr_is_ascii(d + i - label, label))
                return fail(err, errlen, "address domain label is longer than 63 octets");
            label = 0;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c >= 0x80))
            return fail(err, errlen, "address domain has an invalid character");
        label++;
    }
    return MLR_OK;
}

int mlr_addr_check(const char *s, size_t n, int *utf8, char *err, size_t errlen)
{
    size_t i = 0, at;
    int rc;
    *utf8 = 0;
    if ((rc = mlr_hdr_check_value(s, n, err, errlen)))
        return fail(err, errlen, "address contains CR, LF, NUL or invalid UTF-8");
    if (n == 0)
        return fail(err, errlen, "address is empty");
    if (n > MLR_ADDR_MAX)
        return fail(err, errlen, "address is longer than 254 octets");
    if (s[0] == '"') {
        /* A quoted local part is RFC-valid with almost anything inside, but
         * a server that ignores the quotes would read a space, '<', '>' or
         * '=' as the end of the path and the start of ESMTP parameters
         * ("x> NOTIFY=SUCCESS ORCPT=..."), ',' ':' '@' as a source route.
         * Only what a dot-string may hold is accepted inside the quotes
         * (so they serve for dots in odd places), and no quoted pairs. */
        for (i = 1; i < n && s[i] != '"'; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c < 32 || c == 127)
                return fail(err, errlen, "address has a control character");
            if ((!is_atext(c) && c != '.') || c == '=')
                return fail(err, errlen,
                            "address has a quoted local part holding a space, a backslash or "
                            "one of \"<>=(),:;@[] (refused: a server that ignores the quotes "
                            "would read SMTP parameters in it)");
        }
        if (i >= n)
            return fail(err, errlen, "address has an unbalanced '\"'");
        at = i + 1;
        if (at >= n || s[at] != '@')
            return fail(err, errlen, "address needs '@' right after its quoted local part");
    } else {
        int dot_ok = 0;
        for (i = 0; i < n && s[i] != '@'; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c == '.') {
                if (!dot_ok)
                    return fail(err, errlen, "address local part has a misplaced '.'");
                dot_ok = 0;
            } else if (is_atext(c)) {
                dot_ok = 1;
            } else {
                return fail(err, errlen, "address local part has an invalid character "
                                         "(quote it, or check for a stray space, comma or bracket)");
            }
        }
        if (i >= n)
            return fail(err, errlen, "address has no '@'");
        if (i == 0 || !dot_ok)
            return fail(err, errlen, i ? "address local part ends with '.'"
                                       : "address has an empty local part");
        at = i;
    }
    if (at > MLR_LOCAL_MAX)
        return fail(err, errlen, "address local part is longer than 64 octets");
    if ((rc = check_domain(s + at + 1, n - at - 1, err, errlen)))
        return rc;
    for (i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            *utf8 = 1;
    return MLR_OK;
}

int mlr_addr_parse(const mlr_alloc *a, const char *s, size_t n, char **name, size_t *name_len,
                   char **addr, size_t *addr_len, char *err, size_t errlen)
{
    size_t b = 0, e = n, i, lt = (size_t)-1, gt = (size_t)-1, ns, ne, as, ae;
    int inq = 0, utf8, rc;
    *name = *addr = NULL;
    *name_len = *addr_len = 0;
    if (mlr_hdr_check_value(s, n, err, errlen))
        return fail(err, errlen, "address contains CR, LF, NUL or invalid UTF-8");
    while (b < e && is_wsp(s[b]))
        b++;
    while (e > b && is_wsp(s[e - 1]))
        e--;
    /* One pass: find the angle brackets outside quoted strings and refuse
     * anything that would make the meaning a guess. */
    for (i = b; i < e; i++) {
        char c = s[i];
        if (inq) {
            if (c == '\\' && i + 1 < e)
                i++;
            else if (c == '"')
                inq = 0;
            continue;
        }
        switch (c) {
        case '"': inq = 1; break;
        case '<':
            if (lt != (size_t)-1)
                return fail(err, errlen, "more than one '<' (two addresses in one string?)");
            lt = i;
            break;
        case '>':
            if (lt == (size_t)-1 || gt != (size_t)-1)
                return fail(err, errlen, "unbalanced '>'");
            gt = i;
            break;
        case '(': case ')':
            return fail(err, errlen, "comments in parentheses are not accepted in addresses");
        case ',': case ';': case ':':
            if (lt == (size_t)-1 || gt != (size_t)-1)
                return fail(err, errlen, "unquoted ',', ';' or ':' (a list or group in one address?)");
            break;
        default: break;
        }
    }
    if (inq)
        return fail(err, errlen, "unbalanced '\"'");
    if (lt != (size_t)-1 && gt == (size_t)-1)
        return fail(err, errlen, "unbalanced '<'");
    if (lt == (size_t)-1) {
        ns = ne = b;
        as = b;
        ae = e;
    } else {
        for (i = gt + 1; i < e; i++)
            if (!is_wsp(s[i]))
                return fail(err, errlen, "text after '>'");
        as = lt + 1;
        ae = gt;
        ns = b;
        ne = lt;
        while (ne > ns && is_wsp(s[ne - 1]))
            ne--;
    }
    if ((rc = mlr_addr_check(s + as, ae - as, &utf8, err, errlen)))
        return rc;
    /* the display name: one quoted string, or words without specials */
    {
        mlr_buf nb;
        mlr_buf_init(&nb, a);
        rc = MLR_OK;
        if (ns < ne && s[ns] == '"') {
            if (s[ne - 1] != '"' || ne - ns < 2)
                rc = fail(err, errlen, "text after the quoted display name");
            for (i = ns + 1; rc == MLR_OK && i + 1 < ne; i++) {
                if (s[i] == '"')
                    rc = fail(err, errlen, "text after the quoted display name");
                else {
                    if (s[i] == '\\')
                        i++;
                    rc = mlr_buf_addc(&nb, s[i]);
                }
            }
        } else {
            for (i = ns; rc == MLR_OK && i < ne; i++) {
                unsigned char c = (unsigned char)s[i];
                if (!is_atext(c) && !is_wsp((char)c) && c != '.')
                    rc = fail(err, errlen,
                              "display name has special characters: put it in double quotes");
                else
                    rc = mlr_buf_addc(&nb, (char)c);
            }
        }
        if (rc == MLR_OK && (rc = mlr_buf_reserve(&nb, 0)) == MLR_OK) {
            *addr = mlr_strndup(a, s + as, ae - as);
            if (!*addr) {
                rc = MLR_ERR_NOMEM;
            } else {
                *addr_len = ae - as;
                *name = nb.data;
                *name_len = nb.len;
                /* hand the buffer over: its capacity is len+1 after a trim */
                if (nb.cap != nb.len + 1) {
                    char *t = mlr_strndup(a, nb.data, nb.len);
                    mlr_buf_free(&nb);
                    if (!t) {
                        mlr_free(a, *addr, *addr_len + 1);
                        *addr = NULL;
                        return MLR_ERR_NOMEM;
                    }
                    *name = t;
                }
                return MLR_OK;
            }
        }
        mlr_buf_free(&nb);
        return rc;
    }
}

int mlr_addr_idna(const char *s, size_t n, mlr_buf *out, int *utf8_local, char *err,
                  size_t errlen)
{
    char dom[MLR_DOMAIN_MAX + 1], msg[200];
    const char *at = NULL, *d;
    uint8_t *alabel = NULL;
    size_t i, local, dn, an;
    int rc;
    *utf8_local = 0;
    for (i = n; i > 0; i--)
        if (s[i - 1] == '@') {
            at = s + i - 1;
            break;
        }
    if (!at)   /* not an address (the null reverse-path, say): as it is */
        return mlr_buf_add(out, s, n);
    local = (size_t)(at - s);
    d = at + 1;
    dn = n - local - 1;
    *utf8_local = !mlr_is_ascii(s, local);
    if (mlr_is_ascii(d, dn) || dn > MLR_DOMAIN_MAX || memchr(d, '\0', dn) || d[0] == '[')
        return mlr_buf_add(out, s, n);
    memcpy(dom, d, dn);
    dom[dn] = '\0';
    /* UTS #46 non-transitional processing, as browsers and idn2(1) do:
     * mapping (case, width, NFC), validity (IDNA 2008, bidi, joiners),
     * then Punycode. No STD3 flag: libidn2 drops what STD3 disallows
     * instead of failing, so the result is checked as a host name (LDH
     * labels of at most 63 octets) here. */
    rc = idn2_lookup_u8((const uint8_t *)dom, &alabel, IDN2_NONTRANSITIONAL);
    if (rc != IDN2_OK) {
        snprintf(msg, sizeof msg, "address domain is not a valid international domain name (%s)",
                 idn2_strerror(rc));
        return fail(err, errlen, msg);
    }
    an = strlen((const char *)alabel);
    if (!mlr_is_ascii((const char *)alabel, an) ||
        check_domain((const char *)alabel, an, err, errlen)) {
        snprintf(msg, sizeof msg, "address domain is not a valid international domain name "
                                  "(not a host name once mapped: %.80s)", (const char *)alabel);
        rc = fail(err, errlen, msg);
    } else if (local + 1 + an > MLR_ADDR_MAX) {
        rc = fail(err, errlen, "address is longer than 254 octets once its domain is an A-label");
    } else if (*utf8_local) {
        /* with a non-ASCII local part (SMTPUTF8) the domain stays as given */
        rc = mlr_buf_add(out, s, n);
    } else if ((rc = mlr_buf_add(out, s, local + 1)) == MLR_OK) {
        rc = mlr_buf_add(out, (const char *)alabel, an);
    }
    idn2_free(alabel);
    return rc;
}
