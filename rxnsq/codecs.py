"""Stream codecs the connection passes bytes through: identity, snappy framing, raw deflate.

nsqd switches a connection to compression right after IDENTIFY; from then on every byte in
both directions goes through the codec. A codec is one object per connection that keeps its
own state across calls (a partial chunk, the deflate window), so the connection can feed it
whatever the socket returns. No IO here.
"""

from __future__ import annotations

import zlib
from typing import Protocol

import snappy

from .errors import FrameError

__all__ = ["Codec", "DeflateCodec", "IdentityCodec", "SnappyCodec"]

#: The snappy framing format's stream identifier chunk; nsqd's reader requires it first.
SNAPPY_STREAM_IDENTIFIER = b"\xff\x06\x00\x00sNaPpY"


class Codec(Protocol):
    """Encodes outgoing bytes and decodes incoming bytes of one connection."""

    name: str

    def encode(self, data: bytes) -> bytes:
        """Bytes to write for ``data``; complete, so nsqd can read it without more."""
        ...

    def decode(self, data: bytes) -> bytes:
        """Plain bytes for what was read; a partial chunk is kept for the next call."""
        ...


class IdentityCodec:
    """No compression."""

    name = "identity"

    def encode(self, data: bytes) -> bytes:
        return data

    def decode(self, data: bytes) -> bytes:
        return data


class SnappyCodec:
    """Snappy framing format (stream identifier, CRC-checked chunks of at most 64 KiB).

    One compressor for the connection, so the stream identifier goes out once, and each
    ``encode`` returns whole chunks that nsqd can decode at once.
    """

    name = "snappy"

    def __init__(self) -> None:
        self._compressor = snappy.StreamCompressor()
        self._decompressor = snappy.StreamDecompressor()

    def encode(self, data: bytes) -> bytes:
        framed: bytes = self._compressor.add_chunk(data)
        return framed

    def decode(self, data: bytes) -> bytes:
        try:
            plain: bytes = self._decompressor.decompress(data)
            return plain
        except Exception as exc:  # cramjam raises OSError-like errors of its own
            raise FrameError(f"corrupt snappy stream from nsqd: {exc}") from exc


class DeflateCodec:
    """Raw DEFLATE (no zlib header), with a sync flush after every write as nsqd expects."""

    name = "deflate"

    def __init__(self, level: int = 6) -> None:
        if not 1 <= level <= 9:
            raise ValueError(f"deflate level must be 1..9, not {level!r}")
        self.level = level
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._decompressor = zlib.decompressobj(-zlib.MAX_WBITS)

    def encode(self, data: bytes) -> bytes:
        return self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)

    def decode(self, data: bytes) -> bytes:
        try:
            return self._decompressor.decompress(data)
        except zlib.error as exc:
            raise FrameError(f"corrupt deflate stream from nsqd: {exc}") from exc
