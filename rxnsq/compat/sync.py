"""pynsq's ``SyncConn`` over :class:`rxnsq.sync.SyncConnection`.

Difference: heartbeats are answered with NOP and skipped by ``read_response`` (pynsq handed
them to the caller, who had to answer them).
"""

from __future__ import annotations

import struct

from ..sync import SyncConnection

__all__ = ["SyncConn"]


class SyncConn:
    """A blocking connection: ``connect``, ``send`` bytes, ``read_response`` frames."""

    def __init__(self, timeout: float = 1.0) -> None:
        self._conn = SyncConnection(timeout=timeout)

    def connect(self, host: str, port: int) -> None:
        self._conn.connect(host, port)

    def send(self, data: bytes) -> None:
        self._conn.send(data)

    def read_response(self) -> bytes:
        """The next frame as ``[i32 type][data]``, for ``unpack_response``."""
        frame = self._conn.read_frame()
        return struct.pack(">l", frame.type) + frame.data

    def close(self) -> None:
        self._conn.close()
