"""Which nsqd to drop because nsqlookupd no longer lists them, as plain logic.

Each poll asks one nsqlookupd (they take turns). An nsqd is *missing* only when none of the
last answers, one per nsqlookupd, lists it; it is dropped once it has been missing for
``grace`` seconds, because a restarted nsqlookupd knows an nsqd again only after that nsqd's
next registration. The clock is injected, so the rule is tested without sockets.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

__all__ = ["VanishedProducers"]


class VanishedProducers:
    """Tracks nsqlookupd answers and says which connected nsqd have vanished for good."""

    def __init__(self, lookupds: int, grace: float, clock: Callable[[], float]) -> None:
        self._answers: deque[set[str]] = deque(maxlen=max(1, lookupds))
        self._grace = grace
        self._clock = clock
        self._missing_since: dict[str, float] = {}

    def answer(self, listed: Iterable[str], connected: Iterable[str]) -> list[str]:
        """One nsqlookupd listed ``listed``; of the ``connected`` addresses, return those
        missing from every recent answer for at least ``grace`` seconds (to disconnect)."""
        self._answers.append(set(listed))
        connected = set(connected)
        if len(self._answers) < (self._answers.maxlen or 1):
            return []  # not every nsqlookupd has answered yet
        known = set().union(*self._answers)
        now = self._clock()
        for address in list(self._missing_since):
            if address in known or address not in connected:
                del self._missing_since[address]
        gone = []
        for address in sorted(connected - known):
            since = self._missing_since.setdefault(address, now)
            if now - since >= self._grace:
                del self._missing_since[address]
                gone.append(address)
        return gone
