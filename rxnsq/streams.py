"""Hot streams whose emitting side stays private, and whose subscribers cannot hurt the emitter.

A :class:`Broadcast` is what connections and readers use in place of a public ``Subject``:
``broadcast.observable`` is the read-only side users subscribe to; ``emit`` sends a value to
every current subscriber. What a subscriber raises is caught per subscriber (the others still
get the value) and handed to ``on_raise``, so a user's bug never unwinds into a read loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

import reactivex
from reactivex import abc
from reactivex.disposable import Disposable

__all__ = ["Broadcast", "log_subscriber_error"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def log_subscriber_error(name: str) -> Callable[[Exception, object], None]:
    """An ``on_raise`` that logs what a subscriber of the stream ``name`` raised."""

    def on_raise(error: Exception, value: object) -> None:
        logger.error("a subscriber of %s raised on %r", name, value, exc_info=error)

    return on_raise


class Broadcast(Generic[T]):
    """A hot stream. ``replay`` keeps the last value for late subscribers (a state, a signal).

    After ``complete()`` or ``fail()`` a new subscriber gets the end at once (after the last
    value when ``replay`` is set).
    """

    __slots__ = (
        "_end",
        "_has_last",
        "_last",
        "_name",
        "_observers",
        "_on_raise",
        "_replay",
        "observable",
    )

    def __init__(
        self,
        name: str,
        *,
        on_raise: Callable[[Exception, T], None] | None = None,
        replay: bool = False,
    ) -> None:
        self._name = name
        self._observers: tuple[abc.ObserverBase[T], ...] = ()
        self._on_raise = on_raise or log_subscriber_error(name)
        self._end: tuple[Exception | None] | None = None
        self._replay = replay
        self._last: T | None = None
        self._has_last = False
        self.observable: reactivex.Observable[T] = reactivex.create(self._subscribe)

    def __repr__(self) -> str:
        return f"<Broadcast {self._name} observers={len(self._observers)}>"

    @property
    def has_observers(self) -> bool:
        return bool(self._observers)

    @property
    def ended(self) -> bool:
        return self._end is not None

    def _subscribe(
        self, observer: abc.ObserverBase[T], scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        if self._has_last:
            observer.on_next(self._last)  # type: ignore[arg-type]
        if self._end is not None:
            (error,) = self._end
            if error is None:
                observer.on_completed()
            else:
                observer.on_error(error)
            return Disposable()
        self._observers = (*self._observers, observer)

        def dispose() -> None:
            self._observers = tuple(o for o in self._observers if o is not observer)

        return Disposable(dispose)

    def emit(self, value: T) -> None:
        """Send ``value`` to every subscriber; a raising one is reported, the rest go on."""
        if self._replay:
            self._last, self._has_last = value, True
        for observer in self._observers:
            try:
                observer.on_next(value)
            except Exception as exc:
                self._on_raise(exc, value)

    def complete(self) -> None:
        self._finish(None)

    def fail(self, error: Exception) -> None:
        self._finish(error)

    def _finish(self, error: Exception | None) -> None:
        if self._end is not None:
            return
        self._end = (error,)
        observers, self._observers = self._observers, ()
        for observer in observers:
            try:
                if error is None:
                    observer.on_completed()
                else:
                    observer.on_error(error)
            except Exception as exc:
                logger.error("a subscriber of %s raised at its end", self._name, exc_info=exc)
