"""Golden tests of rxnsq.windows without a daemon: assignment, clocks, the planner, and the
small-window operator in RxPY's virtual time (one tick = one second; event times are given
explicitly in each value, system time is the virtual clock)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
from reactivex.testing import ReactiveTest, TestScheduler

import rxnsq.ops as nsq
from rxnsq import errors, windows
from rxnsq.testing.fakes import Command, FakeConsumer, RecordingSettler
from rxnsq.windows.assign import Window, merge_sessions
from rxnsq.windows.clock import ClockState, observe, watermark
from rxnsq.windows.plan import Item, Snapshot, Spec, plan

on_next, on_completed = ReactiveTest.on_next, ReactiveTest.on_completed
W = Window


# --- assignment ----------------------------------------------------------------------------


def test_tumbling_windows_are_half_open_and_epoch_aligned() -> None:
    minute = windows.tumbling(60)
    assert minute.assign(0) == [W(0, 60)]
    assert minute.assign(59.999) == [W(0, 60)]
    assert minute.assign(60) == [W(60, 120)]  # the end belongs to the next window
    assert minute.assign(-0.5) == [W(-60, 0)]
    shifted = windows.tumbling(3600, offset=-1800)
    assert shifted.assign(1800) == [W(1800, 5400)] and shifted.assign(1799) == [W(-1800, 1800)]
    assert W(0, 60).start_time == datetime(1970, 1, 1, tzinfo=UTC)


def test_sliding_windows_hold_every_window_containing_the_time() -> None:
    hopping = windows.sliding(60, 20)
    assert hopping.assign(65) == [W(20, 80), W(40, 100), W(60, 120)]
    assert hopping.assign(60) == [W(20, 80), W(40, 100), W(60, 120)]
    assert hopping.assign(59.9) == [W(0, 60), W(20, 80), W(40, 100)]
    assert windows.sliding(10, 10).assign(15) == windows.tumbling(10).assign(15)


def test_sessions_merge_overlapping_windows_and_keep_touching_ones_apart() -> None:
    assert merge_sessions([W(0, 10)], W(5, 15)) == (W(0, 15), [W(0, 10)])
    assert merge_sessions([W(0, 10)], W(10, 20)) == (W(10, 20), [])  # exactly gap apart
    # an out-of-order event bridges two sessions into one
    assert merge_sessions([W(0, 10), W(12, 22)], W(8, 18)) == (W(0, 22), [W(0, 10), W(12, 22)])


# --- clocks --------------------------------------------------------------------------------


def test_watermark_trails_the_latest_time_and_moves_with_the_system_clock() -> None:
    assert watermark(None, 100.0) == -math.inf
    state = observe(None, ts=50.0, now=100.0, delay=5.0)
    assert watermark(state, 100.0) == 45.0
    assert watermark(state, 103.0) == 48.0  # idle: moves on with system time
    state = observe(state, ts=40.0, now=103.0, delay=5.0)  # out of order: never goes back
    assert watermark(state, 103.0) == 48.0
    lazy = ClockState(45.0, 100.0)
    assert watermark(lazy, 108.0, idle=10.0) == 45.0  # quiet for less than idle: stays
    assert watermark(lazy, 112.0, idle=10.0) == 47.0


def test_event_time_accepts_seconds_and_aware_datetimes_only() -> None:
    clock = windows.event_time(lambda v: v, delay=1)
    assert clock.time_of(datetime(1970, 1, 1, 0, 1, tzinfo=UTC), 0) == 60.0
    assert clock.time_of(12, 0) == 12.0
    for bad in (datetime(2020, 1, 1), "12", math.nan, True):
        with pytest.raises(TypeError):
            clock.time_of(bad, 0)


# --- the planner ---------------------------------------------------------------------------


def spec(window: Any, lateness: float = 0.0, delay: float = 0.0, agg: Any = None) -> Spec:
    return Spec(window, agg or windows.counter(), lateness, delay, 0.0)


def items(window: Any, *events: tuple[str, float], ids: bool = False) -> list[Item[Any]]:
    return [
        Item(key, ts, ts, window.assign(ts), b"id%d" % i if ids else None)
        for i, (key, ts) in enumerate(events)
    ]


def test_plan_counts_out_of_order_events_within_the_delay_and_refuses_late_ones() -> None:
    window = windows.tumbling(10)
    state = Snapshot()
    placed = plan(
        items(window, ("a", 1), ("a", 12), ("a", 9), ("a", 7.5), ("b", 2)),
        state, spec(window, delay=3), now=0.0,
    )  # fmt: skip
    # a@12 sets a's watermark to 9: a@9 is still on time ([0,10) ends at 10 > 9), so is 7.5
    assert [o.kind for o in placed.outcomes] == ["folded"] * 5
    assert state.windows["a"][W(0, 10)].acc == 3 and state.windows["a"][W(10, 20)].acc == 1
    placed = plan(items(window, ("a", 16), ("a", 4)), state, spec(window, delay=3), now=0.0)
    late = placed.outcomes[1]  # a@16: watermark 13 >= 10: [0,10) is final, a@4 is late
    assert late.kind == "late" and late.missed == [W(0, 10)] and late.watermark == 13.0
    assert state.windows["a"][W(0, 10)].acc == 3  # not mixed in
    # lateness keeps a final window open a little longer
    lenient = Snapshot()
    placed = plan(items(window, ("a", 16), ("a", 4)), lenient, spec(window, 5, 3), now=0.0)
    assert [o.kind for o in placed.outcomes] == ["folded", "folded"]


def test_plan_skips_ids_already_folded_and_records_new_ones() -> None:
    window = windows.tumbling(10)
    state = Snapshot(seen={b"id0"})
    placed = plan(items(window, ("a", 1), ("a", 2), ids=True), state, spec(window), now=0.0)
    assert [o.kind for o in placed.outcomes] == ["duplicate", "folded"]
    assert placed.ids == [(b"id1", "a", 10.0)] and state.windows["a"][W(0, 10)].acc == 1


def test_plan_isolates_a_failing_fold() -> None:
    window = windows.tumbling(10)
    agg = windows.folder(lambda: 0, lambda acc, v: acc + 10 // (v - 2))
    state = Snapshot()
    placed = plan(items(window, ("a", 1), ("a", 2), ("a", 3)), state, spec(window, agg=agg), 0.0)
    assert [o.kind for o in placed.outcomes] == ["folded", "failed", "folded"]
    assert isinstance(placed.outcomes[1].error, ZeroDivisionError)
    assert state.windows["a"][W(0, 10)].acc == -10 + 10 and state.windows["a"][W(0, 10)].count == 2


def test_plan_merges_sessions_even_out_of_order_and_a_late_event_cannot_reopen_one() -> None:
    window = windows.session(5)
    agg = windows.collector()
    state = Snapshot()
    placed = plan(items(window, ("a", 0), ("a", 8), ("a", 4)), state, spec(window, agg=agg), 0.0)
    assert [o.windows for o in placed.outcomes] == [[W(0, 5)], [W(8, 13)], [W(0, 13)]]
    assert state.windows["a"] == {W(0, 13): state.windows["a"][W(0, 13)]}
    assert state.windows["a"][W(0, 13)].acc == [0, 8, 4]
    assert placed.deletes == {("a", W(0, 5)), ("a", W(8, 13))}  # rows a store must drop
    assert placed.merged == [("a", W(0, 5), W(0, 13)), ("a", W(8, 13), W(0, 13))]
    state.windows["a"][W(0, 13)].open = False  # its result is out
    placed = plan(items(window, ("a", 12)), state, spec(window, agg=agg), 0.0)
    assert placed.outcomes[0].kind == "late" and placed.outcomes[0].missed == [W(0, 13)]


def test_sliding_event_late_for_one_window_goes_whole_to_the_late_stream() -> None:
    window = windows.sliding(20, 10)
    state = Snapshot()
    placed = plan(items(window, ("a", 25), ("a", 15)), state, spec(window), now=0.0)
    late = placed.outcomes[1]  # watermark 25: [0,20) is final, [10,30) is not
    assert (
        late.kind == "late" and late.missed == [W(0, 20)] and late.windows == [W(0, 20), W(10, 30)]
    )
    assert state.windows["a"][W(10, 30)].acc == 1  # a@15 joined none of its windows


# --- the small-window operator in virtual time ------------------------------------------


class Harness:
    """Messages carrying {"k": key, "t": event time}, a recording settler, a fake reader."""

    def __init__(self, max_in_flight: int = 100, msg_timeout: float = 600.0) -> None:
        self.consumer = FakeConsumer(max_in_flight=max_in_flight)
        self.settler = RecordingSettler(consumer=self.consumer, msg_timeout=msg_timeout)
        self.scheduler = TestScheduler()

    def msg(self, key: str, t: float) -> Any:
        return self.settler.message(b"%s@%g" % (key.encode(), t)).with_value({"k": key, "t": t})

    def run(
        self, op: Any, *events: tuple[float, Any], end: float = 1000, settle: bool = True
    ) -> list[tuple[float, Any]]:
        source = self.scheduler.create_hot_observable(
            *(on_next(at, m) for at, m in events), on_completed(end)
        )
        out: list[tuple[float, Any]] = []

        def record(result: Any) -> None:
            out.append((self.scheduler.clock, result))
            if settle:
                result.settle()

        source.pipe(op).subscribe(record, scheduler=self.scheduler)
        self.scheduler.advance_to(end + 1)
        return out


def by_key(**options: Any) -> Any:
    options.setdefault("window", windows.tumbling(10))
    options.setdefault("clock", windows.event_time(lambda v: v["t"], delay=2))
    return windows.count(key=lambda v: v["k"], **options)


def test_event_time_windows_close_on_data_and_on_idle_time_and_route_late_events() -> None:
    h = Harness()
    op = by_key()
    late: list[Any] = []
    op.late.subscribe(late.append)
    m = [h.msg("a", 1), h.msg("a", 5), h.msg("a", 12), h.msg("a", 9), h.msg("a", 10.5),
         h.msg("b", 3)]  # fmt: skip
    out = h.run(op, *((201 + i, x) for i, x in enumerate(m)))
    assert [(at, tuple(r)) for at, r in out] == [
        (203, ("a", W(0, 10), 2)),  # a@12: watermark 10 closes [0,10) at once
        (213, ("a", W(10, 20), 2)),  # a's watermark 12 at 205, + 1/s while a is quiet
        (215, ("b", W(0, 10), 1)),  # b's watermark 1 at 206, reaches 10 at 215
    ]
    assert [(x.key, x.time, x.missed, x.watermark) for x in late] == [("a", 9, (W(0, 10),), 11)]
    assert out[0][1].messages == [m[0], m[1]] and out[0][1].count == 2
    # every counted message finished once its result was settled; the late one left to us
    assert sorted(h.settler.commands) == sorted(Command("FIN", x.id) for x in m if x is not m[3])
    assert op.stats() == {"folded": 5, "late": 1, "results": 3, "settled": 3}


def test_a_result_requeued_requeues_its_messages_as_one_backoff_step() -> None:
    h = Harness()
    m = [h.msg("a", 1), h.msg("a", 2)]
    out = h.run(by_key(), (201, m[0]), (202, m[1]), end=300, settle=False)
    assert [tuple(r) for _at, r in out] == [("a", W(0, 10), 2)]  # closed at completion
    out[0][1].requeue()
    assert h.settler.commands == [
        Command("REQ", m[0].id, None, True), Command("REQ", m[1].id, None, False)
    ]  # fmt: skip
    assert out[0][1].settle() is False  # one outcome per result


def test_held_messages_are_touched_and_a_redelivery_replaces_its_old_delivery() -> None:
    h = Harness(msg_timeout=20)
    first = h.msg("a", 1)
    again = h.settler.message(first.body, message_id=first.id, attempts=2).with_value(first.value)
    out = h.run(by_key(window=windows.tumbling(100)), (201, first), (205, again), end=235)
    assert h.settler.names() == ["TOUCH", "TOUCH", "TOUCH", "FIN"]  # at 211, 221, 231; end
    (result,) = [r for _at, r in out]
    assert result.value == 1 and result.messages == [again]


def test_sessions_merge_in_the_operator_and_carry_all_their_messages() -> None:
    h = Harness()
    op = windows.collect(
        key=lambda v: v["k"], window=windows.session(5),
        clock=windows.event_time(lambda v: v["t"], delay=10),
    )  # fmt: skip
    m = [h.msg("a", 100), h.msg("a", 108), h.msg("a", 104), h.msg("a", 120)]
    out = h.run(op, *((201 + i, x) for i, x in enumerate(m)))
    first = out[0][1]
    assert (first.window, first.value) == (W(100, 113), [m[0].value, m[1].value, m[2].value])
    assert sorted(x.id for x in first.messages) == sorted(x.id for x in m[:3])
    # a@120 at 204 moves the watermark to 110; it passes 113 at 207 and 125 at 219
    assert [(at, tuple(r)[1]) for at, r in out] == [(207, W(100, 113)), (219, W(120, 125))]


def test_a_closing_reader_gets_the_open_windows_messages_back_and_no_partial_result() -> None:
    h = Harness()
    m = [h.msg("a", 1), h.msg("a", 2)]
    h.scheduler.schedule_absolute(205, lambda *_: h.consumer.close())
    out = h.run(by_key(window=windows.tumbling(100)), (201, m[0]), (202, m[1]), end=206)
    assert out == []  # the reader closing is not the end of the input
    assert h.settler.commands == [Command("REQ", x.id, 0, False) for x in m]


def test_processing_time_windows_close_on_the_scheduler() -> None:
    h = Harness()
    op = windows.count(key=lambda v: v["k"], window=windows.tumbling(30))
    out = h.run(op, (201, h.msg("a", 0)), (205, h.msg("a", 0)), (215, h.msg("b", 0)), end=400)
    assert [(at, tuple(r)) for at, r in out] == [
        (210, ("a", W(180, 210), 2)),
        (240, ("b", W(210, 240), 1)),
    ]


def test_a_small_window_larger_than_max_in_flight_is_a_config_error() -> None:
    h = Harness(max_in_flight=3)
    m = [h.msg("a", i) for i in range(4)]
    source = h.scheduler.create_hot_observable(*(on_next(201 + i, x) for i, x in enumerate(m)))
    errors_seen: list[Exception] = []
    source.pipe(by_key()).subscribe(on_error=errors_seen.append, scheduler=h.scheduler)
    h.scheduler.advance_to(300)
    (error,) = errors_seen
    assert isinstance(error, errors.ConfigError) and error.option == "max_in_flight"
    assert "store" in str(error)
    # the three held messages go back at once (the stream ended: the fourth never reached it)
    assert h.settler.commands == [Command("REQ", x.id, 0, False) for x in m[:3]]


def test_a_held_window_outliving_max_msg_timeout_is_a_config_error() -> None:
    h = Harness()
    long_window = windows.count(key=lambda v: v["k"], window=windows.tumbling(3600))
    source = h.scheduler.create_hot_observable(on_next(201, h.msg("a", 0)))
    errors_seen: list[Exception] = []
    source.pipe(long_window).subscribe(on_error=errors_seen.append, scheduler=h.scheduler)
    h.scheduler.advance_to(300)
    assert isinstance(errors_seen[0], errors.ConfigError) and "max-msg-timeout" in str(
        errors_seen[0]
    )
    # event time cannot be checked up front: the oldest held message is watched instead
    h2 = Harness()
    slow = by_key(window=windows.tumbling(10_000))
    source = h2.scheduler.create_hot_observable(on_next(201, h2.msg("a", 0)))
    source.pipe(slow).subscribe(on_error=errors_seen.append, scheduler=h2.scheduler)
    h2.scheduler.advance_to(201 + 900)
    assert len(errors_seen) == 2 and "held a message" in str(errors_seen[1])
    assert h2.settler.commands[-1].name == "REQ"


def test_user_code_that_raises_requeues_and_reports() -> None:
    h = Harness()
    bad_key = windows.count(key=lambda v: v["missing"], window=windows.tumbling(10))
    m = h.msg("a", 1)
    h.run(bad_key, (201, m), end=210)
    assert h.settler.commands == [Command("REQ", m.id, None, True)]
    assert h.consumer.errors[0][2] is m and isinstance(h.consumer.errors[0][0], KeyError)
    # a subscriber raising on a result: the result is requeued (its messages), reported
    h2 = Harness()
    m2 = h2.msg("a", 1)
    source = h2.scheduler.create_hot_observable(on_next(201, m2), on_completed(210))

    def boom(_result: Any) -> None:
        raise RuntimeError("sink down")

    source.pipe(by_key()).subscribe(boom, scheduler=h2.scheduler)
    h2.scheduler.advance_to(300)
    assert h2.settler.commands == [Command("REQ", m2.id, None, True)]
    assert isinstance(h2.consumer.errors[0][0], RuntimeError)


def test_late_events_unobserved_are_finished_and_counted_and_observed_ones_are_yours() -> None:
    h = Harness()
    op = by_key()
    late_msg = h.msg("a", 1)
    h.run(op, (201, h.msg("a", 30)), (202, late_msg), end=210)
    assert Command("FIN", late_msg.id) in h.settler.commands
    assert op.stats()["late_unobserved"] == 1
    h2 = Harness()
    op2 = by_key()
    op2.late.pipe(nsq.settle()).subscribe()  # Late has settle(): rxnsq.ops.settle() knows it
    late2 = h2.msg("a", 1)
    h2.run(op2, (201, h2.msg("a", 30)), (202, late2), end=210)
    assert Command("FIN", late2.id) in h2.settler.commands and "late_unobserved" not in op2.stats()


def test_results_settle_through_rxnsq_ops_settle() -> None:
    h = Harness()
    m = h.msg("a", 1)
    source = h.scheduler.create_hot_observable(on_next(201, m), on_completed(210))
    out: list[Any] = []
    source.pipe(by_key(), nsq.settle()).subscribe(out.append, scheduler=h.scheduler)
    h.scheduler.advance_to(300)
    assert len(out) == 1 and h.settler.commands == [Command("FIN", m.id)]


@pytest.mark.parametrize(
    ("make", "option"),
    [
        (lambda: windows.tumbling(0), "size"),
        (lambda: windows.tumbling("60"), "size"),
        (lambda: windows.tumbling(60, offset=60), "offset"),
        (lambda: windows.sliding(60, 90), "step"),
        (lambda: windows.sliding(60, 0.01), "step"),
        (lambda: windows.session(-1), "gap"),
        (lambda: windows.event_time("t"), "timestamp"),
        (lambda: windows.event_time(len, delay=-1), "delay"),
        (lambda: windows.event_time(len, idle=math.inf), "idle"),
        (lambda: windows.count(key="k", window=windows.tumbling(1)), "key"),
        (lambda: windows.count(key=len, window=60), "window"),
        (lambda: windows.count(key=len, window=windows.tumbling(1), clock="event"), "clock"),
        (lambda: windows.count(key=len, window=windows.tumbling(1), lateness=-1), "lateness"),
        (lambda: windows.count(key=len, window=windows.tumbling(1), store="x.db"), "store"),
        (lambda: windows.count(key=len, window=windows.tumbling(1),
                               store=windows.SQLiteStore("x.db")), "name"),
        (lambda: windows.collect(key=len, window=windows.tumbling(1),
                                 store=windows.SQLiteStore("x.db"), name="c"), "store"),
        (lambda: windows.fold(lambda: 0, max, key=len, window=windows.session(5)), "window"),
        (lambda: windows.fold(0, max, key=len, window=windows.tumbling(5)), "initial"),
        (lambda: windows.reduce(None, key=len, window=windows.tumbling(5)), "fn"),
        (lambda: windows.aggregate(len, key=len, window=windows.tumbling(5)), "aggregation"),
        (lambda: windows.count(key=len, window=windows.tumbling(1), max_batch=0), "max_batch"),
        (lambda: windows.count(key=len, window=windows.tumbling(1), lease=0), "lease"),
        (lambda: windows.count(key=len, window=windows.tumbling(1), tick=-1), "tick"),
        (lambda: windows.count(key=len, window=windows.tumbling(1), id_retention="1"),
         "id_retention"),
        (lambda: windows.count(key=len, window=windows.tumbling(1), touch_interval=0),
         "touch_interval"),
        (lambda: windows.count(key=len, window=windows.tumbling(1), name=5), "name"),
        (lambda: windows.PostgresStore(5), "dsn"),
        (lambda: windows.PostgresStore("postgresql://x", pool_size=0), "pool_size"),
        (lambda: windows.SQLiteStore("x.db", timeout=0), "timeout"),
        (lambda: windows.SQLiteStore(5), "path"),
        (lambda: windows.SQLiteStore("x.db", synchronous="OFF"), "synchronous"),
    ],
)  # fmt: skip
def test_wrong_types_at_every_entry_point_are_config_errors(make: Any, option: str) -> None:
    with pytest.raises(errors.ConfigError) as caught:
        make()
    assert caught.value.option == option
