"""Stand-ins for unit tests without nsqd: a settler that records instead of sending, and a
consumer whose starvation and closing a test controls.

Operators, handlers and hooks can be tested in plain functions (and in RxPY's virtual time)
with messages from :meth:`RecordingSettler.message`; what they settled is in ``commands``.
For anything that crosses the wire, test against a real nsqd (:class:`NsqdProcess`).
"""

from __future__ import annotations

import itertools
from typing import Any

import reactivex

from ..message import Command, ConsumerContext, DetachedSettler, Message
from ..streams import Broadcast

__all__ = ["Command", "FakeConsumer", "RecordingSettler"]

_ids = itertools.count(1)


class FakeConsumer:
    """A :class:`~rxnsq.message.ConsumerContext` under a test's control."""

    def __init__(
        self, max_in_flight: int = 100, topic: str = "topic", channel: str = "channel"
    ) -> None:
        self.max_in_flight = max_in_flight
        self.topic = topic
        self.channel = channel
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


class RecordingSettler(DetachedSettler):
    """A :class:`~rxnsq.message.Settler` that records each settlement in ``commands``, and
    makes messages with fresh ids (``message(body)``)."""

    def __init__(
        self,
        address: str = "127.0.0.1:4150",
        consumer: ConsumerContext | None = None,
        msg_timeout: float = 60.0,
    ) -> None:
        super().__init__(address, consumer, msg_timeout)

    def message(
        self,
        body: bytes,
        *,
        message_id: bytes | None = None,
        attempts: int = 1,
        timestamp: int | None = None,
    ) -> Message[bytes]:
        """A delivered message settled through this settler (a fresh id unless given)."""
        if message_id is None:
            message_id = b"%016d" % next(_ids)
        return super().message(body, message_id=message_id, attempts=attempts, timestamp=timestamp)
