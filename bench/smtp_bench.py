"""SMTP client benchmark with Python's smtplib (run through bench/smtp.sh).
python3 smtp_bench.py WORKLOAD PORT ARG [COUNT]  -> prints "<messages> <seconds>".
W1/W2 send the pre-rendered messages in the directory ARG (one connection /
a connection each); W3 sends the file ARG + ".eml"."""
import os
import smtplib
import sys
import time

workload, port, arg = sys.argv[1], int(sys.argv[2]), sys.argv[3]
RCPTS = ["r1@example.com", "r2@example.com", "r3@example.com"]
if workload in ("W1", "W2"):
    names = sorted(os.listdir(arg))
    if len(sys.argv) > 4:
        names = names[: int(sys.argv[4])]
    raws = [open(os.path.join(arg, n), "rb").read() for n in names]
    t0 = time.time()
    if workload == "W1":
        s = smtplib.SMTP("127.0.0.1", port, local_hostname="bench.example.com")
        for raw in raws:
            s.sendmail("bench@example.com", RCPTS, raw)
        s.quit()
    else:
        for raw in raws:
            s = smtplib.SMTP("127.0.0.1", port, local_hostname="bench.example.com")
            s.sendmail("bench@example.com", RCPTS, raw)
            s.quit()
    print(len(raws), time.time() - t0)
else:
    t0 = time.time()
    raw = open(arg + ".eml", "rb").read()
    s = smtplib.SMTP("127.0.0.1", port, local_hostname="bench.example.com")
    s.sendmail("bench@example.com", RCPTS, raw)
    s.quit()
    print(1, time.time() - t0)
