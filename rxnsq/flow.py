"""RDY distribution and consumer-wide backoff as plain logic: no sockets, clock injected.

The Reader owns one :class:`FlowController`. It tells the controller when a connection joins
or leaves, when a message arrives and how each message was settled; the controller decides
every RDY count and hands it to ``send_rdy``. Because the Reader calls :meth:`on_settle`
*before* it writes the FIN or REQ, any RDY change a result causes reaches nsqd first.

The rules (go-nsq's, which the NSQ client guide describes):

* Each connection's share is ``max(1, max_in_flight // connections)``, clamped to the
  connection's ``max_rdy_count``. What a connection can hold unsettled is
  ``max(RDY, in_flight)``, and for ``room_delay`` seconds after RDY was lowered the old
  value (nsqd may not have read the new one yet and keeps sending): lowering RDY does not
  take back what is held or under way. The sum of those holds never exceeds
  ``max_in_flight``: lower values are sent before higher ones, and a raise is cut to the
  room the others' holds leave; the rest follows (after ``room_delay``, so nsqd has seen the
  FIN or RDY that made the room) as their messages settle.
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
import math
import random
import time
from collections.abc import Callable, Iterable
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
        return math.ldexp(self.multiplier, level)


@dataclass(frozen=True, slots=True)
class FullJitterBackoff:
    """A random time in ``[0, multiplier * 2**level)``: spreads many consumers apart."""

    multiplier: float = 1.0
    rng: random.Random | None = None

    def interval(self, level: int) -> float:
        return (self.rng or random).uniform(0, math.ldexp(self.multiplier, level))


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
    """What the controller reads from a connection (it never writes to one); connections
    are told apart by identity (a Peer is a dict key)."""

    def __hash__(self) -> int: ...

    @property
    def max_rdy_count(self) -> int: ...

    @property
    def in_flight(self) -> int: ...


class _PeerState:
    __slots__ = ("last_message", "lowered_from", "lowered_until", "peer", "rdy")

    def __init__(self, peer: Peer, now: float) -> None:
        self.peer = peer
        self.rdy = 0
        self.last_message = now
        #: RDY before it was last lowered, which nsqd may act on until ``lowered_until``.
        self.lowered_from = 0
        self.lowered_until = 0.0

    def hold(self, now: float) -> int:
        """How many messages this connection may have unsettled at most right now."""
        held = self.rdy
        in_flight = self.peer.in_flight
        if in_flight > held:
            held = in_flight
        if self.lowered_from > held and now < self.lowered_until:
            held = self.lowered_from
        return held


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
        room_delay: float = 0.05,
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
        self._peers: dict[Peer, _PeerState] = {}
        self._total_rdy = 0
        self._level = 0
        self._interval = 0.0
        self._backoff_timer: Timer | None = None
        self._redistribute_timer: Timer | None = None
        self._room_timer: Timer | None = None
        self.room_delay = room_delay
        #: A raise was cut short for lack of room: retry when a held message settles.
        self._wants_room = False
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
        self._total_rdy -= state.rdy
        if state.rdy > 0 and (self._level > 0 or len(self._peers) < self.max_in_flight):
            self._needs_redistribution = True
        if not self._in_backoff:
            self._update_all()
        if self._level > 0 and self._backoff_timer is None and state.rdy > 0:
            self._resume()  # the test RDY 1 went away with it: hand it to another
        elif self._wants_room:
            self._room_made()  # what it held is nsqd's again

    def on_message(self, peer: Peer) -> None:
        """A message arrived on ``peer`` (for the idle-connection rule)."""
        state = self._peers.get(peer)
        if state is not None:
            state.last_message = self._clock()

    def on_settle(self, peer: Peer, backoff: bool | None) -> None:
        """A message was settled: FIN (``None``), REQ with backoff (True), without (False).

        Call it after the message left the peer's in-flight count and before the FIN or REQ
        is written, so the RDY it causes goes first.
        """
        if self._wants_room:
            self._room_made()
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

    def on_release(self, peer: Peer) -> None:
        """Messages left ``peer``'s in-flight count without a result (nsqd took them back
        after their timeout, or they were requeued at shutdown): their room is free again."""
        if self._wants_room:
            self._room_made()

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
        for timer in (self._backoff_timer, self._redistribute_timer, self._room_timer):
            if timer is not None:
                timer.cancel()
        self._backoff_timer = self._redistribute_timer = self._room_timer = None
        self._wants_room = False
        for state in self._peers.values():
            self._set(state, 0)

    # --- what the reader asks ---------------------------------------------------------------

    @property
    def total_rdy(self) -> int:
        return self._total_rdy

    @property
    def needs_redistribution(self) -> bool:
        """Whether RDY waits to be moved between connections (scarce slots, a raise cut
        short, a connection gone)."""
        return self._needs_redistribution or self._wants_room

    @property
    def held(self) -> int:
        """The most messages that can be unsettled now: the sum of the connections' holds."""
        now = self._clock()
        return sum(state.hold(now) for state in self._peers.values())

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
        """Whether some connection holds messages and 85 % or more of its RDY (pynsq's rule):
        nsqd sends it little or nothing more until some are settled, so a batch should flush."""
        return any(0 < s.peer.in_flight >= 0.85 * s.rdy for s in self._peers.values())

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
        if count < state.rdy:
            now = self._clock()
            state.lowered_from = state.hold(now)
            state.lowered_until = now + self.room_delay
        self._total_rdy += count - state.rdy
        state.rdy = count
        self._send_rdy(state.peer, count)

    def _room_for(self, state: _PeerState) -> int:
        """The largest RDY ``state`` may have without the holds exceeding max_in_flight."""
        now = self._clock()
        others = sum(s.hold(now) for s in self._peers.values() if s is not state)
        return self.max_in_flight - others

    def _want_room(self) -> None:
        """A raise was cut short. Retry when a held message settles, or when a lowered RDY
        has surely reached nsqd, whichever comes first."""
        if self._closed:
            return
        self._wants_room = True
        if self._room_timer is not None:
            return
        now = self._clock()
        expiries = [s.lowered_until for s in self._peers.values() if s.lowered_until > now]
        if expiries:
            self._room_timer = self._call_later(min(expiries) - now, self._retry_raise)

    def _room_made(self) -> None:
        """A held message settled while a raise waits: retry it soon (once per burst)."""
        if self._room_timer is None and not self._closed:
            self._room_timer = self._call_later(self.room_delay, self._retry_raise)

    def _retry_raise(self) -> None:
        self._room_timer = None
        if self._closed or self._backoff_timer is not None:
            return
        self._wants_room = False
        if self._level > 0:
            if self._total_rdy == 0:
                self._resume()
            return
        if len(self._peers) > self.max_in_flight:
            self.redistribute()
        else:
            self._update_all()

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
        if count > state.rdy:
            room = self._room_for(state)
            if room < count:
                # others still hold messages (or RDY): take what is free, the rest later
                self._want_room()
                count = max(room, state.rdy)
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
        chosen = self._rng.choice(candidates)
        if self._room_for(chosen) < 1:
            self._want_room()  # messages still held elsewhere fill the window
            return
        self._set(chosen, 1)
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
        if not scarce and self._level == 0:
            self._update_all()
            return
        room = self.max_in_flight - self.held
        budget = min((1 if self._level > 0 else self.max_in_flight) - self._total_rdy, room)
        if budget <= 0:
            if room <= 0:
                self._want_room()
            return
        idle = [s for s in self._peers.values() if s.rdy == 0 and s.peer.in_flight == 0]
        self._rng.shuffle(idle)
        for state in idle[:budget]:
            self._set(state, 1)

    def peers(self) -> Iterable[Peer]:
        return [s.peer for s in self._peers.values()]
