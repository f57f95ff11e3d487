"""The Writer's item model at every entry point, against real nsqd: a bad body is a typed error
that names its type and the topic, before any IO (nsqd's topic stays empty); a stream of mixed
items gives one result per item, in order; a relay never loses or gives up a message."""

from __future__ import annotations

import asyncio
import gc
import math
from collections import Counter
from typing import Any

import pytest
import reactivex
from reactivex.subject import Subject

import rxnsq.compat as compat
import rxnsq.ops as nsq
from rxnsq import errors
from rxnsq.message import Message
from rxnsq.reader import Reader
from rxnsq.testing import eventually
from rxnsq.writer import Deferred, PublishAck, PublishResult, Writer

pytestmark = pytest.mark.nsqd

#: Bodies that are not bytes, bytearray, memoryview or str, each with the type name the error
#: must give. bytes() would have made b"\x00" * 5 of the int and b"hi" of the list.
BAD_BODIES: list[tuple[Any, str]] = [
    (5, "int"),
    ([104, 105], "list"),
    ({"a": 1}, "dict"),
    (None, "NoneType"),
    (1.5, "float"),
    (True, "bool"),
    (object(), "object"),
]


def message_count(nsqd: Any, topic: str) -> int:
    topics = nsqd.stats(topic=topic)["topics"] or []
    return int(topics[0]["message_count"]) if topics else 0


def no_lost_tasks(caplog: pytest.LogCaptureFixture) -> None:
    gc.collect()
    lost = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not lost, [r.getMessage() for r in lost]


async def drain(address: str, topic: str, count: int, timeout: float = 30) -> list[bytes]:
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


@pytest.mark.parametrize(("bad", "type_name"), BAD_BODIES, ids=[t for _, t in BAD_BODIES])
async def test_bad_body_through_every_awaitable_entry_point(
    nsqd, bad: Any, type_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    nsqd.create_channel("bad", "check")
    writer = Writer(nsqd.tcp_address)
    await writer.pub("bad", b"connected")  # a connection is up: the refusal is not for lack of it
    acks: list[PublishAck] = []
    writer.acks.subscribe(acks.append)
    callbacks: list[Any] = []
    calls = [
        writer.pub("bad", bad, callback=lambda c, d: callbacks.append(d)),
        writer.dpub("bad", bad, 1.0),
        writer.mpub("bad", [b"fine", bad]),
    ]
    for call in calls:
        with pytest.raises(errors.InvalidBodyError) as info:
            await call
        assert type_name in str(info.value) and "'bad'" in str(info.value)
    with pytest.raises(errors.InvalidBodyError, match=type_name):
        writer.pub_nowait("bad", bad, callback=lambda c, d: callbacks.append(d))
    assert len(callbacks) == 2 and all(isinstance(c, errors.InvalidBodyError) for c in callbacks)
    assert len(acks) == 4 and not any(a.ok for a in acks)
    assert message_count(nsqd, "bad") == 1  # only "connected"
    await writer.close()
    no_lost_tasks(caplog)


@pytest.mark.parametrize(
    "single", [b"abc", "abc", bytearray(b"abc"), memoryview(b"abc")], ids=lambda v: type(v).__name__
)
async def test_mpub_of_a_single_body_is_an_error_not_one_message_per_byte(
    nsqd, single: Any
) -> None:
    nsqd.create_channel("single", "check")
    writer = Writer(nsqd.tcp_address)
    with pytest.raises(errors.InvalidBodyError, match="not a single"):
        await writer.mpub("single", single)
    for not_a_list in (5, None, {"a": b"b"}):
        with pytest.raises(errors.InvalidBodyError, match="list of bodies"):
            await writer.mpub("single", not_a_list)
    assert writer.connections == {}  # refused before any IO
    await writer.close()
    assert message_count(nsqd, "single") == 0


@pytest.mark.parametrize(
    "delay", [math.inf, math.nan, -1, -0.001, 3600.001, "5", None, True], ids=repr
)
async def test_bad_delay_is_refused_before_sending(nsqd, delay: Any) -> None:
    nsqd.create_channel("delay", "check")
    writer = Writer(nsqd.tcp_address)
    with pytest.raises(errors.InvalidBodyError, match="DPUB delay for topic 'delay'"):
        await writer.dpub("delay", b"x", delay)
    sink = writer.sink("delay")
    sink.on_next(Deferred(b"x", delay))
    sink.on_completed()
    await asyncio.wait_for(sink.done, 5)
    assert sink.failed == 1 and isinstance(sink.errors[0], errors.InvalidBodyError)
    await writer.close()
    assert message_count(nsqd, "delay") == 0


async def test_bad_items_through_the_sink_and_publish_publish_nothing(nsqd, caplog) -> None:
    nsqd.create_channel("streams", "check")
    writer = Writer(nsqd.tcp_address)
    bad_items = [b for b, _ in BAD_BODIES if not isinstance(b, list)] + [
        [1, 2],  # a list item whose bodies are ints: the whole MPUB is refused
        [b"fine", None],
        [],
        (b"",),
        Deferred(5, 1.0),
        Deferred(b"x", math.inf),
        b"",
        "",
        iter([b"a"]),  # an iterator is not a list item
    ]
    sink = writer.sink("streams")
    failures: list[PublishResult[Any]] = []
    sink.failures.subscribe(failures.append)
    for item in bad_items:
        sink.on_next(item)
    for item in bad_items:
        await sink.send(item)
    assert await sink.feed(iter(bad_items)) == len(bad_items)
    sink.on_completed()
    await asyncio.wait_for(sink.done, 5)
    assert sink.fed == sink.failed == 3 * len(bad_items) and sink.confirmed == 0
    assert len(failures) == 3 * len(bad_items)
    assert all(isinstance(f.error, errors.InvalidBodyError) for f in failures)

    results: list[PublishResult[Any]] = []
    completed = asyncio.get_running_loop().create_future()
    reactivex.from_iterable(bad_items).pipe(writer.publish("streams")).subscribe(
        results.append, completed.set_exception, lambda: completed.set_result(None)
    )
    await asyncio.wait_for(completed, 5)
    assert [r.item for r in results] == bad_items
    assert not any(r.ok for r in results)
    assert all(isinstance(r.error, errors.InvalidBodyError) and r.invalid for r in results)
    await writer.close()
    assert message_count(nsqd, "streams") == 0
    no_lost_tasks(caplog)


async def test_compat_writer_reports_bad_input_through_the_callback(nsqd, caplog) -> None:
    nsqd.create_channel("cw", "check")
    writer = compat.Writer([nsqd.tcp_address])
    got: list[Any] = []
    ok = writer.pub("cw", b"good", callback=lambda c, d: got.append(d))
    await ok
    futures = [
        writer.pub("cw", None, callback=lambda c, d: got.append(d)),
        writer.pub("cw", [b"a"], callback=lambda c, d: got.append(d)),
        writer.pub("cw", 5, callback=lambda c, d: got.append(d)),
        writer.mpub("cw", [b"a", 5], callback=lambda c, d: got.append(d)),
        writer.mpub("cw", 5, callback=lambda c, d: got.append(d)),
        writer.dpub("cw", None, b"x", callback=lambda c, d: got.append(d)),
        writer.dpub("cw", 10, None, callback=lambda c, d: got.append(d)),
    ]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(o, errors.InvalidBodyError) for o in outcomes), outcomes
    assert got[0] == b"OK"
    assert len(got) == 8 and all(isinstance(d, errors.InvalidBodyError) for d in got[1:]), got
    await writer.close()
    assert message_count(nsqd, "cw") == 1
    no_lost_tasks(caplog)


async def test_wrong_types_at_every_public_entry_point(nsqd) -> None:
    with pytest.raises(errors.ConfigError, match="nsqd_tcp_addresses"):
        Writer(5)
    with pytest.raises(errors.ConfigError, match="nsqd_tcp_addresses"):
        Writer([nsqd.tcp_address, None])
    for option, value in [
        ("publish_timeout", "1"),
        ("reconnect_wait", None),
        ("max_msg_size", 1.5),
        ("max_req_timeout", "x"),
        ("name", 5),
    ]:
        with pytest.raises(errors.ConfigError, match=option):
            Writer(nsqd.tcp_address, **{option: value})
    writer = Writer(nsqd.tcp_address)
    for topic in (5, None, b"t", "bad topic!"):
        with pytest.raises(errors.InvalidNameError):
            await writer.pub(topic, b"x")
        with pytest.raises(errors.InvalidNameError):
            writer.pub_nowait(topic, b"x")
        with pytest.raises(errors.InvalidNameError):
            writer.sink(topic)
        with pytest.raises(errors.InvalidNameError):
            writer.publish(topic)
    with pytest.raises(errors.ConfigError, match="timeout"):
        await writer.pub("t", b"x", timeout="1")
    with pytest.raises(errors.ConfigError, match="body"):
        writer.publish("t", body=b"not a function")
    for option, value in [
        ("max_batch", "10"),
        ("max_delay", None),
        ("max_pending", 0),
        ("max_pending_bytes", 1.5),
        ("on_overflow", "ignore"),
        ("retries", -1),
        ("max_bytes", 1 << 40),
    ]:
        with pytest.raises(errors.ConfigError, match=option):
            writer.sink("t", **{option: value})
    assert writer.connections == {}
    with pytest.raises(errors.ConfigError, match="timeout"):
        await writer.close(timeout="soon")
    await writer.close()


async def test_a_mixed_stream_gives_one_result_per_item_in_order(nsqd, caplog) -> None:
    nsqd.create_channel("mix", "check")
    writer = Writer(nsqd.tcp_address, max_msg_size=100, max_body_size=300)
    big_list = [b"L%02d" % i + b"." * 46 for i in range(10)]  # 10 x 54 bytes: two MPUBs
    items: list[Any] = [
        b"b0",
        "s1",
        Deferred(b"d2", 1.0),
        [b"l3a", b"l3b", "l3c"],
        5,  # invalid
        bytearray(b"ba5"),
        (b"t6a", b"t6b"),
        Deferred("d7", 0),
        {"x": 1},  # invalid
        memoryview(b"mv9"),
        big_list,
    ]
    source: Subject[Any] = Subject()
    results: list[PublishResult[Any]] = []
    completed = asyncio.get_running_loop().create_future()
    source.pipe(writer.publish("mix")).subscribe(
        results.append, completed.set_exception, lambda: completed.set_result(None)
    )
    for item in items:
        source.on_next(item)
    source.on_completed()
    await asyncio.wait_for(completed, 10)
    assert [r.item for r in results] == items  # one each, in input order
    failed = [r for r in results if not r.ok]
    assert [r.item for r in failed] == [5, {"x": 1}]
    assert all(isinstance(r.error, errors.InvalidBodyError) for r in failed)
    by_item = {id(r.item): r for r in results}
    assert (by_item[id(items[3])].count, by_item[id(items[3])].parts) == (3, 1)
    assert (by_item[id(big_list)].count, by_item[id(big_list)].parts) == (10, 2)  # split: said so
    expected = {b"b0", b"s1", b"d2", b"l3a", b"l3b", b"l3c", b"ba5", b"t6a", b"t6b", b"d7",
                b"mv9", *big_list}  # fmt: skip
    got = await drain(nsqd.tcp_address, "mix", len(expected), timeout=20)
    assert Counter(got) == Counter(expected)  # everything else exactly once
    assert got.index(b"d2") > got.index(b"b0")  # the deferred one came after its delay
    await writer.close()
    no_lost_tasks(caplog)


async def test_relay_with_a_failing_body_function_loses_and_gives_up_nothing(
    nsqd_factory, caplog
) -> None:
    source, dest = nsqd_factory(), nsqd_factory()
    dest.create_channel("out", "check")
    feeder = Writer(source.tcp_address)
    await feeder.mpub("in", [b"%d" % i for i in range(100)])
    await feeder.close()
    given_up: list[Message[bytes]] = []
    reader = Reader("in", "relay", nsqd_tcp_addresses=source.tcp_address, max_in_flight=20,
                    giving_up=given_up.append)  # fmt: skip
    writer = Writer(dest.tcp_address)

    def body(message: Message[bytes]) -> bytes:
        if int(message.body) % 20 == 7:  # 5 of 100
            raise ValueError(f"cannot transform {message.body!r}")
        return b"out-" + message.body

    results: list[PublishResult[Message[bytes]]] = []
    reader.messages.pipe(writer.publish("out", body=body), nsq.settle()).subscribe(results.append)
    await eventually(lambda: len(results) >= 100, timeout=20)
    await eventually(
        lambda: (
            (s := source.channel_stats("in", "relay"))["depth"] == 0
            and s["in_flight_count"] == 0
            and s["deferred_count"] == 0
        ),
        timeout=20,
    )
    await asyncio.sleep(0.2)
    await reader.close()
    await writer.close()
    failed = [r for r in results if not r.ok]
    assert len(results) == 100 and len(failed) == 5
    assert all(isinstance(r.error, errors.InvalidBodyError) for r in failed)
    assert all(isinstance(r.error.__cause__, ValueError) for r in failed)
    assert all(r.item.outcome == "fin" for r in results)  # the 5 were finished with a report
    assert not given_up
    stats = source.channel_stats("in", "relay")
    assert (stats["depth"], stats["in_flight_count"], stats["requeue_count"]) == (0, 0, 0)
    assert stats["timeout_count"] == 0
    got = await drain(dest.tcp_address, "out", 95)
    assert len(set(got)) == 95
    reports = [r for r in caplog.records if "without being republished" in r.getMessage()]
    assert len(reports) == 5
    no_lost_tasks(caplog)


async def test_relay_requeues_what_failed_for_a_curable_reason(nsqd_factory) -> None:
    source, dest = nsqd_factory(), nsqd_factory()
    feeder = Writer(source.tcp_address)
    await feeder.mpub("in", [b"%d" % i for i in range(20)])
    reader = Reader("in", "relay", nsqd_tcp_addresses=source.tcp_address, max_in_flight=5,
                    max_backoff_duration=0, default_requeue_delay=0.1, max_tries=0)  # fmt: skip
    writer = Writer(dest.tcp_address, publish_timeout=0.3)
    results: list[PublishResult[Message[bytes]]] = []
    reader.messages.pipe(writer.publish("out"), nsq.settle()).subscribe(results.append)
    await eventually(lambda: sum(r.ok for r in results) == 20)
    await asyncio.to_thread(dest.stop)  # the destination goes away: curable
    await feeder.mpub("in", [b"%d" % i for i in range(20, 40)])
    await eventually(lambda: any(not r.ok for r in results), timeout=10)
    failed = [r for r in results if not r.ok]
    assert all(not r.invalid and r.item.outcome == "req" for r in failed)
    assert all(isinstance(r.error, errors.NSQConnectionError) for r in failed)
    await asyncio.to_thread(dest.restart)
    await eventually(lambda: len({r.item.body for r in results if r.ok}) == 40, timeout=30)
    await reader.close()
    await writer.close()
    await feeder.close()
