"""pynsq's ``Message``: ``finish``/``requeue``/``touch``, async mode, events, on rxnsq's."""

from __future__ import annotations

from typing import Any

from .. import message as core
from .event import FINISH, REQUEUE, TOUCH, EventedMixin

__all__ = ["Message"]


class Message(core.Message[bytes], EventedMixin):
    """A pynsq-shaped message.

    ``Message(id, body, timestamp, attempts)`` builds one by hand, as a handler's unit test
    does: ``finish()``/``requeue()``/``touch()`` work, are recorded (``message.commands``) and
    trigger their events; nothing is sent. Messages a Reader delivers share the delivery of
    the rxnsq message underneath (:meth:`wrap`).

    Differences from pynsq: responding twice is a no-op returning False (pynsq asserted);
    ``requeue(delay=...)`` honours fractions of a second (pynsq dropped them); ``attempts``
    is unsigned.
    """

    def __init__(self, id: bytes, body: bytes, timestamp: int, attempts: int) -> None:
        settler = core.DetachedSettler()
        built = settler.message(body, message_id=id, attempts=attempts, timestamp=timestamp)
        core.Message.__init__(self, body, timestamp, body, built.delivery)
        EventedMixin.__init__(self)
        self._settler: core.DetachedSettler | None = settler

    @classmethod
    def wrap(cls, message: core.Message[Any]) -> Message:
        """The pynsq view of a delivered message (same delivery: settling either settles both)."""
        if isinstance(message, Message):
            return message
        wrapped = cls.__new__(cls)
        core.Message.__init__(
            wrapped, message.body, message.timestamp, message.body, message.delivery
        )
        EventedMixin.__init__(wrapped)
        wrapped._settler = None
        return wrapped

    @property
    def commands(self) -> list[core.Command]:
        """For a message built by hand: the FIN/REQ/TOUCH it would have sent."""
        return list(self._settler.commands) if self._settler is not None else []

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
