/* mime_message.c - the message model (built once, validated, encoded) and
 * the pull-based renderer that streams it in bounded memory.
 *
 * At mlr_msg_finish the message is flattened into a list of operations:
 * static byte ranges (headers, boundary lines, part headers, all kept in
 * one buffer) and body operations that encode a part's source. The
 * renderer walks that list; a body is read in fixed blocks and encoded by
 * the incremental encoders, so memory is two blocks whatever the size. */
#define _GNU_SOURCE 1   /* mkostemp (glibc; the BSDs and macOS have it by default) */
#include "mime_message.h"
#include "codec_base64.h"
#include "codec_dotstuff.h"
#include "codec_qp.h"
#include "dkim.h"
#include "mime_addr.h"
#include "mime_header.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

/* Input block: 256 base64 lines of 57 bytes, so blocks end on line ends;
 * small enough that a send in flight holds well under 128 KiB. */
#define IN_BLOCK (57 * 256)

enum { ENC_7BIT, ENC_QP, ENC_B64, ENC_RAW };   /* RAW: a whole message file, as is */
enum { SRC_MEM, SRC_FILE, SRC_FN, SRC_PUSH };   /* FN and PUSH: producers */
enum { OP_STATIC, OP_BODY };

typedef struct addr_item {
    char *name, *addr;
    size_t name_len, addr_len;
    int utf8;
} addr_item;

typedef struct part {
    int multipart;
    const char *subtype;        /* multipart: mixed / alternative / related */
    char boundary[40];
    struct part **kids;
    size_t nkids, kcap;
    /* leaf */
    mlr_buf headers;            /* Content-* lines, CRLF-terminated */
    int src, enc, consumed;
    char *data;                 /* SRC_MEM: owned copy (text: CRLF-normalised), or */
    int borrowed;               /* the caller's bytes, kept alive by the caller */
    size_t len;                 /* (a text with bare line ends: its CRLF length) */
    int crlf;                   /* borrowed text with bare CR / LF: normalised as it is read */
    size_t raw_len;             /* ... and its length as given */
    char *path;                 /* SRC_FILE */
    mlr_source_fn fn;           /* SRC_FN */
    void *ud;
    unsigned push_id;           /* SRC_PUSH: the caller's number for it */
    int64_t size;               /* source size when known, else -1 */
    int64_t qp_size;            /* a streamed text body: its encoded size, else -1 */
    int spool_fd;               /* SRC_FN read while signing: its bytes, else -1 */
    int spooled;                /* the spool holds the whole source */
    char field[64];
} part;

typedef struct op {
    int kind;
    size_t off, len;            /* OP_STATIC: range in m->text */
    part *p;                    /* OP_BODY */
} op;

struct mlr_msg {
    const mlr_alloc *a;
    addr_item *addrs[MLR_ROLE_COUNT];
    size_t naddrs[MLR_ROLE_COUNT];
    char *subject, *date, *msgid;
    size_t subject_len;
    int has_subject;
    mlr_buf custom;             /* rendered custom header lines */
    part *text, *html;
    part **atts, **inl;
    size_t natts, ninl, atts_cap, inl_cap;
    part *root;
    part **allparts;            /* every part, for freeing */
    size_t nparts, parts_cap;
    mlr_buf text_buf;           /* static bytes of the rendering */
    size_t head_len;            /* top-level header block length in text_buf */
    op *ops;
    size_t nops, ops_cap;
    char **rcpts;
    size_t nrcpts, rcpts_cap;
    int smtputf8, finished;
    int eightbit;               /* a raw message with 8-bit octets */
    int borrow;                 /* strings given stay valid: no copies */
    part *raw;                  /* set: the message is this file, as is */
    uint64_t size;
    mlr_dkim *dkim;             /* signs every rendering when set */
    size_t dkim_len;            /* length of its DKIM-Signature field */
    mlr_msg_error err;
};

static int fail(mlr_msg *m, const char *field, const char *msg)
{
    snprintf(m->err.field, sizeof m->err.field, "%s", field ? field : "");
    snprintf(m->err.message, sizeof m->err.message, "%s", msg);
    return MLR_ERR_INPUT;
}

/* Like fail(), with the message prefixed by the field name. */
static int failf(mlr_msg *m, const char *field, const char *msg)
{
    char full[256];
    snprintf(full, sizeof full, "%s: %s", field, msg);
    return fail(m, field, full);
}

static int grow(const mlr_alloc *a, void **arr, size_t *cap, size_t n, size_t elem)
{
    size_t ncap;
    void *p;
    if (n < *cap)
        return MLR_OK;
    ncap = *cap ? *cap * 2 : 8;
    if (ncap > SIZE_MAX / elem)
        return MLR_ERR_NOMEM;
    p = mlr_realloc(a, *arr, *cap * elem, ncap * elem);
    if (!p)
        return MLR_ERR_NOMEM;
    *arr = p;
    *cap = ncap;
    return MLR_OK;
}

mlr_msg *mlr_msg_new(const mlr_alloc *a)
{
    mlr_msg *m = mlr_malloc(a, sizeof *m);
    if (!m)
        return NULL;
    memset(m, 0, sizeof *m);
    m->a = a;
    mlr_buf_init(&m->custom, a);
    mlr_buf_init(&m->text_buf, a);
    return m;
}

static void free_part(const mlr_alloc *a, part *p)
{
    if (!p)
        return;
    mlr_free(a, p->kids, p->kcap * sizeof *p->kids);
    mlr_buf_free(&p->headers);
    if (p->spool_fd >= 0)
        close(p->spool_fd);
    if (!p->borrowed)
        mlr_free(a, p->data, p->len + 1);
    if (p->path)
        mlr_free(a, p->path, strlen(p->path) + 1);
    mlr_free(a, p, sizeof *p);
}

void mlr_msg_free(mlr_msg *m)
{
    size_t i, r;
    const mlr_alloc *a;
    if (!m)
        return;
    a = m->a;
    for (r = 0; r < MLR_ROLE_COUNT; r++) {
        for (i = 0; i < m->naddrs[r]; i++) {
            mlr_free(a, m->addrs[r][i].name, m->addrs[r][i].name_len + 1);
            mlr_free(a, m->addrs[r][i].addr, m->addrs[r][i].addr_len + 1);
        }
        mlr_free(a, m->addrs[r], m->naddrs[r] * sizeof *m->addrs[r]);
    }
    mlr_free(a, m->subject, m->subject_len + 1);
    if (m->date)
        mlr_free(a, m->date, strlen(m->date) + 1);
    if (m->msgid)
        mlr_free(a, m->msgid, strlen(m->msgid) + 1);
    mlr_buf_free(&m->custom);
    for (i = 0; i < m->nparts; i++)
        free_part(a, m->allparts[i]);
    mlr_free(a, m->allparts, m->parts_cap * sizeof *m->allparts);
    mlr_free(a, m->atts, m->atts_cap * sizeof *m->atts);
    mlr_free(a, m->inl, m->inl_cap * sizeof *m->inl);
    mlr_buf_free(&m->text_buf);
    mlr_free(a, m->ops, m->ops_cap * sizeof *m->ops);
    mlr_free(a, m->rcpts, m->rcpts_cap * sizeof *m->rcpts);
    mlr_dkim_free(m->dkim);
    mlr_free(a, m, sizeof *m);
}

const mlr_msg_error *mlr_msg_last_error(const mlr_msg *m) { return &m->err; }

/* Allocate a zeroed part and remember it for freeing. */
static part *new_part(mlr_msg *m)
{
    part *p;
    if (grow(m->a, (void **)&m->allparts, &m->parts_cap, m->nparts, sizeof *m->allparts))
        return NULL;
    p = mlr_malloc(m->a, sizeof *p);
    if (!p)
        return NULL;
    memset(p, 0, sizeof *p);
    mlr_buf_init(&p->headers, m->a);
    p->size = -1;
    p->qp_size = -1;
    p->spool_fd = -1;
    m->allparts[m->nparts++] = p;
    return p;
}

int mlr_msg_add_address(mlr_msg *m, int role, const char *s, size_t n, const char *name,
                        size_t name_len, const char *field)
{
    addr_item it;
    char err[200];
    int rc;
    if (m->finished)
        return MLR_ERR_STATE;
    memset(&it, 0, sizeof it);
    if (role < 0 || role >= MLR_ROLE_COUNT)
        return MLR_ERR_STATE;
    if (name) {
        if (mlr_hdr_check_value(name, name_len, err, sizeof err))
            return failf(m, field, "display name contains CR, LF, NUL or invalid UTF-8");
        if ((rc = mlr_addr_check(s, n, &it.utf8, err, sizeof err)))
            return failf(m, field, err);
        it.name = mlr_strndup(m->a, name, name_len);
        it.addr = mlr_strndup(m->a, s, n);
        it.name_len = name_len;
        it.addr_len = n;
        if (!it.name || !it.addr) {
            mlr_free(m->a, it.name, name_len + 1);
            mlr_free(m->a, it.addr, n + 1);
            return MLR_ERR_NOMEM;
        }
    } else {
        rc = mlr_addr_parse(m->a, s, n, &it.name, &it.name_len, &it.addr, &it.addr_len, err,
                            sizeof err);
        if (rc == MLR_ERR_INPUT)
            return failf(m, field, err);
        if (rc)
            return rc;
        mlr_addr_check(it.addr, it.addr_len, &it.utf8, err, sizeof err);
    }
    /* an international domain as its A-label (unless the local part needs
     * SMTPUTF8 anyway): headers and envelope hold the same form */
    {
        mlr_buf ab;
        mlr_buf_init(&ab, m->a);
        rc = mlr_addr_idna(it.addr, it.addr_len, &ab, &it.utf8, err, sizeof err);
        if (rc == MLR_OK && (ab.len != it.addr_len || memcmp(ab.data, it.addr, ab.len))) {
            char *c = mlr_strndup(m->a, ab.data, ab.len);
            if (c) {
                mlr_free(m->a, it.addr, it.addr_len + 1);
                it.addr = c;
                it.addr_len = ab.len;
            } else {
                rc = MLR_ERR_NOMEM;
            }
        }
        mlr_buf_free(&ab);
        if (rc) {
            mlr_free(m->a, it.name, it.name_len + 1);
            mlr_free(m->a, it.addr, it.addr_len + 1);
            return rc == MLR_ERR_INPUT ? failf(m, field, err) : rc;
        }
    }
    {
        void *p = mlr_realloc(m->a, m->addrs[role], m->naddrs[role] * sizeof it,
                              (m->naddrs[role] + 1) * sizeof it);
        if (!p) {
            mlr_free(m->a, it.name, it.name_len + 1);
            mlr_free(m->a, it.addr, it.addr_len + 1);
            return MLR_ERR_NOMEM;
        }
        m->addrs[role] = p;
        m->addrs[role][m->naddrs[role]++] = it;
    }
    /* a non-ASCII local part in any header (Reply-To too) needs SMTPUTF8 */
    if (it.utf8)
        m->smtputf8 = 1;
    return MLR_OK;
}

/* Replace *dst with a copy of [s, s+n). */
static int set_str(mlr_msg *m, char **dst, const char *s, size_t n)
{
    char *c = mlr_strndup(m->a, s, n);
    if (!c)
        return MLR_ERR_NOMEM;
    if (*dst)
        mlr_free(m->a, *dst, strlen(*dst) + 1);
    *dst = c;
    return MLR_OK;
}

int mlr_msg_set_subject(mlr_msg *m, const char *s, size_t n)
{
    char err[200];
    if (mlr_hdr_check_value(s, n, err, sizeof err))
        return failf(m, "subject", err);
    mlr_free(m->a, m->subject, m->subject_len + 1);
    m->subject = mlr_strndup(m->a, s, n);
    m->subject_len = n;
    m->has_subject = 1;
    return m->subject ? MLR_OK : MLR_ERR_NOMEM;
}

int mlr_msg_set_date_time(mlr_msg *m, int64_t t)
{
    static const char *days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *mons[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct tm tm;
    time_t tt = (time_t)t;
    char out[64];
    long off, aoff;
    if ((int64_t)tt != t || !localtime_r(&tt, &tm))
        return fail(m, "date", "date: time stamp out of range");
    off = tm.tm_gmtoff / 60;
    aoff = off < 0 ? -off : off;
    snprintf(out, sizeof out, "%s, %d %s %04d %02d:%02d:%02d %c%02ld%02ld", days[tm.tm_wday],
             tm.tm_mday, mons[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec,
             off < 0 ? '-' : '+', aoff / 60, aoff % 60);
    return set_str(m, &m->date, out, strlen(out));
}

int mlr_msg_set_date_string(mlr_msg *m, const char *s, size_t n)
{
    char err[200];
    if (mlr_hdr_check_value(s, n, err, sizeof err))
        return failf(m, "date", err);
    if (!mlr_is_ascii(s, n) || n == 0 || n > 200)
        return fail(m, "date", "date: must be a short ASCII RFC 5322 date");
    return set_str(m, &m->date, s, n);
}

int mlr_msg_set_message_id(mlr_msg *m, const char *s, size_t n)
{
    size_t i, at = 0;
    char buf[260];
    if (n >= 2 && s[0] == '<' && s[n - 1] == '>') {
        s++;
        n -= 2;
    }
    if (n == 0 || n > 250)
        return fail(m, "message_id", "message_id: must be 1 to 250 characters");
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 32 || c >= 127 || c == '<' || c == '>' || c == '"' || c == '(' || c == ')' ||
            c == ',' || c == ';' || c == ':' || c == '\\' || c == '[' || c == ']')
            return fail(m, "message_id", "message_id: must look like local@domain "
                                         "(printable ASCII, no spaces or specials)");
        if (c == '@')
            at++;
    }
    if (at != 1 || s[0] == '@' || s[n - 1] == '@')
        return fail(m, "message_id", "message_id: must look like local@domain");
    snprintf(buf, sizeof buf, "<%.*s>", (int)n, s);
    return set_str(m, &m->msgid, buf, n + 2);
}

/* Header names set through their own fields or by the structure. */
static const char *const reserved[] = {"from", "sender", "reply-to", "to", "cc", "bcc",
                                       "subject", "date", "message-id", "mime-version",
                                       "content-type", "content-transfer-encoding",
                                       "content-disposition", "content-id", NULL};

int mlr_msg_add_header(mlr_msg *m, const char *name, size_t nlen, const char *v, size_t vlen,
                       const char *field)
{
    char err[200];
    size_t i, j;
    int rc;
    if (mlr_hdr_check_name(name, nlen, err, sizeof err))
        return failf(m, field, err);
    for (i = 0; reserved[i]; i++) {
        const char *r = reserved[i];
        if (strlen(r) != nlen)
            continue;
        for (j = 0; j < nlen; j++)
            if ((name[j] | 0x20) != r[j])
                break;
        if (j == nlen)
            return failf(m, field, "this header is set by its own field or by the message "
                                   "structure; it cannot be given in headers");
    }
    rc = mlr_hdr_unstructured(&m->custom, name, nlen, v, vlen, err, sizeof err);
    if (rc == MLR_ERR_INPUT)
        return failf(m, field, err);
    return rc;
}

/* Copy raw text from *i into out (room for cap octets) with every bare CR
 * or LF written as CRLF; stops at the end or when out is full (a CRLF is
 * never split). The text is all
 * in memory, so a CR at a slice's end looks at the next octet: no state. */
static size_t crlf_slice(const char *s, size_t end, size_t *i, uint8_t *out, size_t cap)
{
    size_t k = *i, o = 0;
    while (k < end) {
        const char *q = s + k;
        size_t seg, lim;
        if (*q == '\n' || *q == '\r') {
            if (o + 2 > cap)
                break;
            k += (*q == '\r' && k + 1 < end && q[1] == '\n') ? 2 : 1;
            out[o++] = '\r';
            out[o++] = '\n';
            continue;
        }
        if (o == cap)
            break;
        lim = end - k < cap - o ? end - k : cap - o;
        seg = mlr_plain_run((const uint8_t *)q, lim);
        while (seg < lim && q[seg] == '\0')   /* (a NUL is an ordinary octet here) */
            seg += 1 + mlr_plain_run((const uint8_t *)q + seg + 1, lim - seg - 1);
        memcpy(out + o, q, seg);
        o += seg;
        k += seg;
    }
    *i = k;
    return o;
}

/* Copy text with every CRLF, bare CR and bare LF turned into CRLF. */
static int normalise_text(mlr_msg *m, part *p, const char *s, size_t n)
{
    size_t i, extra = 0, o;
    char *d;
    for (i = 0; i < n;) {   /* count the bare CRs and LFs, skipping plain runs */
        i += mlr_plain_run((const uint8_t *)s + i, n - i);
        if (i >= n)
            break;
        if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n')
            i += 2;
        else
            extra += s[i++] != '\0';
    }
    if (extra > SIZE_MAX - n - 1)
        return MLR_ERR_NOMEM;
    if (m->borrow) {   /* the caller's bytes as they are; bare line ends become
                          CRLF as the renderer reads them, never in a copy */
        p->data = (char *)s;
        p->len = n + extra;
        p->raw_len = n;
        p->crlf = extra > 0;
        p->borrowed = 1;
        return MLR_OK;
    }
    d = mlr_malloc(m->a, n + extra + 1);
    if (!d)
        return MLR_ERR_NOMEM;
    i = 0;
    o = crlf_slice(s, n, &i, (uint8_t *)d, n + extra);
    d[o] = '\0';
    p->data = d;
    p->len = o;
    return MLR_OK;
}

/* The quoted-printable size of a borrowed text with bare line ends, as if
 * normalised: it goes through the encoder in blocks (bounded memory). */
static int64_t crlf_qp_size(part *p)
{
    enum { BLK = 4096 };
    uint8_t in[BLK], out[4 * BLK + MLR_QP_FINISH_MAX + 64];
    size_t i = 0;
    uint64_t total = 0;
    mlr_qp qp;
    if (p->qp_size >= 0)
        return p->qp_size;
    mlr_qp_init(&qp);
    while (i < p->raw_len) {
        size_t n = crlf_slice(p->data, p->raw_len, &i, in, BLK);
        total += mlr_qp_encode(&qp, in, n, out);
    }
    total += mlr_qp_finish(&qp, out);
    p->qp_size = (int64_t)total;
    return p->qp_size;
}

/* Pick 7bit, quoted-printable or base64 for a text (bare line ends count
 * as the CRLF they become); qp_size: its encoded size, computed only when
 * needed (NULL: s is CRLF-normalised, measure it directly). */
static int choose_encoding(const char *s, size_t n, int64_t (*qp_size)(part *), part *p)
{
    size_t i, line = 0;
    int plain = 1;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == 0)
            return ENC_B64; /* NUL: binary, whatever the rest */
        if (c == '\r' || c == '\n') {   /* CRLF, or a bare one (CRLF once normalised) */
            line = 0;
            if (c == '\r' && i + 1 < n && s[i + 1] == '\n')
                i++;
            continue;
        }
        if (c >= 0x80 || (c < 0x20 && c != '\t') || c == 0x7F)
            plain = 0;
        /* "=_" starts every boundary we make: keep it out of 7bit text */
        if (c == '=' && i + 1 < n && s[i + 1] == '_')
            plain = 0;
        if (++line > MLR_LINE_MAX)
            plain = 0;
    }
    if (plain)
        return ENC_7BIT;
    return (qp_size ? (uint64_t)qp_size(p) : mlr_qp_encoded_size((const uint8_t *)s, n)) <=
                   mlr_b64_encoded_size(p ? p->len : n, 76)
               ? ENC_QP
               : ENC_B64;
}

static const char *enc_name(int enc)
{
    return enc == ENC_7BIT ? "7bit" : enc == ENC_QP ? "quoted-printable" : "base64";
}

/* Create a text/plain or text/html body part. */
static int set_body(mlr_msg *m, part **slot, const char *subtype, const char *field,
                    const char *s, size_t n)
{
    part *p;
    char line[128];
    int rc;
    if (!mlr_utf8_valid(s, n))
        return failf(m, field, "is not valid UTF-8");
    if (*slot)
        return failf(m, field, "given twice");
    p = new_part(m);
    if (!p)
        return MLR_ERR_NOMEM;
    if ((rc = normalise_text(m, p, s, n)))
        return rc;
    p->src = SRC_MEM;
    p->size = (int64_t)p->len; /* known, for a base64 body's size */
    p->enc = p->crlf ? choose_encoding(p->data, p->raw_len, crlf_qp_size, p)
                     : choose_encoding(p->data, p->len, NULL, NULL);
    snprintf(p->field, sizeof p->field, "%s", field);
    snprintf(line, sizeof line,
             "Content-Type: text/%s; charset=utf-8\r\nContent-Transfer-Encoding: %s\r\n",
             subtype, enc_name(p->enc));
    if ((rc = mlr_buf_addstr(&p->headers, line)))
        return rc;
    *slot = p;
    return MLR_OK;
}

/* The first pass over a text file: is it UTF-8, and how long is it
 * quoted-printable? Reads it in blocks (bounded memory); *qp_size gets
 * the encoded size. MLR_OK, or an input error. */
static int measure_text_file(mlr_msg *m, part *p, const char *field, int64_t *qp_size)
{
    enum { BLK = 16384 };
    uint8_t in[BLK + 4], out[4 * BLK + MLR_QP_FINISH_MAX + 64];
    size_t carry = 0, n;
    uint64_t total = 0;
    mlr_qp qp;
    FILE *fp = fopen(p->path, "rb");
    if (!fp)
        return failf(m, field, "cannot read the file");
    mlr_qp_init(&qp);
    while ((n = fread(in + carry, 1, BLK, fp)) > 0) {
        size_t have = carry + n, ok = have, k;
        /* hold back an incomplete UTF-8 character at the end of the block */
        for (k = 1; k <= 3 && k <= have; k++) {
            uint8_t c = in[have - k];
            if ((c & 0xC0) != 0x80) {
                size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
                if (need > k)
                    ok = have - k;
                break;
            }
        }
        if (!mlr_utf8_valid((const char *)in, ok)) {
            fclose(fp);
            return failf(m, field, "is not valid UTF-8");
        }
        total += mlr_qp_encode(&qp, in, ok, out);
        carry = have - ok;
        memmove(in, in + ok, carry);
    }
    if (ferror(fp) || (carry && !mlr_utf8_valid((const char *)in, carry))) {
        int bad = !ferror(fp);
        fclose(fp);
        return failf(m, field, bad ? "is not valid UTF-8" : "cannot read the file");
    }
    fclose(fp);
    total += mlr_qp_finish(&qp, out);
    *qp_size = (int64_t)total;
    return MLR_OK;
}

int mlr_msg_set_body_src(mlr_msg *m, int html, const mlr_src *src)
{
    const char *field = html ? "html" : "text";
    part **slot = html ? &m->html : &m->text;
    part *p;
    char line[128];
    int rc;
    if (*slot)
        return failf(m, field, "given twice");
    if (!(p = new_part(m)))
        return MLR_ERR_NOMEM;
    snprintf(p->field, sizeof p->field, "%s", field);
    p->enc = ENC_QP;
    if (src->path) {
        struct stat st;
        p->src = SRC_FILE;
        if (!(p->path = mlr_strndup(m->a, src->path, strlen(src->path))))
            return MLR_ERR_NOMEM;
        if (stat(src->path, &st) != 0 || !S_ISREG(st.st_mode)) {
            char msg[220];
            snprintf(msg, sizeof msg, "cannot read file '%.120s': %s", src->path,
                     errno && !S_ISREG(st.st_mode) ? strerror(errno) : "not a regular file");
            return failf(m, field, msg);
        }
        p->size = (int64_t)st.st_size;
        if ((rc = measure_text_file(m, p, field, &p->qp_size)))
            return rc;
    } else if (src->push) {
        p->src = SRC_PUSH;
        p->push_id = src->push_id;
        p->size = src->size;   /* checked while sent; the encoded size stays unknown */
    } else {
        return failf(m, field, "expected a string, a path or a source");
    }
    snprintf(line, sizeof line,
             "Content-Type: text/%s; charset=utf-8\r\nContent-Transfer-Encoding: "
             "quoted-printable\r\n", html ? "html" : "plain");
    if ((rc = mlr_buf_addstr(&p->headers, line)))
        return rc;
    *slot = p;
    return MLR_OK;
}

int mlr_msg_set_text(mlr_msg *m, const char *s, size_t n)
{
    return set_body(m, &m->text, "plain", "text", s, n);
}

int mlr_msg_set_html(mlr_msg *m, const char *s, size_t n)
{
    return set_body(m, &m->html, "html", "html", s, n);
}

int mlr_msg_add_part(mlr_msg *m, const mlr_src *src, const char *content_type,
                     const char *filename, size_t filename_len, const char *cid,
                     size_t cid_len, const char *field)
{
    part *p;
    mlr_fold f;
    char err[200];
    size_t i;
    int rc;
    if (mlr_fold_ctype(NULL, content_type, strlen(content_type), err, sizeof err))
        return failf(m, field, err);
    if (filename && mlr_hdr_check_value(filename, filename_len, err, sizeof err))
        return failf(m, field, "filename contains CR, LF, NUL or invalid UTF-8");
    if (filename && filename_len == 0)
        filename = NULL;
    if (cid) {
        if (cid_len >= 2 && cid[0] == '<' && cid[cid_len - 1] == '>') {
            cid++;
            cid_len -= 2;
        }
        if (cid_len == 0 || cid_len > 200)
            return failf(m, field, "cid must be 1 to 200 characters");
        for (i = 0; i < cid_len; i++) {
            unsigned char c = (unsigned char)cid[i];
            if (c <= 32 || c >= 127 || c == '<' || c == '>' || c == '"' || c == '\\')
                return failf(m, field, "cid must be printable ASCII without spaces, <, >, \" or \\");
        }
    }
    p = new_part(m);
    if (!p)
        return MLR_ERR_NOMEM;
    snprintf(p->field, sizeof p->field, "%s", field);
    p->enc = ENC_B64; /* byte-exact and streamable without a look ahead */
    if (src->path) {
        struct stat st;
        FILE *fp;
        p->src = SRC_FILE;
        if (!(p->path = mlr_strndup(m->a, src->path, strlen(src->path))))
            return MLR_ERR_NOMEM;
        fp = fopen(src->path, "rb");
        if (!fp || fstat(fileno(fp), &st) != 0 || S_ISDIR(st.st_mode)) {
            char msg[220];
            snprintf(msg, sizeof msg, "cannot read file '%.120s': %s", src->path,
                     fp ? (S_ISDIR(st.st_mode) ? "is a directory" : strerror(errno))
                        : strerror(errno));
            if (fp)
                fclose(fp);
            return failf(m, field, msg);
        }
        p->size = S_ISREG(st.st_mode) ? (int64_t)st.st_size : -1;
        fclose(fp);
    } else if (src->fn || src->push) {
        p->src = src->push ? SRC_PUSH : SRC_FN;
        p->fn = src->fn;
        p->ud = src->ud;
        p->push_id = src->push_id;
        p->size = src->size;
    } else {
        p->src = SRC_MEM;
        if (m->borrow && src->data) {
            p->data = (char *)src->data;
            p->borrowed = 1;
        } else if (!(p->data = mlr_strndup(m->a, src->data ? src->data : "", src->len))) {
            return MLR_ERR_NOMEM;
        }
        p->len = src->len;
        p->size = (int64_t)src->len;
    }
    /* Content-Type with the RFC 2047 name= fallback, then the disposition
     * with an RFC 2231 filename. */
    rc = mlr_fold_start(&f, &p->headers, "Content-Type", 12);
    if (!rc)
        rc = mlr_fold_ctype(&f, content_type, strlen(content_type), err, sizeof err);
    if (!rc && filename)
        rc = mlr_fold_param(&f, "name", filename, filename_len, 1);
    if (!rc)
        rc = mlr_fold_end(&f);
    if (!rc)
        rc = mlr_buf_addstr(&p->headers, "Content-Transfer-Encoding: base64\r\n");
    if (!rc)
        rc = mlr_fold_start(&f, &p->headers, "Content-Disposition", 19);
    if (!rc)
        rc = mlr_fold_add(&f, " ", 1, cid ? "inline" : "attachment", cid ? 6 : 10);
    if (!rc && filename)
        rc = mlr_fold_param(&f, "filename", filename, filename_len, 0);
    if (!rc)
        rc = mlr_fold_end(&f);
    if (!rc && cid) {
        rc = mlr_buf_add(&p->headers, "Content-ID: <", 13);
        if (!rc)
            rc = mlr_buf_add(&p->headers, cid, cid_len);
        if (!rc)
            rc = mlr_buf_add(&p->headers, ">\r\n", 3);
    }
    if (rc == MLR_ERR_INPUT)
        return failf(m, field, "filename is too long");
    if (rc)
        return rc;
    if (cid) {
        if ((rc = grow(m->a, (void **)&m->inl, &m->inl_cap, m->ninl, sizeof *m->inl)))
            return rc;
        m->inl[m->ninl++] = p;
    } else {
        if ((rc = grow(m->a, (void **)&m->atts, &m->atts_cap, m->natts, sizeof *m->atts)))
            return rc;
        m->atts[m->natts++] = p;
    }
    return MLR_OK;
}

/* A multipart node over kids; NULL on allocation failure. */
static part *multi(mlr_msg *m, const char *subtype, part **kids, size_t n)
{
    static const char alnum[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    unsigned char rnd[24];
    part *p = new_part(m);
    size_t i;
    if (!p)
        return NULL;
    p->multipart = 1;
    p->subtype = subtype;
    p->kids = mlr_malloc(m->a, n * sizeof *kids);
    if (!p->kids)
        return NULL;
    p->kcap = n;
    memcpy(p->kids, kids, n * sizeof *kids);
    p->nkids = n;
    if (RAND_bytes(rnd, sizeof rnd) != 1)
        return NULL;
    /* "=_" can never occur in base64 or quoted-printable output, and 7bit
     * bodies holding it are sent as quoted-printable, so the boundary
     * cannot occur in any part. */
    memcpy(p->boundary, "=_mlr_", 6);
    for (i = 0; i < sizeof rnd; i++)
        p->boundary[6 + i] = alnum[rnd[i] % (sizeof alnum - 1)];
    p->boundary[6 + sizeof rnd] = '\0';
    return p;
}

/* Append an operation. */
static int add_op(mlr_msg *m, int kind, size_t off, size_t len, part *p)
{
    int rc;
    if (kind == OP_STATIC && m->nops > 0 && m->ops[m->nops - 1].kind == OP_STATIC) {
        m->ops[m->nops - 1].len += len; /* merge adjacent static ranges */
        return MLR_OK;
    }
    if ((rc = grow(m->a, (void **)&m->ops, &m->ops_cap, m->nops, sizeof *m->ops)))
        return rc;
    m->ops[m->nops].kind = kind;
    m->ops[m->nops].off = off;
    m->ops[m->nops].len = len;
    m->ops[m->nops].p = p;
    m->nops++;
    return MLR_OK;
}

/* Append static bytes to the rendering. */
static int emit(mlr_msg *m, const char *s, size_t n)
{
    size_t off = m->text_buf.len;
    int rc = mlr_buf_add(&m->text_buf, s, n);
    return rc ? rc : add_op(m, OP_STATIC, off, n, NULL);
}

/* Encoded size of a leaf body, or -1 when unknown. */
static int64_t body_size(const part *p)
{
    if (p->enc == ENC_7BIT)
        return (int64_t)p->len;
    if (p->enc == ENC_QP && (p->src != SRC_MEM || p->crlf))
        return p->qp_size;   /* a streamed or borrowed text body: measured, or unknown */
    if (p->enc == ENC_QP)
        return (int64_t)mlr_qp_encoded_size((const uint8_t *)p->data, p->len);
    if (p->size < 0)
        return -1;
    return (int64_t)mlr_b64_encoded_size((uint64_t)p->size, 76);
}

/* Flatten a part (its own headers already written by the caller). */
static int flatten(mlr_msg *m, part *p, int *size_known)
{
    size_t i;
    int rc;
    if (!p->multipart) {
        int64_t sz = body_size(p);
        if (sz < 0)
            *size_known = 0;
        else
            m->size += (uint64_t)sz;
        return add_op(m, OP_BODY, 0, 0, p);
    }
    for (i = 0; i < p->nkids; i++) {
        part *k = p->kids[i];
        if ((rc = emit(m, i ? "\r\n--" : "--", i ? 4 : 2)) ||
            (rc = emit(m, p->boundary, strlen(p->boundary))) || (rc = emit(m, "\r\n", 2)))
            return rc;
        if ((rc = k->multipart ? MLR_OK : emit(m, k->headers.data, k->headers.len)))
            return rc;
        if (k->multipart) {
            char line[128];
            snprintf(line, sizeof line, "Content-Type: multipart/%s;\r\n boundary=\"%s\"\r\n",
                     k->subtype, k->boundary);
            if ((rc = emit(m, line, strlen(line))))
                return rc;
        }
        if ((rc = emit(m, "\r\n", 2)) || (rc = flatten(m, k, size_known)))
            return rc;
    }
    if ((rc = emit(m, "\r\n--", 4)) || (rc = emit(m, p->boundary, strlen(p->boundary))) ||
        (rc = emit(m, "--\r\n", 4)))
        return rc;
    return MLR_OK;
}

/* Write one address header for a role. */
static int address_header(mlr_msg *m, mlr_buf *b, const char *hname, int role)
{
    mlr_fold f;
    size_t i;
    int rc;
    if (m->naddrs[role] == 0)
        return MLR_OK;
    if ((rc = mlr_fold_start(&f, b, hname, strlen(hname))))
        return rc;
    for (i = 0; i < m->naddrs[role]; i++) {
        addr_item *it = &m->addrs[role][i];
        const char *ws = " ";
        if (i && (rc = mlr_fold_add(&f, "", 0, ",", 1)))
            return rc;
        if (it->name_len) {
            if ((rc = mlr_fold_phrase(&f, ws, 1, it->name, it->name_len)))
                return rc;
        }
        {
            char angle[MLR_ADDR_MAX + 3];
            size_t n = 0;
            if (it->name_len)
                angle[n++] = '<';
            memcpy(angle + n, it->addr, it->addr_len);
            n += it->addr_len;
            if (it->name_len)
                angle[n++] = '>';
            if ((rc = mlr_fold_add(&f, ws, 1, angle, n)))
                return rc;
        }
    }
    return mlr_fold_end(&f);
}

/* Same mailbox: local parts equal, domains equal ignoring ASCII case. */
static int same_addr(const char *x, const char *y)
{
    const char *ax = strrchr(x, '@'), *ay = strrchr(y, '@');
    size_t lx = ax ? (size_t)(ax - x) : strlen(x), ly = ay ? (size_t)(ay - y) : strlen(y);
    if (lx != ly || memcmp(x, y, lx) != 0)
        return 0;
    x += lx;
    y += ly;
    while (*x && *y) {
        char cx = *x, cy = *y;
        if (cx >= 'A' && cx <= 'Z')
            cx = (char)(cx + 32);
        if (cy >= 'A' && cy <= 'Z')
            cy = (char)(cy + 32);
        if (cx != cy)
            return 0;
        x++;
        y++;
    }
    return *x == *y;
}

/* A raw message: the envelope from its addresses, one body operation
 * that copies the file, its size. */
static int finish_raw(mlr_msg *m)
{
    size_t r, i;
    int rc;
    if (m->naddrs[MLR_ROLE_FROM] != 1)
        return fail(m, "from", "from: a raw message needs exactly one envelope sender");
    if (m->dkim)
        return fail(m, "dkim", "dkim: a raw message is sent as is; sign it when it is rendered");
    for (r = MLR_ROLE_TO; r <= MLR_ROLE_BCC; r++)
        for (i = 0; i < m->naddrs[r]; i++) {
            if ((rc = grow(m->a, (void **)&m->rcpts, &m->rcpts_cap, m->nrcpts, sizeof *m->rcpts)))
                return rc;
            m->rcpts[m->nrcpts++] = m->addrs[r][i].addr;
        }
    if ((rc = add_op(m, OP_BODY, 0, 0, m->raw)))
        return rc;
    m->size = (uint64_t)m->raw->size;
    m->finished = 1;
    return MLR_OK;
}

int mlr_msg_set_raw(mlr_msg *m, const char *path, const char *field)
{
    part *p;
    FILE *fp;
    struct stat st;
    uint8_t buf[16384];
    size_t n, k;
    if (m->raw || m->text || m->html || m->natts || m->ninl)
        return fail(m, field, "a raw message has no other body or parts");
    if (!(p = new_part(m)))
        return MLR_ERR_NOMEM;
    snprintf(p->field, sizeof p->field, "%s", field);
    p->src = SRC_FILE;
    p->enc = ENC_RAW;
    if (!(p->path = mlr_strndup(m->a, path, strlen(path))))
        return MLR_ERR_NOMEM;
    fp = fopen(path, "rb");   /* 8-bit octets ask for BODY=8BITMIME */
    if (!fp || fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) {
        char msg[220];
        snprintf(msg, sizeof msg, "cannot read '%.120s' as a message: %s", path,
                 !fp ? strerror(errno) : "not a non-empty regular file");
        if (fp)
            fclose(fp);
        return failf(m, field, msg);
    }
    p->size = (int64_t)st.st_size;
    while (!m->eightbit && (n = fread(buf, 1, sizeof buf, fp)) > 0)
        for (k = 0; k < n; k++)
            if (buf[k] & 0x80) {
                m->eightbit = 1;
                break;
            }
    fclose(fp);
    m->raw = p;
    return MLR_OK;
}

int mlr_msg_needs_8bit(const mlr_msg *m) { return m->smtputf8 || m->eightbit; }

void mlr_msg_borrow_strings(mlr_msg *m, int on) { m->borrow = on; }

int mlr_msg_finish(mlr_msg *m)
{
    mlr_buf *h = &m->text_buf;
    part *body = NULL, *kids[2];
    int rc, size_known = 1;
    size_t r, i, j;
    if (m->finished)
        return MLR_OK;
    if (m->raw)
        return finish_raw(m);
    if (m->naddrs[MLR_ROLE_FROM] == 0)
        return fail(m, "from", "from: a sender address is required");
    if (m->naddrs[MLR_ROLE_SENDER] > 1)
        return fail(m, "sender", "sender: only one address is allowed");
    if (m->naddrs[MLR_ROLE_FROM] > 1 && m->naddrs[MLR_ROLE_SENDER] == 0)
        return fail(m, "sender", "sender: required when from has several addresses");
    if (m->ninl && !m->html)
        return fail(m, "inline", "inline: inline parts need an html body to refer to them");
    /* envelope: to, cc, bcc deduplicated in order */
    for (r = MLR_ROLE_TO; r <= MLR_ROLE_BCC; r++) {
        for (i = 0; i < m->naddrs[r]; i++) {
            char *a = m->addrs[r][i].addr;
            for (j = 0; j < m->nrcpts; j++)
                if (same_addr(m->rcpts[j], a))
                    break;
            if (j < m->nrcpts)
                continue;
            if ((rc = grow(m->a, (void **)&m->rcpts, &m->rcpts_cap, m->nrcpts, sizeof *m->rcpts)))
                return rc;
            m->rcpts[m->nrcpts++] = a;
        }
    }
    if (!m->date) {
        if ((rc = mlr_msg_set_date_time(m, (int64_t)time(NULL))))
            return rc;
    }
    if (!m->msgid) {
        unsigned char rnd[16];
        char id[300];
        const char *from = m->addrs[MLR_ROLE_FROM][0].addr, *at = strrchr(from, '@');
        size_t k, o;
        if (RAND_bytes(rnd, sizeof rnd) != 1)
            return MLR_ERR_NOMEM;
        o = (size_t)snprintf(id, sizeof id, "<%lx.", (unsigned long)time(NULL));
        for (k = 0; k < sizeof rnd; k++)
            o += (size_t)snprintf(id + o, sizeof id - o, "%02x", rnd[k]);
        /* the domain of From, unless it is an address literal or non-ASCII */
        if (at && at[1] != '[' && mlr_is_ascii(at, strlen(at)))
            snprintf(id + o, sizeof id - o, "%s>", at);
        else
            snprintf(id + o, sizeof id - o, "@mailer.invalid>");
        if ((rc = set_str(m, &m->msgid, id, strlen(id))))
            return rc;
    }
    /* structure: alternative(text, related(html, inline...)), mixed(..., atts) */
    if (m->html && m->ninl) {
        part **k2 = mlr_malloc(m->a, (m->ninl + 1) * sizeof *k2);
        if (!k2)
            return MLR_ERR_NOMEM;
        k2[0] = m->html;
        memcpy(k2 + 1, m->inl, m->ninl * sizeof *k2);
        body = multi(m, "related", k2, m->ninl + 1);
        mlr_free(m->a, k2, (m->ninl + 1) * sizeof *k2);
        if (!body) /* never fall back to a structure without the parts */
            return MLR_ERR_NOMEM;
    } else {
        body = m->html;
    }
    if (m->text && body) {
        kids[0] = m->text;
        kids[1] = body;
        body = multi(m, "alternative", kids, 2);
        if (!body)
            return MLR_ERR_NOMEM;
    } else if (m->text) {
        body = m->text;
    }
    if (!body && !m->natts) {
        if ((rc = mlr_msg_set_text(m, "", 0)))
            return rc;
        body = m->text;
    }
    if (m->natts) {
        part **k3 = mlr_malloc(m->a, (m->natts + 1) * sizeof *k3);
        size_t nk = 0;
        if (!k3)
            return MLR_ERR_NOMEM;
        if (body)
            k3[nk++] = body;
        memcpy(k3 + nk, m->atts, m->natts * sizeof *k3);
        body = multi(m, "mixed", k3, nk + m->natts);
        mlr_free(m->a, k3, (m->natts + 1) * sizeof *k3);
    }
    if (!body)
        return MLR_ERR_NOMEM;
    m->root = body;
    /* top-level headers */
    rc = mlr_buf_addstr(h, "Date: ");
    if (!rc)
        rc = mlr_buf_addstr(h, m->date);
    if (!rc)
        rc = mlr_buf_addstr(h, "\r\n");
    if (!rc)
        rc = address_header(m, h, "From", MLR_ROLE_FROM);
    if (!rc)
        rc = address_header(m, h, "Sender", MLR_ROLE_SENDER);
    if (!rc)
        rc = address_header(m, h, "Reply-To", MLR_ROLE_REPLY_TO);
    if (!rc)
        rc = address_header(m, h, "To", MLR_ROLE_TO);
    if (!rc)
        rc = address_header(m, h, "Cc", MLR_ROLE_CC);
    if (!rc && m->has_subject) {
        char err[200];
        rc = mlr_hdr_unstructured(h, "Subject", 7, m->subject, m->subject_len, err, sizeof err);
        if (rc == MLR_ERR_INPUT)
            return failf(m, "subject", err);
    }
    if (!rc)
        rc = mlr_buf_addstr(h, "Message-ID: ");
    if (!rc)
        rc = mlr_buf_addstr(h, m->msgid);
    if (!rc)
        rc = mlr_buf_addstr(h, "\r\n");
    if (!rc)
        rc = mlr_buf_add(h, m->custom.data ? m->custom.data : "", m->custom.len);
    if (!rc)
        rc = mlr_buf_addstr(h, "MIME-Version: 1.0\r\n");
    if (rc == MLR_ERR_INPUT)
        return fail(m, "", "an address header is too long to fold");
    if (rc)
        return rc;
    if ((rc = add_op(m, OP_STATIC, 0, h->len, NULL)))
        return rc;
    if (body->multipart) {
        char line[128];
        snprintf(line, sizeof line, "Content-Type: multipart/%s;\r\n boundary=\"%s\"\r\n",
                 body->subtype, body->boundary);
        rc = emit(m, line, strlen(line));
    } else {
        rc = emit(m, body->headers.data, body->headers.len);
    }
    if (!rc)
        rc = emit(m, "\r\n", 2);
    if (rc)
        return rc;
    m->head_len = h->len;
    if (body->multipart && (rc = emit(m, "This is a multipart message in MIME format.\r\n\r\n", 47)))
        return rc;
    if ((rc = flatten(m, body, &size_known)))
        return rc;
    m->size = size_known ? m->size + h->len : 0;
    if (m->dkim) {
        m->dkim_len = mlr_dkim_header_len(m->dkim, h->data, m->head_len - 2);
        if (m->dkim_len == 0)
            return MLR_ERR_NOMEM;
        if (m->size)
            m->size += m->dkim_len;
    }
    m->finished = 1;
    return MLR_OK;
}

int mlr_msg_set_dkim(mlr_msg *m, mlr_dkim *d)
{
    if (m->finished) {
        mlr_dkim_free(d);
        return MLR_ERR_STATE;
    }
    mlr_dkim_free(m->dkim);
    m->dkim = d;
    return MLR_OK;
}

uint64_t mlr_msg_size_dkim(const mlr_msg *m, const mlr_dkim *d)
{
    size_t n;
    if (!m->size || !d || d == m->dkim)
        return m->size;
    n = mlr_dkim_header_len(d, m->text_buf.data, m->head_len - 2);
    return n ? m->size - m->dkim_len + n : 0;
}

const char *mlr_msg_env_from(const mlr_msg *m)
{
    if (m->naddrs[MLR_ROLE_FROM] == 0)
        return NULL;
    return m->addrs[MLR_ROLE_FROM][0].addr;
}

size_t mlr_msg_env_count(const mlr_msg *m) { return m->nrcpts; }

const char *mlr_msg_env_rcpt(const mlr_msg *m, size_t i)
{
    return i < m->nrcpts ? m->rcpts[i] : NULL;
}

int mlr_msg_needs_smtputf8(const mlr_msg *m) { return m->smtputf8; }

const char *mlr_msg_message_id(const mlr_msg *m) { return m->raw ? NULL : m->msgid; }

uint64_t mlr_msg_size(const mlr_msg *m) { return m->size; }

const char *mlr_msg_header(const mlr_msg *m, const char *name, size_t nlen, mlr_buf *out)
{
    const char *s = m->text_buf.data;
    size_t n = m->head_len, i = 0, j;
    if (!s)
        return NULL;
    while (i < n) {
        /* i is at the start of a field */
        size_t end = i;
        while (end + 1 < n && !(s[end] == '\r' && s[end + 1] == '\n' &&
                                (end + 2 >= n || (s[end + 2] != ' ' && s[end + 2] != '\t'))))
            end++;
        if (end - i > nlen && s[i + nlen] == ':') {
            for (j = 0; j < nlen; j++) {
                char a = s[i + j], b = name[j];
                if (a >= 'A' && a <= 'Z')
                    a = (char)(a + 32);
                if (b >= 'A' && b <= 'Z')
                    b = (char)(b + 32);
                if (a != b)
                    break;
            }
            if (j == nlen) {
                size_t k = i + nlen + 1;
                mlr_buf_reset(out);
                /* leading white space, a fold right after the colon included */
                while (k < end && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r' || s[k] == '\n'))
                    k++;
                for (; k < end; k++) {
                    if (s[k] == '\r' && k + 1 < end && s[k + 1] == '\n') {
                        k++;
                        continue;
                    }
                    if (mlr_buf_addc(out, s[k]))
                        return NULL;
                }
                if (mlr_buf_reserve(out, 0))
                    return NULL;
                return out->data;
            }
        }
        i = end + 2;
    }
    return NULL;
}

/* ---- rendering ---- */

struct mlr_render {
    mlr_msg *m;
    mlr_alloc a;            /* a copy: freeing never touches m, which may be gone */
    size_t op;
    int open;               /* current body op started */
    FILE *fp;
    size_t mem_off;
    int src_done;
    mlr_b64 b64;
    mlr_qp qp;
    const uint8_t *fn_ptr;  /* unread rest of a producer's chunk */
    size_t fn_left;
    uint64_t src_got;       /* octets read from the current body's source */
    const part *need;       /* the push source MLR_RENDER_NEED waits for */
    int push_end;           /* that source has ended */
    int failed;             /* sticky error */
    int stepped;            /* the hashing pass returns MLR_RENDER_BUSY between slices */
    mlr_render *hash;       /* the hashing pass of a signed rendering, while it runs */
    mlr_dkim_body body;     /* its body hash */
    size_t skip;            /* header octets it has yet to skip */
    uint8_t *out;
    size_t out_cap;
    const mlr_dkim *dk;     /* sign with this (NULL: no signature) */
    int signed_done;        /* the signature field was made and handed out */
    int spool;              /* the hashing pass: keep producers' bytes */
    mlr_buf sig;            /* the DKIM-Signature field */
    char err[256];
};

/* A rendering signed with d (NULL: unsigned). */
static mlr_render *render_alloc(mlr_msg *m, const mlr_dkim *d)
{
    mlr_render *r;
    if (!m->finished)
        return NULL;
    r = mlr_malloc(m->a, sizeof *r);
    if (!r)
        return NULL;
    memset(r, 0, sizeof *r);
    r->m = m;
    r->a = *m->a;
    r->out_cap = mlr_b64_bound(IN_BLOCK, 76);
    if (mlr_qp_bound(IN_BLOCK) > r->out_cap)
        r->out_cap = mlr_qp_bound(IN_BLOCK);
    r->out_cap += MLR_QP_FINISH_MAX + MLR_B64_FINISH_MAX + IN_BLOCK;
    r->out = mlr_malloc(m->a, r->out_cap);
    if (!r->out) {
        mlr_free(m->a, r, sizeof *r);
        return NULL;
    }
    r->dk = d;
    mlr_buf_init(&r->sig, &r->a);
    return r;
}

mlr_render *mlr_render_new(mlr_msg *m) { return render_alloc(m, m->dkim); }

mlr_render *mlr_render_new_dkim(mlr_msg *m, const mlr_dkim *d)
{
    return render_alloc(m, d ? d : m->dkim);
}

void mlr_render_free(mlr_render *r)
{
    mlr_alloc a;
    if (!r)
        return;
    if (r->hash) {
        mlr_render_free(r->hash);
        mlr_dkim_body_free(&r->body);
    }
    if (r->fp)
        fclose(r->fp);
    mlr_buf_free(&r->sig);
    a = r->a;
    mlr_free(&a, r->out, r->out_cap);
    mlr_free(&a, r, sizeof *r);
}

void mlr_render_rest(mlr_render *r)
{
    if (!r)
        return;
    if (r->hash) {
        mlr_render_free(r->hash);
        mlr_dkim_body_free(&r->body);
        r->hash = NULL;
    }
    if (r->fp) {
        fclose(r->fp);
        r->fp = NULL;
    }
    mlr_buf_reset(&r->sig);
    r->m = NULL;
}

mlr_render *mlr_render_reuse(mlr_render *r, mlr_msg *m, const mlr_dkim *d)
{
    uint8_t *out;
    size_t cap;
    mlr_buf sig;
    mlr_alloc a;
    if (!r || !m->finished || memcmp(&r->a, m->a, sizeof r->a) != 0) {
        mlr_render_free(r);
        return mlr_render_new_dkim(m, d);
    }
    mlr_render_rest(r);
    out = r->out;
    cap = r->out_cap;
    sig = r->sig;
    a = r->a;
    memset(r, 0, sizeof *r);
    r->m = m;
    r->a = a;
    r->out = out;
    r->out_cap = cap;
    r->sig = sig;
    r->sig.a = &r->a;
    r->dk = d ? d : m->dkim;
    return r;
}

const char *mlr_render_error(const mlr_render *r) { return r->err; }

static int render_fail(mlr_render *r, int code, const part *p, const char *msg)
{
    snprintf(r->err, sizeof r->err, "%.60s: %.190s", p->field, msg);
    r->failed = code;
    return code;
}

/* The rendering whose source is wanted: the hashing pass while it runs. */
static mlr_render *active(mlr_render *r)
{
    while (r->hash)
        r = r->hash;
    return r;
}

long mlr_render_need(const mlr_render *r)
{
    r = active((mlr_render *)r);
    return r->need ? (long)r->need->push_id : -1;
}

/* A producer's octet count against its announced size. */
static int size_check(mlr_render *r, const part *p, int at_end)
{
    char msg[200];
    if (p->size < 0 || (at_end ? r->src_got == (uint64_t)p->size : r->src_got <= (uint64_t)p->size))
        return MLR_OK;
    snprintf(msg, sizeof msg, "the source %s than its announced size of %lld octets%s",
             at_end ? "ended with fewer octets" : "yielded more octets",
             (long long)p->size, p->src == SRC_FILE ? " (the file changed while it was read)" : "");
    return render_fail(r, p->src == SRC_FILE ? MLR_ERR_IO : MLR_ERR_INPUT, p, msg);
}

int mlr_render_supply(mlr_render *r, const uint8_t *p, size_t n, int end)
{
    r = active(r);
    if (r->failed)
        return r->failed;
    if (!r->need || r->fn_left)
        return MLR_ERR_STATE;
    if (end && n == 0) {
        r->push_end = 1;
        return MLR_OK;
    }
    r->src_got += n;
    if (size_check(r, r->need, 0))
        return r->failed;
    r->fn_ptr = p;
    r->fn_left = n;
    return MLR_OK;
}

void mlr_render_supply_error(mlr_render *r, const char *msg)
{
    r = active(r);
    if (!r->failed && r->need) {
        char full[220];
        snprintf(full, sizeof full, "source failed: %.190s", msg);
        render_fail(r, MLR_ERR_IO, r->need, full);
    }
}

void mlr_render_set_stepped(mlr_render *r, int on) { r->stepped = on; }

/* read_block's "a push source must be supplied first" (not an mlr_err). */
#define READ_NEED (-1000)

/* Read the next input block of a body into r->out's tail; returns bytes,
 * 0 at the end, READ_NEED, or a negative error. Sets *ptr to the bytes. */
static long read_block(mlr_render *r, part *p, const uint8_t **ptr)
{
    if (p->src == SRC_MEM && p->crlf) {   /* normalised here, into the input area */
        uint8_t *in = r->out + r->out_cap - IN_BLOCK;
        size_t n = crlf_slice(p->data, p->raw_len, &r->mem_off, in, IN_BLOCK);
        *ptr = in;
        return (long)n;
    }
    if (p->src == SRC_MEM) {
        size_t n = p->len - r->mem_off;
        if (n > IN_BLOCK)
            n = IN_BLOCK;
        *ptr = (const uint8_t *)p->data + r->mem_off;
        r->mem_off += n;
        return (long)n;
    }
    if (p->src == SRC_FILE) {
        uint8_t *in = r->out + r->out_cap - IN_BLOCK;
        size_t n = fread(in, 1, IN_BLOCK, r->fp);
        if (n == 0 && ferror(r->fp)) {
            char msg[200];
            snprintf(msg, sizeof msg, "reading '%.100s' failed: %s", p->path, strerror(errno));
            return render_fail(r, MLR_ERR_IO, p, msg);
        }
        r->src_got += n;
        if (size_check(r, p, n == 0))   /* SIZE= and the encoded size were announced */
            return r->failed;
        *ptr = in;
        return (long)n;
    }
    if (p->spooled) {   /* read back what the signing pass kept */
        uint8_t *in = r->out + r->out_cap - IN_BLOCK;
        ssize_t n;
        do
            n = pread(p->spool_fd, in, IN_BLOCK, (off_t)r->mem_off);
        while (n < 0 && errno == EINTR);
        if (n < 0) {
            char msg[200];
            snprintf(msg, sizeof msg, "reading the spooled source failed: %s", strerror(errno));
            return render_fail(r, MLR_ERR_IO, p, msg);
        }
        r->mem_off += (size_t)n;
        *ptr = in;
        return (long)n;
    }
    /* a producer may hand out chunks of any size: encode them in slices */
    while (r->fn_left == 0) {
        int rc;
        if (p->src == SRC_PUSH) {
            if (!r->push_end) {
                r->need = p;
                return READ_NEED;
            }
            r->need = NULL;
            rc = 0;
        } else {
            char msg[200] = "the source failed";
            rc = p->fn(p->ud, &r->fn_ptr, &r->fn_left, msg, sizeof msg);
            if (rc < 0)
                return render_fail(r, rc, p, msg);
            if (rc == 1) {
                r->src_got += r->fn_left;
                if (size_check(r, p, 0))
                    return r->failed;
            }
        }
        if (rc == 0) {
            r->fn_left = 0;
            if (size_check(r, p, 1))
                return r->failed;
            if (r->spool)
                p->spooled = 1;
            return 0;
        }
    }
    r->need = NULL;
    {
        size_t n = r->fn_left > IN_BLOCK ? IN_BLOCK : r->fn_left;
        *ptr = r->fn_ptr;
        r->fn_ptr += n;
        r->fn_left -= n;
        if (r->spool) {
            const uint8_t *q = *ptr;
            size_t left = n;
            while (left) {
                ssize_t w = write(p->spool_fd, q, left);
                if (w < 0 && errno == EINTR)
                    continue;
                if (w <= 0) {
                    char msg[200];
                    snprintf(msg, sizeof msg, "writing the DKIM spool file failed: %s",
                             w < 0 ? strerror(errno) : "no space");
                    return render_fail(r, MLR_ERR_IO, p, msg);
                }
                q += w;
                left -= (size_t)w;
            }
        }
        return (long)n;
    }
}

/* An anonymous temporary file (unlinked at once) in $TMPDIR or /tmp. */
static int spool_open(mlr_render *r, part *p)
{
    const char *dir = getenv("TMPDIR");
    char path[512];
    int fd;
    if (!dir || !*dir || strlen(dir) > 400)
        dir = "/tmp";
    snprintf(path, sizeof path, "%s/mailer-dkim-XXXXXX", dir);
    fd = mkostemp(path, O_CLOEXEC);   /* not inherited by programs the caller runs */
    if (fd < 0) {
        char msg[200];
        snprintf(msg, sizeof msg, "cannot create a DKIM spool file in %.100s: %s", dir,
                 strerror(errno));
        return render_fail(r, MLR_ERR_IO, p, msg);
    }
    unlink(path);
    p->spool_fd = fd;
    return MLR_OK;
}

/* Octets of body the hashing pass handles per slice when stepped. */
#define HASH_SLICE (1024 * 1024)

/* The signing pass: render the message once without output, hash its
 * body, and make the DKIM-Signature field into r->sig. Producer sources
 * are spooled to a temporary file on the way, so the sending pass (and
 * any later rendering) reads them back from there. Returns MLR_OK when
 * the field is made, MLR_RENDER_NEED / MLR_RENDER_BUSY to be called
 * again, or an error. */
static int sign_pass(mlr_render *r)
{
    mlr_msg *m = r->m;
    uint8_t bh[32];
    const uint8_t *p;
    size_t n, done = 0;
    int rc;
    if (!r->hash) {
        mlr_render *h = render_alloc(m, NULL);
        if (!h)
            return MLR_ERR_NOMEM;
        h->spool = 1;
        if (mlr_dkim_body_init(&r->body, r->dk ? mlr_dkim_body_canon(r->dk) : 0)) {
            mlr_render_free(h);
            return MLR_ERR_NOMEM;
        }
        r->hash = h;
        r->skip = m->head_len;
    }
    while ((rc = mlr_render_next(r->hash, &p, &n)) == 1) {
        if (r->skip) {   /* the header block is not part of the body */
            size_t k = n < r->skip ? n : r->skip;
            p += k;
            n -= k;
            r->skip -= k;
        }
        if (n)
            mlr_dkim_body_update(&r->body, p, n);
        done += n;
        if (r->stepped && done >= HASH_SLICE)
            return MLR_RENDER_BUSY;
    }
    if (rc == MLR_RENDER_NEED)
        return rc;
    if (rc < 0) {
        memcpy(r->err, r->hash->err, sizeof r->err);
        r->failed = rc;
    }
    mlr_render_free(r->hash);
    r->hash = NULL;
    if (rc < 0) {
        mlr_dkim_body_free(&r->body);
        return rc;
    }
    rc = mlr_dkim_body_final(&r->body, bh);
    mlr_dkim_body_free(&r->body);   /* (final may not free on failure) */
    if (rc)
        return r->failed = MLR_ERR_NOMEM;
    mlr_buf_reset(&r->sig);
    rc = mlr_dkim_sign(r->dk, m->text_buf.data, m->head_len - 2, bh, &r->sig, r->err,
                       sizeof r->err);
    if (rc < 0)
        r->failed = rc;
    return rc;
}

int mlr_render_next(mlr_render *r, const uint8_t **p, size_t *n)
{
    mlr_msg *m = r->m;
    if (r->failed)
        return r->failed;
    if (r->dk && !r->signed_done) {
        int rc = sign_pass(r);
        if (rc != MLR_OK)
            return rc;
        r->signed_done = 1;
        *p = (const uint8_t *)r->sig.data;
        *n = r->sig.len;
        return 1;
    }
    for (;;) {
        op *o;
        part *pt;
        const uint8_t *in = NULL;
        long got;
        size_t w;
        if (r->op >= m->nops)
            return 0;
        o = &m->ops[r->op];
        if (o->kind == OP_STATIC) {
            r->op++;
            *p = (const uint8_t *)m->text_buf.data + o->off;
            *n = o->len;
            return 1;
        }
        pt = o->p;
        if (!r->open) {
            r->open = 1;
            r->mem_off = 0;
            r->src_done = 0;
            r->fn_left = 0;
            r->src_got = 0;
            r->push_end = 0;
            mlr_b64_init(&r->b64, 76);
            mlr_qp_init(&r->qp);
            if (pt->src == SRC_FILE) {
                r->fp = fopen(pt->path, "rb");
                if (!r->fp) {
                    char msg[200];
                    snprintf(msg, sizeof msg, "cannot open '%.100s': %s", pt->path,
                             strerror(errno));
                    return render_fail(r, MLR_ERR_IO, pt, msg);
                }
            } else if ((pt->src == SRC_FN || pt->src == SRC_PUSH) && !pt->spooled) {
                if (pt->consumed)
                    return render_fail(r, MLR_ERR_INPUT, pt,
                                       "a source function can be read only once; "
                                       "render the message again with a new source");
                pt->consumed = 1;
                if (r->spool && pt->spool_fd < 0) {
                    int rc = spool_open(r, pt);
                    if (rc)
                        return rc;
                }
            }
            if (pt->enc == ENC_7BIT && !pt->crlf) {
                /* already CRLF-normalised text: hand it out as is */
                r->open = 0;
                r->op++;
                if (pt->len == 0)
                    continue;
                *p = (const uint8_t *)pt->data;
                *n = pt->len;
                return 1;
            }
        }
        if (pt->enc == ENC_RAW || pt->enc == ENC_7BIT) {
            /* a whole message file, or 7bit text normalised as it is read:
             * copied as is */
            got = read_block(r, pt, &in);
            if (got < 0)
                return (int)got;
            if (got == 0) {
                if (r->fp)
                    fclose(r->fp);
                r->fp = NULL;
                r->open = 0;
                r->op++;
                continue;
            }
            *p = in;
            *n = (size_t)got;
            return 1;
        }
        if (r->src_done) {
            w = pt->enc == ENC_QP ? mlr_qp_finish(&r->qp, r->out)
                                  : mlr_b64_finish(&r->b64, r->out);
            if (r->fp) {
                fclose(r->fp);
                r->fp = NULL;
            }
            r->open = 0;
            r->op++;
            if (w == 0)
                continue;
            *p = r->out;
            *n = w;
            return 1;
        }
        got = read_block(r, pt, &in);
        if (got == READ_NEED)
            return MLR_RENDER_NEED;
        if (got < 0)
            return (int)got;
        if (got == 0) {
            r->src_done = 1;
            continue;
        }
        w = pt->enc == ENC_QP ? mlr_qp_encode(&r->qp, in, (size_t)got, r->out)
                              : mlr_b64_encode(&r->b64, in, (size_t)got, r->out);
        if (w == 0)
            continue;
        *p = r->out;
        *n = w;
        return 1;
    }
}
