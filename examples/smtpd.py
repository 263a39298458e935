#!/usr/bin/python3
"""A small local SMTP server for the demo: STARTTLS with the given
certificate, AUTH PLAIN/LOGIN for one user, and every received message
stored as an .eml file in a Maildir-style folder (new/).

Usage: smtpd.py --cert C --key K --maildir DIR --user U --password P
Prints "READY <port>" once listening on 127.0.0.1.
"""
import argparse
import logging
import warnings
import os
import socket
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Store:
    def __init__(self, maildir):
        self.maildir = maildir
        self.n = 0
        os.makedirs(os.path.join(maildir, "new"), exist_ok=True)
        os.makedirs(os.path.join(maildir, "tmp"), exist_ok=True)

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        name = "%d.%d.%d.eml" % (time.time(), os.getpid(), self.n)
        tmp = os.path.join(self.maildir, "tmp", name)
        with open(tmp, "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(tmp, os.path.join(self.maildir, "new", name))
        return "250 2.0.0 Ok: stored as new/" + name


def main():
    warnings.simplefilter("ignore")
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    ap = argparse.ArgumentParser()
    for a in ("--cert", "--key", "--maildir", "--user", "--password"):
        ap.add_argument(a, required=True)
    args = ap.parse_args()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)

    def auth(server, session, envelope, mechanism, data):
        ok = isinstance(data, LoginPassword) and data.login.decode() == args.user \
            and data.password.decode() == args.password
        return AuthResult(success=ok)

    with socket.socket() as probe:  # a free port (Controller cannot use 0)
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    ctl = Controller(Store(args.maildir), hostname="127.0.0.1", port=free,
                     tls_context=ctx, require_starttls=True, authenticator=auth,
                     auth_require_tls=True, decode_data=False, server_hostname="localhost")
    ctl.start()
    print("READY %d" % free, flush=True)
    try:
        sys.stdin.read()  # run until our parent closes the pipe
    finally:
        ctl.stop()


if __name__ == "__main__":
    main()
