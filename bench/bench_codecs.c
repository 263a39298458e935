/* bench_codecs.c - encode a file with our base64 (76-col CRLF lines) or
 * quoted-printable encoder, reading it in blocks the way the renderer
 * does, and report throughput.
 *
 *   bench_codecs b64|qp FILE [OUTFILE|-] [BLOCK]
 *
 * Output goes to OUTFILE (e.g. /dev/null, so the cost of a write(2) per
 * block is counted like for the peers), or is only counted when "-" or
 * absent. Prints "<codec> <in bytes> <out bytes> <seconds> <MiB/s>
 * <CPU seconds> <CPU MiB/s>" with MiB/s measured on the input size; the
 * CPU figures (this process's, user + system) leave out time the process
 * waited for a core on a busy machine. B64_LEVEL=0..3 in the environment
 * forces a base64 implementation (portable, SSSE3, AVX2, AVX-512 VBMI),
 * QP_LEVEL=0..2 a quoted-printable one (portable, SSE2, AVX-512 VBMI2). */
#include "codec_base64.h"
#include "codec_qp.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Monotonic seconds, immune to clock changes during a run. */
static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU seconds used by this process so far. */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Write all of buf, retrying short writes. */
static int write_all(int fd, const uint8_t *buf, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, buf, n);
        if (w < 0)
            return -1;
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Encode argv[2] block by block and print the throughput line. */
int main(int argc, char **argv)
{
    int qp, in_fd, out_fd = -1;
    size_t block = 64 * 1024, cap, got;
    uint8_t *ibuf, *obuf;
    unsigned long long total_in = 0, total_out = 0;
    mlr_b64 b64;
    mlr_qp q;
    double t0, dt, c0, dc;
    ssize_t r;

    if (argc < 3 || (strcmp(argv[1], "b64") != 0 && strcmp(argv[1], "qp") != 0)) {
        fprintf(stderr, "usage: %s b64|qp FILE [OUTFILE|-] [BLOCK]\n", argv[0]);
        return 2;
    }
    qp = strcmp(argv[1], "qp") == 0;
    if (getenv("B64_LEVEL") && *getenv("B64_LEVEL"))
        mlr_b64_force_level(atoi(getenv("B64_LEVEL")));
    if (getenv("QP_LEVEL") && *getenv("QP_LEVEL"))
        mlr_qp_force_level(atoi(getenv("QP_LEVEL")));
    if (argc > 4)
        block = (size_t)strtoul(argv[4], NULL, 10);
    if (block == 0)
        block = 64 * 1024;
    in_fd = open(argv[2], O_RDONLY);
    if (in_fd < 0) {
        perror(argv[2]);
        return 1;
    }
    if (argc > 3 && strcmp(argv[3], "-") != 0) {
        out_fd = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (out_fd < 0) {
            perror(argv[3]);
            return 1;
        }
    }
    cap = qp ? mlr_qp_bound(block) : mlr_b64_bound(block, 76);
    cap += 64; /* room for finish */
    ibuf = malloc(block);
    obuf = malloc(cap);
    if (!ibuf || !obuf)
        return 1;
    mlr_b64_init(&b64, 76);
    mlr_qp_init(&q);

    t0 = now();
    c0 = cpu_now();
    while ((r = read(in_fd, ibuf, block)) > 0) {
        got = qp ? mlr_qp_encode(&q, ibuf, (size_t)r, obuf)
                 : mlr_b64_encode(&b64, ibuf, (size_t)r, obuf);
        total_in += (unsigned long long)r;
        total_out += got;
        if (out_fd >= 0 && write_all(out_fd, obuf, got) < 0) {
            perror("write");
            return 1;
        }
    }
    if (r < 0) {
        perror("read");
        return 1;
    }
    got = qp ? mlr_qp_finish(&q, obuf) : mlr_b64_finish(&b64, obuf);
    total_out += got;
    if (out_fd >= 0 && write_all(out_fd, obuf, got) < 0) {
        perror("write");
        return 1;
    }
    dt = now() - t0;
    dc = cpu_now() - c0;

    printf("%s %llu %llu %.3f %.1f %.3f %.1f\n", qp ? "qp" : "b64", total_in, total_out, dt,
           (double)total_in / (1024.0 * 1024.0) / dt, dc,
           (double)total_in / (1024.0 * 1024.0) / dc);
    close(in_fd);
    if (out_fd >= 0)
        close(out_fd);
    free(ibuf);
    free(obuf);
    return 0;
}
