"""Clocks: where an event's time comes from and how far each key's watermark has got.

The *watermark* of a key is the event time up to which its windows are taken to be complete:
no more events earlier than it are expected. :class:`EventClock` reads a timestamp from each
value and keeps, per key, ``watermark = (latest event time seen) - delay``, and between events
the watermark moves on with the system clock (Bytewax's rule), so a key that goes quiet still
closes its windows. ``idle`` seconds of silence can be required before that starts.
:class:`ProcessingClock` stamps each event with the time it arrives: the watermark is now.

All of it is plain arithmetic on :class:`ClockState` (no IO, no timers): the operator passes
the current system time in, which is virtual time in tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Generic, TypeVar

from ..errors import ConfigError
from .assign import _seconds

__all__ = [
    "ClockState",
    "EventClock",
    "ProcessingClock",
    "event_time",
    "observe",
    "processing_time",
    "watermark",
]

V = TypeVar("V")

NEVER = -math.inf


@dataclass(frozen=True, slots=True)
class ClockState:
    """One key's clock: the watermark was ``base`` at system time ``since`` (when the key's
    last event arrived); ``closed`` is the end of the latest window of the key whose result
    was emitted (nothing may join a window ending at or before it)."""

    base: float
    since: float
    closed: float = NEVER


def watermark(state: ClockState | None, now: float, idle: float = 0.0) -> float:
    """The key's watermark at system time ``now``: ``base``, moved on with the system clock
    once the key has been quiet for ``idle`` seconds. ``-inf`` for a key never seen."""
    if state is None:
        return NEVER
    return state.base + max(0.0, now - state.since - idle)


def observe(
    state: ClockState | None, ts: float, now: float, delay: float, idle: float = 0.0
) -> ClockState:
    """The key's clock after an event at ``ts`` arrives at ``now``: the watermark never goes
    back; it becomes ``ts - delay`` when that is ahead."""
    current = watermark(state, now, idle)
    closed = state.closed if state is not None else NEVER
    return ClockState(max(current, ts - delay), now, closed)


def closed_up_to(state: ClockState, end: float) -> ClockState:
    """The clock once a window ending at ``end`` has been emitted."""
    return replace(state, closed=max(state.closed, end))


def _to_seconds(value: object) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise TypeError(f"a naive datetime ({value!r}) is ambiguous: give an aware one")
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise TypeError(
        f"an event time must be seconds since the epoch or an aware datetime, not {value!r}"
    )


class EventClock(Generic[V]):
    """Event time: ``timestamp(value)`` gives the time (seconds since the epoch, or an aware
    datetime); the watermark trails the latest time seen by ``delay`` seconds, and moves on
    with the system clock after ``idle`` seconds without events for the key."""

    __slots__ = ("delay", "idle", "timestamp")

    def __init__(self, timestamp: Callable[[V], Any], delay: float, idle: float) -> None:
        self.timestamp = timestamp
        self.delay = delay
        self.idle = idle

    def __repr__(self) -> str:
        return f"EventClock(delay={self.delay:g}, idle={self.idle:g})"

    @property
    def is_event_time(self) -> bool:
        return True

    def time_of(self, value: V, now: float) -> float:
        """The event time of ``value`` (user code: it may raise)."""
        return _to_seconds(self.timestamp(value))


class ProcessingClock:
    """Processing time: an event's time is when it arrives; the watermark is now."""

    __slots__ = ()
    delay = 0.0
    idle = 0.0

    def __repr__(self) -> str:
        return "ProcessingClock()"

    @property
    def is_event_time(self) -> bool:
        return False

    def time_of(self, value: object, now: float) -> float:
        return now


Clock = EventClock[Any] | ProcessingClock


def event_time(
    timestamp: Callable[[V], Any], *, delay: float = 0.0, idle: float = 0.0
) -> EventClock[V]:
    """An event-time clock reading each value's time with ``timestamp``.

    ``delay``: how far out of order events may arrive and still count (the watermark trails
    the latest event time by this much). ``idle``: seconds without events after which a key's
    watermark follows the system clock (0: at once, between any two events).
    """
    if not callable(timestamp):
        raise ConfigError("timestamp", timestamp, "a function of the value giving its time")
    return EventClock(
        timestamp,
        _seconds("delay", delay, ">=0"),
        _seconds("idle", idle, ">=0"),
    )


def processing_time() -> ProcessingClock:
    """A processing-time clock: events are timed by their arrival."""
    return ProcessingClock()
