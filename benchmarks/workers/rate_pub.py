"""Publish at a fixed rate over a raw socket (standard library only), for the latency runs.

Each body starts with the publish time (19 decimal digits of Unix nanoseconds) and is padded
to ``--size`` bytes. Messages are sent one PUB each as they fall due; replies are read and
counted so that an error shows. The same publisher serves every client, so the latency
figures differ only by the consumer.

    python rate_pub.py --addr 127.0.0.1:4150 --topic t --rate 2000 --count 10000
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import struct
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--addr", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--rate", type=float, required=True, help="messages per second")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--size", type=int, default=200)
    args = p.parse_args()

    host, port = args.addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b"  V2")
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    head = b"PUB " + args.topic.encode() + b"\n" + struct.pack(">l", args.size)
    pad = b"x" * (args.size - 19)
    buffer = b""
    replies = errors = 0

    def read_replies() -> None:
        nonlocal buffer, replies, errors
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            if not data:
                sys.exit("rate_pub: nsqd closed the connection")
            buffer += data
            while len(buffer) >= 8:
                size, frame_type = struct.unpack(">ll", buffer[:8])
                if len(buffer) < 4 + size:
                    break
                frame, buffer = buffer[8 : 4 + size], buffer[4 + size :]
                if frame == b"_heartbeat_":
                    sock.sendall(b"NOP\n")
                elif frame_type == 1:
                    errors += 1
                    sys.stderr.write(f"rate_pub: {frame!r}\n")
                else:
                    replies += 1

    start = time.perf_counter()
    sent = 0
    while sent < args.count:
        due = min(args.count, int((time.perf_counter() - start) * args.rate) + 1)
        while sent < due:
            sock.setblocking(True)
            sock.sendall(head + b"%019d" % time.time_ns() + pad)
            sock.setblocking(False)
            sent += 1
        read_replies()
        next_at = start + sent / args.rate
        wait = next_at - time.perf_counter()
        if wait > 0:
            sel.select(wait)
            read_replies()
    deadline = time.monotonic() + 10
    while replies + errors < sent and time.monotonic() < deadline:
        sel.select(0.05)
        read_replies()
    elapsed = time.perf_counter() - start
    print(
        json.dumps({"sent": sent, "confirmed": replies, "errors": errors, "rate": sent / elapsed})
    )
    sys.exit(1 if errors or replies < sent else 0)


if __name__ == "__main__":
    main()
