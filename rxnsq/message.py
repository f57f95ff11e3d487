"""A delivered message and its settlement: FIN, REQ or TOUCH, once, on its own connection.

A :class:`Message` carries a value of any type (the body at first) plus a handle to its
delivery. ``with_value(x)`` makes a new Message with another value and the *same* delivery,
so a message can be decoded and transformed in a pipeline and still be settled at the end.
Settling twice is a counted no-op, never a second command to nsqd.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, Literal, Protocol, TypeVar

if TYPE_CHECKING:
    from .protocol import RawMessage

__all__ = ["Delivery", "Message", "Outcome", "Settler"]

T = TypeVar("T")
U = TypeVar("U")

Outcome = Literal["fin", "req"]


class Settler(Protocol):
    """What a delivery settles through: the connection that delivered it."""

    address: str

    def settle_fin(self, delivery: Delivery) -> None: ...

    def settle_req(self, delivery: Delivery, delay: float | None, backoff: bool) -> None: ...

    def settle_touch(self, delivery: Delivery) -> None: ...


class Delivery:
    """One delivery of one message on one connection; shared by every ``with_value`` copy.

    Kept apart from the id because nsqd may deliver the same id again on the same connection
    after a timeout: each delivery is settled on its own.
    """

    __slots__ = ("attempts", "id", "is_async", "outcome", "settler", "size")

    def __init__(self, settler: Settler, message_id: bytes, attempts: int, size: int) -> None:
        self.settler = settler
        self.id = message_id
        self.attempts = attempts
        self.size = size
        self.outcome: Outcome | None = None
        self.is_async = False


class Message(Generic[T]):
    """A message from nsqd: ``id``, ``body``, ``attempts``, ``timestamp`` (ns) and ``value``.

    ``fin()``, ``req()`` and ``touch()`` act once; later calls return False and send nothing.
    """

    __slots__ = ("_delivery", "body", "timestamp", "value")

    def __init__(self, body: bytes, timestamp: int, value: T, delivery: Delivery) -> None:
        self.body = body
        self.timestamp = timestamp
        self.value = value
        self._delivery = delivery

    @classmethod
    def from_raw(cls, raw: RawMessage, settler: Settler) -> Message[bytes]:
        """A Message whose value is its body, settled through ``settler``."""
        delivery = Delivery(settler, raw.id, raw.attempts, len(raw.body))
        return Message(raw.body, raw.timestamp, raw.body, delivery)

    def __repr__(self) -> str:
        state = self._delivery.outcome or "in flight"
        return (
            f"<Message {self.id.decode(errors='replace')} attempts={self.attempts} "
            f"{len(self.body)} bytes {state}>"
        )

    @property
    def id(self) -> bytes:
        """The 16-byte message id, echoed verbatim in FIN/REQ/TOUCH."""
        return self._delivery.id

    @property
    def attempts(self) -> int:
        """How many times nsqd has delivered this message, this delivery included."""
        return self._delivery.attempts

    @property
    def delivery(self) -> Delivery:
        """The settlement handle shared with every ``with_value`` copy."""
        return self._delivery

    @property
    def connection(self) -> Settler:
        """The connection that delivered the message and that settles it."""
        return self._delivery.settler

    @property
    def outcome(self) -> Outcome | None:
        """``"fin"``, ``"req"``, or None while the message is in flight."""
        return self._delivery.outcome

    def has_responded(self) -> bool:
        """Whether the message was already finished or requeued."""
        return self._delivery.outcome is not None

    def with_value(self, value: U) -> Message[U]:
        """The same delivery carrying another value (decoded, transformed...)."""
        return Message(self.body, self.timestamp, value, self._delivery)

    def enable_async(self) -> None:
        """Say the message will be settled later, outside the handler (pynsq's async mode)."""
        self._delivery.is_async = True

    def is_async(self) -> bool:
        """Whether :meth:`enable_async` was called."""
        return self._delivery.is_async

    def fin(self) -> bool:
        """Finish the message. Returns False (and sends nothing) if already settled."""
        delivery = self._delivery
        if delivery.outcome is not None:
            return False
        delivery.outcome = "fin"
        delivery.settler.settle_fin(delivery)
        return True

    def req(self, delay: float | None = None, backoff: bool = True) -> bool:
        """Requeue after ``delay`` seconds (None: the reader's default for the attempt count).

        ``backoff`` tells the reader whether this failure should slow consumption. Returns
        False (and sends nothing) if already settled.
        """
        delivery = self._delivery
        if delivery.outcome is not None:
            return False
        if delay is not None and delay < 0:
            raise ValueError(f"requeue delay must be >= 0 seconds, not {delay!r}")
        delivery.outcome = "req"
        delivery.settler.settle_req(delivery, delay, backoff)
        return True

    def touch(self) -> bool:
        """Ask nsqd for more time to process. Returns False once the message is settled."""
        delivery = self._delivery
        if delivery.outcome is not None:
            return False
        delivery.settler.settle_touch(delivery)
        return True

    # pynsq's names
    finish = fin
    requeue = req
