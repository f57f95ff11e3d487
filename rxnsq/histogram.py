"""A histogram of durations kept without a metrics library: counts per bucket and a sum.

The Reader keeps one of how long messages were held (delivery to FIN/REQ) when asked to
(``Reader(measure_hold_times=True)``); exporters (Prometheus, OpenTelemetry) read it as it is.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

__all__ = ["DEFAULT_BOUNDS", "Histogram"]

#: Upper bounds in seconds (Prometheus' defaults, stretched to nsqd's default msg_timeout).
DEFAULT_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """``counts[i]`` observations at most ``bounds[i]`` (and above the previous bound); the
    last count is for values above every bound. ``sum`` and ``count`` of all observations."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = DEFAULT_BOUNDS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("bounds must be increasing and not empty")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at most it)`` pairs, ending with ``(inf, count)``: the
        shape of a Prometheus histogram's buckets."""
        total, out = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out
