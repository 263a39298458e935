/* test_fuzzfix_message.c - regressions for message builder bugs found by
 * fuzz/fuzz_render.c. */
#include <stdlib.h>
#include <string.h>

#include "mime_message.h"
#include "tap.h"

/* An allocator that remembers block sizes and counts wrong osize values
 * (Lua's allocator may rely on osize). */
static int bad_osize;

static void *sized_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    size_t *b = ptr ? (size_t *)ptr - 2 : NULL;
    (void)ud;
    if (b && b[0] != osize)
        bad_osize++;
    if (nsize == 0) {
        free(b);
        return NULL;
    }
    b = realloc(b, nsize + 2 * sizeof *b);
    if (!b)
        return NULL;
    b[0] = nsize;
    return b + 2;
}

/* Render m into a malloc'd string; its length in *n. */
static char *render_all(mlr_msg *m, size_t *n)
{
    mlr_render *r = mlr_render_new(m);
    const uint8_t *p;
    size_t k;
    char *out = NULL;
    *n = 0;
    while (mlr_render_next(r, &p, &k) == 1) {
        out = realloc(out, *n + k + 1);
        memcpy(out + *n, p, k);
        *n += k;
    }
    mlr_render_free(r);
    return out;
}

int main(void)
{
    mlr_alloc a = {sized_alloc, NULL};
    mlr_msg *m;
    mlr_buf b;
    char *out, name[71];
    const char *v;
    size_t n;

    /* mlr_msg_free passed osize 0 for the address arrays */
    m = mlr_msg_new(&a);
    mlr_msg_add_address(m, MLR_ROLE_FROM, "a@example.com", 13, NULL, 0, "from");
    mlr_msg_add_address(m, MLR_ROLE_TO, "b@example.com", 13, NULL, 0, "to");
    mlr_msg_add_address(m, MLR_ROLE_TO, "c@example.com", 13, NULL, 0, "to");
    mlr_msg_free(m);
    TAP_OK(bad_osize == 0, "every block is freed with its own size (%d wrong)", bad_osize);

    /* a text body sent as base64 (it holds a NUL) has a known size */
    m = mlr_msg_new(mlr_default_alloc());
    mlr_msg_add_address(m, MLR_ROLE_FROM, "a@example.com", 13, NULL, 0, "from");
    mlr_msg_set_text(m, "a\0b", 3);
    TAP_OK(mlr_msg_finish(m) == MLR_OK, "finished");
    out = render_all(m, &n);
    TAP_OK(strstr(out, "Content-Transfer-Encoding: base64") != NULL, "NUL makes it base64");
    TAP_OK(mlr_msg_size(m) == n, "size %llu equals the rendering's %zu",
           (unsigned long long)mlr_msg_size(m), n);
    free(out);
    mlr_msg_free(m);

    /* a field folded right after its colon: header() has no leading space */
    m = mlr_msg_new(mlr_default_alloc());
    memset(name, 'X', 70);
    name[70] = '\0';
    mlr_msg_add_address(m, MLR_ROLE_FROM, "a@example.com", 13, NULL, 0, "from");
    TAP_OK(mlr_msg_add_header(m, name, 70, "value", 5, "headers") == MLR_OK, "long name");
    mlr_msg_finish(m);
    mlr_buf_init(&b, mlr_default_alloc());
    v = mlr_msg_header(m, name, 70, &b);
    TAP_OK(v && strcmp(v, "value") == 0, "header() gives \"value\", got \"%s\"", v ? v : "(null)");
    mlr_buf_free(&b);
    mlr_msg_free(m);
    return tap_done();
}
