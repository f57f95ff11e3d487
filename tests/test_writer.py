"""The Writer against real nsqd: confirmed publishes, sink batching, failures, republish."""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter
from typing import Any

import pytest
import reactivex

import rxnsq.ops as nsq
from rxnsq import errors
from rxnsq.message import Message
from rxnsq.reader import Reader
from rxnsq.testing import eventually
from rxnsq.writer import Deferred, PublishAck, PublishResult, SinkOverflowError, Writer

pytestmark = pytest.mark.nsqd


def topic_stats(nsqd: Any, topic: str) -> dict[str, Any]:
    topics = nsqd.stats(topic=topic)["topics"] or []
    return topics[0] if topics else {}


async def drain(address: str, topic: str, count: int, timeout: float = 60) -> list[bytes]:
    """Consume ``count`` messages from ``topic`` (channel 'check') and return their bodies."""
    reader = Reader(topic, "check", nsqd_tcp_addresses=address, max_in_flight=1000)
    got: list[bytes] = []
    async with asyncio.timeout(timeout):
        async for message in reader.iter():
            got.append(message.body)
            message.fin()
            if len(got) >= count:
                break
    await reader.close()
    return got


async def test_awaitable_calls_resolve_on_ok(nsqd) -> None:
    nsqd.create_channel("aw", "check")
    writer = Writer(nsqd.tcp_address)
    callbacks: list[Any] = []
    assert await writer.pub("aw", b"one") == b"OK"
    assert await writer.pub("aw", "two", callback=lambda c, d: callbacks.append(d)) == b"OK"
    assert await writer.mpub("aw", [b"three", "four"]) == b"OK"
    assert callbacks == [b"OK"]
    assert topic_stats(nsqd, "aw")["message_count"] == 4  # confirmed means it is there
    await writer.close()
    assert sorted(await drain(nsqd.tcp_address, "aw", 4)) == [b"four", b"one", b"three", b"two"]


async def test_dpub_delay_is_observed(nsqd) -> None:
    nsqd.create_channel("later", "check")
    writer = Writer(nsqd.tcp_address)
    loop = asyncio.get_running_loop()
    sent = loop.time()
    await writer.dpub("later", b"x", delay=1.5)
    stats = nsqd.channel_stats("later", "check")
    assert stats["deferred_count"] == 1 and stats["depth"] == 0  # not visible yet
    got = await drain(nsqd.tcp_address, "later", 1, timeout=15)
    assert got == [b"x"] and loop.time() - sent >= 1.4
    await writer.close()


async def test_sink_delivers_100k_exactly_once_in_batches(nsqd_factory) -> None:
    nsqd = nsqd_factory(extra_args=["--mem-queue-size=200000"])
    nsqd.create_channel("bulk", "check")
    n = 100_000
    items = [f"{i}:payload".encode() for i in range(n)]
    writer = Writer(nsqd.tcp_address)
    acks: list[PublishAck] = []
    writer.acks.subscribe(acks.append)
    sink = writer.sink("bulk", max_batch=500)
    reactivex.from_iterable(items).subscribe(sink)
    await asyncio.wait_for(sink.done, 60)
    assert sink.confirmed == n and sink.failed == 0
    assert sink.commands < n / 50  # batched: far fewer commands than items
    assert sum(a.count for a in acks if a.ok) == n and max(a.count for a in acks) > 1
    got = await drain(nsqd.tcp_address, "bulk", n)
    counts = Counter(got)
    assert len(counts) == n and max(counts.values()) == 1
    checksum = 0
    for body in got:
        checksum ^= zlib.crc32(body)
    expected = 0
    for body in items:
        expected ^= zlib.crc32(body)
    assert checksum == expected
    await writer.close()


async def test_sink_routes_deferred_items_to_dpub(nsqd) -> None:
    nsqd.create_channel("mixed", "check")
    writer = Writer(nsqd.tcp_address)
    sink = writer.sink("mixed")
    reactivex.from_iterable([b"now", Deferred(b"later", 1.0), "also now"]).subscribe(sink)
    await asyncio.wait_for(sink.done, 10)
    assert sink.confirmed == 3
    stats = nsqd.channel_stats("mixed", "check")
    assert stats["deferred_count"] == 1 and stats["depth"] == 2
    await writer.close()


async def test_bad_input_is_refused_before_sending(nsqd) -> None:
    writer = Writer(nsqd.tcp_address)
    with pytest.raises(errors.InvalidNameError):
        await writer.pub("bad topic!", b"x")
    with pytest.raises(errors.InvalidBodyError, match="empty"):
        await writer.pub("t", b"")
    with pytest.raises(errors.InvalidBodyError):
        await writer.mpub("t", [])
    with pytest.raises(errors.InvalidBodyError, match="maximum"):
        await writer.pub("t", b"x" * (1024 * 1024 + 1))
    assert writer.connections == {}  # none of that needed a connection
    sink = writer.sink("t")
    reactivex.from_iterable([b"", b"ok"]).subscribe(sink)
    await asyncio.wait_for(sink.done, 10)
    assert sink.failed == 1 and sink.confirmed == 1
    assert isinstance(sink.errors[0], errors.InvalidBodyError)
    await writer.close()
    with pytest.raises(errors.NSQConnectionError, match="closed"):
        await writer.pub("t", b"after close")


async def test_oversized_message_gets_nsqds_reason(nsqd_factory) -> None:
    nsqd = nsqd_factory(extra_args=["--max-msg-size=100"])
    writer = Writer(nsqd.tcp_address)  # it does not know nsqd's limit: nsqd refuses
    with pytest.raises(errors.BadMessageError) as info:
        await writer.pub("t", b"x" * 101)
    assert "101" in info.value.text or "size" in info.value.text
    # the connection was dropped by nsqd; the writer reconnects and goes on
    await eventually(lambda: writer.connections, timeout=10)
    assert await writer.pub("t", b"small") == b"OK"
    await writer.close()


async def test_invalid_topic_from_nsqd_is_typed(nsqd) -> None:
    writer = Writer(nsqd.tcp_address)
    await writer.pub("t", b"warm up")
    conn = next(iter(writer.connections.values()))
    with pytest.raises(errors.BadTopicError):
        await conn.command(b"PUB bad!topic\n\x00\x00\x00\x01x")
    await writer.close()


async def test_no_nsqd_reachable(unused_tcp_port: int) -> None:
    writer = Writer(f"127.0.0.1:{unused_tcp_port}", connect_timeout=0.5)
    with pytest.raises(errors.NSQConnectionError, match="no nsqd is connected"):
        await writer.pub("t", b"x")
    await writer.close()


async def test_kill_mid_stream_confirms_or_fails_everything(nsqd_factory) -> None:
    nsqd = nsqd_factory(extra_args=["--mem-queue-size=0", "--sync-every=1"])
    nsqd.create_channel("crash", "check")
    writer = Writer(nsqd.tcp_address, reconnect_interval=0.2)
    confirmed: list[bytes] = []
    failed: list[bytes] = []

    async def one(body: bytes) -> None:
        try:
            await writer.pub("crash", body)
            confirmed.append(body)
        except errors.NSQError:
            failed.append(body)

    bodies = [b"%d" % i for i in range(3000)]
    tasks = [asyncio.create_task(one(b)) for b in bodies]
    await eventually(lambda: len(confirmed) > 200)
    await asyncio.to_thread(nsqd.stop)  # a clean stop flushes: every OK is on disk
    await asyncio.gather(*tasks)
    assert len(confirmed) + len(failed) == len(bodies)
    assert failed, "stopping nsqd failed nothing"
    await asyncio.to_thread(nsqd.restart)
    got = set(await drain(nsqd.tcp_address, "crash", len(confirmed)))
    assert set(confirmed) <= got
    await writer.close()


async def test_publish_operator_fins_after_confirmation(nsqd_factory) -> None:
    source = nsqd_factory()
    dest = nsqd_factory()
    dest.create_channel("out", "check")
    feeder = Writer(source.tcp_address)
    await feeder.mpub("in", [b"%d" % i for i in range(200)])

    reader = Reader("in", "etl", nsqd_tcp_addresses=source.tcp_address, max_in_flight=50,
                    max_backoff_duration=0, default_requeue_delay=0)  # fmt: skip
    writer = Writer(dest.tcp_address, reconnect_interval=0.2, connect_timeout=0.5)
    results: list[PublishResult[Message[bytes]]] = []
    reader.messages.pipe(
        writer.publish("out", body=lambda m: b"out-" + m.body),
        nsq.settle(),
    ).subscribe(results.append)

    await eventually(lambda: sum(r.ok for r in results) == 200)
    await asyncio.to_thread(dest.stop)  # the destination goes away mid-run
    await feeder.mpub("in", [b"%d" % i for i in range(200, 500)])
    await eventually(lambda: any(not r.ok for r in results))
    await asyncio.to_thread(dest.restart)
    await feeder.close()
    await eventually(lambda: source.channel_stats("in", "etl")["message_count"] >= 500, timeout=30)
    await eventually(
        lambda: (
            (s := source.channel_stats("in", "etl"))["depth"] == 0
            and s["in_flight_count"] == 0
            and s["deferred_count"] == 0
        ),
        timeout=60,
    )
    await reader.close()
    await writer.close()
    # every source message was finished only after its republish was confirmed
    finished = {r.item.body for r in results if r.ok}
    assert finished == {b"%d" % i for i in range(500)}
    failed = [r for r in results if not r.ok]
    assert failed and all(r.item.outcome == "req" for r in failed)
    got = set(await drain(dest.tcp_address, "out", 500))
    assert got == {b"out-%d" % i for i in range(500)}


async def test_sink_overflow_policy(nsqd) -> None:
    writer = Writer(nsqd.tcp_address)
    await writer.pub("of", b"warm up")
    sink = writer.sink("of", max_pending=10, max_batch=1000, max_delay=0.5)
    for i in range(25):
        sink.on_next(b"%d" % i)
    assert sink.failed == 15 and all(isinstance(e, SinkOverflowError) for e in sink.errors)
    sink.on_completed()
    await asyncio.wait_for(sink.done, 10)
    assert sink.confirmed == 10

    dropping = writer.sink("of", max_pending=10, max_batch=1000, max_delay=0.5,
                           on_overflow="drop_oldest")  # fmt: skip
    for i in range(25):
        dropping.on_next(b"d%d" % i)
    dropping.on_completed()
    await asyncio.wait_for(dropping.done, 10)
    assert dropping.failed == 15 and dropping.confirmed == 10
    await writer.close()
    assert topic_stats(nsqd, "of")["message_count"] == 1 + 10 + 10


async def test_round_robin_and_failover(nsqd_factory) -> None:
    a, b = nsqd_factory(), nsqd_factory()
    writer = Writer([a.tcp_address, b.tcp_address], reconnect_interval=0.2)
    for i in range(20):
        await writer.pub("rr", b"%d" % i)
    await eventually(lambda: len(writer.connections) == 2)
    for i in range(20):
        await writer.pub("rr", b"%d" % i)
    count_a = topic_stats(a, "rr")["message_count"]
    count_b = topic_stats(b, "rr")["message_count"]
    assert count_a + count_b == 40 and count_a > 0 and count_b > 0
    await asyncio.to_thread(a.stop)
    await eventually(lambda: len(writer.connections) == 1)
    for i in range(10):
        assert await writer.pub("rr", b"after %d" % i) == b"OK"
    assert topic_stats(b, "rr")["message_count"] == count_b + 10
    await writer.close()


async def test_acks_stream_and_pending_wait_on_close(nsqd) -> None:
    writer = Writer(nsqd.tcp_address)
    acks: list[PublishAck] = []
    writer.acks.subscribe(acks.append)
    sink = writer.sink("ac", max_delay=10.0)  # only close() flushes it
    for i in range(7):
        sink.on_next(b"%d" % i)
    await writer.close()
    assert sink.confirmed == 7
    assert acks and all(a.ok for a in acks) and sum(a.count for a in acks) == 7
    assert all(a.latency >= 0 and a.address == nsqd.tcp_address for a in acks)


async def test_pub_nowait_pipelines_and_reports_each_reply(nsqd) -> None:
    writer = Writer(nsqd.tcp_address)
    replies: list[Any] = []
    first = writer.pub_nowait("nw", b"first", callback=lambda c, d: replies.append(d))
    assert await first == b"OK"  # no connection yet: it waited for one
    futures = [writer.pub_nowait("nw", b"%d" % i) for i in range(500)]  # no await in between
    assert await asyncio.gather(*futures) == [b"OK"] * 500
    assert replies == [b"OK"]
    assert topic_stats(nsqd, "nw")["message_count"] == 501
    with pytest.raises(errors.InvalidBodyError):
        writer.pub_nowait("nw", b"")
    await writer.close()


async def test_async_with_and_the_closing_signal(nsqd) -> None:
    closing: list[None] = []
    acks: list[Any] = []
    async with Writer(nsqd.tcp_address) as writer:
        assert writer.connections  # connected on entry
        writer.acks.subscribe(acks.append)
        assert await writer.pub("with", b"x") == b"OK"
        assert not writer.is_closing
    assert writer.is_closing and writer.connections == {}
    writer.closing.subscribe(closing.append)  # a late subscriber still learns it
    assert closing == [None] and len(acks) == 1 and acks[0].ok
    assert not hasattr(writer.acks, "on_next")  # a read-only stream, not a Subject
