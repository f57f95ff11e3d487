"""The Writer's item model, shared by every way in: what a body is, what a stream item is.

A **body** is ``bytes``, ``bytearray``, ``memoryview`` or ``str`` (sent as UTF-8), non-empty and
at most nsqd's ``--max-msg-size``; anything else is an :class:`~rxnsq.errors.InvalidBodyError`
naming its type and the topic. Nothing is converted with ``bytes()``: ``bytes(5)`` is five NUL
bytes, a list of ints would become their bytes.

A **stream item** (for ``writer.sink()`` and ``writer.publish()``) is a body (one PUB; a sink
batches them into MPUB), a :class:`Deferred` (one DPUB), or a ``list``/``tuple`` of bodies (one
MPUB, all or nothing; split into several MPUBs only when it is above nsqd's ``--max-body-size``,
and then the result says so in ``parts``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, Union

from . import protocol
from .errors import BadBodyError, BadMessageError, InvalidBodyError, NSQError
from .message import Message

__all__ = ["Body", "Deferred", "Item", "PublishAck", "PublishResult"]

logger = logging.getLogger("rxnsq.writer")

T = TypeVar("T")

#: What a message body may be.
Body = Union[bytes, bytearray, memoryview, str]  # noqa: UP007 (a runtime alias)

_BINARY = (bytes, bytearray, memoryview)


@dataclass(frozen=True, slots=True)
class Deferred:
    """A stream item that goes out as DPUB: nsqd delivers ``body`` ``delay`` seconds later.

    ``delay`` is a finite number of seconds, from 0 to the writer's ``max_req_timeout``
    (nsqd's ``--max-req-timeout``, 1 hour by default); anything else fails the item with
    :class:`~rxnsq.errors.InvalidBodyError` when the writer receives it.
    """

    body: Body
    delay: float


#: A stream item: a body, a Deferred, or a list/tuple of bodies (one MPUB).
Item = Union[Body, Deferred, list[Body], tuple[Body, ...]]  # noqa: UP007


@dataclass(frozen=True, slots=True)
class PublishAck:
    """One publish command's outcome: ``count`` messages to ``topic``, confirmed or not.

    ``address`` is the nsqd that answered (empty when the command was never sent) and
    ``latency`` the seconds from the call to the answer.
    """

    topic: str
    count: int
    ok: bool
    error: Exception | None = None
    address: str = ""
    latency: float = 0.0


@dataclass(frozen=True, slots=True)
class PublishResult(Generic[T]):
    """What ``writer.publish()`` emits for each source item (and a sink's ``failures`` for
    each failed one): the item, whether nsqd confirmed all of it, and the error if not.

    ``count`` is how many messages the item became; ``parts`` how many commands carried them
    (more than 1 only for a list above nsqd's body limit: then it was not atomic).
    """

    item: T
    ok: bool
    error: Exception | None = None
    count: int = 1
    parts: int = 1

    @property
    def invalid(self) -> bool:
        """The item itself cannot be published (a bad body, a body function that raised, a
        message nsqd refuses): publishing it again cannot succeed."""
        return isinstance(self.error, InvalidBodyError | BadMessageError | BadBodyError)

    def settle(self) -> None:
        """Settle a consumed message by how its republish went (``rxnsq.ops.settle()`` calls
        this): FIN once confirmed; FIN with a logged report when the item is :attr:`invalid`
        (a retry would fail the same way); otherwise REQ with one backoff step, so a
        destination outage slows consumption instead of spinning, and nothing is dropped."""
        item = self.item
        if not isinstance(item, Message):
            return
        if self.ok:
            item.fin()
        elif self.invalid:
            if item.fin():
                logger.warning(
                    "message %s from %s was finished without being republished: %s",
                    item.id.decode(errors="replace"),
                    item.connection.address,
                    self.error,
                )
        else:
            item.req(backoff=True)


def again(error: NSQError, message: str) -> NSQError:
    """A new error of ``error``'s type with ``message``, caused by ``error``: each call gets
    its own exception (a shared one would pile up tracebacks), of the type to catch."""
    cls = type(error)
    copy = cls.__new__(cls)
    copy.__dict__.update(error.__dict__)
    copy.args = (message,)
    copy.__cause__ = error
    return copy


def body_bytes(value: object, topic: str, max_size: int) -> bytes:
    """``value`` as the bytes of one message for ``topic``, or InvalidBodyError."""
    if type(value) is bytes:
        data = value
    elif isinstance(value, str):
        try:
            data = value.encode()
        except UnicodeEncodeError as exc:
            raise InvalidBodyError(
                f"a message body for topic {topic!r} is a str that cannot be UTF-8 encoded: {exc}"
            ) from exc
    elif isinstance(value, _BINARY):
        data = bytes(value)
    else:
        raise InvalidBodyError(
            f"a message body for topic {topic!r} must be bytes, bytearray, memoryview or str, "
            f"not {type(value).__name__}"
        )
    if not data:
        raise InvalidBodyError(
            f"empty message body for topic {topic!r}: nsqd refuses empty messages"
        )
    if len(data) > max_size:
        raise InvalidBodyError(
            f"a message body of {len(data)} bytes for topic {topic!r} is above the maximum "
            f"of {max_size} bytes (max_msg_size, nsqd's --max-msg-size)"
        )
    return data


def bodies_bytes(values: object, topic: str, max_size: int) -> list[bytes]:
    """A sequence of bodies for one MPUB, each checked; a single body is an error."""
    if isinstance(values, str | bytes | bytearray | memoryview):
        raise InvalidBodyError(
            f"MPUB to topic {topic!r} takes a list of bodies, not a single "
            f"{type(values).__name__} (use pub for one message)"
        )
    if isinstance(values, list | tuple):
        items: list[Any] | tuple[Any, ...] = values
    elif isinstance(values, Iterable) and not isinstance(values, Mapping):
        items = list(values)
    else:
        raise InvalidBodyError(
            f"MPUB to topic {topic!r} takes a list of bodies, not {type(values).__name__}"
        )
    if not items:
        raise InvalidBodyError(f"MPUB to topic {topic!r} needs at least one message")
    if set(map(type, items)) == {bytes}:  # the common case, checked at C speed
        sizes = list(map(len, items))
        if min(sizes) > 0 and max(sizes) <= max_size:
            return list(items)
    checked = []
    for index, value in enumerate(items):
        try:
            checked.append(body_bytes(value, topic, max_size))
        except InvalidBodyError as exc:
            raise InvalidBodyError(f"MPUB message {index}: {exc}") from exc.__cause__
    return checked


def delay_ms(delay: object, topic: str, max_delay: float) -> int:
    """A DPUB delay in seconds as nsqd's int milliseconds, or InvalidBodyError."""
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        raise InvalidBodyError(
            f"DPUB delay for topic {topic!r} must be a number of seconds, not "
            f"{type(delay).__name__}"
        )
    if not math.isfinite(delay) or not 0 <= delay <= max_delay:
        raise InvalidBodyError(
            f"DPUB delay for topic {topic!r} must be from 0 to {max_delay:g} seconds "
            f"(max_req_timeout, nsqd's --max-req-timeout), not {delay!r}"
        )
    return round(delay * 1000)


def commands_for(
    item: object, topic: str, max_msg_size: int, max_body_size: int, max_delay: float
) -> list[tuple[bytes, int]]:
    """The commands (encoded, with their message count) that publish one stream item."""
    if isinstance(item, Deferred):
        body = body_bytes(item.body, topic, max_msg_size)
        return [
            (protocol.encode_checked_dpub(topic, delay_ms(item.delay, topic, max_delay), body), 1)
        ]
    if isinstance(item, list | tuple):
        bodies = bodies_bytes(item, topic, max_msg_size)
        return [
            (protocol.encode_checked_mpub(topic, part), len(part))
            for part in protocol.split_mpub(bodies, max_body_size)
        ]
    return [(protocol.encode_checked_pub(topic, body_bytes(item, topic, max_msg_size)), 1)]


def fail_result(item: Any, error: NSQError, count: int = 1, parts: int = 1) -> PublishResult[Any]:
    """A failed result (a small helper so every failure looks the same)."""
    return PublishResult(item, False, error, count, parts)
