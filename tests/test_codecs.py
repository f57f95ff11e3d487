"""Codecs on their own: round trips at any chunking, the formats nsqd expects, corrupt input."""

from __future__ import annotations

import os
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxnsq import errors
from rxnsq.codecs import SNAPPY_STREAM_IDENTIFIER, DeflateCodec, IdentityCodec, SnappyCodec


def feed_in_pieces(codec, data: bytes, size: int) -> bytes:
    return b"".join(codec.decode(data[i : i + size]) for i in range(0, len(data), size))


def test_snappy_starts_with_the_stream_identifier_once() -> None:
    codec = SnappyCodec()
    first = codec.encode(b"NOP\n")
    second = codec.encode(b"NOP\n")
    assert first.startswith(SNAPPY_STREAM_IDENTIFIER)
    assert not second.startswith(SNAPPY_STREAM_IDENTIFIER)


def test_snappy_splits_a_large_body_into_64k_chunks() -> None:
    body = os.urandom(1 << 20)
    encoded = SnappyCodec().encode(body)
    pos = len(SNAPPY_STREAM_IDENTIFIER)
    chunks = 0
    while pos < len(encoded):
        kind, length = encoded[pos], int.from_bytes(encoded[pos + 1 : pos + 4], "little")
        assert kind in (0x00, 0x01)
        assert length - 4 <= 65536 + 32  # payload: CRC + at most 64 KiB (+ overhead)
        pos += 4 + length
        chunks += 1
    assert pos == len(encoded) and chunks >= 16
    assert feed_in_pieces(SnappyCodec(), encoded, 7777) == body


def test_deflate_is_raw_and_sync_flushed() -> None:
    codec = DeflateCodec(level=6)
    encoded = codec.encode(b"FIN 0123456789abcdef\n")
    # a sync flush ends with the empty stored block 00 00 ff ff, so nsqd can decode at once
    assert encoded.endswith(b"\x00\x00\xff\xff")
    assert zlib.decompressobj(-zlib.MAX_WBITS).decompress(encoded) == b"FIN 0123456789abcdef\n"


def test_deflate_level_is_checked() -> None:
    with pytest.raises(ValueError, match=r"1\.\.9"):
        DeflateCodec(level=0)


@pytest.mark.parametrize("make", [SnappyCodec, DeflateCodec, IdentityCodec])
@given(
    writes=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=12),
    piece=st.integers(1, 500),
)
def test_round_trip_any_chunking(make, writes: list[bytes], piece: int) -> None:
    sender, receiver = make(), make()
    stream = b"".join(sender.encode(w) for w in writes)
    assert feed_in_pieces(receiver, stream, piece) == b"".join(writes)


@pytest.mark.parametrize("make", [SnappyCodec, DeflateCodec])
@given(data=st.binary(max_size=400))
def test_garbage_gives_a_frame_error_or_bytes(make, data: bytes) -> None:
    try:
        out = make().decode(data)
    except errors.FrameError:
        return
    assert isinstance(out, bytes)


def test_snappy_corrupt_crc() -> None:
    encoded = bytearray(SnappyCodec().encode(b"hello world" * 10))
    encoded[len(SNAPPY_STREAM_IDENTIFIER) + 4] ^= 0xFF  # flip a CRC byte
    with pytest.raises(errors.FrameError, match="snappy"):
        SnappyCodec().decode(bytes(encoded))
