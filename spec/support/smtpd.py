#!/usr/bin/python3
"""A recording SMTP server for the specs, built on aiosmtpd.

Usage: smtpd.py [--config FILE] [--port N] [--tls none|starttls|implicit]
                [--require-starttls] [--cert NAME] [--certdir DIR]
                [--auth-user U --auth-password P] [--allow-plaintext-auth]
                [--smtputf8 | --no-smtputf8] [--size N] [--record FILE]
                [--connections FILE]

Options given in the JSON --config file override the command line; servers.lua
only uses --config. Keys: host, port, tls, require_starttls, cert, certdir,
client_cert ("optional"|"require"), auth_user, auth_password, auth_mechanisms
(list to offer; default PLAIN LOGIN CRAM-MD5 XOAUTH2 OAUTHBEARER SCRAM-SHA-256),
auth_require_tls (default true), auth_required (MAIL needs AUTH), smtputf8
(default true), size (null: aiosmtpd's default; 0: no SIZE, no limit),
extensions (extra EHLO keywords, default ["PIPELINING"]; "DSN" also makes
RET/ENVID/NOTIFY/ORCPT acceptable), reject_rcpt ({address: reply} or list),
data_reply, hostname, record, connections, parent_pid, max_lifetime,
scram_fault (null; "wrong_signature": send a wrong SCRAM server signature,
then 235 whatever the client answers; "no_signature": 235 right after the
client's proof, without the server signature), idle_timeout (seconds a
session may idle; then it is closed, after the reply idle_reply when that
is set, e.g. "421 4.4.2 idle timeout"), greeting_delay (seconds before the
220), reply_delay (seconds before every reply), read_rate (bytes a second
the server reads at most, to make a slow reader).

Every accepted message is appended to the record file as one JSON line:
  n, connection, mail_from, rcpt_tos, mail_options, rcpt_options,
  rcpts ([{address, options}]), data_b64 (exact bytes after dot-unstuffing),
  size, auth (identity or null), auth_mechanism, tls, tls_version,
  client_cert (subject CN or null), helo, smtputf8, time (when the final
  dot arrived, Unix seconds)
Every accepted connection appends one line to the connections file.
Prints "READY <port>" once listening.
"""
import argparse
import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_common as pc  # noqa: E402

from aiosmtpd.smtp import SMTP, AuthResult, MISSING  # noqa: E402

ALL_MECHS = ["PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER", "SCRAM-SHA-256"]
DSN_PARAMS = ("RET", "ENVID", "NOTIFY", "ORCPT")


class _ImplicitTLS:
    """Stands in for aiosmtpd's STARTTLS protocol object on implicit-TLS
    connections, so that aiosmtpd treats the session as encrypted (it only
    knows about STARTTLS and would otherwise refuse AUTH over port-465 TLS)."""

    def __bool__(self):
        return True


class RecordingSMTP(SMTP):
    def __init__(self, handler, implicit, accept_dsn, **kw):
        self._implicit = implicit
        self._accept_dsn = accept_dsn
        self.connection_number = None
        super().__init__(handler, **kw)

    def connection_made(self, transport):
        after_starttls = self._original_transport is not None
        super().connection_made(transport)
        if not after_starttls:
            self.connection_number = self.event_handler.count_connection()
            if self._implicit:
                self._tls_protocol = _ImplicitTLS()
                self.session.ssl = {"ssl_object": transport.get_extra_info("ssl_object")}

    async def _handle_client(self):
        # greeting_delay: every connection waits for its 220 on its own
        # (concurrently), for the spec that proves nginx handlers yield
        delay = self.event_handler.cfg.get("greeting_delay")
        if delay:
            await asyncio.sleep(float(delay))
        await super()._handle_client()

    async def push(self, status):
        # reply_delay: a server that answers slowly
        delay = self.event_handler.cfg.get("reply_delay")
        if delay:
            await asyncio.sleep(float(delay))
        await super().push(status)

    def data_received(self, data):
        # read_rate: a slow reader (reading pauses for as long as the bytes
        # just read take at that rate)
        super().data_received(data)
        rate = self.event_handler.cfg.get("read_rate")
        transport = self.transport
        if rate and transport is not None and not transport.is_closing():
            transport.pause_reading()
            self.loop.call_later(len(data) / float(rate), self._resume_reading, transport)

    def _resume_reading(self, transport):
        if not transport.is_closing():
            transport.resume_reading()

    def _timeout_cb(self):
        # idle_reply: say why before closing an idle session (a 421, as
        # Postfix and Exchange do)
        reply = self.event_handler.cfg.get("idle_reply")
        if reply and self.transport is not None and not self.transport.is_closing():
            self.transport.write(pc.raw(reply) + b"\r\n")
        super()._timeout_cb()

    def _getparams(self, params):
        result = super()._getparams(params)
        if result is not None and self._accept_dsn:
            for key in DSN_PARAMS:
                result.pop(key, None)
        return result


def tls_info(server):
    transport = server.transport
    obj = transport.get_extra_info("ssl_object") if transport else None
    if obj is None:
        return None, None
    cn = None
    cert = obj.getpeercert()
    if cert:
        for rdn in cert.get("subject", ()):
            for k, v in rdn:
                if k == "commonName":
                    cn = v
    return obj.version(), cn


def b64(data):
    return base64.b64encode(data).decode("ascii")


class Handler:
    def __init__(self, cfg):
        self.cfg = cfg
        self.user = pc.raw(cfg["auth_user"]) if cfg.get("auth_user") is not None else None
        self.password = (pc.raw(cfg["auth_password"])
                         if cfg.get("auth_password") is not None else None)
        self.extensions = [pc.text(e) for e in cfg.get("extensions", ["PIPELINING"])]
        rej = cfg.get("reject_rcpt") or {}
        if isinstance(rej, list):
            rej = {a: None for a in rej}
        self.reject_rcpt = {pc.text(k).lower(): (pc.text(v) if v else None)
                            for k, v in rej.items()}
        self.data_reply = pc.text(cfg["data_reply"]) if cfg.get("data_reply") else None
        self.messages = 0
        self.connections = 0
        self.record_path = cfg["record"]
        self.connections_path = cfg["connections"]
        self.offered = set(m.upper() for m in cfg.get("auth_mechanisms") or ALL_MECHS)
        if self.user is None:
            self.offered = set()

    # -- bookkeeping --------------------------------------------------------

    def count_connection(self):
        self.connections += 1
        with open(self.connections_path, "ab") as f:
            f.write(b"%d %f\n" % (self.connections, time.time()))
        return self.connections

    def _authenticated(self, session, mechanism, identity):
        session.mailer_auth = (mechanism, identity)
        return AuthResult(success=True, auth_data=identity)

    # -- SMTP hooks ---------------------------------------------------------

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        out = []
        for line in responses[:-1]:
            if line.startswith("250-AUTH") and not self.offered:
                continue
            out.append(line)
        out += ["250-" + e for e in self.extensions]
        out.append(responses[-1])
        return out

    async def handle_MAIL(self, server, session, envelope, address, options):
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.mailer_rcpts = []
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):
        key = address.lower()
        if key in self.reject_rcpt:
            return self.reject_rcpt[key] or ("550 5.1.1 <%s>: Recipient address rejected"
                                             % address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        if not hasattr(envelope, "mailer_rcpts"):
            envelope.mailer_rcpts = []
        envelope.mailer_rcpts.append({"address": address, "options": list(options)})
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages += 1
        data = envelope.original_content or b""
        version, client_cn = tls_info(server)
        mech, identity = getattr(session, "mailer_auth", (None, None))
        rec = {
            "n": self.messages,
            "connection": server.connection_number,
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "mail_options": list(envelope.mail_options),
            "rcpt_options": list(envelope.rcpt_options),
            "rcpts": getattr(envelope, "mailer_rcpts", []),
            "data_b64": b64(data),
            "size": len(data),
            "auth": identity,
            "auth_mechanism": mech,
            "tls": version is not None,
            "tls_version": version,
            "client_cert": client_cn,
            "helo": session.host_name,
            "smtputf8": bool(envelope.smtp_utf8),
            "time": time.time(),
        }
        line = (json.dumps(rec, ensure_ascii=True) + "\n").encode("ascii")
        with open(self.record_path, "ab") as f:
            f.write(line)
        return self.data_reply or "250 OK queued as M%d" % self.messages

    # -- AUTH mechanisms beyond aiosmtpd's PLAIN and LOGIN -------------------

    async def _initial(self, server, args, challenge=b""):
        """The client's first SASL message: initial response or reply to 334."""
        if len(args) > 1:
            if args[1] == "=":
                return b""
            try:
                return base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return MISSING
        return await server.challenge_auth(challenge)

    def _check(self, user, password):
        return (self.user is not None and hmac.compare_digest(user, self.user)
                and hmac.compare_digest(password, self.password))

    async def auth_CRAM__MD5(self, server, args):
        challenge = ("<%d.%d@%s>" % (secrets.randbelow(1 << 30), int(time.time()),
                                     server.hostname)).encode()
        if len(args) > 1:
            await server.push("501 5.5.2 CRAM-MD5 takes no initial response")
            return AuthResult(success=False, handled=True)
        resp = await server.challenge_auth(challenge)
        if resp is MISSING:
            return AuthResult(success=False, handled=True)
        user, _, digest = resp.rpartition(b" ")
        if self.user is not None and hmac.compare_digest(user, self.user):
            want = hmac.new(self.password, challenge, hashlib.md5).hexdigest().encode()
            if hmac.compare_digest(digest.lower(), want):
                return self._authenticated(server.session, "CRAM-MD5", user.decode("utf-8", "replace"))
        return AuthResult(success=False, handled=False)

    async def _bearer_fail(self, server, blob):
        # RFC 7628 / Google XOAUTH2: error JSON in a 334, the client answers
        # (empty line or ^A), then the final 535.
        resp = await server.challenge_auth(blob)
        if resp is MISSING:
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False)

    async def auth_XOAUTH2(self, server, args):
        resp = await self._initial(server, args)
        if resp is MISSING:
            return AuthResult(success=False, handled=True)
        fields = dict(p.split(b"=", 1) for p in resp.split(b"\x01") if b"=" in p)
        user = fields.get(b"user", b"")
        auth = fields.get(b"auth", b"")
        if auth.startswith(b"Bearer ") and self._check(user, auth[7:]):
            return self._authenticated(server.session, "XOAUTH2", user.decode("utf-8", "replace"))
        return await self._bearer_fail(
            server, json.dumps({"status": "401", "schemes": "bearer",
                                "scope": "https://mail.example/"}).encode())

    async def auth_OAUTHBEARER(self, server, args):
        resp = await self._initial(server, args)
        if resp is MISSING:
            return AuthResult(success=False, handled=True)
        head, _, rest = resp.partition(b"\x01")
        user = b""
        for part in head.split(b","):
            if part.startswith(b"a="):
                user = part[2:].replace(b"=2C", b",").replace(b"=3D", b"=")
        fields = dict(p.split(b"=", 1) for p in rest.split(b"\x01") if b"=" in p)
        auth = fields.get(b"auth", b"")
        if auth.startswith(b"Bearer ") and self._check(user, auth[7:]):
            return self._authenticated(server.session, "OAUTHBEARER", user.decode("utf-8", "replace"))
        return await self._bearer_fail(
            server, json.dumps({"status": "invalid_token", "schemes": "bearer"}).encode())

    async def auth_SCRAM__SHA__256(self, server, args):
        first = await self._initial(server, args)
        if first is MISSING:
            return AuthResult(success=False, handled=True)
        try:
            gs2_cbind, authzid, bare = first.split(b",", 2)
            attrs = dict(p.split(b"=", 1) for p in bare.split(b","))
            user = attrs[b"n"].replace(b"=2C", b",").replace(b"=3D", b"=")
            cnonce = attrs[b"r"]
        except (ValueError, KeyError):
            await server.push("501 5.5.2 Malformed SCRAM client-first message")
            return AuthResult(success=False, handled=True)
        salt = secrets.token_bytes(16)
        iterations = 4096
        nonce = cnonce + base64.b64encode(secrets.token_bytes(18))
        server_first = b"r=" + nonce + b",s=" + base64.b64encode(salt) + b",i=%d" % iterations
        final = await server.challenge_auth(server_first)
        if final is MISSING:
            return AuthResult(success=False, handled=True)
        try:
            without_proof, _, proof_part = final.rpartition(b",p=")
            fattrs = dict(p.split(b"=", 1) for p in without_proof.split(b","))
            proof = base64.b64decode(proof_part, validate=True)
        except (ValueError, binascii.Error):
            await server.push("501 5.5.2 Malformed SCRAM client-final message")
            return AuthResult(success=False, handled=True)
        if (fattrs.get(b"r") != nonce
                or fattrs.get(b"c") != base64.b64encode(gs2_cbind + b"," + authzid + b",")
                or self.user is None or not hmac.compare_digest(user, self.user)):
            return AuthResult(success=False, handled=False)
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iterations)
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        auth_message = bare + b"," + server_first + b"," + without_proof
        signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        if len(proof) != len(signature):
            return AuthResult(success=False, handled=False)
        recovered = bytes(a ^ b for a, b in zip(proof, signature))
        if not hmac.compare_digest(hashlib.sha256(recovered).digest(), stored_key):
            return AuthResult(success=False, handled=False)
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        verifier = b"v=" + base64.b64encode(
            hmac.new(server_key, auth_message, hashlib.sha256).digest())
        fault = self.cfg.get("scram_fault")
        if fault == "no_signature":   # an impostor that skips the proof of knowledge
            return self._authenticated(server.session, "SCRAM-SHA-256", user.decode("utf-8", "replace"))
        if fault == "wrong_signature":
            verifier = b"v=" + base64.b64encode(bytes(32))
            await server.push("334 " + base64.b64encode(verifier).decode("ascii"))
            await server._reader.readline()   # "*" or anything: 235 regardless
            return self._authenticated(server.session, "SCRAM-SHA-256", user.decode("utf-8", "replace"))
        ack = await server.challenge_auth(verifier)
        if ack is MISSING:
            return AuthResult(success=False, handled=True)
        return self._authenticated(server.session, "SCRAM-SHA-256", user.decode("utf-8", "replace"))


def make_authenticator(handler):
    def authenticator(server, session, envelope, mechanism, auth_data):
        if handler._check(auth_data.login or b"", auth_data.password or b""):
            return handler._authenticated(session, mechanism,
                                          auth_data.login.decode("utf-8", "replace"))
        return AuthResult(success=False, handled=False)
    return authenticator


def tls_context(cfg):
    certdir = cfg["certdir"]
    name = cfg.get("cert") or "good"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(certdir, name + ".pem"),
                        os.path.join(certdir, name + ".key"))
    mode = cfg.get("client_cert")
    if mode:
        ctx.load_verify_locations(os.path.join(certdir, "ca.pem"))
        ctx.verify_mode = ssl.CERT_REQUIRED if mode == "require" else ssl.CERT_OPTIONAL
    return ctx


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls", choices=["none", "starttls", "implicit"], default="none")
    ap.add_argument("--require-starttls", action="store_true")
    ap.add_argument("--cert", default="good")
    ap.add_argument("--certdir")
    ap.add_argument("--auth-user")
    ap.add_argument("--auth-password")
    ap.add_argument("--allow-plaintext-auth", action="store_true")
    ap.add_argument("--smtputf8", dest="smtputf8", action="store_true", default=True)
    ap.add_argument("--no-smtputf8", dest="smtputf8", action="store_false")
    ap.add_argument("--size", type=int)
    ap.add_argument("--record")
    ap.add_argument("--connections")
    a = ap.parse_args()
    def transport(value):
        # command-line text -> the Latin-1 byte transport of config strings
        if value is None:
            return None
        return os.fsencode(value).decode("latin-1")

    cfg = {"host": a.host, "port": a.port, "tls": a.tls,
           "require_starttls": a.require_starttls, "cert": a.cert,
           "certdir": a.certdir, "auth_user": transport(a.auth_user),
           "auth_password": transport(a.auth_password),
           "auth_require_tls": not a.allow_plaintext_auth,
           "smtputf8": a.smtputf8, "size": a.size, "record": a.record,
           "connections": a.connections}
    if a.config:
        cfg.update(pc.load_config(a.config))
    base = os.path.dirname(os.path.abspath(a.config)) if a.config else os.getcwd()
    cfg["record"] = cfg.get("record") or os.path.join(base, "messages.jsonl")
    cfg["connections"] = cfg.get("connections") or os.path.join(base, "connections")
    if cfg.get("tls", "none") != "none" and not cfg.get("certdir"):
        sys.exit("smtpd.py: TLS needs --certdir (a directory made by ca.py)")
    return cfg


async def serve(cfg):
    loop = asyncio.get_running_loop()
    handler = Handler(cfg)
    mode = cfg.get("tls") or "none"
    ctx = tls_context(cfg) if mode != "none" else None
    offered = handler.offered
    size = cfg.get("size")
    kwargs = dict(
        data_size_limit=(33554432 if size is None else (size or None)),
        enable_SMTPUTF8=cfg.get("smtputf8", True),
        decode_data=False,
        hostname=cfg.get("hostname") or "mx.test.example",
        ident="mailer test smtpd",
        tls_context=ctx if mode == "starttls" else None,
        require_starttls=bool(cfg.get("require_starttls")) and mode == "starttls",
        timeout=cfg.get("idle_timeout", 300),
        auth_required=bool(cfg.get("auth_required")),
        auth_require_tls=cfg.get("auth_require_tls", True),
        auth_exclude_mechanism=[m for m in ALL_MECHS if m not in offered],
        authenticator=make_authenticator(handler),
        loop=loop,
    )
    accept_dsn = any(e.upper().split()[0] == "DSN" for e in handler.extensions if e)
    server = await loop.create_server(
        lambda: RecordingSMTP(handler, mode == "implicit", accept_dsn, **kwargs),
        host=cfg.get("host") or "127.0.0.1", port=cfg.get("port") or 0,
        ssl=ctx if mode == "implicit" else None, reuse_address=True)
    for path in (cfg["record"], cfg["connections"]):
        open(path, "ab").close()
    pc.announce(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def main():
    pc.own_process_group()
    # aiosmtpd warns on every AUTH that login_data is deprecated; keep stderr
    # for messages that help when a spec fails.
    logging.getLogger("mail.log").addFilter(
        lambda record: "login_data is deprecated" not in record.getMessage())
    cfg = parse_args()
    pc.start_watchdog(cfg.get("parent_pid"), cfg.get("max_lifetime", 3600))
    try:
        asyncio.run(serve(cfg))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
