"""Shared plumbing for the test peers (smtpd.py, hostile.py, postfix.py, sink.py).

- Config files are JSON written by servers.lua. Lua strings are byte strings,
  so servers.lua writes every byte >= 0x80 as \\u00XX: a JSON string arrives
  here as Latin-1 code points, and raw() gives back the exact bytes.
- Each peer becomes the leader of its own process group, so the Lua side can
  stop it and everything it spawned with one kill of the group.
- A watchdog ends the peer when the process that started it (the Lua test
  runner) is gone, or after a maximum lifetime, so a crashed spec run never
  leaves servers behind.
"""
import json
import os
import sys
import threading
import time


def raw(value):
    """Exact bytes of a string that servers.lua encoded (Latin-1 transport)."""
    if isinstance(value, bytes):
        return value
    return value.encode("latin-1")


def text(value):
    """A servers.lua string as Python text (its bytes read as UTF-8)."""
    return raw(value).decode("utf-8", "surrogateescape")


def load_config(path):
    with open(path, "rb") as f:
        return json.loads(f.read().decode("ascii"))


def own_process_group():
    try:
        if os.getpgid(0) != os.getpid():
            os.setpgid(0, 0)
    except OSError:
        pass


def start_watchdog(parent_pid, max_lifetime, cleanup=None):
    """Exit when parent_pid disappears or after max_lifetime seconds."""
    deadline = time.monotonic() + max_lifetime if max_lifetime else None

    def parent_alive():
        if not parent_pid:
            return True
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def loop():
        while True:
            time.sleep(0.25)
            expired = deadline is not None and time.monotonic() > deadline
            if expired or not parent_alive():
                if cleanup:
                    try:
                        cleanup()
                    except Exception:
                        pass
                os._exit(3 if expired else 0)

    t = threading.Thread(target=loop, name="watchdog", daemon=True)
    t.start()


def announce(port):
    """Tell servers.lua we are listening; stdout is not used after this."""
    sys.stdout.write("READY %d\n" % port)
    sys.stdout.flush()


def listening(port, host="127.0.0.1"):
    """True when a TCP socket listens on host:port (read from /proc, no connect)."""
    hexhost = "".join("%02X" % int(p) for p in reversed(host.split(".")))
    want = "%s:%04X" % (hexhost, port)
    anyaddr = "00000000:%04X" % port
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "0A" and fields[1] in (want, anyaddr):
                    return True
    except OSError:
        return False
    return False
