"""pynsq's ``BackoffTimer`` (linear, two slopes) and the same curve as a backoff strategy."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

__all__ = ["BackoffTimer", "PynsqBackoff"]


class BackoffTimer:
    """A backoff interval that grows by a short and a long unit per failure and shrinks by
    the same per success: ``min + short + long``, with short capped at ``ratio`` of the span
    and long at the rest. Linear, as pynsq's is (its docs call it exponential)."""

    def __init__(
        self,
        min_interval: float,
        max_interval: float,
        ratio: float = 0.25,
        short_length: int = 10,
        long_length: int = 250,
    ) -> None:
        if not all(isinstance(v, int | float | Decimal) for v in (min_interval, max_interval)):
            raise TypeError("min_interval and max_interval must be numbers")
        if not 0 <= min_interval <= max_interval:
            raise ValueError("need 0 <= min_interval <= max_interval")
        if not 0 <= ratio <= 1:
            raise ValueError("ratio must be in [0, 1]")
        self.min_interval = Decimal(str(min_interval))
        self.max_interval = Decimal(str(max_interval))
        span = self.max_interval - self.min_interval
        self.max_short_timer = span * Decimal(str(ratio))
        self.max_long_timer = span * (1 - Decimal(str(ratio)))
        self.short_unit = self.max_short_timer / short_length
        self.long_unit = self.max_long_timer / long_length
        self.short_interval = Decimal(0)
        self.long_interval = Decimal(0)
        self.interval = 0.0
        self.update_interval()

    def success(self) -> None:
        """One step back toward ``min_interval`` (nothing at an interval of 0)."""
        if self.interval == 0.0:
            return
        self.short_interval = max(self.short_interval - self.short_unit, Decimal(0))
        self.long_interval = max(self.long_interval - self.long_unit, Decimal(0))
        self.update_interval()

    def failure(self) -> None:
        """One step toward ``max_interval``."""
        self.short_interval = min(self.short_interval + self.short_unit, self.max_short_timer)
        self.long_interval = min(self.long_interval + self.long_unit, self.max_long_timer)
        self.update_interval()

    def update_interval(self) -> None:
        """Recompute ``interval`` (seconds, a float) from the two parts."""
        self.interval = float(self.min_interval + self.short_interval + self.long_interval)

    def get_interval(self) -> float:
        """The current interval in seconds."""
        return self.interval


@dataclass(frozen=True, slots=True)
class PynsqBackoff:
    """The BackoffTimer curve at level ``n`` (n failures more than successes), as a strategy
    for :class:`rxnsq.flow.FlowController`, so migrated readers back off as they used to."""

    max_interval: float = 128.0
    min_interval: float = 0.0

    def interval(self, level: int) -> float:
        timer = BackoffTimer(self.min_interval, self.max_interval)
        for _ in range(level):
            timer.failure()
        return timer.get_interval()
