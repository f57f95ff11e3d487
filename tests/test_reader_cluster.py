"""The Reader discovering several nsqd through nsqlookupd."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

import rxnsq.ops as nsq
from rxnsq.http import LookupdHTTPClient
from rxnsq.reader import Reader
from rxnsq.testing import eventually
from rxnsq.writer import Writer

pytestmark = pytest.mark.nsqd


async def test_three_nsqd_then_a_fourth_all_drained_exactly(nsq_cluster) -> None:
    n_per = 10_000
    for index, nsqd in enumerate(nsq_cluster.nsqds):
        writer = Writer(nsqd.tcp_address)
        sink = writer.sink("spread")
        for i in range(n_per):
            sink.on_next(b"%d-%d" % (index, i))
        sink.on_completed()
        await asyncio.wait_for(sink.done, 30)
        await writer.close()

    reader = Reader(
        "spread",
        "all",
        lookupd_http_addresses=nsq_cluster.lookupd_http_urls,
        max_in_flight=300,
        lookupd_poll_interval=0.5,
        lookupd_poll_jitter=0.1,
    )
    seen: Counter[bytes] = Counter()
    reader.messages.pipe(nsq.process(lambda body: seen.update([body]))).subscribe()
    await eventually(lambda: len(seen) == 3 * n_per)
    assert len(reader.connections) == 3

    fourth = await asyncio.to_thread(nsq_cluster.add_nsqd)
    writer = Writer(fourth.tcp_address)
    await writer.mpub("spread", [b"3-%d" % i for i in range(1000)])
    await writer.close()
    await eventually(lambda: len(seen) == 3 * n_per + 1000)
    assert fourth.tcp_address in reader.connections
    await reader.close()

    assert max(seen.values()) == 1  # exactly once: none lost, none twice
    for nsqd in nsq_cluster.nsqds:
        channel = nsqd.stats(topic="spread")["topics"][0]["channels"][0]
        assert channel["depth"] == 0 and channel["in_flight_count"] == 0
        assert channel["requeue_count"] == 0


async def test_lookupd_without_the_topic_keeps_polling(nsq_cluster) -> None:
    reader = Reader("later", "c", lookupd_http_addresses=nsq_cluster.lookupd_http_urls,
                    lookupd_poll_interval=0.3, lookupd_poll_jitter=0)  # fmt: skip
    got: list[bytes] = []
    reader.messages.pipe(nsq.settle()).subscribe(lambda m: got.append(m.body))
    await asyncio.sleep(0.5)
    assert reader.connections == {}  # 404 TOPIC_NOT_FOUND means: nothing yet
    writer = Writer(nsq_cluster.nsqds[0].tcp_address)
    await writer.pub("later", b"finally")
    await writer.close()
    await eventually(lambda: got == [b"finally"])
    await reader.close()


async def test_a_producer_that_vanishes_from_lookupd_is_dropped(nsq_cluster) -> None:
    for nsqd in nsq_cluster.nsqds:
        nsqd.create_topic("gone")
    reader = Reader("gone", "c", lookupd_http_addresses=nsq_cluster.lookupd_http_urls,
                    lookupd_poll_interval=0.3, lookupd_poll_jitter=0,
                    lookupd_vanish_grace=1.0)  # fmt: skip
    reader.messages.pipe(nsq.settle()).subscribe()
    await eventually(lambda: len(reader.connections) == 3)
    leaving = nsq_cluster.nsqds[0]
    async with LookupdHTTPClient(nsq_cluster.lookupd_http_urls[0]) as lookupd:
        await lookupd.tombstone_topic_producer("gone", f"127.0.0.1:{leaving.http_port}")
    await eventually(lambda: leaving.tcp_address not in reader.connections)
    await asyncio.sleep(1.0)  # and it is not reconnected on later polls
    assert set(reader.connections) == {n.tcp_address for n in nsq_cluster.nsqds[1:]}
    await reader.close()
