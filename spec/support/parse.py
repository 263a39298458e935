"""Parse messages with Python's email package (policy.default) and print
what a real MIME parser sees, as JSON, for the busted specs.

Usage: parse.py FILE...   -> a JSON list, one object per file.
"""
import hashlib
import json
import sys
from email import policy
from email.parser import BytesParser


def addresses(msg, name):
    h = msg[name]
    if h is None:
        return None
    try:
        return [{"name": a.display_name, "address": a.addr_spec} for a in h.addresses]
    except Exception as e:  # noqa: BLE001 - report any parse failure
        return {"error": str(e)}


def leaf(part):
    payload = part.get_payload(decode=True) or b""
    info = {
        "content_type": part.get_content_type(),
        "charset": part.get_content_charset(),
        "cte": part.get("Content-Transfer-Encoding"),
        "disposition": part.get_content_disposition(),
        "filename": part.get_filename(),
        "cid": part.get("Content-ID"),
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "defects": [type(d).__name__ for d in part.defects],
    }
    if part.get_content_maintype() == "text":
        try:
            info["text"] = part.get_content()
        except Exception as e:  # noqa: BLE001
            info["text_error"] = str(e)
    return info


def structure(part):
    if part.is_multipart():
        return "%s(%s)" % (part.get_content_type(),
                           ",".join(structure(p) for p in part.iter_parts()))
    return part.get_content_type()


def parse(raw):
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    defects = []
    for p in msg.walk():
        defects += [type(d).__name__ + ": " + str(d) for d in p.defects]
        for k, v in p.items():
            for d in getattr(v, "defects", ()):
                defects.append("%s header %s: %s" % (k, type(d).__name__, d))
    lines = raw.split(b"\r\n")
    bare = raw.replace(b"\r\n", b"").count(b"\r") + raw.replace(b"\r\n", b"").count(b"\n")
    headers = {}
    for k, v in msg.items():
        headers.setdefault(k.lower(), []).append(str(v))
    return {
        "defects": defects,
        "header_names": [k for k, _ in msg.items()],
        "headers": headers,
        "from": addresses(msg, "from"),
        "to": addresses(msg, "to"),
        "cc": addresses(msg, "cc"),
        "reply_to": addresses(msg, "reply-to"),
        "sender": addresses(msg, "sender"),
        "subject": str(msg["subject"]) if msg["subject"] is not None else None,
        "structure": structure(msg),
        "parts": [leaf(p) for p in msg.walk() if not p.is_multipart()],
        "max_line": max((len(l) for l in lines), default=0),
        "bare_cr_lf": bare,
        "boundaries": [p.get_boundary() for p in msg.walk() if p.is_multipart()],
    }


def main():
    out = []
    for name in sys.argv[1:]:
        with open(name, "rb") as f:
            raw = f.read()
        try:
            out.append(parse(raw))
        except Exception as e:  # noqa: BLE001
            out.append({"error": "%s: %s" % (type(e).__name__, e)})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
