/* mime_addr.c - mailbox parsing and RFC 5321 address validation. */
#include "mime_addr.h"
#include "mime_header.h"

#include <stdio.h>
#include <string.h>

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
            label = 0;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c >= 0x80))
            return fail(err, errlen, "address domain has an invalid character");
        if (++label > 63)
            return fail(err, errlen, "address domain label is longer than 63 octets");
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
        /* quoted local part: qtext or quoted pairs, up to the closing quote */
        for (i = 1; i < n && s[i] != '"'; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c == '\\') {
                if (++i >= n || (unsigned char)s[i] < 32 || s[i] == 127)
                    return fail(err, errlen, "address has a bad escape in its quoted local part");
            } else if (c < 32 || c == 127) {
                return fail(err, errlen, "address has a control character");
            }
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
