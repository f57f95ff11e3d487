"""Window assignment: which windows an event time belongs to. Pure functions, no IO.

Every window is half-open, ``[start, end)`` in seconds since the epoch: an event at exactly
``end`` belongs to the next window. Tumbling and sliding windows are aligned to the epoch plus
``offset`` (so they are the same across restarts and processes, whatever time a consumer
started); ``offset`` shifts them, e.g. ``offset=-8 * 3600`` for days starting at 08:00 UTC.

- :func:`tumbling` ``(size)``: one window per event, ``start = offset + k * size``.
- :func:`sliding` ``(size, step)``: every window of length ``size`` starting at
  ``offset + k * step`` that contains the event (``size / step`` of them).
- :func:`session` ``(gap)``: each event opens ``[ts, ts + gap)``; windows of one key that
  *overlap* merge into one. Windows that only touch (one ends exactly where the next begins)
  stay apart, so the result does not depend on the order events arrive in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from ..errors import ConfigError

__all__ = ["Session", "Sliding", "Tumbling", "Window", "Windower", "session", "sliding", "tumbling"]

#: The most windows one event may belong to (sliding ``size / step``).
MAX_WINDOWS_PER_EVENT = 1000


@dataclass(frozen=True, order=True, slots=True)
class Window:
    """A half-open interval of event time, ``[start, end)``, in seconds since the epoch."""

    start: float
    end: float

    def __contains__(self, ts: object) -> bool:
        return isinstance(ts, int | float) and self.start <= ts < self.end

    def __repr__(self) -> str:
        return f"Window({self.start:g}, {self.end:g})"

    @property
    def length(self) -> float:
        return self.end - self.start

    @property
    def start_time(self) -> datetime:
        """``start`` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.start, UTC)

    @property
    def end_time(self) -> datetime:
        """``end`` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.end, UTC)

    def overlaps(self, other: Window) -> bool:
        """Whether the two share some time (touching windows do not overlap)."""
        return self.start < other.end and other.start < self.end


def _seconds(option: str, value: object, low: Literal[">0", ">=0", "any"] = ">0") -> float:
    """``value`` as float seconds, else :class:`ConfigError` naming ``option``."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    number = float(value) if ok else math.nan  # type: ignore[arg-type]
    if not ok or (low == ">0" and number <= 0) or (low == ">=0" and number < 0):
        bound = {">0": " > 0", ">=0": " >= 0", "any": ""}[low]
        raise ConfigError(option, value, f"a finite number of seconds{bound}")
    return number


@dataclass(frozen=True, slots=True)
class Tumbling:
    """Fixed, non-overlapping windows of ``size`` seconds aligned to ``offset``."""

    size: float
    offset: float = 0.0
    kind: Literal["tumbling"] = "tumbling"

    @property
    def merging(self) -> bool:
        return False

    @property
    def span(self) -> float:
        """The longest window this windower makes (how far back an event's windows reach)."""
        return self.size

    def assign(self, ts: float) -> list[Window]:
        start = math.floor((ts - self.offset) / self.size) * self.size + self.offset
        return [Window(start, start + self.size)]


@dataclass(frozen=True, slots=True)
class Sliding:
    """Windows of ``size`` seconds starting every ``step`` seconds (aligned to ``offset``)."""

    size: float
    step: float
    offset: float = 0.0
    kind: Literal["sliding"] = "sliding"

    @property
    def merging(self) -> bool:
        return False

    @property
    def span(self) -> float:
        return self.size

    def assign(self, ts: float) -> list[Window]:
        last = math.floor((ts - self.offset) / self.step)  # the latest window starting <= ts
        windows = []
        k = last
        while True:
            start = k * self.step + self.offset
            if start + self.size <= ts:
                break
            windows.append(Window(start, start + self.size))
            k -= 1
        windows.reverse()
        return windows


@dataclass(frozen=True, slots=True)
class Session:
    """Activity sessions: an event at ``ts`` opens ``[ts, ts + gap)``; overlapping ones merge."""

    gap: float
    kind: Literal["session"] = "session"

    @property
    def merging(self) -> bool:
        return True

    @property
    def span(self) -> float:
        return self.gap

    def assign(self, ts: float) -> list[Window]:
        return [Window(ts, ts + self.gap)]


Windower = Tumbling | Sliding | Session


def tumbling(size: float, *, offset: float = 0.0) -> Tumbling:
    """Tumbling windows of ``size`` seconds: ``[offset + k*size, offset + (k+1)*size)``."""
    size = _seconds("size", size)
    offset = _seconds("offset", offset, "any")
    if abs(offset) >= size:
        raise ConfigError("offset", offset, f"less than size ({size:g}) in absolute value")
    return Tumbling(size, offset)


def sliding(size: float, step: float, *, offset: float = 0.0) -> Sliding:
    """Windows of ``size`` seconds every ``step`` seconds; an event is in ``size/step`` of them.

    ``step`` must divide the time so that no event falls between windows (``step <= size``),
    and ``size / step`` is at most 1000 (each window holds its own aggregate).
    """
    size = _seconds("size", size)
    step = _seconds("step", step)
    offset = _seconds("offset", offset, "any")
    if step > size:
        raise ConfigError("step", step, f"at most size ({size:g}): events between windows")
    if size / step > MAX_WINDOWS_PER_EVENT:
        raise ConfigError("step", step, f"at least size / {MAX_WINDOWS_PER_EVENT}")
    if abs(offset) >= step:
        raise ConfigError("offset", offset, f"less than step ({step:g}) in absolute value")
    return Sliding(size, step, offset)


def session(gap: float) -> Session:
    """Session windows: a key's events less than ``gap`` seconds apart share one window."""
    return Session(_seconds("gap", gap))


def merge_sessions(existing: list[Window], proto: Window) -> tuple[Window, list[Window]]:
    """Merge ``proto`` with every window of ``existing`` it overlaps: the merged window and
    the existing windows it absorbed (in start order)."""
    absorbed = sorted(w for w in existing if w.overlaps(proto))
    if not absorbed:
        return proto, []
    start = min(proto.start, absorbed[0].start)
    end = max(proto.end, *(w.end for w in absorbed))
    return Window(start, end), absorbed
