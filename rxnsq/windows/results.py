"""What the windowed operators emit: a :class:`WindowResult` per closed window, and a
:class:`Late` per event that came after its window was closed.

A result carries the obligation to settle its window's inputs, like a :class:`~rxnsq.ops.Batch`:
call ``settle()`` once it has been processed (``rxnsq.ops.settle()`` does), ``requeue()`` if
processing failed. Held messages (small windows) are then FINed or REQed; in the store mode the
window is retired from the store, or handed out again later.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from ..message import Message
from .assign import Window

__all__ = ["Late", "WindowResult"]

K = TypeVar("K", bound=Hashable)
A = TypeVar("A")
V = TypeVar("V")


class WindowResult(Generic[K, A]):
    """``(key, window, value)`` of one closed window; unpacks as that triple.

    ``messages`` are the held messages (small windows; empty in the store mode, where inputs
    were finished when they were stored). ``count`` is how many events the window holds, and
    ``id`` a stable text id of the (aggregation, key, window) for idempotent sinks: a result is
    emitted again only if a consumer died between processing it and settling it.
    """

    __slots__ = ("_on_requeue", "_on_settle", "count", "id", "key", "messages", "outcome", "value",
                 "window")  # fmt: skip

    def __init__(
        self,
        key: K,
        window: Window,
        value: A,
        count: int,
        result_id: str,
        on_settle: Callable[[WindowResult[K, A]], None],
        on_requeue: Callable[[WindowResult[K, A], float | None], None],
        messages: Sequence[Message[Any]] = (),
    ) -> None:
        self.key = key
        self.window = window
        self.value = value
        self.count = count
        self.id = result_id
        self.messages = messages
        self.outcome: str | None = None
        self._on_settle = on_settle
        self._on_requeue = on_requeue

    def __iter__(self) -> Iterator[Any]:
        return iter((self.key, self.window, self.value))

    def __repr__(self) -> str:
        return f"<WindowResult {self.key!r} {self.window!r} = {self.value!r}>"

    def settle(self) -> bool:
        """The result was processed: finish its inputs (or retire the window from the store).
        Returns False if it was already settled or requeued."""
        if self.outcome is not None:
            return False
        self.outcome = "settled"
        self._on_settle(self)
        return True

    def requeue(self, delay: float | None = None) -> bool:
        """Processing failed: requeue the inputs with one backoff step (or let the store hand
        the window out again after ``delay`` seconds). False if already settled."""
        if self.outcome is not None:
            return False
        self.outcome = "requeued"
        self._on_requeue(self, delay)
        return True


class Late(Generic[V]):
    """An event that arrived after one of its windows was final, so it joined none of them:
    the ``message``, its ``key``, its event ``time``, the ``windows`` it belongs to (the final
    ones are ``missed``) and the key's ``watermark`` when it came. Settle it as you decide:
    ``settle()`` (or ``message.fin()``) finishes it; ``message.req()`` brings it back later
    (still late)."""

    __slots__ = ("key", "message", "missed", "time", "watermark", "windows")

    def __init__(
        self,
        message: Message[V],
        key: Hashable,
        time: float,
        windows: Sequence[Window],
        missed: Sequence[Window],
        watermark: float,
    ) -> None:
        self.message = message
        self.key = key
        self.time = time
        self.windows = tuple(windows)
        self.missed = tuple(missed)
        self.watermark = watermark

    def __repr__(self) -> str:
        return f"<Late {self.key!r} at {self.time:g}, watermark {self.watermark:g}>"

    def settle(self) -> bool:
        """Finish the late message (``rxnsq.ops.settle()`` calls this)."""
        return self.message.fin()
