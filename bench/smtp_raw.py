"""A minimal compliant SMTP client in raw Python, the reference for W1
(run through bench/smtp.sh). No smtplib: one socket, pre-rendered
messages, every reply read and checked.

python3 smtp_raw.py MODE PORT DIR [WINDOW]  -> prints "<messages> <seconds>"

MODE data: RFC 2920. MAIL, the RCPTs and DATA go out in one write and the
    body with its final dot in the next; the next message's commands ride
    behind the dot, so each message costs one round trip.
MODE bdat: RFC 3030 with RFC 2920. MAIL, the RCPTs and "BDAT n LAST" with
    the body go out in one write, WINDOW messages (default 8) in flight
    before their replies are read.
"""
import os
import socket
import sys
import time

mode, port, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
window = int(sys.argv[4]) if len(sys.argv) > 4 else 8
RCPTS = [b"r1@example.com", b"r2@example.com", b"r3@example.com"]


def crlf(raw):
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def stuff(raw):
    body = crlf(raw)
    if body.startswith(b"."):
        body = b"." + body
    body = body.replace(b"\r\n.", b"\r\n..")
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


class Replies:
    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def one(self):
        """The next complete reply's code (multi-line replies joined)."""
        while True:
            end = 0
            while True:
                nl = self.buf.find(b"\n", end)
                if nl < 0:
                    break
                line = self.buf[end:nl + 1]
                end = nl + 1
                if len(line) < 4 or line[3:4] != b"-":
                    self.buf = self.buf[end:]
                    return int(line[:3])
            got = self.sock.recv(65536)
            if not got:
                raise SystemExit("connection closed by the server")
            self.buf += got

    def expect(self, ok, n=1):
        for _ in range(n):
            code = self.one()
            if code not in ok:
                raise SystemExit("unexpected reply %d" % code)


names = sorted(os.listdir(folder))
raws = [open(os.path.join(folder, n), "rb").read() for n in names]
envelope = b"MAIL FROM:<bench@example.com>\r\n" + b"".join(
    b"RCPT TO:<" + r + b">\r\n" for r in RCPTS)

t0 = time.time()
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rd = Replies(s)
rd.expect((220,))
s.sendall(b"EHLO bench.example.com\r\n")
rd.expect((250,))
if mode == "data":
    bodies = [stuff(r) for r in raws]   # (the encoding is part of the work)
    s.sendall(envelope + b"DATA\r\n")
    for i, body in enumerate(bodies):
        rd.expect((250,), 1 + len(RCPTS))
        rd.expect((354,))
        nxt = envelope + b"DATA\r\n" if i + 1 < len(bodies) else b"QUIT\r\n"
        s.sendall(body + nxt)
        rd.expect((250,))
    rd.expect((221,))
elif mode == "bdat":
    inflight = 0
    for raw in raws:
        body = crlf(raw)
        s.sendall(envelope + b"BDAT %d LAST\r\n" % len(body) + body)
        inflight += 1
        if inflight == window:
            rd.expect((250,), 2 + len(RCPTS))
            inflight -= 1
    rd.expect((250,), (2 + len(RCPTS)) * inflight)
    s.sendall(b"QUIT\r\n")
    rd.expect((221,))
else:
    raise SystemExit("MODE is data or bdat")
s.close()
print(len(raws), time.time() - t0)
