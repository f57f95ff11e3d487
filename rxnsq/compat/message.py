"""pynsq's ``Message``: ``finish``/``requeue``/``touch``, async mode, events, on rxnsq's."""

from __future__ import annotations

from typing import Any

from .. import message as core
from .event import FINISH, REQUEUE, TOUCH, EventedMixin

__all__ = ["Message"]


class Message(core.Message[bytes], EventedMixin):
    """A pynsq-shaped message sharing the delivery of an rxnsq message.

    Differences from pynsq: responding twice is a no-op returning False (pynsq asserted);
    ``requeue(delay=...)`` honours fractions of a second (pynsq dropped them); ``attempts``
    is unsigned.
    """

    def __init__(self, message: core.Message[Any]) -> None:
        core.Message.__init__(self, message.body, message.timestamp, message.body, message.delivery)
        EventedMixin.__init__(self)

    def enable_async(self) -> None:
        """Say the message will be settled later, outside the handler."""
        self.delivery.is_async = True

    def is_async(self) -> bool:
        """Whether :meth:`enable_async` was called."""
        return self.delivery.is_async

    def finish(self) -> bool:
        """FIN (and the ``finish`` event)."""
        if self.has_responded():
            return False
        self.trigger(FINISH, message=self)
        return self.fin()

    def requeue(
        self, backoff: bool = True, delay: float = -1, time_ms: int | None = None, **_: Any
    ) -> bool:
        """REQ after ``delay`` seconds or ``time_ms`` ms (-1: the reader's default for the
        attempt count), backing off unless ``backoff=False``."""
        if self.has_responded():
            return False
        if time_ms is not None:
            delay = time_ms / 1000 if time_ms >= 0 else -1
        self.trigger(REQUEUE, message=self, timeout=delay, backoff=backoff)
        return self.req(None if delay is None or delay < 0 else delay, backoff=backoff)

    def touch(self) -> bool:
        """TOUCH (and the ``touch`` event)."""
        if self.has_responded():
            return False
        self.trigger(TOUCH, message=self)
        return core.Message.touch(self)
