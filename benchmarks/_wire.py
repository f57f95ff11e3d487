"""Raw-socket and HTTP helpers for the runner (standard library only): pre-loading a backlog
with MPUB, topic/channel admin and stats, without going through any client under test."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import time
import urllib.parse
import urllib.request
from typing import Any

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method: str, base: str, path: str, **params: str) -> bytes:
    url = f"{base}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    request = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method)
    with _OPENER.open(request, timeout=30) as response:
        return response.read()  # type: ignore[no-any-return]


def create_channel(base: str, topic: str, channel: str) -> None:
    http("POST", base, "/topic/create", topic=topic)
    http("POST", base, "/channel/create", topic=topic, channel=channel)


def delete_topic(base: str, topic: str) -> None:
    with contextlib.suppress(OSError):
        http("POST", base, "/topic/delete", topic=topic)


def channel_depth(base: str, topic: str, channel: str) -> int:
    stats: dict[str, Any] = json.loads(
        http("GET", base, "/stats", format="json", topic=topic, channel=channel)
    )
    for t in stats.get("topics") or []:
        for c in t.get("channels") or []:
            if c["channel_name"] == channel:
                return int(c["depth"])
    return 0


def channel_stats(base: str, topic: str, channel: str) -> dict[str, int]:
    """What a finished consume run must leave at 0: depth, in flight, requeued, timed out."""
    stats: dict[str, Any] = json.loads(
        http("GET", base, "/stats", format="json", topic=topic, channel=channel)
    )
    for t in stats.get("topics") or []:
        for c in t.get("channels") or []:
            if c["channel_name"] == channel:
                return {
                    "depth": int(c["depth"]),
                    "in_flight": int(c["in_flight_count"]),
                    "requeued": int(c["requeue_count"]),
                    "timed_out": int(c["timeout_count"]),
                    "deferred": int(c["deferred_count"]),
                }
    raise RuntimeError(f"no channel {topic}/{channel} in nsqd's /stats")


def _read_frame(sock: socket.socket, buffer: bytearray) -> tuple[int, bytes]:
    while True:
        if len(buffer) >= 8:
            size = struct.unpack_from(">l", buffer)[0]
            if len(buffer) >= 4 + size:
                frame_type = struct.unpack_from(">l", buffer, 4)[0]
                data = bytes(buffer[8 : 4 + size])
                del buffer[: 4 + size]
                return frame_type, data
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("nsqd closed the connection")
        buffer += chunk


def preload(
    address: str, topic: str, count: int, size: int = 200, batch: int = 1000, window: int = 8
) -> float:
    """MPUB ``count`` bodies of ``size`` bytes to ``topic``; returns the seconds it took."""
    host, port = address.rsplit(":", 1)
    started = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(b"  V2")
        buffer = bytearray()
        body = b"p" * size
        head = b"MPUB " + topic.encode() + b"\n"

        def command(n: int) -> bytes:
            payload = struct.pack(">l", n) + (struct.pack(">l", size) + body) * n
            return head + struct.pack(">l", len(payload)) + payload

        full = command(batch)
        sent = confirmed = 0
        left = count
        while left > 0 or confirmed < sent:
            while left > 0 and sent - confirmed < window:
                n = min(batch, left)
                sock.sendall(full if n == batch else command(n))
                left -= n
                sent += 1
            frame_type, data = _read_frame(sock, buffer)
            if data == b"_heartbeat_":
                sock.sendall(b"NOP\n")
                continue
            if frame_type != 0 or data != b"OK":
                raise RuntimeError(f"MPUB failed: {data!r}")
            confirmed += 1
    return time.perf_counter() - started
