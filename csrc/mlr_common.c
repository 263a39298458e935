/* mlr_common.c - allocator plumbing, error names and the growable buffer. */
#include "mlr_common.h"

#include <stdlib.h>
#include <string.h>

static void *default_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    (void)osize;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    return realloc(ptr, nsize);
}

static const mlr_alloc default_allocator = {default_alloc, NULL};

/* The process-wide malloc-based allocator. */
const mlr_alloc *mlr_default_alloc(void) { return &default_allocator; }

void *mlr_malloc(const mlr_alloc *a, size_t n)
{
    if (n == 0)
        n = 1;
    return a->fn(a->ud, NULL, 0, n);
}

void *mlr_realloc(const mlr_alloc *a, void *p, size_t osize, size_t nsize)
{
    if (nsize == 0)
        nsize = 1;
    return a->fn(a->ud, p, p ? osize : 0, nsize);
}

void mlr_free(const mlr_alloc *a, void *p, size_t osize)
{
    if (p)
        a->fn(a->ud, p, osize, 0);
}

char *mlr_strndup(const mlr_alloc *a, const char *s, size_t n)
{
    char *p;
    if (n == SIZE_MAX)
        return NULL;
    p = mlr_malloc(a, n + 1);
    if (!p)
        return NULL;
    if (n)
        memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

const char *mlr_err_kind(int err)
{
    switch (err) {
    case MLR_OK: return "ok";
    case MLR_ERR_NOMEM: return "memory";
    case MLR_ERR_INPUT: return "input";
    case MLR_ERR_IO: return "input";
    case MLR_ERR_PROTOCOL: return "protocol";
    case MLR_ERR_SMTP: return "smtp";
    case MLR_ERR_TLS: return "tls";
    case MLR_ERR_AUTH: return "auth";
    case MLR_ERR_NETWORK: return "network";
    case MLR_ERR_TIMEOUT: return "timeout";
    case MLR_ERR_UNSUPPORTED: return "unsupported";
    case MLR_ERR_STATE: return "state";
    case MLR_ERR_LIMIT: return "protocol";
    default: return "unknown";
    }
}

void mlr_buf_init(mlr_buf *b, const mlr_alloc *a)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->a = a;
}

void mlr_buf_free(mlr_buf *b)
{
    mlr_free(b->a, b->data, b->cap);
    b->data = NULL;
    b->len = b->cap = 0;
}

void mlr_buf_reset(mlr_buf *b) { b->len = 0; if (b->data) b->data[0] = '\0'; }

int mlr_buf_reserve(mlr_buf *b, size_t n)
{
    size_t need, ncap;
    char *p;
    if (n > SIZE_MAX - b->len - 1)
        return MLR_ERR_NOMEM;
    need = b->len + n + 1;
    if (need <= b->cap)
        return MLR_OK;
    ncap = b->cap ? b->cap : 64;
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2) {
            ncap = need;
            break;
        }
        ncap *= 2;
    }
    p = mlr_realloc(b->a, b->data, b->cap, ncap);
    if (!p)
        return MLR_ERR_NOMEM;
    b->data = p;
    b->cap = ncap;
    return MLR_OK;
}

int mlr_buf_add(mlr_buf *b, const void *p, size_t n)
{
    int rc = mlr_buf_reserve(b, n);
    if (rc)
        return rc;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return MLR_OK;
}

int mlr_buf_addstr(mlr_buf *b, const char *s) { return mlr_buf_add(b, s, strlen(s)); }

int mlr_buf_addc(mlr_buf *b, char c) { return mlr_buf_add(b, &c, 1); }
