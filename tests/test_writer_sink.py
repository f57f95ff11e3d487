"""The sink's three ways in (on_next, await send, await feed), its bounds, and feeding it from
other threads (RxPY's default timer threads, a plain threading.Thread), against real nsqd."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import reactivex
from reactivex import operators as ops

from rxnsq import errors
from rxnsq.testing import eventually
from rxnsq.writer import PublishResult, Writer

pytestmark = pytest.mark.nsqd


def message_count(nsqd: Any, topic: str) -> int:
    topics = nsqd.stats(topic=topic)["topics"] or []
    return int(topics[0]["message_count"]) if topics else 0


async def test_await_send_holds_a_fast_producer_to_the_bound(nsqd) -> None:
    writer = Writer(nsqd.tcp_address)
    sink = writer.sink("bp", max_pending=1000, max_batch=200)
    peak = 0
    for i in range(30_000):
        await sink.send(b"%d" % i)
        peak = max(peak, sink.pending)
    sink.on_completed()
    await asyncio.wait_for(sink.done, 30)
    assert peak <= 1000
    assert sink.fed == sink.confirmed == 30_000 and sink.failed == 0
    await writer.close()
    assert message_count(nsqd, "bp") == 30_000


async def test_await_send_holds_to_the_byte_bound(nsqd) -> None:
    writer = Writer(nsqd.tcp_address)
    sink = writer.sink("bb", max_pending_bytes=10_000, max_batch=500)
    peak = 0
    for _ in range(2_000):
        await sink.send(b"x" * 1000)
        peak = max(peak, sink.pending_bytes)
    sink.on_completed()
    await asyncio.wait_for(sink.done, 30)
    assert peak <= 10_000 and sink.confirmed == 2_000
    await writer.close()


async def test_feed_takes_iterables_and_async_iterables(nsqd) -> None:
    writer = Writer(nsqd.tcp_address)
    sink = writer.sink("feed", max_pending=100)

    async def numbers() -> AsyncIterator[bytes]:
        for i in range(5_000):
            yield b"a%d" % i

    assert await sink.feed(numbers()) == 5_000
    assert await sink.feed(b"s%d" % i for i in range(5_000)) == 5_000
    sink.on_completed()
    await asyncio.wait_for(sink.done, 30)
    assert sink.confirmed == 10_000 and sink.failed == 0
    await writer.close()


async def test_a_synchronous_producer_past_the_bound_gets_overflow_errors(nsqd, caplog) -> None:
    caplog.set_level(logging.WARNING, "rxnsq.writer")
    writer = Writer(nsqd.tcp_address)
    for policy in ("error", "block"):  # "block" cannot block the loop thread: it fails too
        sink = writer.sink(f"sync-{policy}", max_pending=100, on_overflow=policy)
        failures: list[PublishResult[Any]] = []
        sink.failures.subscribe(failures.append)
        for i in range(1_000):
            sink.on_next(b"%d" % i)  # never raises
        sink.on_completed()
        await asyncio.wait_for(sink.done, 10)
        assert (sink.fed, sink.confirmed, sink.failed) == (1_000, 100, 900)
        assert len(failures) == 900 and all(
            isinstance(f.error, errors.SinkOverflowError) and f.error.retriable for f in failures
        )
        assert "await sink.send" in str(failures[0].error)
    warnings = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(warnings) == 2  # once per overflow episode, not per item
    await writer.close()


async def test_a_sink_fed_from_rxpy_default_timer_threads(nsqd) -> None:
    writer = Writer(nsqd.tcp_address)
    sink = writer.sink("timed", max_batch=50, max_delay=0.01)
    threads: set[str] = set()
    reactivex.interval(0.002).pipe(  # no scheduler: RxPY's TimeoutScheduler threads
        ops.take(300),
        ops.do_action(lambda _i: threads.add(threading.current_thread().name)),
        ops.map(lambda i: str(i).encode()),
    ).subscribe(sink)
    await asyncio.wait_for(sink.done, 20)
    assert threading.main_thread().name not in threads and threads
    assert sink.fed == sink.confirmed == 300 and sink.failed == 0
    await writer.close()
    assert message_count(nsqd, "timed") == 300


async def test_a_sink_fed_from_a_thread_blocks_it_for_room(nsqd) -> None:
    writer = Writer(nsqd.tcp_address)
    await writer.pub("threaded", b"connected")
    sink = writer.sink("threaded", max_pending=500, on_overflow="block")
    peak = 0

    def produce() -> None:
        nonlocal peak
        for i in range(50_000):
            sink.on_next(b"%d" % i)
            peak = max(peak, sink.pending)
        sink.on_completed()

    thread = threading.Thread(target=produce)
    thread.start()
    await asyncio.wait_for(sink.done, 60)
    await asyncio.to_thread(thread.join)
    assert sink.fed == sink.confirmed == 50_000 and sink.failed == 0
    assert peak <= 500
    await writer.close()
    assert message_count(nsqd, "threaded") == 50_001


async def test_pub_nowait_from_a_thread(nsqd) -> None:
    writer = Writer(nsqd.tcp_address)
    await writer.pub("pt", b"connected")
    loop_thread = threading.get_ident()
    callback_threads: set[int] = set()

    def publish() -> list[bytes]:
        futures = [
            writer.pub_nowait(
                "pt", b"%d" % i, callback=lambda c, d: callback_threads.add(threading.get_ident())
            )
            for i in range(1_000)
        ]
        with pytest.raises(errors.InvalidBodyError):
            writer.pub_nowait("pt", 5)
        return [cast(concurrent.futures.Future[bytes], f).result(timeout=10) for f in futures]

    assert await asyncio.to_thread(publish) == [b"OK"] * 1_000
    await eventually(lambda: len(callback_threads) == 1)
    assert callback_threads == {loop_thread}
    await writer.close()
    assert message_count(nsqd, "pt") == 1_001
