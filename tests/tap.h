/* tap.h - minimal TAP-style helpers for the C-level tests: each check
 * prints "ok - name" or "not ok - name"; tap_done() returns the exit code. */
#ifndef TAP_H
#define TAP_H

#include <stdio.h>

static int tap_failed_;
static int tap_count_;

#define TAP_OK(cond, ...)                                                   \
    do {                                                                    \
        tap_count_++;                                                       \
        if (cond) {                                                         \
            printf("ok - ");                                                \
        } else {                                                            \
            tap_failed_++;                                                  \
            printf("not ok - %s:%d: ", __FILE__, __LINE__);                 \
        }                                                                   \
        printf(__VA_ARGS__);                                                \
        printf("\n");                                                       \
    } while (0)

static inline int tap_done(void)
{
    printf("# %d checks, %d failed\n", tap_count_, tap_failed_);
    return tap_failed_ ? 1 : 0;
}

#endif
