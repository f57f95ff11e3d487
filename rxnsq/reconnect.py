"""How long to wait before reconnecting to an address: doubling with jitter, as plain logic.

The Reader and the Writer each keep one :class:`ReconnectDelays`. ``next(address)`` gives the
wait before the next attempt (``first`` the first time, doubling each time up to ``cap``,
jittered by +-20 % so many clients do not reconnect in step); ``reset(address)`` after a
connection succeeded. No clock, no timers: the caller schedules the wait.
"""

from __future__ import annotations

import random

__all__ = ["ReconnectDelays"]


class ReconnectDelays:
    """Per-address reconnect waits: ``first``, then doubling up to ``cap``, with jitter."""

    def __init__(
        self, first: float, cap: float, *, jitter: float = 0.2, rng: random.Random | None = None
    ) -> None:
        if not 0 < first <= cap:
            raise ValueError(f"need 0 < first ({first}) <= cap ({cap})")
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._next: dict[str, float] = {}

    def next(self, address: str) -> float:
        """The wait before the next attempt at ``address`` (and double the one after)."""
        delay = self._next.get(address, self.first)
        self._next[address] = min(delay * 2, self.cap)
        return delay * self._rng.uniform(1 - self.jitter, 1 + self.jitter)

    def reset(self, address: str) -> None:
        """``address`` connected: its next failure waits ``first`` again."""
        self._next.pop(address, None)
