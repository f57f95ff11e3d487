"""RDY distribution and consumer-wide backoff as plain logic: no sockets, clock injected.

The Reader owns one :class:`FlowController`. It tells the controller when a connection joins
or leaves, when a message arrives and how each message was settled; the controller decides
every RDY count and hands it to ``send_rdy``. Because the Reader calls :meth:`on_settle`
*before* it writes the FIN or REQ, any RDY change a result causes reaches nsqd first.

The rules (go-nsq's, which the NSQ client guide describes):

* Each connection's share is ``max(1, max_in_flight // connections)``, clamped to the
  connection's ``max_rdy_count``. The sum of RDY never exceeds ``max_in_flight``: lower
  values are sent before higher ones, and a raise is cut to what the budget leaves.
* With fewer slots than connections, some connections get nothing; every
  ``redistribute_interval`` connections idle for ``low_rdy_idle_timeout`` give their RDY
  back and RDY 1 goes to others, chosen at random.
* A failure (REQ with backoff) raises the backoff level: RDY 0 everywhere for
  ``backoff.interval(level)`` seconds, then RDY 1 on one random connection to test. Results
  that arrive during the wait are ignored. A success lowers the level; at 0 every
  connection gets its full share again. A REQ without backoff changes nothing.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "BackoffState",
    "BackoffStrategy",
    "ExponentialBackoff",
    "FlowController",
    "FullJitterBackoff",
    "Timer",
]

logger = logging.getLogger(__name__)

Phase = Literal["normal", "blocked", "testing"]


class BackoffStrategy(Protocol):
    """How long to back off at a given level (1, 2, ...)."""

    def interval(self, level: int) -> float: ...


@dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    """``multiplier * 2**level`` seconds (go-nsq's default: 2 s at the first failure)."""

    multiplier: float = 1.0

    def interval(self, level: int) -> float:
        return self.multiplier * (2**level)


@dataclass(frozen=True, slots=True)
class FullJitterBackoff:
    """A random time in ``[0, multiplier * 2**level)``: spreads many consumers apart."""

    multiplier: float = 1.0
    rng: random.Random | None = None

    def interval(self, level: int) -> float:
        return (self.rng or random).uniform(0, self.multiplier * (2**level))


@dataclass(frozen=True, slots=True)
class BackoffState:
    """Where backoff stands: ``level`` 0 is normal; ``interval`` is the current wait."""

    level: int
    interval: float
    phase: Phase


class Timer(Protocol):
    """What ``call_later`` returns: something to cancel."""

    def cancel(self) -> None: ...


class Peer(Protocol):
    """What the controller reads from a connection (it never writes to one)."""

    @property
    def max_rdy_count(self) -> int: ...

    @property
    def in_flight(self) -> int: ...


class _PeerState:
    __slots__ = ("last_message", "last_rdy_change", "peer", "rdy", "retry")

    def __init__(self, peer: Peer, now: float) -> None:
        self.peer = peer
        self.rdy = 0
        self.last_message = now
        self.last_rdy_change = now
        self.retry: Timer | None = None


class FlowController:
    """Decides RDY for every connection of one consumer.

    ``send_rdy(peer, n)`` carries a decision out; ``call_later(delay, fn)`` schedules timers
    (the loop's in production, a fake clock's in tests); ``clock()`` gives seconds;
    ``on_backoff(state)`` hears every backoff change.
    """

    def __init__(
        self,
        max_in_flight: int,
        *,
        send_rdy: Callable[[Peer, int], None],
        call_later: Callable[[float, Callable[[], None]], Timer],
        clock: Callable[[], float] = time.monotonic,
        backoff: BackoffStrategy | None = None,
        max_backoff_duration: float = 128.0,
        low_rdy_idle_timeout: float = 10.0,
        redistribute_interval: float = 5.0,
        on_backoff: Callable[[BackoffState], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if max_in_flight < 0:
            raise ValueError("max_in_flight must be >= 0")
        self.max_in_flight = max_in_flight
        self.backoff = backoff if backoff is not None else ExponentialBackoff()
        self.max_backoff_duration = max_backoff_duration
        self.low_rdy_idle_timeout = low_rdy_idle_timeout
        self.redistribute_interval = redistribute_interval
        self._send_rdy = send_rdy
        self._call_later = call_later
        self._clock = clock
        self._on_backoff = on_backoff
        self._rng = rng or random.Random()
        self._peers: dict[Hashable, _PeerState] = {}
        self._total_rdy = 0
        self._level = 0
        self._interval = 0.0
        self._backoff_timer: Timer | None = None
        self._redistribute_timer: Timer | None = None
        self._needs_redistribution = False
        self._closed = False

    # --- what the reader reports ------------------------------------------------------------

    def add(self, peer: Peer) -> None:
        """A connection is ready for RDY. Others are lowered first, then it gets its share."""
        self._peers[peer] = _PeerState(peer, self._clock())
        if self._in_backoff:
            self._needs_redistribution = True  # it may carry the test RDY 1 later
        else:
            self._update_all()
        self._arm_redistribution()

    def remove(self, peer: Peer) -> None:
        """A connection is gone; its RDY returns to the budget."""
        state = self._peers.pop(peer, None)
        if state is None:
            return
        if state.retry is not None:
            state.retry.cancel()
        self._total_rdy -= state.rdy
        if state.rdy > 0 and (self._level > 0 or len(self._peers) < self.max_in_flight):
            self._needs_redistribution = True
        if not self._in_backoff:
            self._update_all()
        if self._level > 0 and self._backoff_timer is None and state.rdy > 0:
            self._resume()  # the test RDY 1 went away with it: hand it to another

    def on_message(self, peer: Peer) -> None:
        """A message arrived on ``peer`` (for the idle-connection rule)."""
        state = self._peers.get(peer)
        if state is not None:
            state.last_message = self._clock()

    def on_settle(self, peer: Peer, backoff: bool | None) -> None:
        """A message was settled: FIN (``None``), REQ with backoff (True), without (False).

        Call it before the FIN or REQ is written so the RDY it causes goes first.
        """
        if self._backoff_timer is not None:
            return  # results from before the wait ended do not count
        if backoff is None:
            changed = self._level > 0
            if changed:
                self._level -= 1
        elif backoff:
            # rise while the wait is below the cap (the first step always counts, clamped):
            # go-nsq would never back off when the first step alone is above the cap
            changed = self.max_backoff_duration > 0 and (
                self._level == 0 or self.backoff.interval(self._level) < self.max_backoff_duration
            )
            if changed:
                self._level += 1
        else:
            changed = False
        if self._level == 0:
            if changed:
                self._exit_backoff()
        else:
            self._enter_backoff()  # any result while backing off opens another wait

    def set_max_in_flight(self, max_in_flight: int) -> None:
        """Change the budget at run time; 0 pauses every connection."""
        if max_in_flight < 0:
            raise ValueError("max_in_flight must be >= 0")
        self.max_in_flight = max_in_flight
        if max_in_flight == 0:
            for state in self._peers.values():
                self._set(state, 0)
        elif not self._in_backoff:
            self._update_all()
        self._arm_redistribution()

    def close(self) -> None:
        """Stop every timer; RDY 0 for all (nothing more should be delivered)."""
        self._closed = True
        for timer in (self._backoff_timer, self._redistribute_timer):
            if timer is not None:
                timer.cancel()
        self._backoff_timer = self._redistribute_timer = None
        for state in self._peers.values():
            if state.retry is not None:
                state.retry.cancel()
                state.retry = None
            self._set(state, 0)

    # --- what the reader asks ---------------------------------------------------------------

    @property
    def total_rdy(self) -> int:
        return self._total_rdy

    @property
    def state(self) -> BackoffState:
        """The current backoff state."""
        if self._level == 0:
            phase: Phase = "normal"
        elif self._backoff_timer is not None:
            phase = "blocked"
        else:
            phase = "testing"
        return BackoffState(self._level, self._interval, phase)

    def rdy(self, peer: Peer) -> int:
        """The RDY last given to ``peer``."""
        state = self._peers.get(peer)
        return state.rdy if state else 0

    def is_starved(self) -> bool:
        """Whether some connection has used 85 % or more of its RDY (a batch should flush)."""
        return any(
            0 < s.peer.in_flight >= int(0.85 * s.rdy) and s.rdy > 0 for s in self._peers.values()
        )

    @property
    def per_connection(self) -> int:
        """Each connection's share of max_in_flight."""
        if self.max_in_flight == 0 or not self._peers:
            return 0
        return min(max(1, self.max_in_flight // len(self._peers)), self.max_in_flight)

    # --- internals ----------------------------------------------------------------------------

    @property
    def _in_backoff(self) -> bool:
        return self._level > 0 or self._backoff_timer is not None

    def _set(self, state: _PeerState, count: int) -> None:
        if count == state.rdy:
            return
        self._total_rdy += count - state.rdy
        state.rdy = count
        state.last_rdy_change = self._clock()
        self._send_rdy(state.peer, count)

    def _update_all(self) -> None:
        """Every connection to its share, decreases first so the sum stays in budget."""
        target = self.per_connection
        ordered = sorted(
            self._peers.values(), key=lambda s: min(target, s.peer.max_rdy_count) - s.rdy
        )
        for state in ordered:
            self._update(state, target)

    def _update(self, state: _PeerState, count: int) -> None:
        count = min(count, state.peer.max_rdy_count)
        if state.retry is not None:
            state.retry.cancel()
            state.retry = None
        available = self.max_in_flight - self._total_rdy + state.rdy
        if 0 < available < count:
            count = available
        elif available <= 0 < count:
            # no budget left: others hold it; try again later rather than starve
            if state.rdy == 0 and not self._closed:
                self._needs_redistribution = True
            return
        self._set(state, count)

    def _enter_backoff(self) -> None:
        interval = min(self.backoff.interval(self._level), self.max_backoff_duration)
        self._interval = interval
        for state in self._peers.values():
            self._set(state, 0)
        if self._backoff_timer is not None:
            self._backoff_timer.cancel()
        self._backoff_timer = self._call_later(interval, self._resume)
        logger.warning("backing off for %.3fs (level %d)", interval, self._level)
        self._publish()

    def _exit_backoff(self) -> None:
        self._interval = 0.0
        logger.info("backoff over: full RDY restored")
        self._update_all()
        self._publish()

    def _resume(self) -> None:
        """The wait is over: RDY 1 on one random connection to test the waters."""
        self._backoff_timer = None
        if self._closed:
            return
        if self._level == 0:
            self._update_all()
            self._publish()
            return
        candidates = [s for s in self._peers.values() if s.peer.max_rdy_count > 0]
        if not candidates or self.max_in_flight == 0:
            self._backoff_timer = self._call_later(1.0, self._resume)
            return
        for state in self._peers.values():
            self._set(state, 0)
        self._set(self._rng.choice(candidates), 1)
        logger.info("testing backoff state with RDY 1")
        self._publish()

    def _publish(self) -> None:
        if self._on_backoff is not None:
            self._on_backoff(self.state)

    def _arm_redistribution(self) -> None:
        if self._redistribute_timer is None and not self._closed and self._peers:
            self._redistribute_timer = self._call_later(
                self.redistribute_interval, self._redistribute_tick
            )

    def _redistribute_tick(self) -> None:
        self._redistribute_timer = None
        if self._closed:
            return
        self.redistribute()
        self._arm_redistribution()

    def redistribute(self) -> None:
        """Move RDY from idle connections to starving ones when slots are scarce."""
        if self._backoff_timer is not None or self.max_in_flight == 0:
            return
        scarce = len(self._peers) > self.max_in_flight
        if not (scarce or self._needs_redistribution or (self._level > 0 and len(self._peers) > 1)):
            return
        self._needs_redistribution = False
        now = self._clock()
        for state in self._peers.values():
            if state.rdy > 0 and now - state.last_message > self.low_rdy_idle_timeout:
                logger.debug("idle connection gives up RDY %d", state.rdy)
                self._set(state, 0)
        budget = (1 if self._level > 0 else self.max_in_flight) - self._total_rdy
        if budget <= 0:
            return
        if not scarce and self._level == 0:
            self._update_all()
            return
        idle = [s for s in self._peers.values() if s.rdy == 0]
        self._rng.shuffle(idle)
        for state in idle[:budget]:
            self._set(state, 1)

    def peers(self) -> Iterable[Peer]:
        return [s.peer for s in self._peers.values()]
