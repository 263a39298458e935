#!/usr/bin/python3
"""A discarding SMTP server that stalls every DATA body for a while, for
the memory-per-send benchmark (bench/nginx_mem.sh): while it stalls, every
client's send is in flight with its buffers full.

Usage: slow_sink.py PORT STALL_SECONDS   (prints "READY <port>")
"""
import asyncio
import sys


async def session(reader, writer, stall):
    writer.write(b"220 slow-sink ESMTP\r\n")
    await writer.drain()
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(b"250-slow-sink\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go on\r\n")
                await writer.drain()
                await asyncio.sleep(stall)          # read nothing: buffers fill
                tail = b""
                while True:
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    tail = (tail + chunk)[-5:]
                    if tail == b"\r\n.\r\n":
                        break
                writer.write(b"250 2.0.0 discarded\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
    finally:
        writer.close()


async def main():
    port, stall = int(sys.argv[1]), float(sys.argv[2])
    server = await asyncio.start_server(lambda r, w: session(r, w, stall), "127.0.0.1", port,
                                        backlog=1024)
    print("READY %d" % server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
