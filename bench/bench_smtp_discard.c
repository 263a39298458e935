/* bench_smtp_discard.c - a minimal SMTP server that discards everything,
 * for the large-message benchmark (smtp-sink itself tops out well below
 * what the clients can send). One connection at a time; offers PIPELINING
 * and SIZE; answers every command with 250 (DATA with 354, QUIT with 221)
 * and finds the end of data with memmem. With "chunking" it also offers
 * CHUNKING and skips the octets of each BDAT before its 250.
 * Usage: bench_smtp_discard PORT [connections [chunking]] */
#define _GNU_SOURCE   /* memmem */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static char buf[1 << 20];
static int chunking;

/* Replies are collected and written when the input holds no further
 * complete command (before the next read), as a pipelining server does. */
static char reply[1 << 16];
static size_t rlen;

static void flush(int fd)
{
    if (rlen)
        (void)!write(fd, reply, rlen);
    rlen = 0;
}

static void say(int fd, const char *s)
{
    size_t n = strlen(s);
    if (rlen + n > sizeof reply)
        flush(fd);
    memcpy(reply + rlen, s, n);
    rlen += n;
}

/* Serve one connection until QUIT or EOF. In DATA the end marker is
 * found with memmem; the last 4 octets are kept across reads, and the
 * start of the data counts as following a CRLF. */
static void serve(int fd)
{
    size_t len = 0, skip = 0;
    int data = 0, bdat = 0;
    say(fd, "220 discard ESMTP\r\n");
    for (;;) {
        ssize_t r;
        for (;;) {
            if (bdat) {   /* the octets of a BDAT chunk */
                size_t k = skip < len ? skip : len;
                memmove(buf, buf + k, len - k);
                len -= k;
                skip -= k;
                if (skip)
                    break;
                say(fd, "250 2.0.0 chunk discarded\r\n");
                bdat = 0;
            } else if (data) {
                char *e = memmem(buf, len, "\r\n.\r\n", 5);
                if (!e) {
                    if (len > 4) {
                        memmove(buf, buf + len - 4, 4);
                        len = 4;
                    }
                    break;
                }
                say(fd, "250 2.0.0 discarded\r\n");
                len -= (size_t)(e + 5 - buf);
                memmove(buf, e + 5, len);
                data = 0;
            } else {
                char *nl = memchr(buf, '\n', len);
                size_t l;
                if (!nl)
                    break;
                l = (size_t)(nl - buf) + 1;
                if (!strncasecmp(buf, "EHLO", 4))
                    say(fd, chunking ? "250-discard\r\n250-PIPELINING\r\n250-CHUNKING\r\n"
                                       "250-8BITMIME\r\n250 SIZE 1073741824\r\n"
                                     : "250-discard\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                                       "250 SIZE 1073741824\r\n");
                else if (!strncasecmp(buf, "BDAT ", 5)) {
                    skip = strtoul(buf + 5, NULL, 10);
                    bdat = 1;
                } else if (!strncasecmp(buf, "DATA", 4))
                    say(fd, "354 go\r\n");
                else if (!strncasecmp(buf, "QUIT", 4)) {
                    say(fd, "221 bye\r\n");
                    flush(fd);
                    return;
                } else
                    say(fd, "250 ok\r\n");
                if (!strncasecmp(buf, "DATA", 4)) {   /* the data begins after a CRLF */
                    memmove(buf + 2, buf + l, len - l);
                    buf[0] = '\r';
                    buf[1] = '\n';
                    len = len - l + 2;
                    data = 1;
                } else {
                    memmove(buf, buf + l, len - l);
                    len -= l;
                }
            }
        }
        if (len == sizeof buf)
            len = 0;   /* an absurd command line: drop it */
        flush(fd);
        r = read(fd, buf + len, sizeof buf - len);
        if (r <= 0)
            return;
        len += (size_t)r;
    }
}

int main(int argc, char **argv)
{
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1, n, i;
    struct sockaddr_in a;
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT [connections]\n", argv[0]);
        return 2;
    }
    n = argc > 2 ? atoi(argv[2]) : 1000000;
    chunking = argc > 3 && !strcmp(argv[3], "chunking");
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 64)) {
        perror("bind");
        return 1;
    }
    for (i = 0; i < n; i++) {
        int c = accept(s, NULL, NULL);
        if (c < 0)
            continue;
        /* replies are batched by hand (flush): no Nagle delay behind them */
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        serve(c);
        close(c);
    }
    return 0;
}
