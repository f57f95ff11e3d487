"""The control channel between the supervisor and one worker process: JSON lines over a
socketpair.

The supervisor sends the options first, then ``stop`` requests; the worker process sends
``booted``, ``boot_error``, and a ``state`` (its counters, readiness, a timestamp) every
second and on every change that matters for readiness. End of file is meaningful both ways:
the supervisor learns the process is gone, and the process learns its supervisor died (even
from SIGKILL: the kernel closes the socket), so it drains and exits instead of living on as
an orphan.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

__all__ = ["Channel"]

#: Longest line accepted (a state with many connections is a few kB).
_LIMIT = 16 * 1024 * 1024


class Channel:
    """One end of the socketpair as asyncio streams, one JSON object per line."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_LIMIT)
        return cls(reader, writer)

    def send(self, message: dict[str, Any]) -> bool:
        """Queue ``message``; False once the other end is gone (nothing to do about it)."""
        if self._writer.is_closing():
            return False
        try:
            self._writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def drain(self) -> None:
        """Wait until what was sent left this process (or the other end is gone)."""
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    async def receive(self) -> dict[str, Any] | None:
        """The next message, or None at end of file (the other process is gone)."""
        try:
            line = await self._reader.readline()
        except (ConnectionError, ValueError):
            return None
        if not line:
            return None
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError(f"control message is not an object: {line[:80]!r}")
        return message

    def close(self) -> None:
        self._writer.close()
