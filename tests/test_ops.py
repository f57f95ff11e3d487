"""Every operator of ``rxnsq.ops`` on its own: a recording settler, RxPY's virtual time, no
nsqd. Times are virtual seconds (one TestScheduler tick each)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import reactivex
from reactivex import operators as rx_ops
from reactivex.scheduler import ImmediateScheduler
from reactivex.testing import ReactiveTest, TestScheduler

import rxnsq.ops as nsq
from rxnsq import errors
from rxnsq.message import Message
from rxnsq.testing.fakes import Command, FakeConsumer, RecordingSettler

on_next, on_completed, on_error = (
    ReactiveTest.on_next,
    ReactiveTest.on_completed,
    ReactiveTest.on_error,
)


def values(records: list[Any]) -> list[Any]:
    """The emitted items of a TestScheduler run, without their times."""
    return [r.value.value for r in records if r.value.kind == "N"]


def run(
    stage: Any, *items: tuple[float, Any], scheduler: TestScheduler | None = None, end: float = 900
) -> tuple[TestScheduler, list[Any]]:
    scheduler = scheduler or TestScheduler()
    source = scheduler.create_hot_observable(
        *(on_next(at, item) for at, item in items), on_completed(end)
    )
    observed = scheduler.start(lambda: source.pipe(stage), disposed=2000)
    return scheduler, observed.messages


# --- decode, where, process ------------------------------------------------------------------


def test_decode_maps_values_and_finishes_what_it_cannot_decode() -> None:
    settler = RecordingSettler()
    good, bad = settler.message(b"41"), settler.message(b"x")
    failures: list[tuple[Message[Any], BaseException]] = []
    _, out = run(
        nsq.decode(int, on_error=lambda m, e: failures.append((m, e))), (210, good), (220, bad)
    )
    assert [m.value for m in values(out)] == [41]
    assert values(out)[0].delivery is good.delivery  # same delivery, new value
    assert settler.commands == [Command("FIN", bad.id)]  # bad input: finished, no backoff
    assert failures[0][0] is bad and isinstance(failures[0][1], ValueError)


def test_decode_survives_a_raising_on_error_hook(caplog: pytest.LogCaptureFixture) -> None:
    settler = RecordingSettler()

    def hook(_m: Message[Any], _e: BaseException) -> None:
        raise RuntimeError("hook bug")

    _, out = run(nsq.decode(int, on_error=hook), (210, settler.message(b"x")))
    assert settler.names() == ["FIN"] and "on_error hook failed" in caplog.text
    assert out[-1].value.kind == "C"


def test_where_finishes_what_it_drops() -> None:
    settler = RecordingSettler()
    keep, drop = settler.message(b"keep"), settler.message(b"drop")
    _, out = run(nsq.where(lambda v: v == b"keep"), (210, keep), (220, drop))
    assert values(out) == [keep] and settler.commands == [Command("FIN", drop.id)]


def test_process_finishes_on_return_and_requeues_on_raise() -> None:
    settler = RecordingSettler()
    ok, fails = settler.message(b"2"), settler.message(b"0")
    reported: list[Message[Any]] = []
    stage = nsq.process(
        lambda v: 10 // int(v), delay=3.0, backoff=False, on_error=lambda m, e: reported.append(m)
    )
    _, out = run(stage, (210, ok), (220, fails))
    assert [m.value for m in values(out)] == [5]
    assert settler.commands == [Command("FIN", ok.id), Command("REQ", fails.id, 3.0, False)]
    assert reported == [fails]


def test_process_emits_failures_when_asked() -> None:
    settler = RecordingSettler()
    fails = settler.message(b"0")
    _, out = run(nsq.process(lambda v: 1 // int(v), emit_failures=True), (210, fails))
    (failure,) = values(out)
    assert isinstance(failure, nsq.Failure) and failure.message is fails
    assert isinstance(failure.error, ZeroDivisionError)
    assert settler.commands == [Command("REQ", fails.id, None, True)]


# --- batch ---------------------------------------------------------------------------------


def test_batch_closes_on_count_and_on_time() -> None:
    settler = RecordingSettler()
    m = [settler.message(b"%d" % i) for i in range(5)]
    _, out = run(nsq.batch(3, 50), *((210 + i, m[i]) for i in range(5)))
    batches = values(out)
    assert [list(b) for b in batches] == [m[:3], m[3:]]
    assert [r.time for r in out if r.value.kind == "N"] == [212, 263]  # full; 50 s after m[3]
    # a batch settles nothing itself; it TOUCHes what it holds at half msg_timeout (30 s)
    assert settler.commands == [Command("TOUCH", m[3].id), Command("TOUCH", m[4].id)]


def test_batch_closes_on_bytes() -> None:
    settler = RecordingSettler()
    m = [settler.message(b"x" * 40) for _ in range(4)]
    _, out = run(nsq.batch(100, 50, max_bytes=100), *((210 + i, m[i]) for i in range(4)))
    assert [len(b) for b in values(out)] == [2, 2]
    assert [b.size for b in values(out)] == [80, 80]


def test_batch_touches_what_it_holds() -> None:
    settler = RecordingSettler(msg_timeout=20.0)
    m = settler.message(b"x")
    run(nsq.batch(10, 35), (210, m))  # TOUCH every msg_timeout / 2 = 10 s until 245
    assert settler.commands == [Command("TOUCH", m.id)] * 3
    settler.commands.clear()
    run(nsq.batch(10, 35, touch_interval=4), (210, settler.message(b"y")))
    assert len(settler.commands) == 8  # 214, 218, ... 242


def test_keyed_batch_keeps_one_batch_per_key() -> None:
    settler = RecordingSettler()
    m = [settler.message(b"%d" % i) for i in range(6)]
    _, out = run(nsq.batch(2, 50, key=lambda v: int(v) % 3), *((210 + i, m[i]) for i in range(6)))
    assert sorted((b.key, [x.value for x in b]) for b in values(out)) == [
        (0, [b"0", b"3"]), (1, [b"1", b"4"]), (2, [b"2", b"5"]),
    ]  # fmt: skip


def test_batch_flushes_every_key_when_the_reader_is_starved() -> None:
    consumer = FakeConsumer(max_in_flight=4)
    settler = RecordingSettler(consumer=consumer)
    m = [settler.message(b"%d" % i) for i in range(4)]
    scheduler = TestScheduler()
    scheduler.schedule_absolute(212.5, lambda *_: setattr(consumer, "starved", True))
    _, out = run(
        nsq.batch(4, 50, key=lambda v: int(v) % 2), *((210 + i, m[i]) for i in range(4)),
        scheduler=scheduler,
    )  # fmt: skip
    # 2 keys x count 4 can never fill 4 slots: starvation at m[3] flushes both at once
    assert [(r.time, len(r.value.value)) for r in out if r.value.kind == "N"] == [
        (213, 2),
        (213, 2),
    ]


def test_batch_flushes_when_the_reader_starts_closing() -> None:
    consumer = FakeConsumer()
    settler = RecordingSettler(consumer=consumer)
    scheduler = TestScheduler()
    scheduler.schedule_absolute(230, lambda *_: consumer.close())
    _, out = run(nsq.batch(10, 500), (210, settler.message(b"a")), scheduler=scheduler)
    assert [(r.time, len(r.value.value)) for r in out if r.value.kind == "N"] == [(230, 1)]


def test_batch_count_above_max_in_flight_is_an_error() -> None:
    settler = RecordingSettler(consumer=FakeConsumer(max_in_flight=5))
    m = settler.message(b"x")
    _, out = run(nsq.batch(10, 1), (210, m))
    assert out[0].value.kind == "E" and isinstance(out[0].value.exception, errors.ConfigError)
    assert settler.commands == [Command("REQ", m.id, 0, False)]


def test_batch_completion_flushes_and_dispose_requeues() -> None:
    settler = RecordingSettler(msg_timeout=600)
    a, b = settler.message(b"a"), settler.message(b"b")
    _, out = run(nsq.batch(10, 500), (210, a), end=300)
    assert [(r.time, list(r.value.value)) for r in out if r.value.kind == "N"] == [(300, [a])]
    scheduler = TestScheduler()
    source = scheduler.create_hot_observable(on_next(210, b))
    scheduler.start(lambda: source.pipe(nsq.batch(10, 500)), disposed=250)
    assert settler.commands == [Command("REQ", b.id, 0, False)]


def test_a_subscriber_raising_on_a_timed_batch_requeues_and_reports() -> None:
    consumer = FakeConsumer()
    settler = RecordingSettler(consumer=consumer)
    m = [settler.message(b"%d" % i) for i in range(2)]
    scheduler = TestScheduler()
    source = scheduler.create_hot_observable(on_next(210, m[0]), on_next(211, m[1]))

    def boom(_batch: Any) -> None:
        raise RuntimeError("subscriber bug")

    source.pipe(nsq.batch(10, 5)).subscribe(boom, scheduler=scheduler)
    scheduler.advance_to(300)  # the batch closes on time, from the timer
    assert settler.commands == [
        Command("REQ", m[0].id, None, True),
        Command("REQ", m[1].id, None, False),
    ]
    assert consumer.errors[0][1] == "batch" and consumer.errors[0][2] is m[0]


@pytest.mark.parametrize(
    ("option", "value"),
    [("count", 0), ("count", "5"), ("timespan", 0), ("timespan", "1"), ("max_bytes", 0),
     ("key", "user"), ("touch_interval", -1)],
)  # fmt: skip
def test_batch_refuses_bad_options(option: str, value: Any) -> None:
    options: dict[str, Any] = {"count": 5, "timespan": 1.0, option: value}
    with pytest.raises(errors.ConfigError, match=option):
        nsq.batch(**options)


# --- process_batch, settle -----------------------------------------------------------------


def test_process_batch_finishes_all_or_requeues_all_as_one_backoff_step() -> None:
    settler = RecordingSettler()
    good = nsq.Batch([settler.message(b"1"), settler.message(b"2")])
    bad = nsq.Batch([settler.message(b"x"), settler.message(b"y")])
    seen: list[Any] = []

    def write(rows: list[bytes]) -> None:
        if b"x" in rows:
            raise OSError("database down")
        seen.extend(rows)

    _, out = run(nsq.process_batch(write, emit_failures=True, delay=7), (210, good), (220, bad))
    assert seen == [b"1", b"2"]
    assert values(out)[0] is good and isinstance(values(out)[1], nsq.Failure)
    assert settler.commands == [
        Command("FIN", good[0].id), Command("FIN", good[1].id),
        Command("REQ", bad[0].id, 7, True), Command("REQ", bad[1].id, 7, False),
    ]  # fmt: skip


def test_settle_settles_each_kind_of_item() -> None:
    settler = RecordingSettler()
    message, failed = settler.message(b"m"), settler.message(b"f")
    batch = nsq.Batch([settler.message(b"b")])
    settled: list[str] = []

    class Result:
        def settle(self) -> None:
            settled.append("result")

    items = [message, batch, nsq.Failure(failed, ValueError()), Result()]
    _, out = run(nsq.settle(), *((210 + i, item) for i, item in enumerate(items)))
    assert values(out) == items
    assert settler.names() == ["FIN", "FIN", "REQ"] and settled == ["result"]


# --- take, peek, guard ---------------------------------------------------------------------


def test_take_requeues_what_arrives_after_enough() -> None:
    settler = RecordingSettler()
    m = [settler.message(b"%d" % i) for i in range(3)]
    scheduler = TestScheduler()
    source = scheduler.create_hot_observable(*(on_next(210 + i, m[i]) for i in range(3)))
    feeds: list[Any] = []
    source.subscribe(feeds.append, scheduler=scheduler)  # keeps the hot source going
    observed = scheduler.start(lambda: source.pipe(nsq.take(1)))
    assert values(observed.messages) == [m[0]] and observed.messages[-1].value.kind == "C"
    assert settler.commands == []  # the later ones never reached take once it left


def test_peek_requeues_each_message_after_emitting_it() -> None:
    settler = RecordingSettler()
    m = [settler.message(b"%d" % i) for i in range(2)]
    _, out = run(nsq.peek(2), (210, m[0]), (220, m[1]))
    assert values(out) == m and settler.commands == [Command("REQ", x.id, 0, False) for x in m]


def test_guard_finishes_what_a_plain_filter_drops() -> None:
    settler = RecordingSettler()
    m = [settler.message(b"%d" % i) for i in range(4)]
    even = nsq.guard(rx_ops.filter(lambda msg: int(msg.value) % 2 == 0))
    _, out = run(even, *((210 + i, m[i]) for i in range(4)))
    assert values(out) == [m[0], m[2]]
    assert settler.commands == [Command("FIN", m[1].id), Command("FIN", m[3].id)]


def test_guard_settles_a_holding_operator_drops_when_a_later_message_comes_out() -> None:
    settler = RecordingSettler()
    m = [settler.message(b"%d" % i) for i in range(4)]
    scheduler = TestScheduler()
    last_of_burst = nsq.guard(rx_ops.debounce(5, scheduler=scheduler), dropped="req", holds=True)
    _, out = run(
        last_of_burst, (210, m[0]), (211, m[1]), (212, m[2]), (230, m[3]), scheduler=scheduler
    )
    assert values(out) == [m[2], m[3]]
    assert settler.commands == [
        Command("REQ", m[0].id, 0, False),
        Command("REQ", m[1].id, 0, False),
    ]


def test_guard_settles_leftovers_at_completion_with_a_function() -> None:
    settler = RecordingSettler()
    m = [settler.message(b"%d" % i) for i in range(3)]
    dropped: list[Message[Any]] = []
    under_one = nsq.guard(rx_ops.take_while(lambda msg: int(msg.value) < 1), dropped=dropped.append)
    _, out = run(under_one, *((210 + i, m[i]) for i in range(3)))
    assert values(out) == [m[0]] and dropped == [m[1]]
    assert settler.commands == []  # m[2] never came: the subscription ended with take_while


def test_guard_refuses_what_is_not_an_operator() -> None:
    with pytest.raises(errors.ConfigError, match="operator"):
        nsq.guard(5)
    with pytest.raises(errors.ConfigError, match="dropped"):
        nsq.guard(rx_ops.filter(bool), dropped="drop")


# --- process_async (a real loop for the coroutines, virtual time for the TOUCH timers) -----


async def test_process_async_bounds_concurrency_and_touches_running_work() -> None:
    settler = RecordingSettler(msg_timeout=10.0)
    m = [settler.message(b"%d" % i) for i in range(3)]
    gates = {x.value: asyncio.Event() for x in m}
    running: list[bytes] = []

    async def work(value: bytes) -> bytes:
        running.append(value)
        await gates[value].wait()
        return value + b"!"

    scheduler = TestScheduler()
    out: list[Any] = []
    source = reactivex.from_iterable(m, scheduler=ImmediateScheduler())
    source.pipe(nsq.process_async(work, concurrency=2, touch_interval=4)).subscribe(
        out.append, scheduler=scheduler
    )
    await asyncio.sleep(0)
    assert running == [b"0", b"1"]  # the third waits (and stays in flight)
    scheduler.advance_by(9)  # two TOUCHes each for the two running calls
    assert settler.names() == ["TOUCH"] * 4
    gates[b"0"].set()
    await asyncio.sleep(0.01)
    assert [x.value for x in out] == [b"0!"] and running == [b"0", b"1", b"2"]
    assert settler.commands[4] == Command("FIN", m[0].id)
    gates[b"1"].set()
    gates[b"2"].set()
    await asyncio.sleep(0.01)
    assert sorted(x.value for x in out) == [b"0!", b"1!", b"2!"]
    assert settler.names().count("FIN") == 3


async def test_process_async_requeues_failures_and_cancelled_work() -> None:
    settler = RecordingSettler()
    fails, slow = settler.message(b"fail"), settler.message(b"slow")

    async def work(value: bytes) -> bytes:
        if value == b"fail":
            raise ValueError("no")
        await asyncio.sleep(10)
        return value

    out: list[Any] = []
    source = reactivex.from_iterable([fails, slow], scheduler=ImmediateScheduler())
    subscription = source.pipe(nsq.process_async(work, emit_failures=True, touch=False)).subscribe(
        out.append, scheduler=TestScheduler()
    )
    await asyncio.sleep(0.01)
    assert isinstance(out[0], nsq.Failure) and out[0].message is fails
    subscription.dispose()  # the slow call is cancelled and its message given back at once
    await asyncio.sleep(0.01)
    assert settler.commands == [
        Command("REQ", fails.id, None, True),
        Command("REQ", slow.id, 0, False),
    ]


@pytest.mark.parametrize("fn", [None, "f", 5])
def test_stage_functions_must_be_callable(fn: Any) -> None:
    for make in (nsq.decode, nsq.where, nsq.process, nsq.process_async, nsq.process_batch):
        with pytest.raises(errors.ConfigError):
            make(fn)
    with pytest.raises(errors.ConfigError, match="concurrency"):
        nsq.process_async(asyncio.sleep, concurrency=0)


def test_a_failing_stage_without_a_hook_reports_to_the_reader() -> None:
    consumer = FakeConsumer()
    settler = RecordingSettler(consumer=consumer)
    fails = settler.message(b"0")
    run(nsq.process(lambda v: 1 // int(v)), (210, fails))
    run(nsq.decode(int), (210, settler.message(b"x")))
    run(nsq.process_batch(lambda rows: 1 // 0), (210, nsq.Batch([settler.message(b"b")])))
    assert [(type(e).__name__, stage) for e, stage, _m in consumer.errors] == [
        ("ZeroDivisionError", "process"), ("ValueError", "decode"),
        ("ZeroDivisionError", "process_batch"),
    ]  # fmt: skip
    assert consumer.errors[0][2] is fails
