"""Faults, hostile peers and load: nothing confirmed is lost, errors are typed, recovery is
automatic. Each test records its counts in ``FAULT_REPORT`` (see docs/reliability.md)."""

from __future__ import annotations

import asyncio
import json
import os
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import rxnsq.ops as nsq
from rxnsq import errors
from rxnsq.connection import Connection
from rxnsq.reader import Reader
from rxnsq.testing import eventually, publish, wait_until
from rxnsq.testing.faults import FaultyProxy, ScriptedPeer, frame
from rxnsq.writer import Writer

pytestmark = pytest.mark.nsqd


class Tally:
    """What a consumer saw: every body once or more."""

    def __init__(self) -> None:
        self.seen: Counter[bytes] = Counter()

    def __call__(self, body: bytes) -> bytes:
        self.seen[body] += 1
        return body

    @property
    def duplicates(self) -> int:
        return sum(self.seen.values()) - len(self.seen)


# --- daemon faults ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_nsqd_restarted_while_consuming(nsqd_factory, how: str) -> None:
    nsqd = nsqd_factory(extra_args=["--mem-queue-size=0", "--sync-every=1", "--msg-timeout=3s"])
    bodies = [b"k%d" % i for i in range(3000)]
    await publish(nsqd.tcp_address, "kc", bodies)
    tally = Tally()
    max_in_flight = 100
    reader = Reader("kc", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=max_in_flight,
                    reconnect_interval=0.1)  # fmt: skip

    async def slow(body: bytes) -> bytes:
        await asyncio.sleep(0.001)
        return tally(body)

    reader.messages.pipe(nsq.process_async(slow, concurrency=50)).subscribe()
    await eventually(lambda: len(tally.seen) > 500)
    await asyncio.to_thread(nsqd.stop if how == "SIGTERM" else nsqd.kill)
    await asyncio.to_thread(nsqd.restart)
    await eventually(lambda: nsqd.channel_stats("kc", "c").get("depth", 1) == 0, timeout=60)
    await eventually(lambda: nsqd.channel_stats("kc", "c")["in_flight_count"] == 0, timeout=30)
    await reader.close()
    lost = set(bodies) - set(tally.seen)
    if how == "SIGTERM":
        assert not lost  # nsqd saves in-flight messages on a clean stop: all processed
    else:
        # nsqd keeps in-flight messages only in memory: a SIGKILL loses at most the window
        assert len(lost) <= max_in_flight
    REPORT[f"nsqd {how} + restart while consuming"] = {
        "sent": len(bodies), "confirmed": len(bodies), "consumed": len(tally.seen),
        "duplicates": tally.duplicates, "lost": len(lost),
        "note": "nsqd saved its in-flight messages" if how == "SIGTERM" else
        f"lost = messages in flight inside nsqd at the kill (<= max_in_flight {max_in_flight})",
    }  # fmt: skip


async def test_nsqd_killed_while_publishing(nsqd_factory) -> None:
    nsqd = nsqd_factory(extra_args=["--mem-queue-size=0", "--sync-every=1"])
    nsqd.create_channel("kp", "c")
    writer = Writer(nsqd.tcp_address, reconnect_interval=0.1)
    confirmed: list[bytes] = []
    failed: list[bytes] = []

    async def one(body: bytes) -> None:
        try:
            await writer.pub("kp", body)
            confirmed.append(body)
        except errors.NSQError:
            failed.append(body)

    bodies = [b"p%d" % i for i in range(2000)]
    tasks = [asyncio.create_task(one(b)) for b in bodies]
    await eventually(lambda: len(confirmed) > 300)
    await asyncio.to_thread(nsqd.kill)
    await asyncio.gather(*tasks)
    await asyncio.to_thread(nsqd.restart)
    await writer.close()
    assert len(confirmed) + len(failed) == len(bodies) and failed
    tally = Tally()
    reader = Reader("kp", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=200)
    reader.messages.pipe(nsq.process(tally)).subscribe()
    await eventually(lambda: nsqd.channel_stats("kp", "c")["depth"] == 0, timeout=30)
    await eventually(lambda: nsqd.channel_stats("kp", "c")["in_flight_count"] == 0)
    await reader.close()
    lost = set(confirmed) - set(tally.seen)
    # nsqd writes a message to its disk queue before it answers OK; with --sync-every=1 the
    # data is synced, but the queue's read/write positions are synced just after: a SIGKILL in
    # that gap can drop the last few confirmed messages inside nsqd itself. rxnsq confirmed
    # nothing nsqd did not acknowledge.
    assert len(lost) <= 5, sorted(lost)[:10]
    REPORT["nsqd SIGKILL + restart while publishing"] = {
        "sent": len(bodies), "confirmed": len(confirmed), "consumed": len(tally.seen),
        "duplicates": tally.duplicates, "lost": len(lost),
        "note": f"{len(failed)} reported failed (retryable), none confirmed falsely",
    }  # fmt: skip


async def test_lookupd_down_at_start_and_mid_run(nsq_cluster_factory, nsqd_factory) -> None:
    cluster = nsq_cluster_factory(nsqd_count=2, lookupd_count=2)
    down, up = cluster.lookupds
    for nsqd in cluster.nsqds:
        nsqd.create_topic("ld")
    await asyncio.to_thread(wait_until, lambda: len(up.producers("ld")) == 2)
    await asyncio.to_thread(down.stop)  # one lookupd is down from the start
    tally = Tally()
    reader = Reader("ld", "c", lookupd_http_addresses=cluster.lookupd_http_urls,
                    lookupd_poll_interval=0.2, lookupd_poll_jitter=0,
                    max_in_flight=10)  # fmt: skip
    reader.messages.pipe(nsq.process(tally)).subscribe()
    await eventually(lambda: len(reader.connections) == 2)
    await asyncio.to_thread(up.stop)  # now none answers: existing connections keep working
    await publish(cluster.nsqds[0].tcp_address, "ld", [b"a%d" % i for i in range(200)])
    await eventually(lambda: len(tally.seen) == 200)
    assert len(reader.connections) == 2
    await asyncio.to_thread(up.restart)
    third = nsqd_factory(lookupd_tcp_addresses=[up.tcp_address])  # registers with `up`
    await publish(third.tcp_address, "ld", [b"b%d" % i for i in range(200)])
    await eventually(lambda: len(tally.seen) == 400)  # discovery recovered
    assert third.tcp_address in reader.connections
    # the restarted lookupd does not list the first two yet (they re-register on their next
    # ping): their connections are kept through the vanish grace period
    assert all(n.tcp_address in reader.connections for n in cluster.nsqds)
    await reader.close()
    REPORT["nsqlookupd down at start and mid-run"] = {
        "sent": 400, "confirmed": 400, "consumed": len(tally.seen),
        "duplicates": tally.duplicates, "lost": 400 - len(tally.seen),
    }  # fmt: skip


async def test_one_nsqd_of_three_lost_for_good(nsq_cluster) -> None:
    for i, nsqd in enumerate(nsq_cluster.nsqds):
        await publish(nsqd.tcp_address, "lost", [b"%d-%d" % (i, n) for n in range(300)])
    tally = Tally()
    reader = Reader("lost", "c", lookupd_http_addresses=nsq_cluster.lookupd_http_urls,
                    max_in_flight=30, lookupd_poll_interval=0.3)  # fmt: skip
    reader.messages.pipe(nsq.process_async(_echo(tally))).subscribe()
    await eventually(lambda: len(reader.connections) == 3)
    gone = nsq_cluster.nsqds[0]
    await asyncio.to_thread(gone.kill)
    survivors = {b"%d-%d" % (i, n) for i in (1, 2) for n in range(300)}
    await eventually(lambda: survivors <= set(tally.seen), timeout=60)
    assert gone.tcp_address not in reader.connections
    await reader.close()
    REPORT["one nsqd of three killed for good"] = {
        "sent": 600, "confirmed": 600, "consumed": len(survivors & set(tally.seen)),
        "duplicates": tally.duplicates, "lost": len(survivors - set(tally.seen)),
        "note": "counts for the two surviving nsqd; the dead one's messages stay on its disk",
    }  # fmt: skip


def _echo(tally: Tally) -> Callable[[bytes], Any]:
    async def echo(body: bytes) -> bytes:
        await asyncio.sleep(0.002)
        return tally(body)

    return echo


# --- network faults ---------------------------------------------------------------------------


async def test_stalled_connection_is_replaced(nsqd) -> None:
    proxy = await FaultyProxy(nsqd.tcp_address).start()
    tally = Tally()
    reader = Reader("st", "c", nsqd_tcp_addresses=proxy.address, max_in_flight=10,
                    heartbeat_interval=1, reconnect_interval=0.1)  # fmt: skip
    reader.messages.pipe(nsq.process(tally)).subscribe()
    await reader.start()
    await publish(nsqd.tcp_address, "st", [b"before"])
    await eventually(lambda: tally.seen)
    proxy.stall()  # nothing flows, nothing closes
    await eventually(lambda: proxy.connections >= 2, timeout=10)  # dead after 2 silent beats
    proxy.resume()
    await publish(nsqd.tcp_address, "st", [b"after"])
    await eventually(lambda: b"after" in tally.seen, timeout=15)
    await reader.close()
    await proxy.close()
    REPORT["stalled network (no FIN/RST)"] = {
        "sent": 2, "confirmed": 2, "consumed": len(tally.seen), "duplicates": tally.duplicates,
        "lost": 2 - len(tally.seen), "note": "detected after two missed heartbeats, reconnected",
    }  # fmt: skip


async def test_cut_mid_frame_is_handled(nsqd) -> None:
    proxy = await FaultyProxy(nsqd.tcp_address).start()
    bodies = [b"x%d" % i + b"." * 500 for i in range(200)]
    tally = Tally()
    reader = Reader("cut", "c", nsqd_tcp_addresses=proxy.address, max_in_flight=50,
                    reconnect_interval=0.1, msg_timeout=2)  # fmt: skip
    reader.messages.pipe(nsq.process(tally)).subscribe()
    await reader.start()
    proxy.cut_mid_frame(after=10)  # the next chunk from nsqd stops inside a frame
    await publish(nsqd.tcp_address, "cut", bodies)
    await eventually(lambda: set(bodies) <= set(tally.seen), timeout=30)
    assert proxy.connections >= 2
    await reader.close()
    await proxy.close()
    REPORT["connection cut in the middle of a frame"] = {
        "sent": 200, "confirmed": 200, "consumed": len(tally.seen),
        "duplicates": tally.duplicates, "lost": 200 - len(tally.seen),
    }  # fmt: skip


async def test_publishes_pending_on_a_cut_connection_fail(nsqd) -> None:
    proxy = await FaultyProxy(nsqd.tcp_address).start()
    nsqd.create_channel("pc", "c")
    conn = Connection(proxy.address)
    await conn.connect()
    proxy.stall()
    pending = [conn.pub("pc", b"%d" % i) for i in range(50)]
    await asyncio.sleep(0.2)
    proxy.cut()
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(r, errors.ConnectionClosedError) for r in results)
    assert nsqd.channel_stats("pc", "c")["depth"] == 0  # and indeed none was published
    await proxy.close()
    REPORT["publishes pending on a cut connection"] = {
        "sent": 50, "confirmed": 0, "consumed": 0, "duplicates": 0, "lost": 0,
        "note": "all 50 reported failed (ConnectionClosedError), none confirmed",
    }  # fmt: skip


# --- slow work and many producers --------------------------------------------------------------


async def test_work_longer_than_msg_timeout_is_kept_alive(nsqd_factory) -> None:
    nsqd = nsqd_factory(extra_args=["--msg-timeout=1s"])
    await publish(nsqd.tcp_address, "slowwork", [b"a", b"b", b"c"])
    reader = Reader("slowwork", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=3)
    done: list[bytes] = []

    async def slow(body: bytes) -> None:
        await asyncio.sleep(2.5)  # 2.5x the message timeout
        done.append(body)

    reader.messages.pipe(nsq.process_async(slow)).subscribe()
    await eventually(lambda: len(done) == 3, timeout=20)
    stats = await eventually(
        lambda: (c := nsqd.channel_stats("slowwork", "c"))["in_flight_count"] == 0 and c
    )
    assert (
        stats["timeout_count"] == 0
        and stats["requeue_count"] == 0
        and sorted(done) == [b"a", b"b", b"c"]
    )
    await reader.close()
    REPORT["work 2.5x longer than msg_timeout"] = {
        "sent": 3, "confirmed": 3, "consumed": 3, "duplicates": 0, "lost": 0,
        "note": "auto-TOUCH: 0 timeouts, 0 redeliveries",
    }  # fmt: skip


async def test_redelivery_after_timeout_does_not_surface_errors(nsqd_factory) -> None:
    nsqd = nsqd_factory(extra_args=["--msg-timeout=1s"])
    await publish(nsqd.tcp_address, "late", [b"late"])
    reader = Reader("late", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=2)
    attempts: list[int] = []
    failures: list[Exception] = []

    async def slow_untouched(body: bytes) -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            await asyncio.sleep(7)  # times out: nsqd redelivers it meanwhile

    reader.messages.pipe(nsq.process_async(slow_untouched, touch=False)).subscribe(
        on_error=failures.append
    )
    await eventually(lambda: len(attempts) >= 2, timeout=15)
    await eventually(lambda: nsqd.channel_stats("late", "c")["in_flight_count"] == 0, timeout=15)
    await asyncio.sleep(0.5)
    assert failures == []  # the late FIN's E_FIN_FAILED is logged, not raised
    assert nsqd.channel_stats("late", "c")["depth"] == 0
    await reader.close()


async def test_ten_nsqd_with_max_in_flight_five_are_all_drained(nsqd_factory) -> None:
    nodes = [nsqd_factory() for _ in range(10)]
    for i, nsqd in enumerate(nodes):
        await publish(nsqd.tcp_address, "many", [b"%d-%d" % (i, n) for n in range(50)])
    tally = Tally()
    reader = Reader("many", "c", nsqd_tcp_addresses=[n.tcp_address for n in nodes],
                    max_in_flight=5, low_rdy_idle_timeout=0.3,
                    redistribute_interval=0.1)  # fmt: skip
    reader.messages.pipe(nsq.process(tally)).subscribe()
    await eventually(lambda: len(tally.seen) == 500, timeout=60)
    await reader.close()
    for nsqd in nodes:
        assert nsqd.channel_stats("many", "c")["depth"] == 0
    REPORT["10 nsqd, max_in_flight 5"] = {
        "sent": 500, "confirmed": 500, "consumed": len(tally.seen),
        "duplicates": tally.duplicates, "lost": 500 - len(tally.seen),
        "note": "RDY redistribution drained every nsqd",
    }  # fmt: skip


# --- hostile peers -----------------------------------------------------------------------------


async def _identify_then(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         data: bytes) -> None:  # fmt: skip
    await ScriptedPeer.read_identify(reader)
    writer.write(data)
    await writer.drain()
    await reader.read()  # wait for the client to hang up


PEER_CASES = {
    "frame size below 4": frame(0, b'{"max_rdy_count":2500}') + struct.pack(">i", 2),
    "oversized frame size": frame(0, b'{"max_rdy_count":2500}') + struct.pack(">ii", 2**30, 0),
    "unknown frame type": frame(0, b'{"max_rdy_count":2500}') + frame(7, b"??"),
    "garbage after the magic": b"garbage that is not a frame at all",
    "HTTP reply": b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
    "truncated message frame": frame(0, b'{"max_rdy_count":2500}') + frame(0, b"OK")
    + frame(2, b"short"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(PEER_CASES))
async def test_hostile_peer_gives_a_typed_error_and_the_reader_retries(case: str) -> None:
    data = PEER_CASES[case]
    peer = await ScriptedPeer(lambda r, w: _identify_then(r, w, data)).start()
    events: list[Any] = []
    reader = Reader("t", "c", nsqd_tcp_addresses=peer.address, reconnect_interval=0.05,
                    max_frame_size=1 << 20)  # fmt: skip
    reader.events.subscribe(events.append)
    reader.messages.subscribe(on_error=events.append)
    if case == "HTTP reply":
        # a wrong port is a configuration error: no reconnect can fix it, the stream fails
        await eventually(lambda: any(isinstance(e, errors.WrongPortError) for e in events))
        note = "WrongPortError ('give the TCP port'); the messages stream fails, no retry loop"
    else:
        await eventually(lambda: peer.accepted >= 3, timeout=10)  # it keeps trying, no crash
    await reader.close()
    await peer.close()
    problems = [e.detail for e in events if getattr(e, "kind", "") == "connect_failed"]
    closes = [e for e in events if getattr(e, "kind", "") == "disconnected"]
    assert problems or closes, events
    expected = errors.WrongPortError if case == "HTTP reply" else errors.FrameError
    assert any(isinstance(p, expected) for p in problems) or closes, problems
    if case != "HTTP reply":
        note = f"{type(problems[0]).__name__}; connection closed; reconnected {peer.accepted - 1}x"
    REPORT[f"peer: {case}"] = {
        "sent": 0, "confirmed": 0, "consumed": 0, "duplicates": 0, "lost": 0, "note": note,
    }  # fmt: skip


async def test_hostile_peer_after_subscribe_is_survived(nsqd) -> None:
    """A real handshake through a scripted peer that turns hostile mid-stream."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await ScriptedPeer.read_identify(reader)
        writer.write(frame(0, json.dumps({"max_rdy_count": 2500}).encode()))
        await reader.readline()  # SUB
        writer.write(frame(0, b"OK"))
        await writer.drain()
        await reader.readline()  # RDY
        writer.write(struct.pack(">ii", 2**31 - 1, 2))  # an absurd message size
        await writer.drain()
        await reader.read()

    peer = await ScriptedPeer(script).start()
    events: list[Any] = []
    reader = Reader("t", "c", nsqd_tcp_addresses=peer.address, reconnect_interval=0.05)
    reader.events.subscribe(events.append)
    reader.messages.subscribe()
    await reader.start()
    await eventually(lambda: peer.accepted >= 3, timeout=10)
    assert [e for e in events if e.kind == "disconnected"]
    await reader.close()
    await peer.close()


REPORT: dict[str, dict[str, Any]] = {}
#: One row per fault test above (the restart test runs twice: SIGTERM and SIGKILL).
EXPECTED_ROWS = 10 + len(PEER_CASES)
#: Where to write the table: set by ``bash scripts/reliability``; a plain test run writes
#: nothing (it must leave the checkout as it found it).
REPORT_ENV = "RXNSQ_RELIABILITY_REPORT"

HEADER = """# Reliability

What rxnsq did under each fault or bad input tried by `tests/test_faults.py`, against real
nsqd/nsqlookupd (a scripted peer only for malformed frames). `bash scripts/reliability` runs
that module and rewrites this table; the counts are from its last run.

| case | sent | confirmed | consumed | duplicates | lost | what happened |
|---|---|---|---|---|---|---|
"""


@pytest.fixture(scope="module", autouse=True)
def _write_report(request: pytest.FixtureRequest) -> Any:
    yield
    target = os.environ.get(REPORT_ENV)
    if not target:
        return
    if len(REPORT) != EXPECTED_ROWS:
        raise AssertionError(f"{len(REPORT)} rows, {EXPECTED_ROWS} expected: not writing {target}")
    rows = "".join(
        f"| {case} | {r['sent']} | {r['confirmed']} | {r['consumed']} | {r['duplicates']} "
        f"| {r['lost']} | {r.get('note', '')} |\n"
        for case, r in sorted(REPORT.items())
    )
    Path(target).write_text(HEADER + rows)
