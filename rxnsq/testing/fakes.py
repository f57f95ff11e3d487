"""Stand-ins for unit tests without nsqd: a settler that records instead of sending, and a
consumer whose starvation and closing a test controls.

Operators, handlers and hooks can be tested in plain functions (and in RxPY's virtual time)
with messages from :meth:`RecordingSettler.message`; what they settled is in ``commands``.
For anything that crosses the wire, test against a real nsqd (:class:`NsqdProcess`).
"""

from __future__ import annotations

import itertools
import time
from typing import Any, NamedTuple

import reactivex

from ..message import ConsumerContext, Delivery, Message
from ..streams import Broadcast

__all__ = ["Command", "FakeConsumer", "RecordingSettler"]

_ids = itertools.count(1)


class Command(NamedTuple):
    """What a message's settlement would have sent: ``FIN``, ``REQ`` or ``TOUCH``, the id,
    and for REQ the delay asked for (None: the reader's default) and whether it backs off."""

    name: str
    id: bytes
    delay: float | None = None
    backoff: bool | None = None


class FakeConsumer:
    """A :class:`~rxnsq.message.ConsumerContext` under a test's control."""

    def __init__(self, max_in_flight: int = 100) -> None:
        self.max_in_flight = max_in_flight
        self.starved = False
        self.errors: list[tuple[BaseException, str, Message[Any] | None]] = []
        self._closing = Broadcast[None]("fake consumer closing", replay=True)

    def is_starved(self) -> bool:
        return self.starved

    @property
    def is_closing(self) -> bool:
        return self._closing.ended

    @property
    def closing(self) -> reactivex.Observable[None]:
        return self._closing.observable

    def close(self) -> None:
        """Begin closing: ``closing`` emits (late subscribers get it too)."""
        self._closing.emit(None)
        self._closing.complete()

    def report_error(
        self, error: BaseException, stage: str, message: Message[Any] | None = None
    ) -> None:
        self.errors.append((error, stage, message))


class RecordingSettler:
    """A :class:`~rxnsq.message.Settler` that records each settlement in ``commands``."""

    def __init__(
        self,
        address: str = "127.0.0.1:4150",
        consumer: ConsumerContext | None = None,
        msg_timeout: float = 60.0,
    ) -> None:
        self.address = address
        self._consumer = consumer
        self._msg_timeout = msg_timeout
        self.commands: list[Command] = []

    @property
    def consumer(self) -> ConsumerContext | None:
        return self._consumer

    @property
    def msg_timeout(self) -> float:
        return self._msg_timeout

    def message(
        self,
        body: bytes,
        *,
        message_id: bytes | None = None,
        attempts: int = 1,
        timestamp: int | None = None,
    ) -> Message[bytes]:
        """A delivered message settled through this settler."""
        if message_id is None:
            message_id = b"%016d" % next(_ids)
        delivery = Delivery(self, message_id, attempts, len(body), 0.0)
        stamp = time.time_ns() if timestamp is None else timestamp
        return Message(body, stamp, body, delivery)

    def settle_fin(self, message: Message[Any]) -> None:
        self.commands.append(Command("FIN", message.id))

    def settle_req(self, message: Message[Any], delay: float | None, backoff: bool) -> None:
        self.commands.append(Command("REQ", message.id, delay, backoff))

    def settle_touch(self, message: Message[Any]) -> None:
        self.commands.append(Command("TOUCH", message.id))

    def names(self) -> list[str]:
        """The command names in order, e.g. ``["TOUCH", "FIN", "FIN"]``."""
        return [command.name for command in self.commands]
