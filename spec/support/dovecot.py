#!/usr/bin/python3
"""A private Dovecot submission service for the specs (Debian's dovecot-core
and dovecot-submissiond), to check our SASL against a real server side.

Usage: dovecot.py --config FILE

Everything lives under DIR: dovecot.conf, users (a passwd-file), run/
(base_dir), state/, home/, mail/ and dovecot.log. The master runs in the
foreground as our child; it and its processes die with us (SIGTERM, or the
watchdog when the Lua runner is gone). The system Dovecot is neither used
nor touched (its configuration is never read).

Config keys: dir, port (0: pick a free one), certdir (from ca.py: the
"good" certificate serves STARTTLS), users ({name: password}, stored as
{PLAIN} so that every mechanism can use them), mechanisms (default
["plain", "login", "scram-sha-256"]), relay_port (where accepted messages
are relayed: an aiosmtpd of the spec), parent_pid, max_lifetime.

Failed logins are not delayed. Needs root (the
master starts as root and runs the logins as dovenull and the sessions as
nobody). Prints "READY <port>" once listening.
"""
import argparse
import os
import pwd
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_common as pc  # noqa: E402

CONF = """\
# a throwaway Dovecot for the mailer specs
protocols = submission
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
instance_name = mailer-spec-{port}
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
hostname = dovecot.test
ssl = yes
ssl_cert = <{certdir}/good.pem
ssl_key = <{certdir}/good.key
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_mechanisms = {mechanisms}
auth_verbose = yes
# no delay after a failed login (the specs fail on purpose, many times
# in a row); the growing per-IP penalty is switched off below
auth_failure_delay = 0
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
mail_location = maildir:{root}/mail
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home
}}
submission_relay_host = 127.0.0.1
submission_relay_port = {relay_port}
submission_relay_trusted = yes
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service submission-login {{
  chroot =
  inet_listener submission {{
    address = 127.0.0.1
    port = {port}
  }}
}}
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no %s)" % path


def write_config(cfg, root, port):
    nobody = pwd.getpwnam("nobody")
    for d in ("home", "mail"):
        path = os.path.join(root, d)
        os.makedirs(path, exist_ok=True)
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    with open(os.path.join(root, "users"), "w", encoding="utf-8") as f:
        for user, password in (cfg.get("users") or {}).items():
            user, password = pc.text(user), pc.text(password)
            if ":" in user + password or "\n" in user + password:
                sys.exit("dovecot.py: ':' or a newline cannot go into a passwd-file")
            f.write("%s:{PLAIN}%s::::::\n" % (user, password))
    mechanisms = cfg.get("mechanisms") or ["plain", "login", "scram-sha-256"]
    with open(os.path.join(root, "dovecot.conf"), "w") as f:
        f.write(CONF.format(root=root, port=port, certdir=cfg["certdir"],
                            mechanisms=" ".join(pc.text(m) for m in mechanisms),
                            uid=nobody.pw_uid, gid=nobody.pw_gid,
                            relay_port=int(cfg.get("relay_port") or 25)))


def start_master(root, port):
    """Start the master in the foreground; returns the Popen once listening."""
    out = open(os.path.join(root, "master.out"), "ab")
    proc = subprocess.Popen(["dovecot", "-F", "-c", os.path.join(root, "dovecot.conf")],
                            stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if pc.listening(port):
            return proc
        if proc.poll() is not None:
            return None
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    return None


def main():
    pc.own_process_group()
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    a = ap.parse_args()
    cfg = pc.load_config(a.config)
    root = os.path.abspath(cfg["dir"])
    if os.geteuid() != 0:
        sys.exit("dovecot.py: a private Dovecot needs root here (the master starts as root)")
    for user in ("dovecot", "dovenull"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            sys.exit("dovecot.py: no '%s' user: is Debian's dovecot-core installed?" % user)
    os.makedirs(root, exist_ok=True)
    os.chmod(root, 0o755)

    proc = None
    wanted = cfg.get("port")
    for attempt in range(3):
        port = wanted or free_port()
        write_config(cfg, root, port)
        proc = start_master(root, port)
        if proc or wanted:
            break
    if not proc:
        sys.exit("dovecot.py: the master did not start listening\n--- dovecot.log:\n%s"
                 "--- master.out:\n%s" % (tail(os.path.join(root, "dovecot.log")),
                                          tail(os.path.join(root, "master.out"))))

    stopping = threading.Event()

    def stop():
        """Stop the master (it stops its processes), then anything left in our group."""
        if proc.poll() is None:
            proc.terminate()
            deadline = time.monotonic() + 1
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
        try:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.killpg(0, signal.SIGKILL)
        except OSError:
            pass
        os._exit(0)

    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    pc.start_watchdog(cfg.get("parent_pid"), cfg.get("max_lifetime", 3600), cleanup=stop)
    pc.announce(port)
    while not stopping.is_set() and proc.poll() is None:
        stopping.wait(0.1)
    if stopping.is_set():
        stop()
    sys.stderr.write("dovecot.py: the master exited (%s)\n%s" %
                     (proc.returncode, tail(os.path.join(root, "dovecot.log"))))
    sys.exit(1)


if __name__ == "__main__":
    main()
