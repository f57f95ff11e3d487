"""Flow control as pure logic: golden RDY sequences with a fake clock, no sockets."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from rxnsq.flow import BackoffState, ExponentialBackoff, FlowController, FullJitterBackoff


@dataclass(eq=False)
class FakePeer:
    name: str
    max_rdy_count: int = 2500
    in_flight: int = 0


@dataclass(order=True)
class _Timer:
    when: float
    seq: int
    fn: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """Virtual time: timers fire only when the test advances the clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[_Timer] = []
        self._seq = 0

    def call_later(self, delay: float, fn: Callable[[], None]) -> _Timer:
        self._seq += 1
        timer = _Timer(self.now + delay, self._seq, fn)
        heapq.heappush(self._timers, timer)
        return timer

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self._timers and self._timers[0].when <= end:
            timer = heapq.heappop(self._timers)
            self.now = timer.when
            if not timer.cancelled:
                timer.fn()
        self.now = end

    def pending(self) -> int:
        return sum(not t.cancelled for t in self._timers)


class Wire:
    """Records what would go to nsqd, in order, as 'name: command'."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def send_rdy(self, peer: FakePeer, count: int) -> None:
        self.log.append(f"{peer.name}: RDY {count}")

    def settle(self, flow: FlowController, peer: FakePeer, cmd: str, backoff: bool | None) -> None:
        flow.on_settle(peer, backoff)  # before the FIN/REQ, as the reader does
        self.log.append(f"{peer.name}: {cmd}")

    def take(self) -> list[str]:
        out, self.log = self.log, []
        return out


def make(max_in_flight: int, **kwargs) -> tuple[FlowController, FakeLoop, Wire, list[BackoffState]]:
    loop, wire, states = FakeLoop(), Wire(), []
    flow = FlowController(
        max_in_flight,
        send_rdy=wire.send_rdy,
        call_later=loop.call_later,
        clock=lambda: loop.now,
        on_backoff=states.append,
        rng=random.Random(7),
        **kwargs,
    )
    return flow, loop, wire, states


def test_golden_backoff_sequence() -> None:
    """go-nsq's TestConsumerBackoff: good x3, bad x2, good x2 at max_in_flight 5."""
    flow, loop, wire, states = make(5, backoff=ExponentialBackoff(0.01))
    a = FakePeer("a")
    flow.add(a)
    for _ in range(3):
        wire.settle(flow, a, "FIN good", None)
    wire.settle(flow, a, "REQ bad", True)
    loop.advance(1)
    wire.settle(flow, a, "REQ bad", True)
    loop.advance(1)
    wire.settle(flow, a, "FIN good", None)
    loop.advance(1)
    wire.settle(flow, a, "FIN good", None)
    assert [line.split(": ")[1] for line in wire.take()] == [
        "RDY 5", "FIN good", "FIN good", "FIN good",
        "RDY 0", "REQ bad", "RDY 1",
        "RDY 0", "REQ bad", "RDY 1",
        "RDY 0", "FIN good", "RDY 1",
        "RDY 5", "FIN good",
    ]  # fmt: skip
    assert [(s.level, s.phase) for s in states] == [
        (1, "blocked"), (1, "testing"),
        (2, "blocked"), (2, "testing"),
        (1, "blocked"), (1, "testing"),
        (0, "normal"),
    ]  # fmt: skip
    assert states[0].interval == pytest.approx(0.02)
    assert states[2].interval == pytest.approx(0.04)


def test_requeue_without_backoff_is_neutral() -> None:
    flow, loop, wire, states = make(5)
    a = FakePeer("a")
    flow.add(a)
    wire.settle(flow, a, "REQ x", False)
    wire.settle(flow, a, "FIN y", None)
    assert wire.take() == ["a: RDY 5", "a: REQ x", "a: FIN y"]
    assert states == []


def test_results_during_the_wait_are_ignored() -> None:
    flow, loop, wire, states = make(10)
    a = FakePeer("a")
    flow.add(a)
    wire.take()
    wire.settle(flow, a, "REQ 1", True)
    for i in range(5):  # messages already in flight fail too: one window counts once
        wire.settle(flow, a, f"REQ {i + 2}", True)
    assert flow.state.level == 1
    assert wire.take() == ["a: RDY 0", "a: REQ 1"] + [f"a: REQ {i + 2}" for i in range(5)]
    loop.advance(2.0)
    assert flow.state.phase == "testing" and wire.take() == ["a: RDY 1"]


def test_backoff_is_consumer_wide_and_tests_one_connection() -> None:
    flow, loop, wire, _ = make(6)
    peers = [FakePeer(n) for n in "abc"]
    for p in peers:
        flow.add(p)
    loop.advance(flow.room_delay)  # raises wait until nsqd surely read the lowered RDY
    wire.take()
    wire.settle(flow, peers[0], "REQ x", True)
    log = wire.take()
    assert log[-1] == "a: REQ x"
    assert sorted(log[:-1]) == ["a: RDY 0", "b: RDY 0", "c: RDY 0"]
    loop.advance(2.0)
    (test,) = wire.take()
    assert test.endswith("RDY 1")
    assert flow.total_rdy == 1
    tester = next(p for p in peers if test.startswith(p.name))
    wire.settle(flow, tester, "FIN x", None)
    log = wire.take()
    assert log[-1] == f"{tester.name}: FIN x"
    assert sorted(log[:-1]) == ["a: RDY 2", "b: RDY 2", "c: RDY 2"]
    assert flow.total_rdy == 6


def test_max_backoff_duration_caps_the_level() -> None:
    flow, loop, wire, states = make(1, max_backoff_duration=8.0)
    a = FakePeer("a")
    flow.add(a)
    for _ in range(10):
        wire.settle(flow, a, "REQ", True)
        loop.advance(100)
    # 2, 4, 8 fit under 8 s; 16 does not, so the level stops at 3
    assert flow.state.level == 3
    assert max(s.interval for s in states) == 8.0


def test_zero_max_backoff_duration_disables_backoff() -> None:
    flow, loop, wire, states = make(3, max_backoff_duration=0)
    a = FakePeer("a")
    flow.add(a)
    wire.settle(flow, a, "REQ", True)
    assert wire.take() == ["a: RDY 3", "a: REQ"] and states == []


def test_joining_lowers_others_before_raising_the_new_one() -> None:
    flow, loop, wire, _ = make(100)
    a, b, c = FakePeer("a"), FakePeer("b"), FakePeer("c")
    flow.add(a)
    flow.add(b)
    # nsqd may still act on "a: RDY 100" until it reads "a: RDY 50": b waits room_delay
    assert wire.take() == ["a: RDY 100", "a: RDY 50"]
    loop.advance(flow.room_delay)
    assert wire.take() == ["b: RDY 50"]
    flow.add(c)
    assert wire.take() == ["a: RDY 33", "b: RDY 33"]
    loop.advance(flow.room_delay)
    assert wire.take() == ["c: RDY 33"]
    assert flow.total_rdy == 99


def test_held_messages_keep_their_room_until_they_settle() -> None:
    """Lowering RDY does not take back what a connection holds: the raise of another one
    waits until the held messages settle, so the sum unsettled never exceeds the bound."""
    flow, loop, wire, _ = make(10)
    a, b = FakePeer("a"), FakePeer("b")
    flow.add(a)
    a.in_flight = 10  # a slow stage holds all ten
    flow.add(b)
    loop.advance(1.0)
    assert wire.take() == ["a: RDY 10", "a: RDY 5"]  # b gets nothing while a holds ten
    for held in range(9, 4, -1):
        a.in_flight = held
        wire.settle(flow, a, "FIN", None)
        loop.advance(flow.room_delay)
        assert flow.held <= 10
    assert flow.rdy(b) == 5 and a.in_flight + flow.rdy(b) == 10
    assert wire.take() == [
        "a: FIN", "b: RDY 1", "a: FIN", "b: RDY 2", "a: FIN", "b: RDY 3",
        "a: FIN", "b: RDY 4", "a: FIN", "b: RDY 5",
    ]  # fmt: skip


def test_a_raise_never_takes_the_sum_above_max_in_flight() -> None:
    rdy: dict[str, int] = {}
    raises: list[tuple[int, int]] = []  # (sum after the raise, max_in_flight then)
    loop = FakeLoop()
    flow: FlowController

    def send(peer: FakePeer, n: int) -> None:
        before = rdy.get(peer.name, 0)
        rdy[peer.name] = n
        if n > before:
            raises.append((sum(rdy.values()), flow.max_in_flight))

    flow = FlowController(
        10,
        send_rdy=send,
        call_later=loop.call_later,
        clock=lambda: loop.now,
    )
    peers = [FakePeer(str(i)) for i in range(7)]
    for p in peers:
        flow.add(p)
    for p in peers[:3]:
        rdy.pop(p.name)  # what nsqd holds for a closed connection is gone at once
        flow.remove(p)
    flow.set_max_in_flight(3)
    flow.set_max_in_flight(40)
    for p in peers[:3]:
        flow.add(p)
    loop.advance(1.0)
    assert raises and all(total <= limit for total, limit in raises)
    assert flow.total_rdy == sum(rdy.values()) == 35  # 7 connections x 40 // 7


def test_share_is_clamped_to_max_rdy_count() -> None:
    flow, loop, wire, _ = make(1000)
    a = FakePeer("a", max_rdy_count=50)
    flow.add(a)
    assert wire.take() == ["a: RDY 50"]


def test_fewer_slots_than_connections_redistributes() -> None:
    flow, loop, wire, _ = make(2, low_rdy_idle_timeout=10, redistribute_interval=5)
    peers = [FakePeer(n) for n in "abcde"]
    for p in peers:
        flow.add(p)
    loop.advance(flow.room_delay)
    assert flow.total_rdy == 2
    holders = {p.name for p in peers if flow.rdy(p) == 1}
    assert len(holders) == 2
    # the holders stay idle: after the idle timeout their RDY moves to others
    loop.advance(15)
    now_holding = {p.name for p in peers if flow.rdy(p) == 1}
    assert flow.total_rdy == 2
    assert now_holding and now_holding != holders
    # over time every connection gets a turn
    seen = set(now_holding)
    for _ in range(20):
        loop.advance(15)
        seen |= {p.name for p in peers if flow.rdy(p) == 1}
        assert flow.total_rdy <= 2
    assert seen == set("abcde")


def test_busy_connection_keeps_its_rdy() -> None:
    flow, loop, wire, _ = make(1, low_rdy_idle_timeout=10, redistribute_interval=5)
    a, b = FakePeer("a"), FakePeer("b")
    flow.add(a)
    flow.add(b)
    holder = a if flow.rdy(a) else b
    for _ in range(10):
        loop.advance(3)
        flow.on_message(holder)
    assert flow.rdy(holder) == 1


def test_pause_and_resume() -> None:
    """go-nsq's TestConsumerPause: RDY 5, FIN, RDY 0, RDY 5."""
    flow, loop, wire, _ = make(5)
    a = FakePeer("a")
    flow.add(a)
    wire.settle(flow, a, "FIN", None)
    flow.set_max_in_flight(0)
    flow.set_max_in_flight(5)
    assert [x.split(": ")[1] for x in wire.take()] == ["RDY 5", "FIN", "RDY 0", "RDY 5"]


def test_leaving_returns_rdy_and_moves_the_test_rdy() -> None:
    flow, loop, wire, _ = make(4)
    a, b = FakePeer("a"), FakePeer("b")
    flow.add(a)
    flow.add(b)
    loop.advance(flow.room_delay)
    assert flow.total_rdy == 4
    flow.remove(a)
    assert flow.rdy(b) == 4 and flow.total_rdy == 4
    flow.add(a)
    wire.settle(flow, b, "REQ", True)
    loop.advance(2.0)
    tester = a if flow.rdy(a) == 1 else b
    other = b if tester is a else a
    wire.take()
    flow.remove(tester)
    assert flow.rdy(other) == 1 and flow.total_rdy == 1


def test_new_connection_gets_nothing_during_backoff() -> None:
    flow, loop, wire, _ = make(4)
    a = FakePeer("a")
    flow.add(a)
    wire.settle(flow, a, "REQ", True)
    wire.take()
    flow.add(FakePeer("b"))
    assert wire.take() == []


def test_is_starved() -> None:
    flow, loop, wire, _ = make(10)
    a = FakePeer("a")
    flow.add(a)
    assert not flow.is_starved()
    a.in_flight = 8  # below 85 % of RDY 10 (pynsq compares 8 >= 8.5)
    assert not flow.is_starved()
    a.in_flight = 9
    assert flow.is_starved()
    flow.set_max_in_flight(0)  # RDY 0 with messages held: nothing more will come
    assert flow.is_starved()


def test_close_cancels_timers() -> None:
    flow, loop, wire, _ = make(4)
    a = FakePeer("a")
    flow.add(a)
    wire.settle(flow, a, "REQ", True)
    flow.close()
    assert loop.pending() == 0


def test_full_jitter_stays_in_bounds() -> None:
    strategy = FullJitterBackoff(1.0, rng=random.Random(1))
    values = [strategy.interval(3) for _ in range(200)]
    assert all(0 <= v < 8 for v in values) and max(values) > 4


def test_a_cap_below_the_first_step_still_backs_off_clamped() -> None:
    flow, loop, wire, states = make(3, max_backoff_duration=0.5)  # first step would be 2 s
    a = FakePeer("a")
    flow.add(a)
    wire.settle(flow, a, "REQ", True)
    assert states[-1].level == 1 and states[-1].interval == 0.5
    loop.advance(0.5)
    assert wire.take()[-1] == "a: RDY 1"


# --- reconnect waits and vanished producers (the same plain-logic style) -------------------


def test_reconnect_waits_double_up_to_the_cap_and_reset() -> None:
    from rxnsq.reconnect import ReconnectDelays

    delays = ReconnectDelays(1.0, 5.0, jitter=0.0)
    assert [delays.next("a") for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert delays.next("b") == 1.0  # each address on its own
    delays.reset("a")
    assert delays.next("a") == 1.0
    jittered = ReconnectDelays(1.0, 1.0, rng=random.Random(3))
    waits = [jittered.next("a") for _ in range(50)]
    assert all(0.8 <= w <= 1.2 for w in waits) and len(set(waits)) > 40
    with pytest.raises(ValueError):
        ReconnectDelays(2.0, 1.0)


def test_a_producer_is_dropped_only_when_every_lookupd_missed_it_for_the_grace() -> None:
    from rxnsq.producers import VanishedProducers

    loop = FakeLoop()
    tracker = VanishedProducers(lookupds=2, grace=10.0, clock=lambda: loop.now)
    connected = {"a:1", "b:1"}
    assert tracker.answer({"a:1", "b:1"}, connected) == []  # only one lookupd answered yet
    assert tracker.answer({"a:1"}, connected) == []  # the other lookupd still lists b
    assert tracker.answer({"a:1"}, connected) == []  # now both missed b: the grace starts
    loop.advance(9.0)
    assert tracker.answer({"a:1"}, connected) == []
    loop.advance(1.0)
    assert tracker.answer({"a:1"}, connected) == ["b:1"]
    # listed again before the grace ran out: forgiven
    assert tracker.answer({"a:1"}, {"a:1", "c:1"}) == []
    loop.advance(5.0)
    assert tracker.answer({"a:1", "c:1"}, {"a:1", "c:1"}) == []
    loop.advance(20.0)
    assert tracker.answer({"a:1", "c:1"}, {"a:1", "c:1"}) == []
