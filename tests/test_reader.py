"""The Reader and the ack-aware operators against real nsqd."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections import Counter

import pytest
from reactivex import operators as rx_ops

import rxnsq.ops as nsq
from rxnsq import errors
from rxnsq.flow import BackoffState, ExponentialBackoff
from rxnsq.message import Message
from rxnsq.reader import Reader
from rxnsq.testing import eventually, publish

pytestmark = pytest.mark.nsqd


def bodies(n: int, prefix: str = "m") -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(n)]


async def test_constructing_does_no_io_and_validates() -> None:
    reader = Reader("t", "c", nsqd_tcp_addresses=["127.0.0.1:1"])  # nothing listens there
    assert reader.connections == {}
    with pytest.raises(errors.InvalidNameError):
        Reader("bad topic", "c", nsqd_tcp_addresses="127.0.0.1:4150")
    with pytest.raises(errors.ConfigError, match="max_in_flight"):
        Reader("t", "c", nsqd_tcp_addresses="127.0.0.1:4150", max_in_flight=-1)
    with pytest.raises(errors.ConfigError, match="lookupd_http_addresses"):
        Reader("t", "c")
    with pytest.raises(errors.ConfigError, match="heartbeat_interval"):
        Reader("t", "c", nsqd_tcp_addresses="127.0.0.1:4150", heartbeat_interval=0.1)
    # tuples of addresses work (pynsq crashed on them)
    assert Reader("t", "c", nsqd_tcp_addresses=("a:1", "b:2")).nsqd_tcp_addresses == ("a:1", "b:2")


def test_subscribing_without_a_running_loop_says_what_to_do() -> None:
    reader = Reader("t", "c", nsqd_tcp_addresses="127.0.0.1:4150")
    failures: list[Exception] = []
    reader.messages.subscribe(on_error=failures.append)
    assert failures and "running asyncio loop" in str(failures[0])


async def test_pipeline_processes_everything_once(nsqd) -> None:
    await publish(nsqd.tcp_address, "pipe", bodies(2000))
    reader = Reader("pipe", "c", nsqd_tcp_addresses=[nsqd.tcp_address], max_in_flight=200)
    seen: Counter[bytes] = Counter()
    done = asyncio.get_running_loop().create_future()

    def record(value: bytes) -> bytes:
        seen[value] += 1
        if len(seen) == 2000 and not done.done():
            done.set_result(None)
        return value

    reader.messages.pipe(nsq.process(record)).subscribe()
    await asyncio.wait_for(done, 30)
    await reader.close()
    assert len(seen) == 2000 and max(seen.values()) == 1
    stats = nsqd.channel_stats("pipe", "c")
    assert stats["depth"] == 0 and stats["in_flight_count"] == 0
    assert stats["message_count"] == 2000 and stats["requeue_count"] == 0
    assert reader.connections == {}


async def test_messages_is_hot_and_shared(nsqd) -> None:
    reader = Reader("shared", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=10)
    a: list[bytes] = []
    b: list[bytes] = []
    sub_a = reader.messages.subscribe(lambda m: a.append(m.body))
    sub_b = reader.messages.pipe(nsq.settle()).subscribe(lambda m: b.append(m.body))
    await reader.start()
    await publish(nsqd.tcp_address, "shared", bodies(20))
    await eventually(lambda: len(b) == 20)
    assert sorted(a) == sorted(b)
    clients = nsqd.stats(topic="shared")["topics"][0]["channels"][0]["clients"]
    assert len(clients) == 1  # one SUB however many subscribers
    sub_a.dispose()
    sub_b.dispose()
    await reader.close()


async def test_inside_a_running_loop_with_await(nsqd) -> None:
    """As in a Jupyter cell: top-level await on a pipeline, no blocking run call."""
    await publish(nsqd.tcp_address, "nb", bodies(10))
    reader = Reader("nb", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=5)
    got = await reader.messages.pipe(
        nsq.take(3), nsq.settle(), rx_ops.map(lambda m: m.body), rx_ops.to_list()
    )
    assert len(got) == 3
    await reader.close()  # already closing after the last dispose; waits for it
    # the 3 were finished, the rest (delivered or not) are back in the channel
    stats = await eventually(
        lambda: (s := nsqd.channel_stats("nb", "c"))["in_flight_count"] == 0 and s
    )
    assert stats["depth"] == 7


async def test_peek_consumes_nothing(nsqd) -> None:
    await publish(nsqd.tcp_address, "peek", bodies(5))
    reader = Reader("peek", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=5)
    got = await reader.messages.pipe(nsq.peek(2), rx_ops.to_list())
    assert len(got) == 2
    await reader.close()
    stats = await eventually(
        lambda: (s := nsqd.channel_stats("peek", "c"))["in_flight_count"] == 0 and s
    )
    assert stats["depth"] == 5


async def test_slow_async_stage_never_exceeds_max_in_flight(nsqd) -> None:
    await publish(nsqd.tcp_address, "slow", bodies(300))
    reader = Reader("slow", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=20)
    done: list[int] = []
    peak = {"client": 0, "nsqd": 0}

    async def slow(value: bytes) -> int:
        await asyncio.sleep(0.01)
        return len(value)

    def unsettled() -> int:
        return sum(c.in_flight for c in reader.connections.values())

    reader.messages.pipe(nsq.process_async(slow, concurrency=4)).subscribe(lambda m: done.append(1))

    async def watch() -> None:
        while len(done) < 300:
            peak["client"] = max(peak["client"], unsettled())
            peak["nsqd"] = max(
                peak["nsqd"], nsqd.channel_stats("slow", "c").get("in_flight_count", 0)
            )
            await asyncio.sleep(0.02)

    await asyncio.wait_for(watch(), 60)
    await reader.close()
    assert 0 < peak["client"] <= 20
    assert 0 < peak["nsqd"] <= 20


async def test_batches_with_failures_are_retried_and_backoff_shows_on_the_wire(nsqd) -> None:
    n = 1000
    await publish(nsqd.tcp_address, "win", [json.dumps({"n": i}).encode() for i in range(n)])
    reader = Reader(
        "win",
        "c",
        nsqd_tcp_addresses=nsqd.tcp_address,
        max_in_flight=200,
        backoff=ExponentialBackoff(0.1),
        default_requeue_delay=0,
    )
    done: set[int] = set()
    calls = {"ok": 0, "failed": 0}
    failed_sizes: list[int] = []
    states: list[BackoffState] = []
    reader.backoff.subscribe(states.append)

    def write_rows(rows: list[dict[str, int]]) -> None:
        calls_total = calls["ok"] + calls["failed"]
        if calls_total in (2, 3, 5):  # three windows fail once each
            calls["failed"] += 1
            failed_sizes.append(len(rows))
            raise RuntimeError("database unavailable")
        calls["ok"] += 1
        done.update(r["n"] for r in rows)

    reader.messages.pipe(
        nsq.decode(json.loads),
        nsq.batch(100, timespan=0.2),
        nsq.process_batch(write_rows),
    ).subscribe()

    ready_counts: list[int] = []

    async def watch() -> None:
        while len(done) < n:
            clients = nsqd.channel_stats("win", "c").get("clients") or []
            ready_counts.extend(c["ready_count"] for c in clients)
            await asyncio.sleep(0.02)

    await asyncio.wait_for(watch(), 60)
    await reader.close()
    assert done == set(range(n))
    assert calls["failed"] == 3
    stats = nsqd.channel_stats("win", "c")
    assert stats["depth"] == 0 and stats["in_flight_count"] == 0
    # every message of the three failed batches came back (in backoff, with RDY 0 or 1,
    # nsqd sends nothing more, so a batch flushes with what it holds rather than wait)
    assert failed_sizes[0] == 100 and stats["requeue_count"] == sum(failed_sizes)
    # backoff on the wire: RDY dropped to 0 and came back up to max_in_flight
    assert 0 in ready_counts and 200 in ready_counts
    first_zero = ready_counts.index(0)
    assert 200 in ready_counts[first_zero:]
    assert max(s.level for s in states) >= 1 and states[-1].level == 0


async def test_pause_and_resume(nsqd) -> None:
    reader = Reader("pause", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=10)
    got: list[bytes] = []
    reader.messages.pipe(nsq.settle()).subscribe(lambda m: got.append(m.body))
    await reader.start()
    reader.set_max_in_flight(0)
    await eventually(lambda: nsqd.channel_stats("pause", "c").get("clients"))
    await eventually(lambda: nsqd.channel_stats("pause", "c")["clients"][0]["ready_count"] == 0)
    await publish(nsqd.tcp_address, "pause", bodies(30))
    await asyncio.sleep(0.5)
    assert got == []
    reader.set_max_in_flight(10)
    await eventually(lambda: len(got) == 30)
    await reader.close()


async def test_close_leaves_nothing_behind(nsqd) -> None:
    await publish(nsqd.tcp_address, "cl", bodies(50))
    reader = Reader("cl", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=10)
    held: list[Message[bytes]] = []
    reader.messages.subscribe(held.append)  # never settles: close must requeue
    await eventually(lambda: len(held) == 10)
    before = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    await reader.close(timeout=0.3)
    assert all(m.outcome == "req" for m in held)
    assert reader.connections == {}
    leftover = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    assert not {t for t in leftover if "rxnsq" in t.get_name()}
    assert len(leftover) <= len(before)
    # nsqd reaps the closed client a moment after the socket closes
    stats = await eventually(
        lambda: (
            (s := nsqd.channel_stats("cl", "c"))["in_flight_count"] == 0 and not s["clients"] and s
        )
    )
    assert stats["depth"] == 50


async def test_max_tries_gives_up_then_finishes(nsqd) -> None:
    await publish(nsqd.tcp_address, "poison", [b"bad"])
    given: list[Message[bytes]] = []
    reader = Reader(
        "poison",
        "c",
        nsqd_tcp_addresses=nsqd.tcp_address,
        max_tries=3,
        max_backoff_duration=0,
        giving_up=given.append,
    )
    attempts: list[int] = []

    def fail(value: bytes) -> None:
        raise ValueError(value)

    reader.messages.pipe(
        rx_ops.do_action(lambda m: attempts.append(m.attempts)), nsq.process(fail, delay=0)
    ).subscribe()
    await eventually(lambda: given)
    assert attempts == [1, 2, 3]
    assert given[0].attempts == 4 and given[0].outcome == "fin"
    stats = await eventually(
        lambda: (s := nsqd.channel_stats("poison", "c"))["in_flight_count"] == 0 and s
    )
    assert stats["depth"] == 0 and reader.given_up == 1
    await reader.close()


async def test_async_giving_up_hook_runs_before_fin(nsqd) -> None:
    await publish(nsqd.tcp_address, "dlq", [b"x"])
    order: list[str] = []

    async def dead_letter(message: Message[bytes]) -> None:
        await asyncio.sleep(0.05)
        order.append(f"dead-lettered, outcome={message.outcome}")

    reader = Reader("dlq", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_tries=1,
                    max_backoff_duration=0, giving_up=dead_letter)  # fmt: skip
    reader.messages.pipe(nsq.process(lambda v: 1 / 0, delay=0)).subscribe()
    await eventually(lambda: reader.given_up == 1 and order)
    await eventually(lambda: nsqd.channel_stats("dlq", "c")["in_flight_count"] == 0)
    assert order == ["dead-lettered, outcome=None"]
    assert nsqd.channel_stats("dlq", "c")["depth"] == 0
    await reader.close()


async def test_decode_and_where_settle_what_they_drop(nsqd) -> None:
    payloads = [b'{"ok": true}', b"not json", b'{"ok": false}', b'{"ok": true}']
    await publish(nsqd.tcp_address, "dw", payloads)
    reader = Reader("dw", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=10)
    bad: list[bytes] = []
    kept: list[dict[str, bool]] = []
    reader.messages.pipe(
        nsq.decode(json.loads, on_error=lambda m, exc: bad.append(m.body)),
        nsq.where(lambda v: v["ok"]),
        nsq.settle(),
    ).subscribe(lambda m: kept.append(m.value))
    stats = await eventually(
        lambda: (
            (s := nsqd.channel_stats("dw", "c"))
            and s["message_count"] == 4
            and s["in_flight_count"] == 0
            and s
        )
    )
    assert kept == [{"ok": True}, {"ok": True}] and bad == [b"not json"]
    assert stats["requeue_count"] == 0 and stats["depth"] == 0
    await reader.close()


async def test_batch_refuses_a_count_above_max_in_flight(nsqd) -> None:
    await publish(nsqd.tcp_address, "big", bodies(5))
    reader = Reader("big", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=10)
    failures: list[Exception] = []
    reader.messages.pipe(nsq.batch(50, 1.0)).subscribe(on_error=failures.append)
    await eventually(lambda: failures)
    assert isinstance(failures[0], errors.ConfigError) and "max_in_flight" in str(failures[0])
    await reader.close()


async def test_batch_touches_what_it_holds(nsqd_factory) -> None:
    nsqd = nsqd_factory(extra_args=["--msg-timeout=2s"])
    await publish(nsqd.tcp_address, "hold", bodies(3))
    reader = Reader("hold", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=10)
    batches: list[nsq.Batch[bytes]] = []
    # a batch open for 4.5 s, twice the message timeout: TOUCH keeps it alive
    reader.messages.pipe(nsq.batch(10, timespan=4.5), nsq.settle()).subscribe(batches.append)
    await eventually(lambda: batches, timeout=15)
    assert len(batches[0]) == 3 and all(m.attempts == 1 for m in batches[0])
    stats = await eventually(
        lambda: (s := nsqd.channel_stats("hold", "c"))["in_flight_count"] == 0 and s
    )
    assert stats["timeout_count"] == 0 and stats["depth"] == 0
    await reader.close()


async def test_iter_pulls_with_a_bounded_queue(nsqd) -> None:
    await publish(nsqd.tcp_address, "pull", bodies(40))
    reader = Reader("pull", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=100)
    got: list[bytes] = []
    peak = 0
    async for message in reader.iter(maxsize=5):
        peak = max(peak, sum(c.in_flight for c in reader.connections.values()))
        got.append(message.body)
        message.fin()
        if len(got) == 25:
            break
    await reader.close()
    assert len(got) == 25 and peak <= 5
    stats = await eventually(
        lambda: (s := nsqd.channel_stats("pull", "c"))["in_flight_count"] == 0 and s
    )
    assert stats["depth"] == 15


async def test_direct_nsqd_reconnects_after_a_restart(nsqd) -> None:
    reader = Reader("rc", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=10,
                    reconnect_interval=0.1)  # fmt: skip
    got: set[bytes] = set()
    reader.messages.pipe(nsq.settle()).subscribe(lambda m: got.add(m.body))
    await reader.start()
    await publish(nsqd.tcp_address, "rc", bodies(10, "a"))
    await eventually(lambda: len(got) == 10)
    await asyncio.to_thread(nsqd.stop)
    await eventually(lambda: not reader.connections)
    await asyncio.to_thread(nsqd.restart)
    await eventually(lambda: reader.connections, timeout=10)
    await publish(nsqd.tcp_address, "rc", bodies(10, "b"))
    await eventually(lambda: len(got) == 20)
    await reader.close()


async def test_default_requeue_delay_grows_with_attempts_and_is_capped(nsqd) -> None:
    reader = Reader("rq", "c", nsqd_tcp_addresses=nsqd.tcp_address,
                    default_requeue_delay=10, max_requeue_delay=25)  # fmt: skip
    assert [reader._requeue_delay(a) for a in (1, 2, 3, 9)] == [10, 20, 25, 25]
    await publish(nsqd.tcp_address, "rq", [b"x"])
    got: list[Message[bytes]] = []
    reader.messages.subscribe(got.append)
    await eventually(lambda: got)
    got[0].req(backoff=False)  # default delay for attempt 1: 10 s -> deferred in nsqd
    stats = await eventually(lambda: (s := nsqd.channel_stats("rq", "c"))["deferred_count"] and s)
    assert stats["deferred_count"] == 1 and stats["depth"] == 0
    await reader.close()


async def test_checksum_over_many_messages(nsqd) -> None:
    payloads = [f"{i}:{'x' * (i % 97)}".encode() for i in range(5000)]
    await publish(nsqd.tcp_address, "sum", payloads)
    reader = Reader("sum", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=500,
                    snappy=True)  # fmt: skip
    checksum = 0
    count = 0
    async for message in reader.iter():
        checksum ^= zlib.crc32(message.body)
        count += 1
        message.fin()
        if count == len(payloads):
            break
    await reader.close()
    expected = 0
    for p in payloads:
        expected ^= zlib.crc32(p)
    assert count == 5000 and checksum == expected
