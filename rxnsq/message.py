"""A delivered message and its settlement: FIN, REQ or TOUCH, once, on its own connection.

A :class:`Message` carries a value of any type (the body at first) plus a handle to its
delivery. ``with_value(x)`` makes a new Message with another value and the *same* delivery,
so a message can be decoded and transformed in a pipeline and still be settled at the end.
Settling twice is a counted no-op, never a second command to nsqd.

``fin()``, ``req()`` and ``touch()`` may be called from any thread: off the connection's
loop they are handed to it at once (``call_soon_threadsafe``).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, Protocol, TypeVar

from .errors import ConfigError

if TYPE_CHECKING:
    import reactivex

    from .protocol import RawMessage

__all__ = [
    "Command",
    "ConsumerContext",
    "Delivery",
    "DetachedSettler",
    "Message",
    "Outcome",
    "Settler",
    "check_delay",
]

T = TypeVar("T")
U = TypeVar("U")

#: How a delivery ended: finished, requeued, or taken back by nsqd after its timeout.
Outcome = Literal["fin", "req", "abandoned"]


class ConsumerContext(Protocol):
    """What an operator may ask of the consumer (the Reader) that delivered a message."""

    #: What it reads: with the message id, what names one message for good (a dedupe key).
    topic: str
    channel: str

    @property
    def max_in_flight(self) -> int: ...

    def is_starved(self) -> bool:
        """nsqd will send no more until some held messages are settled."""
        ...

    @property
    def is_closing(self) -> bool: ...

    @property
    def closing(self) -> reactivex.Observable[None]:
        """Emits once (late subscribers too) when the consumer begins to close."""
        ...

    def report_error(
        self, error: BaseException, stage: str, message: Message[Any] | None = None
    ) -> None:
        """Report an exception that user code raised and a stage caught."""
        ...


class Settler(Protocol):
    """What a delivery settles through: the connection that delivered it."""

    address: str

    @property
    def consumer(self) -> ConsumerContext | None: ...

    @property
    def msg_timeout(self) -> float:
        """Seconds nsqd waits for a result before it takes a message back."""
        ...

    @property
    def max_msg_timeout(self) -> float:
        """The most time TOUCH can win a message in total (nsqd's --max-msg-timeout)."""
        ...

    def settle_fin(self, message: Message[Any]) -> None: ...

    def settle_req(self, message: Message[Any], delay: float | None, backoff: bool) -> None: ...

    def settle_touch(self, message: Message[Any]) -> None: ...


def check_delay(delay: object, option: str = "delay") -> float:
    """A delay in seconds: a finite number >= 0, else :class:`ConfigError` (NaN, inf...)."""
    number = isinstance(delay, int | float) and not isinstance(delay, bool)
    if number and delay >= 0 and math.isfinite(delay):  # type: ignore[operator, arg-type]
        return delay  # type: ignore[return-value]
    raise ConfigError(option, delay, "a finite number of seconds >= 0")


class Delivery:
    """One delivery of one message on one connection; shared by every ``with_value`` copy.

    Kept apart from the id because nsqd may deliver the same id again on the same connection
    after a timeout: each delivery is settled on its own. ``deadline`` is the loop time at
    which nsqd takes the message back unless it is settled or touched first.
    """

    __slots__ = ("attempts", "deadline", "id", "is_async", "outcome", "received", "settler", "size")

    def __init__(
        self, settler: Settler, message_id: bytes, attempts: int, size: int, received: float
    ) -> None:
        self.settler = settler
        self.id = message_id
        self.attempts = attempts
        self.size = size
        self.received = received
        self.deadline = received + settler.msg_timeout
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
    def from_raw(cls, raw: RawMessage, settler: Settler, received: float) -> Message[bytes]:
        """A Message whose value is its body, settled through ``settler``."""
        delivery = Delivery(settler, raw.id, raw.attempts, len(raw.body), received)
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
    def consumer(self) -> ConsumerContext | None:
        """The Reader that delivered the message, if any (its limits and closing state)."""
        return self._delivery.settler.consumer

    @property
    def address(self) -> str:
        """The address of the nsqd that delivered the message."""
        return self._delivery.settler.address

    @property
    def outcome(self) -> Outcome | None:
        """``"fin"``, ``"req"``, ``"abandoned"`` (nsqd took it back after its timeout), or
        None while the message is in flight."""
        return self._delivery.outcome

    def has_responded(self) -> bool:
        """Whether the message was already settled (or abandoned)."""
        return self._delivery.outcome is not None

    def with_value(self, value: U) -> Message[U]:
        """The same delivery carrying another value (decoded, transformed...)."""
        return Message(self.body, self.timestamp, value, self._delivery)

    def fin(self) -> bool:
        """Finish the message. Returns False (and sends nothing) if already settled."""
        delivery = self._delivery
        if delivery.outcome is not None:
            return False
        delivery.outcome = "fin"
        delivery.settler.settle_fin(self)
        return True

    def req(self, delay: float | None = None, backoff: bool = True) -> bool:
        """Requeue after ``delay`` seconds (None: the reader's default for the attempt count).

        ``backoff`` tells the reader whether this failure should slow consumption. Returns
        False (and sends nothing) if already settled. A delay that is not a finite number
        >= 0 raises :class:`~rxnsq.errors.ConfigError` before anything is settled.
        """
        if delay is not None:
            delay = check_delay(delay)
        delivery = self._delivery
        if delivery.outcome is not None:
            return False
        delivery.outcome = "req"
        delivery.settler.settle_req(self, delay, backoff)
        return True

    def touch(self) -> bool:
        """Ask nsqd for more time to process. Returns False once the message is settled."""
        delivery = self._delivery
        if delivery.outcome is not None:
            return False
        delivery.settler.settle_touch(self)
        return True


class Command(NamedTuple):
    """What a settlement would have sent: ``FIN``, ``REQ`` or ``TOUCH``, the message id,
    and for REQ the delay asked for (None: the reader's default) and whether it backs off."""

    name: str
    id: bytes
    delay: float | None = None
    backoff: bool | None = None


class DetachedSettler:
    """Settles messages that no connection delivered (built by hand, for a handler's unit
    test): each FIN/REQ/TOUCH is recorded in ``commands``; nothing is sent anywhere."""

    def __init__(
        self,
        address: str = "detached",
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

    @property
    def max_msg_timeout(self) -> float:
        return 900.0  # nsqd's default --max-msg-timeout

    def message(
        self,
        body: bytes,
        *,
        message_id: bytes,
        attempts: int = 1,
        timestamp: int | None = None,
    ) -> Message[bytes]:
        """A message settled through this settler."""
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
        """The command names in order, e.g. ``["TOUCH", "FIN"]``."""
        return [command.name for command in self.commands]
