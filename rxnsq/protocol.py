"""The NSQ TCP protocol (V2) without IO: commands to bytes, bytes to frames.

Nothing here touches a socket, a loop or a clock, so every piece is tested by feeding it bytes.
The connection layer writes what the encoders return and feeds what it reads to a
:class:`FrameReader`.

Wire format, in short: the client sends the magic ``"  V2"``, then commands as a line
``NAME[ param]*\\n``, followed for some commands by ``[u32 size][body]``. nsqd answers with
frames ``[i32 size][i32 type][data]`` where size counts the type word; type 0 is a response,
1 an error and 2 a message ``[i64 timestamp ns][u16 attempts][16-byte id][body]``.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from .errors import FrameError, InvalidBodyError, InvalidNameError, WrongPortError

__all__ = [
    "CLOSE_WAIT",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_RDY_COUNT",
    "FRAME_TYPE_ERROR",
    "FRAME_TYPE_MESSAGE",
    "FRAME_TYPE_RESPONSE",
    "HEARTBEAT",
    "MAGIC_V2",
    "MAX_NAME_LENGTH",
    "MESSAGE_HEADER_SIZE",
    "MESSAGE_ID_SIZE",
    "OK",
    "AuthResponse",
    "Frame",
    "FrameReader",
    "IdentifyResponse",
    "RawMessage",
    "check_body",
    "check_channel_name",
    "check_topic_name",
    "decode_message",
    "encode_auth",
    "encode_checked_dpub",
    "encode_checked_mpub",
    "encode_checked_pub",
    "encode_cls",
    "encode_dpub",
    "encode_fin",
    "encode_identify",
    "encode_mpub",
    "encode_mpub_body",
    "encode_nop",
    "encode_pub",
    "encode_rdy",
    "encode_req",
    "encode_sub",
    "encode_touch",
    "identify_refusal",
    "is_valid_channel_name",
    "is_valid_topic_name",
    "mpub_body_size",
    "parse_auth_response",
    "parse_identify_response",
    "split_mpub",
]

MAGIC_V2: Final = b"  V2"

FRAME_TYPE_RESPONSE: Final = 0
FRAME_TYPE_ERROR: Final = 1
FRAME_TYPE_MESSAGE: Final = 2

OK: Final = b"OK"
HEARTBEAT: Final = b"_heartbeat_"
CLOSE_WAIT: Final = b"CLOSE_WAIT"

MAX_NAME_LENGTH: Final = 64
MESSAGE_ID_SIZE: Final = 16
MESSAGE_HEADER_SIZE: Final = 8 + 2 + MESSAGE_ID_SIZE
DEFAULT_MAX_RDY_COUNT: Final = 2500
#: Largest frame accepted by default: well above nsqd's default message (1 MiB) and body
#: (5 MiB) limits, small enough that a corrupt size cannot make the reader hoard memory.
DEFAULT_MAX_FRAME_SIZE: Final = 64 * 1024 * 1024

_HTTP_AS_SIZE: Final = int.from_bytes(b"HTTP", "big")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_FRAME_HEADER = struct.Struct(">ii")
_MESSAGE_HEADER = struct.Struct(">qH")
_BODY_TYPES = (bytes, bytearray, memoryview)
_NAME_RE = re.compile(r"^[.a-zA-Z0-9_-]+(#ephemeral)?$")


# --- names and bodies -----------------------------------------------------------------------


def is_valid_topic_name(name: str) -> bool:
    """Whether nsqd accepts ``name`` as a topic: ``[.a-zA-Z0-9_-]``, 1..64 with ``#ephemeral``."""
    return 0 < len(name) <= MAX_NAME_LENGTH and _NAME_RE.fullmatch(name) is not None


is_valid_channel_name = is_valid_topic_name
"""Channels follow the same rule as topics."""


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str):
        raise InvalidNameError(f"{kind} name must be a str, not {type(name).__name__}")
    if not is_valid_topic_name(name):
        raise InvalidNameError(
            f"invalid {kind} name {name!r}: 1 to {MAX_NAME_LENGTH} characters of "
            "[.a-zA-Z0-9_-], optionally ending in '#ephemeral' (counted in the length)"
        )
    return name


def check_topic_name(name: object) -> str:
    """Return ``name`` if it is a valid topic name, else raise :class:`InvalidNameError`."""
    return _check_name("topic", name)


def check_channel_name(name: object) -> str:
    """Return ``name`` if it is a valid channel name, else raise :class:`InvalidNameError`."""
    return _check_name("channel", name)


def check_body(body: object, max_size: int | None = None) -> bytes:
    """Return ``body`` as bytes if nsqd would accept it as one message.

    An empty body is fatal on nsqd (``E_BAD_MESSAGE``) and would drop the connection with
    every publish pipelined behind it, so it is refused here. ``max_size`` is nsqd's
    ``--max-msg-size`` when known.
    """
    if type(body) is bytes:
        data = body  # the common case, without a copy
    elif isinstance(body, _BODY_TYPES):
        data = bytes(body)
    else:
        raise InvalidBodyError(f"message body must be bytes, not {type(body).__name__}")
    if not data:
        raise InvalidBodyError("message body is empty; nsqd refuses empty messages")
    if max_size is not None and len(data) > max_size:
        raise InvalidBodyError(
            f"message body of {len(data)} bytes is above the maximum of {max_size} bytes"
        )
    return data


# --- commands -------------------------------------------------------------------------------


def _with_body(line: bytes, body: bytes) -> bytes:
    return line + _U32.pack(len(body)) + body


def encode_identify(fields: Mapping[str, Any]) -> bytes:
    """IDENTIFY with a JSON body. Numbers must be ints: nsqd rejects ``30000.0`` as fatal."""
    for key, value in fields.items():
        if isinstance(value, float):
            raise TypeError(f"IDENTIFY field {key!r} must be an int, not float {value!r}")
    body = json.dumps(dict(fields), separators=(",", ":")).encode()
    return _with_body(b"IDENTIFY\n", body)


def encode_auth(secret: str | bytes) -> bytes:
    """AUTH with the secret as body."""
    data = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not data:
        raise InvalidBodyError("AUTH secret is empty")
    return _with_body(b"AUTH\n", data)


def encode_sub(topic: str, channel: str) -> bytes:
    """SUB topic channel."""
    check_topic_name(topic)
    check_channel_name(channel)
    return b"SUB %s %s\n" % (topic.encode(), channel.encode())


def encode_pub(topic: str, body: bytes, max_size: int | None = None) -> bytes:
    """PUB one message."""
    check_topic_name(topic)
    return _with_body(b"PUB %s\n" % topic.encode(), check_body(body, max_size))


def encode_dpub(topic: str, delay_ms: int, body: bytes, max_size: int | None = None) -> bytes:
    """DPUB one message, delivered no sooner than ``delay_ms`` milliseconds from now."""
    check_topic_name(topic)
    if not isinstance(delay_ms, int) or isinstance(delay_ms, bool) or delay_ms < 0:
        raise InvalidBodyError(f"DPUB delay must be a non-negative int of ms, not {delay_ms!r}")
    return _with_body(b"DPUB %s %d\n" % (topic.encode(), delay_ms), check_body(body, max_size))


def encode_mpub(
    topic: str,
    bodies: Iterable[bytes],
    max_size: int | None = None,
    max_body_size: int | None = None,
) -> bytes:
    """MPUB several messages atomically: ``[u32 size][u32 count]([u32 len][bytes])*``.

    ``max_size`` bounds each message (nsqd's ``--max-msg-size``), ``max_body_size`` the whole
    body (``--max-body-size``).
    """
    check_topic_name(topic)
    payload = encode_mpub_body(bodies, max_size, max_body_size)
    return _with_body(b"MPUB %s\n" % topic.encode(), payload)


def _join_messages(parts: list[bytes]) -> bytes:
    pack = _U32.pack
    chunks = [pack(len(parts))]
    for part in parts:
        chunks.append(pack(len(part)))
        chunks.append(part)
    return b"".join(chunks)


def encode_checked_pub(topic: str, body: bytes) -> bytes:
    """PUB of a message that already passed :func:`check_body` (and a checked topic)."""
    return _with_body(b"PUB %s\n" % topic.encode(), body)


def encode_checked_dpub(topic: str, delay_ms: int, body: bytes) -> bytes:
    """DPUB of a checked message and topic; ``delay_ms`` an int already checked."""
    return _with_body(b"DPUB %s %d\n" % (topic.encode(), delay_ms), body)


def mpub_body_size(bodies: Sequence[bytes]) -> int:
    """The size of an MPUB body: a count word, then a size word and the bytes per message
    (what nsqd compares with its ``--max-body-size``)."""
    return 4 + 4 * len(bodies) + sum(map(len, bodies))


def split_mpub(bodies: list[bytes], max_body_size: int) -> list[list[bytes]]:
    """``bodies`` in as few MPUBs as ``max_body_size`` (nsqd's ``--max-body-size``) allows:
    usually one; each part keeps the order."""
    parts: list[list[bytes]] = []
    current: list[bytes] = []
    size = 4
    for body in bodies:
        step = 4 + len(body)
        if current and size + step > max_body_size:
            parts.append(current)
            current, size = [], 4
        current.append(body)
        size += step
    parts.append(current)
    return parts


def encode_checked_mpub(topic: str, parts: list[bytes]) -> bytes:
    """MPUB of messages that already passed :func:`check_body` (and a checked topic): for a
    producer that checks each message once, as it arrives."""
    return _with_body(b"MPUB %s\n" % topic.encode(), _join_messages(parts))


def encode_mpub_body(
    bodies: Iterable[bytes],
    max_size: int | None = None,
    max_body_size: int | None = None,
) -> bytes:
    """The body of an MPUB, ``[u32 count]([u32 len][bytes])*``, with every message checked.

    TCP MPUB sends it after a size word; nsqd's HTTP ``/mpub?binary=true`` takes it as is.
    """
    parts = [check_body(b, max_size) for b in bodies]
    if not parts:
        raise InvalidBodyError("MPUB needs at least one message")
    payload = _join_messages(parts)
    if max_body_size is not None and len(payload) > max_body_size:
        raise InvalidBodyError(
            f"MPUB body of {len(payload)} bytes is above the maximum of {max_body_size} bytes"
        )
    return payload


def encode_rdy(count: int) -> bytes:
    """RDY count: how many messages nsqd may have in flight to this connection."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ValueError(f"RDY count must be an int >= 0, not {count!r}")
    return b"RDY %d\n" % count


def _check_id(message_id: bytes) -> bytes:
    if not isinstance(message_id, bytes) or len(message_id) != MESSAGE_ID_SIZE:
        raise ValueError(f"message id must be {MESSAGE_ID_SIZE} bytes, not {message_id!r}")
    return message_id


def encode_fin(message_id: bytes) -> bytes:
    """FIN id: the message is done."""
    return b"FIN " + _check_id(message_id) + b"\n"


def encode_req(message_id: bytes, delay_ms: int = 0) -> bytes:
    """REQ id delay: requeue. The delay is mandatory on the wire (0 = at once)."""
    if not isinstance(delay_ms, int) or isinstance(delay_ms, bool) or delay_ms < 0:
        raise ValueError(f"REQ delay must be an int >= 0 (ms), not {delay_ms!r}")
    return b"REQ %s %d\n" % (_check_id(message_id), delay_ms)


def encode_touch(message_id: bytes) -> bytes:
    """TOUCH id: reset the message's timeout."""
    return b"TOUCH " + _check_id(message_id) + b"\n"


def encode_cls() -> bytes:
    """CLS: a subscribed connection asks to close; nsqd answers CLOSE_WAIT."""
    return b"CLS\n"


def encode_nop() -> bytes:
    """NOP: the answer to a heartbeat."""
    return b"NOP\n"


# --- frames ---------------------------------------------------------------------------------


class Frame(NamedTuple):
    """One frame from nsqd: its type (0 response, 1 error, 2 message) and data."""

    type: int
    data: bytes


class RawMessage(NamedTuple):
    """A decoded message frame; the connection layer turns it into a settleable Message."""

    id: bytes
    body: bytes
    attempts: int
    timestamp: int


def decode_message(data: bytes) -> RawMessage:
    """Decode the data of a message frame; a frame too short raises :class:`FrameError`."""
    if len(data) < MESSAGE_HEADER_SIZE:
        raise FrameError(
            f"message frame of {len(data)} bytes is shorter than the {MESSAGE_HEADER_SIZE}-byte "
            "header"
        )
    timestamp, attempts = _MESSAGE_HEADER.unpack_from(data)
    return RawMessage(data[10:26], data[26:], attempts, timestamp)


class FrameReader:
    """Turns bytes, fed in any chunking, into complete frames.

    A size below 4, above ``max_frame_size`` or an unknown frame type raises
    :class:`FrameError`; a stream starting with ``HTTP`` raises :class:`WrongPortError`. After
    an error the reader is broken and raises the same error on every later feed, because the
    frame boundaries are lost.
    """

    __slots__ = ("_buffer", "_error", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet make a whole frame."""
        return len(self._buffer)

    def take_buffered(self) -> bytes:
        """Remove and return the bytes held after the last whole frame.

        Used when the stream switches encoding (TLS, compression) right after a frame: what
        was read past it belongs to the new encoding.
        """
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def feed_one(self, data: bytes | bytearray | memoryview = b"") -> Frame | None:
        """Add bytes; return the first whole frame if there is one, keeping the rest.

        For handshakes, where the bytes after a frame may be in another encoding.
        """
        frames = self.feed(data, limit=1)
        return frames[0] if frames else None

    def feed(self, data: bytes | bytearray | memoryview, limit: int = -1) -> list[Frame]:
        """Add bytes; return every frame they complete (at most ``limit`` if given), in order."""
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        end = len(buffer)
        pos = 0
        try:
            while end - pos >= 4 and len(frames) != limit:
                (size,) = _I32.unpack_from(buffer, pos)
                if size < 4 or size > self.max_frame_size:
                    raise self._bad_size(size)
                if end - pos < 8:
                    break
                frame_end = pos + 4 + size
                if frame_end > end:
                    break
                (frame_type,) = _I32.unpack_from(buffer, pos + 4)
                if not 0 <= frame_type <= FRAME_TYPE_MESSAGE:
                    raise FrameError(f"unknown frame type {frame_type} (frame size {size})")
                frames.append(Frame(frame_type, bytes(buffer[pos + 8 : frame_end])))
                pos = frame_end
        except FrameError as exc:
            self._error = exc
            buffer.clear()
            raise
        if pos:
            del buffer[:pos]
        return frames

    def _bad_size(self, size: int) -> FrameError:
        if size == _HTTP_AS_SIZE:
            return WrongPortError(
                "the peer answered with HTTP: this looks like nsqd's HTTP port (4151 by "
                "default); give its TCP port (4150 by default)"
            )
        if size < 4:
            return FrameError(f"frame size {size} is below the minimum of 4")
        return FrameError(f"frame size {size} is above the maximum of {self.max_frame_size}")


# --- negotiation replies --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdentifyResponse:
    """What nsqd granted in reply to IDENTIFY (the defaults are for a plain ``OK`` reply)."""

    max_rdy_count: int = DEFAULT_MAX_RDY_COUNT
    version: str = ""
    max_msg_timeout: int = 0
    msg_timeout: int = 0
    tls_v1: bool = False
    deflate: bool = False
    deflate_level: int = 0
    max_deflate_level: int = 0
    snappy: bool = False
    sample_rate: int = 0
    auth_required: bool = False
    output_buffer_size: int = 0
    output_buffer_timeout: int = 0
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


_IDENTIFY_REFUSAL = re.compile(r"IDENTIFY ([a-z ]+?) \((-?\d+)\) is invalid")


def identify_refusal(text: str) -> tuple[str, int] | None:
    """The option and value nsqd refused in an IDENTIFY error text, like
    ``E_BAD_BODY IDENTIFY heartbeat interval (120000) is invalid`` ->
    ``("heartbeat_interval", 120000)``; None for any other error."""
    match = _IDENTIFY_REFUSAL.search(text)
    if match is None:
        return None
    return match.group(1).replace(" ", "_"), int(match.group(2))


def parse_identify_response(data: bytes) -> IdentifyResponse:
    """Parse nsqd's IDENTIFY reply: JSON with feature negotiation, or ``OK`` without."""
    if data == OK:
        return IdentifyResponse()
    try:
        values = json.loads(data)
    except ValueError as exc:
        raise FrameError(f"IDENTIFY reply is neither OK nor JSON: {data[:80]!r}") from exc
    if not isinstance(values, dict):
        raise FrameError(f"IDENTIFY reply is not a JSON object: {data[:80]!r}")
    known = {name: values[name] for name in IdentifyResponse.__dataclass_fields__ if name in values}
    known.pop("raw", None)
    return IdentifyResponse(**known, raw=values)


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """nsqd's reply to AUTH: who the secret belongs to and how many permissions it has."""

    identity: str = ""
    identity_url: str = ""
    permission_count: int = 0


def parse_auth_response(data: bytes) -> AuthResponse:
    """Parse nsqd's JSON reply to AUTH."""
    try:
        values = json.loads(data)
    except ValueError as exc:
        raise FrameError(f"AUTH reply is not JSON: {data[:80]!r}") from exc
    if not isinstance(values, dict):
        raise FrameError(f"AUTH reply is not a JSON object: {data[:80]!r}")
    return AuthResponse(
        identity=str(values.get("identity", "")),
        identity_url=str(values.get("identity_url", "")),
        permission_count=int(values.get("permission_count", 0)),
    )
