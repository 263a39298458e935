#!/usr/bin/python3
"""Postfix's smtp-sink on a loopback port, for benchmarks and smoke tests.

Usage: sink.py [--config FILE] [--port N] [--cpu LIST] [-- smtp-sink options...]

smtp-sink accepts and discards mail; it offers PIPELINING, 8BITMIME, DSN,
ENHANCEDSTATUSCODES (see smtp-sink(1) for the options that turn these off).
Config keys: port (0: pick one), args (extra smtp-sink options), cpu
(taskset CPU list to pin it to, e.g. "0"), backlog (default 256),
parent_pid, max_lifetime. Prints "READY <port>" once listening; stops
smtp-sink when terminated.
"""
import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_common as pc  # noqa: E402


def find_sink():
    for path in ("/usr/sbin/smtp-sink", shutil.which("smtp-sink") or ""):
        if path and os.access(path, os.X_OK):
            return path
    sys.exit("sink.py: smtp-sink not found (Debian package postfix)")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    pc.own_process_group()
    ap = argparse.ArgumentParser()
    ap.add_argument("--config")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cpu")
    ap.add_argument("rest", nargs="*")
    a = ap.parse_args()
    cfg = pc.load_config(a.config) if a.config else {}
    base = os.path.dirname(os.path.abspath(a.config)) if a.config else os.getcwd()
    extra = [pc.text(x) for x in cfg.get("args") or []] + a.rest
    cpu = cfg.get("cpu", a.cpu)
    wanted = int(cfg.get("port") or a.port or 0)
    sink = find_sink()
    out = open(os.path.join(base, "sink.out"), "ab")
    proc, port = None, None
    for attempt in range(3):
        port = wanted or free_port()
        cmd = [sink]
        if os.geteuid() == 0:
            # smtp-sink refuses to keep root privileges
            cmd += ["-u", pwd.getpwnam("nobody").pw_name]
        cmd += extra + ["127.0.0.1:%d" % port, str(cfg.get("backlog", 256))]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu)] + cmd
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None and not pc.listening(port):
            time.sleep(0.01)
        if proc.poll() is None and pc.listening(port):
            break
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc = None
        if wanted:
            break
    if proc is None:
        out.flush()
        with open(os.path.join(base, "sink.out"), errors="replace") as f:
            sys.exit("sink.py: smtp-sink did not start:\n" + f.read()[-2000:])

    stopping = threading.Event()

    def stop():
        if proc.poll() is None:
            proc.terminate()
            deadline = time.monotonic() + 3
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
        os._exit(0)

    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    pc.start_watchdog(cfg.get("parent_pid"), cfg.get("max_lifetime", 3600), cleanup=stop)
    pc.announce(port)
    while not stopping.is_set() and proc.poll() is None:
        stopping.wait(0.1)
    if stopping.is_set():
        stop()
    sys.exit("sink.py: smtp-sink exited (%s)" % proc.returncode)


if __name__ == "__main__":
    main()
