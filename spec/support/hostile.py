#!/usr/bin/python3
"""A scripted wire-level SMTP peer for fault tests.

Usage: hostile.py --config FILE

Config (JSON, written by servers.lua; strings carry bytes as Latin-1 code
points, see peer_common.py):
  steps        list of steps run on every connection, or
  scripts      list of step lists, one per connection (connection i runs scripts[i])
  connections  how many connections to accept (default 1, or len(scripts))
  certdir      directory made by ca.py (for "tls" steps)
  dir          where to write recv-<i>.bin, events.log and status.json
  timeout      default seconds a step may wait for the client (default 10)
  accept_timeout  seconds to wait for each connection (default 30)
  linger       seconds to drain the client after the last step (default 2)
  host, port, parent_pid, max_lifetime

Steps:
  {"send": bytes}                       write the bytes as they are
  {"expect": "EHLO"}                    read lines until one starts with this
                                        (case-insensitive); EOF/timeout fails
  {"expect_data": true}                 read a DATA body up to CRLF.CRLF
  {"tls": "good", "client_cert": "optional"|"require"}
                                        server side of a TLS handshake; bytes
                                        the client sent before it fail the step
  {"sleep": 1.5}
  {"trickle": bytes, "interval": 1.0}   one byte per interval
  {"flood": bytes, "bytes": 10000000}   repeat until that many bytes are sent;
                                        ends the script quietly if the client
                                        goes away or stops reading
  {"read_all": true}                    read until the client closes
  {"close": true | "reset" | "now"}     true: FIN (over TLS without a
                                        close_notify), then record what the
                                        client still sends (up to linger s);
                                        "reset": abortive close (RST); "now":
                                        close without draining. Ends this
                                        connection.
Any step may carry "timeout" (seconds) to override the default.

After the last step the server half-closes and records until the client
closes (at most linger seconds). Every byte read from the client (after TLS:
the decrypted bytes) is appended to recv-<i>.bin as it arrives.
status.json is written when everything is done:
  {"ok": bool, "error": str|null, "connections": n, "notes": [...]}
Prints "READY <port>" once listening.
"""
import argparse
import json
import os
import socket
import ssl
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_common as pc  # noqa: E402


class StepFailed(Exception):
    pass


class ClientGone(Exception):
    pass


class Conn:
    def __init__(self, sock, index, cfg):
        self.sock = sock
        self.index = index
        self.cfg = cfg
        self.buf = bytearray()
        self.eof = False
        self.rec = open(os.path.join(cfg["dir"], "recv-%d.bin" % index), "ab", buffering=0)
        self.log = open(os.path.join(cfg["dir"], "events.log"), "a", buffering=1)
        self.default_timeout = float(cfg.get("timeout", 10))
        self.notes = []

    def event(self, text):
        self.log.write("%.3f conn %d: %s\n" % (time.time(), self.index, text))

    def note(self, text):
        self.notes.append("connection %d: %s" % (self.index, text))
        self.event(text)

    def fill(self, deadline):
        """Read more bytes into buf; False on EOF. Raises StepFailed on timeout."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StepFailed("timeout")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise StepFailed("timeout")
        except ssl.SSLError as e:
            raise StepFailed("tls read error: %s" % e)
        except OSError as e:  # reset, broken pipe...: the client is gone
            self.event("read: %s" % e)
            data = b""
        if not data:
            self.eof = True
            return False
        self.rec.write(data)
        self.buf += data
        return True

    def send(self, data, timeout):
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise ClientGone("client stopped reading")
        except OSError as e:  # EPIPE, ECONNRESET, TLS errors
            raise ClientGone("client went away: %s" % e)

    def read_line(self, deadline):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            if not self.fill(deadline):
                return None

    # -- steps ---------------------------------------------------------------

    def do_expect(self, step, timeout):
        prefix = pc.raw(step["expect"]).upper()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.read_line(deadline)
            except StepFailed as e:
                raise StepFailed("%s while expecting %r" % (e, prefix.decode("latin-1")))
            if line is None:
                raise StepFailed("client closed the connection while expecting %r"
                                 % prefix.decode("latin-1"))
            if line.upper().startswith(prefix):
                self.event("got %r" % line[:200])
                return
            self.event("skipped %r" % line[:200])

    def do_expect_data(self, step, timeout):
        deadline = time.monotonic() + timeout
        total = 0
        if self.buf.startswith(b".\r\n"):
            del self.buf[:3]
            self.event("empty DATA body")
            return
        while True:
            i = self.buf.find(b"\r\n.\r\n")
            if i >= 0:
                total += i + 5
                del self.buf[:i + 5]
                self.event("DATA body done, %d bytes with terminator" % total)
                return
            if len(self.buf) > 4:
                total += len(self.buf) - 4
                del self.buf[:-4]
            try:
                more = self.fill(deadline)
            except StepFailed as e:
                raise StepFailed("%s while reading the DATA body" % e)
            if not more:
                raise StepFailed("client closed the connection inside the DATA body")

    def do_tls(self, step, timeout):
        if self.buf:
            raise StepFailed("client sent %d plaintext bytes before the TLS handshake: %r"
                             % (len(self.buf), bytes(self.buf[:100])))
        name = pc.text(step["tls"]) if step["tls"] is not True else "good"
        certdir = self.cfg["certdir"]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(certdir, name + ".pem"),
                            os.path.join(certdir, name + ".key"))
        mode = step.get("client_cert")
        if mode:
            ctx.load_verify_locations(os.path.join(certdir, "ca.pem"))
            ctx.verify_mode = ssl.CERT_REQUIRED if mode == "require" else ssl.CERT_OPTIONAL
        self.sock.settimeout(timeout)
        try:
            self.sock = ctx.wrap_socket(self.sock, server_side=True)
        except socket.timeout:
            raise StepFailed("timeout in the TLS handshake")
        except (ssl.SSLError, OSError) as e:
            raise StepFailed("TLS handshake failed: %s" % e)
        self.event("TLS up: %s %s" % (self.sock.version(), self.sock.cipher()[0]))

    def do_trickle(self, step, timeout):
        data = pc.raw(step["trickle"])
        interval = float(step.get("interval", 1.0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            self.send(data[i:i + 1], timeout)
            if i + 1 < len(data):
                time.sleep(interval)

    def do_flood(self, step, timeout):
        chunk = pc.raw(step["flood"])
        limit = int(step.get("bytes", 10000000))
        block = chunk * max(1, 65536 // max(1, len(chunk)))
        sent = 0
        while sent < limit:
            piece = block[:limit - sent]
            self.send(piece, timeout)
            sent += len(piece)
        self.event("flooded %d bytes" % sent)

    def do_read_all(self, step, timeout):
        deadline = time.monotonic() + timeout
        try:
            while self.fill(deadline):
                pass
        except StepFailed as e:
            raise StepFailed("%s in read_all" % e)
        self.buf.clear()

    def drain(self, seconds):
        """Record what the client still sends, until EOF or seconds pass."""
        deadline = time.monotonic() + seconds
        try:
            while self.fill(deadline):
                pass
        except StepFailed as e:
            self.event("drain ended: %s" % e)

    def shutdown_and_drain(self, seconds):
        """FIN to the client, then record what it still sends. Over TLS no
        close_notify is sent: the TCP half-close is done on a duplicate of
        the descriptor so that decrypting the client's last bytes still works."""
        try:
            dup = socket.socket(fileno=os.dup(self.sock.fileno()))
            try:
                dup.shutdown(socket.SHUT_WR)
            finally:
                dup.close()
        except OSError:
            pass
        self.drain(seconds)

    def close(self, how):
        if how == "reset":
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
            except OSError:
                pass
        elif how != "now":
            self.shutdown_and_drain(float(self.cfg.get("linger", 2)))
        try:
            self.sock.close()
        except OSError:
            pass

    def run(self, steps):
        """Run the steps; returns None or an error string."""
        for n, step in enumerate(steps, 1):
            timeout = float(step.get("timeout", self.default_timeout))
            self.event("step %d: %s" % (n, describe(step)))
            try:
                if "send" in step:
                    self.send(pc.raw(step["send"]), timeout)
                elif "expect" in step:
                    self.do_expect(step, timeout)
                elif "expect_data" in step:
                    self.do_expect_data(step, timeout)
                elif "tls" in step:
                    self.do_tls(step, timeout)
                elif "sleep" in step:
                    time.sleep(float(step["sleep"]))
                elif "trickle" in step:
                    self.do_trickle(step, timeout)
                elif "flood" in step:
                    self.do_flood(step, timeout)
                elif "read_all" in step:
                    self.do_read_all(step, timeout)
                elif "close" in step:
                    how = step["close"]
                    self.close(how if how in ("reset", "now") else "graceful")
                    self.event("closed (%s)" % how)
                    return None
                else:
                    raise StepFailed("unknown step %s" % describe(step))
            except ClientGone as e:
                self.note("%s at step %d" % (e, n))
                self.close("now")
                return None
            except StepFailed as e:
                self.close("now")
                return "connection %d, step %d (%s): %s" % (self.index, n, describe(step), e)
        self.close("graceful")
        return None


def describe(step):
    out = {}
    for k, v in step.items():
        if isinstance(v, str) and len(v) > 60:
            v = v[:60] + "..."
        out[k] = v
    return json.dumps(out, ensure_ascii=True)


def write_status(cfg, status):
    path = os.path.join(cfg["dir"], "status.json")
    with open(path + ".tmp", "w") as f:
        json.dump(status, f)
    os.replace(path + ".tmp", path)


def main():
    pc.own_process_group()
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    args = ap.parse_args()
    cfg = pc.load_config(args.config)
    cfg.setdefault("dir", os.path.dirname(os.path.abspath(args.config)))
    pc.start_watchdog(cfg.get("parent_pid"), cfg.get("max_lifetime", 600))
    scripts = cfg.get("scripts")
    count = int(cfg.get("connections") or (len(scripts) if scripts else 1))
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((cfg.get("host") or "127.0.0.1", int(cfg.get("port") or 0)))
    srv.listen(16)
    pc.announce(srv.getsockname()[1])
    status = {"ok": True, "error": None, "connections": 0, "notes": []}
    for i in range(1, count + 1):
        srv.settimeout(float(cfg.get("accept_timeout", 30)))
        try:
            sock, _ = srv.accept()
        except socket.timeout:
            status["ok"] = False
            status["error"] = "no connection %d within %ss" % (i, cfg.get("accept_timeout", 30))
            break
        status["connections"] = i
        if scripts:
            steps = scripts[i - 1] if i <= len(scripts) else scripts[-1]
        else:
            steps = cfg.get("steps", [])
        conn = Conn(sock, i, cfg)
        err = conn.run(steps)
        status["notes"] += conn.notes
        if err:
            status["ok"] = False
            status["error"] = err
            break
    srv.close()
    write_status(cfg, status)


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        pass
    except Exception as e:  # report instead of dying silently
        sys.stderr.write("hostile.py: %r\n" % (e,))
        raise
