#!/usr/bin/env python3
"""Write the structured seed corpora (engine, render) under fuzz/corpus/.
The simple targets' seeds are plain files kept as they are."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def engine(name, f0, f1, msgs, server, f2=0x5b):
    """f0: security | auth<<2 | allow_plain<<4 | (n-1)<<5; f2 odd: one line
    per read; msgs: (m, body)."""
    out = bytes([f0, f1, f2, 0])
    for m, body in msgs:
        out += bytes([m]) + struct.pack(">H", len(body)) + body
    put("engine", name, out + server)


EHLO_P = b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 SMTPUTF8\r\n"
body = b"Subject: hi\r\n\r\nline\r\n.\r\n..x\nbare\rcr\r\n"
engine("plain_pipelined", 3, 1, [(0, body)],
       b"220 mx ESMTP\r\n" + EHLO_P + b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n250 2.0.0 queued as X\r\n221 bye\r\n")
engine("starttls_plain_auth", 0 | 1 << 2, 1, [(0, body)],
       b"220 mx ESMTP\r\n250-mx\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n220 go ahead\r\n"
       b"250-mx\r\n250-AUTH PLAIN LOGIN CRAM-MD5\r\n250 PIPELINING\r\n235 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n")
engine("login_challenges", 3 | 3 << 2 | 1 << 4, 1, [(0, body)],
       b"220 mx\r\n250-mx\r\n250 AUTH LOGIN CRAM-MD5\r\n334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 ok\r\n"
       b"250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n")
engine("cram_md5", 3 | 1 << 2 | 1 << 4, 1, [(0, body)],
       b"220 mx\r\n250-mx\r\n250 AUTH CRAM-MD5\r\n334 PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UuZXhhbXBsZS5uZXQ+\r\n235 ok\r\n"
       b"250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n")
engine("two_messages_no_pipelining", 3 | 1 << 5, 1, [(0, body), (4, b"second\r\n")],
       b"220 mx\r\n250-mx\r\n250 SIZE\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n")
engine("rejections", 3 | 1 << 5, 1, [(0x1c, body), (0, b"x")],
       b"220 mx\r\n" + EHLO_P + b"250 ok\r\n550 5.1.1 no\r\n452 4.2.2 full\r\n554 no valid recipients\r\n"
       b"250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n421 closing\r\n")
engine("chunking", 3, 1, [(0, body)],
       b"220 mx\r\n250-mx\r\n250-CHUNKING\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n250 2.0.0 chunk ok\r\n221 bye\r\n")
engine("helo_fallback", 3, 1, [(0, body)],
       b"220 mx\r\n502 no ehlo\r\n250 hi\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n")
engine("injection_after_starttls", 0, 1, [(0, body)],
       b"220 mx\r\n250-mx\r\n250 STARTTLS\r\n220 go\r\n250-x\r\n250 AUTH PLAIN\r\n", 0x5a)
engine("xoauth2_noop_rset", 2 | 2 << 2, 5, [(0, body)],
       b"220 mx\r\n250-mx\r\n250 AUTH XOAUTH2 OAUTHBEARER\r\n334 eyJzdGF0dXMiOiI0MDEifQ==\r\n535 no\r\n")
engine("oauthbearer_ok", 2 | 2 << 2, 5, [(0, body)],
       b"220 mx\r\n250-mx\r\n250 AUTH OAUTHBEARER\r\n235 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n"
       b"250 noop\r\n250 rset\r\n250 noop\r\n221 bye\r\n")
engine("multiline_long", 3, 0, [(0, body)],
       b"220-mx\r\n220-" + b"x" * 300 + b"\r\n220 ok\r\n250-mx\r\n250-AUTH=LOGIN PLAIN\r\n250 SIZE 10\r\n")


def u8s(b):
    return bytes([len(b)]) + b


def u16s(b):
    return struct.pack(">H", len(b)) + b


def render(name, ops, head=0):
    put("render", name, bytes([head]) + b"".join(ops))


FROM = bytes([0]) + u8s("Alice Ünal <alice@example.com>".encode())
TO = bytes([1]) + u8s(b'"Bob, B." <bob@example.com>')
CC = bytes([2]) + u8s(b"carol@example.net") + u8s("Carol Ž".encode())
BCC = bytes([3]) + u8s(b"hidden@example.org")
SUBJ = bytes([4]) + u16s("Grüße 你好 =?utf-8?q?x?= and a rather long subject line that needs folding".encode())
HDR = bytes([5]) + u8s(b"X-Campaign") + u16s("q4 ✓".encode())
TEXT = bytes([6]) + u16s(b"Hello,\r\n.\r\nFrom here\nbare lf\rbare cr\r\n" + "ünïcode\r\n".encode())
HTML = bytes([7]) + u16s(b"<p>hi <img src='cid:logo'></p>")
ATT = bytes([8]) + u8s("résumé \"final\".pdf".encode()) + u16s(bytes(range(256)))
SRC = bytes([9 + 13 * 10]) + u8s(b"big.bin") + bytes([3]) + u16s(b"chunk one\r\n") + u16s(b"") + u16s(b"--=_mlr_x\r\n")
INL = bytes([10 + 13]) + u8s(b"logo.png") + u8s(b"<logo>") + u16s(b"\x89PNG\r\n\x1a\n")
SENDER = bytes([11 + 13 * 2]) + u8s(b"sec@example.com")
DATE = bytes([12 + 13 * 2]) + u8s(b"Mon, 1 Jan 2024 00:00:00 +0000")
MSGID = bytes([12]) + u8s(b"<abc.123@example.com>")
render("text_only", [FROM, TO, SUBJ, TEXT])
render("everything", [FROM, TO, CC, BCC, SENDER, SUBJ, HDR, DATE, MSGID, TEXT, HTML, INL, ATT, SRC])
render("html_inline", [FROM, TO, HTML, INL, INL])
render("attachments_only", [FROM, TO, ATT, SRC])
render("no_body", [FROM, BCC])
render("failing_alloc", [FROM, TO, CC, SUBJ, TEXT, HTML, INL, ATT], head=0x80)
render("injection_attempts", [FROM, bytes([1]) + u8s(b"bob@example.com\r\nBcc: x@y"),
                              bytes([4]) + u16s(b"hi\r\nBcc: victim@example.com"),
                              bytes([5]) + u8s(b"X-A:") + u16s(b"v"), bytes([5]) + u8s(b"Content-Type") + u16s(b"x/y"),
                              TEXT])

# ---- the byte-oriented targets: a first byte of options, then the data ----
SMUG = [b"\n.\n", b"\r.\r", b"\r.\n", b"\n.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n",
        b"\r\n.\r", b"\r\n\x00.\r\n"]
put("reply", "ehlo", b"\x07250-mx.example greets you\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 AUTH PLAIN\r\n")
put("reply", "enhanced", b"\x01550 5.1.1 <x@y>: unknown\r\n421 4.7.0 closing\r\n")
put("reply", "bad_codes", b"\x03199 x\r\n600 x\r\n2500 x\r\n25 x\r\n")
put("reply", "code_change", b"\x02250-a\r\n550 b\r\n")
put("reply", "code_only", b"\x05250\r\n250 \r\n220-x\n220 bare lf\n")
put("reply", "nul", b"\x04250 a\x00b\r\n")
put("ehlo", "full", b"mx.example greets you\nPIPELINING\nSIZE 35882577\nAUTH PLAIN LOGIN CRAM-MD5\n"
    b"AUTH=LOGIN XOAUTH2\nSTARTTLS\n8BITMIME\nsmtputf8\nDSN\nENHANCEDSTATUSCODES\nCHUNKING")
put("ehlo", "spaces", b"x\nAUTH" + b" " * 200 + b"X\nSIZE 18446744073709551616")
put("addr", "named", "Alice Ünal <alice@example.com>".encode())
put("addr", "quoted", b'"Quoted, \\"Name\\"" <"x y"@[127.0.0.1]>')
put("addr", "ambiguous", b"alice@example.org)<bob@example.org>")
put("addr", "quoted_at", b'"xclow3n@gmail.com x"@internal.domain')
put("addr", "utf8", "δοκιμή@παράδειγμα.δοκιμή".encode())
put("rfc2047", "subject", b"\x00\x00" + "Grüße 你好 =?x?= and a long line of text that goes on and on beyond the fold".encode())
put("rfc2047", "custom", b"\x00\x0aX-Campaign" + b"q4\ttab  spaces \x01ctl")
put("rfc2047", "phrase", b"\x01" + "Alice Ünal".encode())
put("rfc2047", "phrase_quoted", b'\x01Smith, John "JS"')
put("rfc2047", "param2231", b"\x02" + 'résumé "final" with a long name that needs continuations.pdf'.encode())
put("rfc2047", "param_ew", b"\x03" + "résumé.pdf".encode())
put("rfc2047", "param_plain", b'\x02strange\\file"name.txt')
put("base64", "binary", b"\x00\x07" + bytes(range(256)))
put("base64", "short", b"\x01\x03ab")
put("qp", "text", b"\x05" + "Grüße aus Köln \r\n.From here\nline  \r\n\tFrom x=y\r".encode())
put("qp", "long", b"\x02" + b"x" * 75 + b" \r\n" + b"y" * 200)
put("dotstuff", "lines", b"\x01line\n.\nfoo\r.\r\n\r\n.\r\nMAIL FROM:<x@y>\r\n..\r")
for i, s in enumerate(SMUG):
    put("dotstuff", "smuggle%d" % i, b"\x00body" + s + b"MAIL FROM:<spoof@x>\r\nRCPT TO:<v@y>\r\nDATA\r\n")
put("sasl", "cram", b"\x02" + u16s(b"PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UuZXhhbXBsZS5uZXQ+") +
    u16s(b"<1896.697170952@postoffice.example.net>") + u16s(b"again"))
put("sasl", "login", b"\x01" + u16s(b"VXNlcm5hbWU6") + u16s(b"Username:") + u16s(b"Password:") + u16s(b"more"))
put("sasl", "oauth_error", b"\x04" + u16s(b"eyJzdGF0dXMiOiI0MDEifQ==") + u16s(b'{"status":"401"}') + u16s(b""))
put("sasl", "scram", b"\x05" + u16s(b"") +
    u16s(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096") +
    u16s(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="))
