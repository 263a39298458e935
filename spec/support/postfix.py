#!/usr/bin/python3
"""A private Postfix instance for the specs (Debian's postfix package).

Usage: postfix.py --config FILE      (or: postfix.py --dir DIR [--port N])

Everything lives under DIR: etc/ (main.cf, master.cf, maps), queue/, data/,
maillog, and the Maildir mail/maildir/ (one file per recipient, delivered by
virtual(8) as the unprivileged "nobody"; Delivered-To names the recipient). The master runs in the foreground
as our child; it and its daemons die with us (SIGTERM, or the watchdog when
the Lua runner is gone). The system Postfix is neither used nor touched.

Config keys: dir, port (0: pick a free one), domains (default
["test.example"]), size (message_size_limit), tls (true: offer STARTTLS with
the "good" certificate from certdir), certdir, main ({param: value} added to
main.cf), parent_pid, max_lifetime.

Mail for any <x>@<domain> is accepted and delivered; local-parts
starting with "unknown" are rejected at RCPT (550 5.1.1); other domains get
"554 5.7.1 Relay access denied". Needs root (the master must start as root
and switch to the postfix user). Prints "READY <port>" once listening.
"""
import argparse
import grp
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

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# Queue subdirectories as post-install(1) makes them: (name, owner, group, mode).
QUEUE_DIRS = [(d, "postfix", None, 0o700) for d in
              ("active", "bounce", "corrupt", "defer", "deferred", "flush",
               "hold", "incoming", "private", "saved", "trace")]
QUEUE_DIRS += [("maildrop", "postfix", "postdrop", 0o730),
               ("public", "postfix", "postdrop", 0o710),
               ("pid", "root", None, 0o755)]


def postconf(name):
    out = subprocess.run(["postconf", "-h", "-d", name], capture_output=True, text=True)
    return out.stdout.strip()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def mkdir(path, uid, gid, mode):
    os.makedirs(path, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def write_config(cfg, root, port):
    etc = os.path.join(root, "etc")
    nobody = pwd.getpwnam("nobody")
    domains = [pc.text(d) for d in cfg.get("domains") or ["test.example"]]
    with open(os.path.join(etc, "virtual_mailbox.regexp"), "w") as f:
        # virtual(8) allows no $1 substitution here: one Maildir for all
        f.write("# local-parts starting with 'unknown' do not exist\n"
                "if !/^unknown/\n/@/\tmaildir/\nendif\n")
    main = {
        "compatibility_level": "3.6",
        "queue_directory": os.path.join(root, "queue"),
        "data_directory": os.path.join(root, "data"),
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "myhostname": "mx.test.example",
        "mydomain": "test.example",
        "myorigin": "$mydomain",
        "mydestination": "",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "relay_domains": "",
        "smtpd_relay_restrictions": "reject_unauth_destination",
        # bounces and anything else not for our domains go nowhere
        "default_transport": "discard",
        "relay_transport": "discard",
        "virtual_mailbox_domains": ", ".join(domains),
        "virtual_mailbox_base": os.path.join(root, "mail"),
        "virtual_mailbox_maps": "regexp:" + os.path.join(etc, "virtual_mailbox.regexp"),
        "virtual_uid_maps": "static:%d" % nobody.pw_uid,
        "virtual_gid_maps": "static:%d" % nobody.pw_gid,
        "virtual_minimum_uid": "1",
        "virtual_mailbox_limit": "0",
        # keep the message as sent: no address or header rewriting for us
        "local_header_rewrite_clients": "",
        "smtpd_peername_lookup": "no",
        "smtp_dns_support_level": "disabled",
        "smtpd_error_sleep_time": "0s",
        "smtpd_junk_command_limit": "100000",
        "in_flow_delay": "0s",
        "alias_maps": "",
        "alias_database": "",
        "biff": "no",
        "smtputf8_enable": "yes",
        "maillog_file": os.path.join(root, "maillog"),
        "maillog_file_prefixes": root,
        "import_environment": "MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C",
    }
    if cfg.get("size") is not None:
        main["message_size_limit"] = str(int(cfg["size"]))
    if cfg.get("tls"):
        certdir = cfg["certdir"]
        main.update({
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": os.path.join(certdir, "good.pem"),
            "smtpd_tls_key_file": os.path.join(certdir, "good.key"),
            "smtpd_tls_session_cache_database": "",
        })
    for k, v in (cfg.get("main") or {}).items():
        main[pc.text(k)] = pc.text(v)
    with open(os.path.join(etc, "main.cf"), "w") as f:
        for k, v in main.items():
            f.write("%s = %s\n" % (k, v))
    with open(os.path.join(etc, "master.cf"), "w") as f:
        f.write(MASTER_CF.format(listen="127.0.0.1:%d" % port))
    # Postfix waits until a configuration file has been left alone for a
    # while before it trusts it (it may still be being edited): backdate the
    # files instead of sleeping.
    past = time.time() - 60
    for name in os.listdir(etc):
        os.utime(os.path.join(etc, name), (past, past))


def prepare(root):
    postfix = pwd.getpwnam("postfix")
    postdrop = grp.getgrnam("postdrop")
    nobody = pwd.getpwnam("nobody")
    os.chmod(root, 0o755)
    mkdir(os.path.join(root, "etc"), 0, 0, 0o755)
    mkdir(os.path.join(root, "queue"), 0, 0, 0o755)
    mkdir(os.path.join(root, "data"), postfix.pw_uid, postfix.pw_gid, 0o700)
    mkdir(os.path.join(root, "mail"), nobody.pw_uid, nobody.pw_gid, 0o755)
    for name, owner, group, mode in QUEUE_DIRS:
        uid = 0 if owner == "root" else postfix.pw_uid
        gid = postdrop.gr_gid if group else (0 if owner == "root" else 0)
        mkdir(os.path.join(root, "queue", name), uid, gid, mode)


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no %s)" % path


def start_master(root, port):
    """Start the master in the foreground; returns the Popen once listening."""
    master = os.path.join(postconf("daemon_directory") or "/usr/lib/postfix/sbin", "master")
    out = open(os.path.join(root, "master.out"), "ab")
    proc = subprocess.Popen([master, "-c", os.path.join(root, "etc"), "-d"],
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
    ap.add_argument("--config")
    ap.add_argument("--dir")
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    cfg = pc.load_config(a.config) if a.config else {}
    root = os.path.abspath(cfg.get("dir") or a.dir or sys.exit("postfix.py: need --dir"))
    if os.geteuid() != 0:
        sys.exit("postfix.py: a private Postfix needs root (the master starts as root)")
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        sys.exit("postfix.py: no 'postfix' user: is Debian's postfix package installed?")
    os.makedirs(root, exist_ok=True)
    prepare(root)

    proc = None
    wanted = cfg.get("port") or a.port
    for attempt in range(3):
        port = wanted or free_port()
        write_config(cfg, root, port)
        proc = start_master(root, port)
        if proc or wanted:
            break
    if not proc:
        sys.exit("postfix.py: the master did not start listening\n--- maillog:\n%s"
                 "--- master.out:\n%s" % (tail(os.path.join(root, "maillog")),
                                          tail(os.path.join(root, "master.out"))))

    stopping = threading.Event()

    def stop():
        """Stop the master (it stops its daemons), then anything left in our group."""
        if proc.poll() is None:
            # A throwaway instance: no need to wait for a clean shutdown.
            proc.terminate()
            deadline = time.monotonic() + 0.3
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
    sys.stderr.write("postfix.py: the master exited (%s)\n%s" %
                     (proc.returncode, tail(os.path.join(root, "maillog"))))
    sys.exit(1)


if __name__ == "__main__":
    main()
