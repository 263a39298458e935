/* bench_smtp_raw.c - raw reference SMTP client for the benchmarks: writes
 * a pre-rendered message N times over one connection (or one connection
 * per message) with RFC 2920 pipelining: MAIL, RCPTs and DATA in one write,
 * and the next message's commands right behind the final dot, so each
 * message costs one round trip. With "bdat" (RFC 3030 with RFC 2920):
 * MAIL, RCPTs and "BDAT n LAST" with the message in one write per message,
 * 8 messages in flight before their replies are read. No TLS, no parsing
 * beyond reply codes.
 * Usage: bench_smtp_raw HOST PORT COUNT RCPTS MSGFILE [per-connection|bdat] */
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char rbuf[65536];
static size_t rlen;

/* Read until n complete replies (last lines) have arrived; returns the
 * code of the last, exits on EOF. */
static int replies(int fd, int n)
{
    int code = 0;
    while (n > 0) {
        char *nl;
        while ((nl = memchr(rbuf, '\n', rlen)) != NULL) {
            size_t l = (size_t)(nl - rbuf) + 1;
            if (l >= 4 && rbuf[3] == ' ') {
                code = atoi(rbuf);
                n--;
            } else if (l == 5 && rbuf[3] == '\r') {
                code = atoi(rbuf);
                n--;
            }
            memmove(rbuf, rbuf + l, rlen - l);
            rlen -= l;
            if (n == 0)
                return code;
        }
        ssize_t r = read(fd, rbuf + rlen, sizeof rbuf - rlen);
        if (r <= 0) {
            fprintf(stderr, "connection closed\n");
            exit(1);
        }
        rlen += (size_t)r;
    }
    return code;
}

static void writeall(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) {
            perror("send");
            exit(1);
        }
        p += w;
        n -= (size_t)w;
    }
}

static int dial(const char *host, const char *port)
{
    struct addrinfo h = {0}, *res;
    int fd, one = 1;
    h.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &h, &res)) {
        fprintf(stderr, "resolve failed\n");
        exit(1);
    }
    fd = socket(res->ai_family, SOCK_STREAM, 0);
    if (connect(fd, res->ai_addr, res->ai_addrlen)) {
        perror("connect");
        exit(1);
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    freeaddrinfo(res);
    rlen = 0;
    replies(fd, 1);
    writeall(fd, "EHLO bench\r\n", 12);
    replies(fd, 1);
    return fd;
}

/* BDAT mode: each message's MAIL, RCPTs, "BDAT n LAST" and octets in one
 * write, WINDOW messages in flight; every reply is read and checked. */
#define WINDOW 8
static int bdat(const char *host, const char *port, int count, int nrcpt, const char *msg,
                size_t mlen)
{
    struct timespec t0, t1;
    size_t olen = 0;
    char *out = malloc(mlen + 4096);
    int i, k, fd, inflight = 0;
    olen += (size_t)sprintf(out + olen, "MAIL FROM:<bench@example.com>\r\n");
    for (k = 0; k < nrcpt; k++)
        olen += (size_t)sprintf(out + olen, "RCPT TO:<r%d@example.com>\r\n", k);
    olen += (size_t)sprintf(out + olen, "BDAT %zu LAST\r\n", mlen);
    memcpy(out + olen, msg, mlen);
    olen += mlen;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    fd = dial(host, port);
    for (i = 0; i < count; i++) {
        writeall(fd, out, olen);
        if (++inflight == WINDOW) {
            if (replies(fd, nrcpt + 2) != 250) {
                fprintf(stderr, "BDAT refused\n");
                return 1;
            }
            inflight--;
        }
    }
    while (inflight-- > 0)
        if (replies(fd, nrcpt + 2) != 250) {
            fprintf(stderr, "BDAT refused\n");
            return 1;
        }
    writeall(fd, "QUIT\r\n", 6);
    replies(fd, 1);
    close(fd);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%d %.6f\n", count, (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    free(out);
    return 0;
}

int main(int argc, char **argv)
{
    int count, nrcpt, i, k, percon, fd = -1;
    char cmds[4096], *msg, *out;
    size_t clen = 0, mlen, olen;
    FILE *f;
    struct stat st;
    if (argc < 6) {
        fprintf(stderr, "usage: %s HOST PORT COUNT RCPTS MSGFILE [per-connection|bdat]\n",
                argv[0]);
        return 2;
    }
    count = atoi(argv[3]);
    nrcpt = atoi(argv[4]);
    percon = argc > 6 && !strcmp(argv[6], "per-connection");
    f = fopen(argv[5], "rb");
    if (!f || fstat(fileno(f), &st)) {
        perror(argv[5]);
        return 1;
    }
    mlen = (size_t)st.st_size;
    msg = malloc(mlen + 8);
    if (fread(msg, 1, mlen, f) != mlen)
        return 1;
    fclose(f);
    if (argc > 6 && !strcmp(argv[6], "bdat"))
        return bdat(argv[1], argv[2], count, nrcpt, msg, mlen);
    memcpy(msg + mlen, ".\r\n", 3);   /* the file is already CRLF and dot-stuffed */
    mlen += 3;
    clen += (size_t)snprintf(cmds + clen, sizeof cmds - clen, "MAIL FROM:<bench@example.com>\r\n");
    for (k = 0; k < nrcpt; k++)
        clen += (size_t)snprintf(cmds + clen, sizeof cmds - clen, "RCPT TO:<r%d@example.com>\r\n", k);
    clen += (size_t)snprintf(cmds + clen, sizeof cmds - clen, "DATA\r\n");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    out = malloc(mlen + clen);
    memcpy(out, msg, mlen);
    memcpy(out + mlen, cmds, clen);
    for (i = 0; i < count; i++) {
        int last = i == count - 1 || percon;
        if (fd < 0) {
            fd = dial(argv[1], argv[2]);
            writeall(fd, cmds, clen);
        }
        if (replies(fd, nrcpt + 2) != 354) {
            fprintf(stderr, "DATA refused\n");
            return 1;
        }
        olen = last ? mlen : mlen + clen;   /* body, dot, and the next commands */
        writeall(fd, out, olen);
        if (last) {
            replies(fd, 1);
            if (percon || i == count - 1) {
                writeall(fd, "QUIT\r\n", 6);
                replies(fd, 1);
                close(fd);
                fd = -1;
            }
        } else {
            replies(fd, 1);   /* the final dot's reply; the next 354 is read at the top */
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%d %.6f\n", count, (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    return 0;
}
