/* mlr_common.h - shared core definitions: allocator, error codes, byte buffer.
 * Part of the C core: never includes lua.h. */
#ifndef MLR_COMMON_H
#define MLR_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* Allocator with the lua_Alloc signature, so the binding can pass
 * lua_getallocf() straight through. nsize == 0 frees. */
typedef void *(*mlr_alloc_fn)(void *ud, void *ptr, size_t osize, size_t nsize);

typedef struct mlr_alloc {
    mlr_alloc_fn fn;
    void *ud;
} mlr_alloc;

/* The default allocator (malloc/realloc/free). */
const mlr_alloc *mlr_default_alloc(void);

void *mlr_malloc(const mlr_alloc *a, size_t n);
void *mlr_realloc(const mlr_alloc *a, void *p, size_t osize, size_t nsize);
void mlr_free(const mlr_alloc *a, void *p, size_t osize);
/* Copy of [s, s+n) plus a NUL terminator; NULL on allocation failure. */
char *mlr_strndup(const mlr_alloc *a, const char *s, size_t n);

/* Error codes of the core: 0 is success, errors are negative. */
typedef enum mlr_err {
    MLR_OK = 0,
    MLR_ERR_NOMEM = -1,     /* allocation failed */
    MLR_ERR_INPUT = -2,     /* caller input invalid (kind "input") */
    MLR_ERR_IO = -3,        /* file or source read failed */
    MLR_ERR_PROTOCOL = -4,  /* peer violated the protocol */
    MLR_ERR_SMTP = -5,      /* peer answered with an error reply */
    MLR_ERR_TLS = -6,       /* TLS failure */
    MLR_ERR_AUTH = -7,      /* authentication failure */
    MLR_ERR_NETWORK = -8,   /* connection failed or dropped */
    MLR_ERR_TIMEOUT = -9,   /* a step took too long */
    MLR_ERR_UNSUPPORTED = -10, /* the peer lacks a needed extension */
    MLR_ERR_STATE = -11,    /* API used in the wrong state (misuse) */
    MLR_ERR_LIMIT = -12     /* an internal hard limit was exceeded */
} mlr_err;

/* Short name of an error code, e.g. "input". */
const char *mlr_err_kind(int err);

/* Growable byte buffer. data is always NUL-terminated when non-NULL. */
typedef struct mlr_buf {
    char *data;
    size_t len;
    size_t cap;
    const mlr_alloc *a;
} mlr_buf;

void mlr_buf_init(mlr_buf *b, const mlr_alloc *a);
void mlr_buf_free(mlr_buf *b);
/* Ensure room for n more bytes; MLR_OK or MLR_ERR_NOMEM. */
int mlr_buf_reserve(mlr_buf *b, size_t n);
int mlr_buf_add(mlr_buf *b, const void *p, size_t n);
int mlr_buf_addstr(mlr_buf *b, const char *s);
int mlr_buf_addc(mlr_buf *b, char c);
/* Empty the buffer, keeping its storage. */
void mlr_buf_reset(mlr_buf *b);

#endif
