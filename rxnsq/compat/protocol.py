"""pynsq's protocol helpers (``nsq.protocol``), over :mod:`rxnsq.protocol`.

Differences: an empty body raises instead of building a malformed command; IDENTIFY refuses
float numbers (nsqd rejects them); ``mpub`` takes any iterable (pynsq failed on tuples); there
is also ``cls()``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any

from .. import errors
from .. import protocol as core
from ..protocol import FRAME_TYPE_ERROR, FRAME_TYPE_MESSAGE, FRAME_TYPE_RESPONSE, MAGIC_V2
from .message import Message

__all__ = [
    "FRAME_TYPE_ERROR",
    "FRAME_TYPE_MESSAGE",
    "FRAME_TYPE_RESPONSE",
    "MAGIC_V2",
    "ConnectionClosedError",
    "Error",
    "IntegrityError",
    "SendError",
    "auth",
    "cls",
    "decode_message",
    "dpub",
    "finish",
    "identify",
    "mpub",
    "nop",
    "pub",
    "ready",
    "requeue",
    "subscribe",
    "touch",
    "unpack_response",
    "valid_channel_name",
    "valid_topic_name",
]

#: pynsq's error names, as rxnsq's classes so ``isinstance`` checks keep working.
Error = errors.NSQError
SendError = errors.NSQConnectionError
ConnectionClosedError = errors.ConnectionClosedError
IntegrityError = errors.FrameError


def _bytes(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


def identify(data: Mapping[str, Any]) -> bytes:
    return core.encode_identify(data)


def auth(data: bytes | str) -> bytes:
    return core.encode_auth(data)


def subscribe(topic: str, channel: str) -> bytes:
    return core.encode_sub(topic, channel)


def ready(count: int) -> bytes:
    return core.encode_rdy(count)


def finish(id: bytes) -> bytes:
    return core.encode_fin(id)


def requeue(id: bytes, time_ms: int = 0) -> bytes:
    return core.encode_req(id, time_ms)


def touch(id: bytes) -> bytes:
    return core.encode_touch(id)


def nop() -> bytes:
    return core.encode_nop()


def cls() -> bytes:
    return core.encode_cls()


def pub(topic: str, data: bytes | str) -> bytes:
    return core.encode_pub(topic, _bytes(data))


def mpub(topic: str, data: Iterable[bytes | str]) -> bytes:
    return core.encode_mpub(topic, [_bytes(d) for d in data])


def dpub(topic: str, delay_ms: int, data: bytes | str) -> bytes:
    return core.encode_dpub(topic, int(delay_ms), _bytes(data))


def valid_topic_name(topic: str) -> bool:
    return core.is_valid_topic_name(topic)


def valid_channel_name(channel: str) -> bool:
    return core.is_valid_channel_name(channel)


def unpack_response(data: bytes) -> tuple[int, bytes]:
    """``[i32 frame type][data]`` (what ``SyncConn.read_response`` returns) to a pair."""
    (frame_type,) = struct.unpack_from(">l", data)
    return frame_type, data[4:]


def decode_message(data: bytes) -> Message:
    """A message frame's data as a :class:`Message` (``id``, ``body``, ``timestamp``,
    ``attempts``; ``finish()``/``requeue()`` are recorded, as no connection delivered it)."""
    raw = core.decode_message(data)
    return Message(raw.id, raw.body, raw.timestamp, raw.attempts)
