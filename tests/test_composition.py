"""Composition safety against real nsqd: whatever a user composes, no message leaves the
in-flight window unsettled, no user error reaches a read loop, the bound holds."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from reactivex import operators as rx_ops

import rxnsq.ops as nsq
from rxnsq import errors
from rxnsq.connection import Connection
from rxnsq.flow import ExponentialBackoff
from rxnsq.message import Message
from rxnsq.reader import CaughtError, Heartbeat, Reader, ReaderEvent
from rxnsq.testing import eventually, publish

pytestmark = pytest.mark.nsqd


def numbered(n: int) -> list[bytes]:
    return [str(i).encode() for i in range(n)]


class Sampler:
    """Calls ``sample()`` every ``interval`` seconds on a thread (blocking HTTP is fine there)
    and keeps the results, until stopped."""

    def __init__(self, sample: Callable[[], int], interval: float = 0.02) -> None:
        self.values: list[int] = []
        self._sample = sample
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.values.append(self._sample())
            self._stop.wait(self._interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- 1. a boundary around the user's code --------------------------------------------------


async def test_a_raising_subscriber_costs_one_retry_never_the_connection(nsqd) -> None:
    await publish(nsqd.tcp_address, "raise", numbered(100))
    bad = {b"7", b"23", b"51", b"88"}
    reader = Reader(
        "raise",
        "c",
        nsqd_tcp_addresses=nsqd.tcp_address,
        max_in_flight=10,
        default_requeue_delay=0.05,
        backoff=ExponentialBackoff(0.005),
    )
    events: list[ReaderEvent] = []
    caught: list[CaughtError] = []
    finished: Counter[bytes] = Counter()
    reader.events.subscribe(events.append)
    reader.errors.subscribe(caught.append)

    def handle(message: Message[bytes]) -> None:
        if message.body in bad and message.attempts == 1:
            raise RuntimeError(f"bug on {message.body!r}")
        message.fin()
        finished[message.body] += 1

    reader.messages.subscribe(handle)
    await eventually(lambda: len(finished) == 100, timeout=20)
    await asyncio.sleep(0.1)
    await reader.close()
    stats = nsqd.channel_stats("raise", "c")
    assert stats["depth"] == 0 and stats["in_flight_count"] == 0
    assert stats["timeout_count"] == 0 and stats["requeue_count"] == 4
    assert max(finished.values()) == 1
    assert [e.kind for e in events].count("connected") == 1
    assert "disconnected" not in [e.kind for e in events]
    assert sorted(c.message.body for c in caught if c.message) == sorted(bad)
    assert all(isinstance(c.error, RuntimeError) and c.address == nsqd.tcp_address for c in caught)
    assert reader.caught_errors == 4


async def test_a_raising_subscriber_of_a_connection_stream_is_caught(nsqd) -> None:
    await publish(nsqd.tcp_address, "connraise", numbered(5))
    conn = Connection(nsqd.tcp_address, heartbeat_interval=1.0)
    await conn.connect()
    await conn.subscribe("connraise", "c")
    got: list[bytes] = []

    def boom(_value: object) -> None:
        raise ValueError("subscriber bug")

    conn.heartbeats.subscribe(boom)
    conn.messages.subscribe(boom)  # raises first: the next subscriber still gets each message
    conn.messages.subscribe(lambda m: (got.append(m.body), m.fin()))
    conn.rdy(5)
    await eventually(lambda: len(got) == 5, timeout=5)
    await asyncio.sleep(2.2)  # two heartbeats into a raising subscriber
    assert conn.is_ready
    await conn.close()
    assert nsqd.channel_stats("connraise", "c")["depth"] == 0


# --- 2. unsettled messages are accounted for -----------------------------------------------


async def _filtered_run(nsqd, topic: str, keep_odd_stage: Any) -> tuple[Reader, list[int], float]:
    await publish(nsqd.tcp_address, topic, numbered(2500))
    reader = Reader(
        topic,
        "c",
        nsqd_tcp_addresses=nsqd.tcp_address,
        max_in_flight=200,
        max_tries=1,
        msg_timeout=2.0,
    )
    done: list[bytes] = []
    reader.messages.pipe(keep_odd_stage).subscribe(lambda m: (m.fin(), done.append(m.body)))

    def in_flight() -> int:
        return int(reader.stats()["in_flight"])

    loop = asyncio.get_running_loop()
    samples: list[int] = []

    async def sample() -> None:
        while True:
            samples.append(in_flight())
            await asyncio.sleep(0.02)

    sampler = loop.create_task(sample())

    def drained() -> bool:
        stats = nsqd.channel_stats(topic, "c")
        return len(done) == 1250 and stats["depth"] == 0 and stats["in_flight_count"] == 0

    await eventually(drained, timeout=60, interval=0.2)
    sampler.cancel()
    started = loop.time()
    await reader.close()
    return reader, samples, loop.time() - started


async def test_a_plain_filter_leaks_no_window_slot(nsqd) -> None:
    reader, samples, close_time = await _filtered_run(
        nsqd, "leak", rx_ops.filter(lambda m: int(m.body) % 2 == 0)
    )
    stats = nsqd.channel_stats("leak", "c")
    assert max(samples) <= 200
    assert stats["timeout_count"] == 1250  # the dropped ones, once each (max_tries=1)
    assert reader.abandoned == stats["timeout_count"]
    assert reader.given_up == 1250
    assert close_time < 2.0


async def test_the_ack_aware_filter_times_nothing_out(nsqd) -> None:
    reader, samples, close_time = await _filtered_run(
        nsqd, "guarded", nsq.guard(rx_ops.filter(lambda m: int(m.body) % 2 == 0))
    )
    stats = nsqd.channel_stats("guarded", "c")
    assert max(samples) <= 200
    assert stats["timeout_count"] == 0 and reader.abandoned == 0
    assert stats["message_count"] == 2500 and stats["requeue_count"] == 0
    assert close_time < 2.0


async def test_abandoned_messages_are_reported_with_the_message(nsqd, caplog) -> None:
    await publish(nsqd.tcp_address, "drop", numbered(3))
    reader = Reader(
        "drop", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=10, msg_timeout=1.0
    )
    events: list[ReaderEvent] = []
    reader.events.subscribe(events.append)
    held: list[Message[bytes]] = []
    reader.messages.subscribe(held.append)  # never settles anything
    await eventually(lambda: len([e for e in events if e.kind == "abandoned"]) >= 3, timeout=5)
    abandoned = [e for e in events if e.kind == "abandoned"]
    assert {e.message.id for e in abandoned if e.message} >= {m.id for m in held[:3]}
    assert all(m.outcome == "abandoned" for m in held[:3])
    assert held[0].fin() is False  # nsqd has it back: a FIN now could finish a redelivery
    assert sum("neither settled nor touched" in r.getMessage() for r in caplog.records) == 1
    await reader.close(0.5)


# --- 3. settlement from any thread ---------------------------------------------------------


async def test_fin_from_rxpy_timer_threads_reaches_nsqd_at_once(nsqd) -> None:
    await publish(nsqd.tcp_address, "threads", numbered(120))
    reader = Reader("threads", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=200)
    threads: set[int] = set()
    last_window = [0.0]
    finished = [0]

    def aggregate(window: list[Message[bytes]]) -> None:
        threads.add(threading.get_ident())
        for message in window:
            finished[0] += message.fin()
        last_window[0] = time.monotonic()

    reader.messages.pipe(
        rx_ops.window_with_time_or_count(0.2, 1000),  # RxPY default scheduler: thread timers
        rx_ops.flat_map(lambda window: window.pipe(rx_ops.to_list())),
        rx_ops.filter(bool),
    ).subscribe(aggregate)

    def drained_at() -> float:
        """Polled from a thread, so nothing else wakes the loop while the FINs travel."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if finished[0] == 120 and nsqd.channel_stats("threads", "c")["in_flight_count"] == 0:
                return time.monotonic()
            time.sleep(0.01)
        raise AssertionError(f"{finished[0]} finished; nsqd still has messages in flight")

    zero_at = await asyncio.to_thread(drained_at)
    assert zero_at - last_window[0] < 0.5
    assert threading.get_ident() not in threads  # it really ran on other threads
    await reader.close()


async def test_the_loop_scheduler_runs_timed_operators_on_the_loop(nsqd) -> None:
    await publish(nsqd.tcp_address, "sched", numbered(40))
    reader = Reader("sched", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=100)
    assert reader.scheduler is not None  # before the reader started
    threads: set[int] = set()
    finished = [0]

    def aggregate(window: list[Message[bytes]]) -> None:
        threads.add(threading.get_ident())
        finished[0] += sum(m.fin() for m in window)

    reader.messages.pipe(
        rx_ops.window_with_time_or_count(0.1, 7),
        rx_ops.flat_map(lambda window: window.pipe(rx_ops.to_list())),
        rx_ops.filter(bool),
    ).subscribe(aggregate, scheduler=reader.scheduler)
    await eventually(lambda: finished[0] == 40, timeout=10)
    assert threads == {threading.get_ident()}
    await reader.close()


# --- 4. keyed batch ------------------------------------------------------------------------


async def test_keyed_batch_never_stalls_the_window(nsqd) -> None:
    bodies = [f"{i % 5}:{i}".encode() for i in range(3000)]
    await publish(nsqd.tcp_address, "keyed", bodies)
    reader = Reader("keyed", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=200)
    seen: Counter[bytes] = Counter()
    keys_ok = [True]

    def handle(batch: nsq.Batch[bytes]) -> None:
        for message in batch:
            seen[message.body] += 1
            keys_ok[0] &= message.body.split(b":")[0] == batch.key

    reader.messages.pipe(
        nsq.batch(50, 5.0, key=lambda body: body.split(b":")[0]),
        nsq.process_batch(lambda values: None),
        rx_ops.do_action(handle),
    ).subscribe()
    started = time.monotonic()
    await eventually(lambda: len(seen) >= 2800, timeout=20)
    # 5 keys x 50 > 200 in flight: without the starvation flush every batch would wait 5 s
    assert time.monotonic() - started < 4.0
    await eventually(lambda: len(seen) == 3000, timeout=20)  # the tail closes on time
    await reader.close()
    assert max(seen.values()) == 1 and keys_ok[0]
    stats = nsqd.channel_stats("keyed", "c")
    assert stats["depth"] == 0 and stats["timeout_count"] == 0 and stats["requeue_count"] == 0


async def test_a_subscriber_raising_on_a_timed_batch_requeues_it(nsqd) -> None:
    await publish(nsqd.tcp_address, "batchraise", numbered(6))
    reader = Reader(
        "batchraise",
        "c",
        nsqd_tcp_addresses=nsqd.tcp_address,
        max_in_flight=100,
        default_requeue_delay=0.05,
        backoff=ExponentialBackoff(0.005),
    )
    caught: list[CaughtError] = []
    reader.errors.subscribe(caught.append)
    calls = [0]

    def handle(batch: nsq.Batch[bytes]) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("first batch fails in the subscriber")
        batch.fin_all()

    done = [0]
    reader.messages.pipe(nsq.batch(100, 0.2)).subscribe(
        lambda b: (handle(b), done.__setitem__(0, done[0] + len(b)))
    )
    await eventually(lambda: done[0] == 6, timeout=10)
    await reader.close()
    assert len(caught) == 1 and caught[0].stage == "batch"
    stats = nsqd.channel_stats("batchraise", "c")
    assert stats["requeue_count"] == 6 and stats["timeout_count"] == 0 and stats["depth"] == 0


# --- 5. peek consumes nothing --------------------------------------------------------------


async def test_peeks_never_push_a_message_to_give_up(nsqd) -> None:
    await publish(nsqd.tcp_address, "peek", numbered(10))
    peeker = Reader("peek", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=100)
    seen = []
    for _ in range(6):
        got = await peeker.peek(1, timeout=2)
        assert len(got) == 1
        seen.append(got[0].body)
    assert peeker.stats()["connections"][nsqd.tcp_address]["rdy"] == 0  # as it was
    stats = nsqd.channel_stats("peek", "c")
    assert stats["requeue_count"] <= 6 and stats["depth"] + stats["in_flight_count"] == 10
    assert len(set(seen)) == 6  # each peek requeued to the back: six different messages
    three = await peeker.peek(3, timeout=2)
    assert len(three) == 3
    assert nsqd.channel_stats("peek", "c")["requeue_count"] <= 9
    await peeker.close()

    consumer = Reader("peek", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=10)
    processed: set[bytes] = set()
    consumer.messages.pipe(nsq.process(processed.add)).subscribe()
    await eventually(lambda: len(processed) == 10, timeout=10)
    await consumer.close()
    assert consumer.given_up == 0 and processed == set(numbered(10))


async def test_many_peeks_of_a_small_channel_finish_nothing(nsqd) -> None:
    await publish(nsqd.tcp_address, "peek10", numbered(2))
    peeker = Reader("peek10", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_tries=2)
    for _ in range(6):
        await peeker.peek(1, timeout=2)
    await peeker.close()
    assert peeker.given_up == 0
    stats = nsqd.channel_stats("peek10", "c")
    assert stats["depth"] == 2 and stats["message_count"] == 2


async def test_peek_on_a_consuming_reader_is_a_state_error(nsqd) -> None:
    reader = Reader("peekbusy", "c", nsqd_tcp_addresses=nsqd.tcp_address)
    subscription = reader.messages.subscribe(lambda m: m.fin())
    with pytest.raises(errors.StateError, match="consuming"):
        await reader.peek(1)
    with pytest.raises(errors.ConfigError, match="count"):
        await reader.peek(0)
    with pytest.raises(errors.ConfigError, match="count"):
        await reader.peek("3")
    subscription.dispose()
    await reader.close()


# --- 6. failures a user can see ------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1:abc", ":99999", "127.0.0.1:-1", "127.0.0.1:0", "http://127.0.0.1:4150", "::1:4150"],
)
def test_an_unparsable_address_is_a_config_error_at_construction(address: str) -> None:
    with pytest.raises(errors.ConfigError, match="nsqd_tcp_addresses"):
        Reader("t", "c", nsqd_tcp_addresses=address)


@pytest.mark.parametrize("value", [5, b"127.0.0.1:4150", [None], {"a": 1}])
def test_addresses_of_the_wrong_type_are_config_errors(value: object) -> None:
    with pytest.raises(errors.ConfigError):
        Reader("t", "c", nsqd_tcp_addresses=value)
    with pytest.raises(errors.ConfigError):
        Reader("t", "c", lookupd_http_addresses=value)


def test_wrong_types_for_reader_options_are_config_errors() -> None:
    with pytest.raises(errors.InvalidNameError):
        Reader(5, "c", nsqd_tcp_addresses="127.0.0.1:4150")
    with pytest.raises(errors.ConfigError, match="max_in_flight"):
        Reader("t", "c", nsqd_tcp_addresses="127.0.0.1:4150", max_in_flight="10")
    with pytest.raises(errors.ConfigError, match="count"):
        nsq.batch("5", 1.0)
    with pytest.raises(errors.ConfigError, match="key"):
        nsq.batch(5, 1.0, key="user")
    with pytest.raises(errors.ConfigError, match="operator"):
        nsq.guard(5)
    with pytest.raises(errors.ConfigError, match="dropped"):
        nsq.guard(rx_ops.filter(bool), dropped="drop")


async def test_start_raises_when_no_direct_nsqd_can_be_reached() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    reader = Reader("t", "c", nsqd_tcp_addresses=f"127.0.0.1:{port}", connect_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(errors.NSQConnectionError, match=str(port)):
        await reader.start()
    assert time.monotonic() - started < 1.5
    assert reader.is_closing


async def test_start_can_wait_for_an_nsqd_that_comes_later(nsqd_factory) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    reader = Reader("t", "c", nsqd_tcp_addresses=f"127.0.0.1:{port}", reconnect_interval=0.1)
    events: list[ReaderEvent] = []
    reader.events.subscribe(events.append)
    await reader.start(require_nsqd=False)
    await eventually(lambda: any(e.kind == "connect_failed" for e in events), timeout=2)
    assert not reader.is_closing
    await reader.close()


@pytest.mark.parametrize(
    ("option", "value"), [("heartbeat_interval", 120.0), ("msg_timeout", 1800.0)]
)
async def test_identify_options_nsqd_refuses_fail_the_stream_once(
    nsqd, option: str, value: float
) -> None:
    reader = Reader("t", "c", nsqd_tcp_addresses=nsqd.tcp_address, **{option: value})
    events: list[ReaderEvent] = []
    failures: list[Exception] = []
    reader.events.subscribe(events.append)
    reader.messages.subscribe(on_error=failures.append)
    await eventually(lambda: bool(failures), timeout=5)
    assert isinstance(failures[0], errors.IdentifyRefusedError)
    assert failures[0].option == option and "is invalid" in failures[0].answer
    await asyncio.sleep(0.3)
    assert [e.kind for e in events].count("connect_failed") == 1
    with pytest.raises(errors.IdentifyRefusedError):
        await Reader("t", "c", nsqd_tcp_addresses=nsqd.tcp_address, **{option: value}).start()


async def test_a_bad_requeue_delay_settles_nothing(nsqd) -> None:
    await publish(nsqd.tcp_address, "baddelay", numbered(1))
    reader = Reader("baddelay", "c", nsqd_tcp_addresses=nsqd.tcp_address)
    got: list[Message[bytes]] = []
    reader.messages.subscribe(got.append)
    await eventually(lambda: len(got) == 1, timeout=5)
    for bad in (float("nan"), float("inf"), -1, "5", None.__class__):
        with pytest.raises(errors.ConfigError, match="delay"):
            got[0].req(bad)
    assert got[0].outcome is None
    assert got[0].fin() is True
    await eventually(lambda: nsqd.channel_stats("baddelay", "c")["in_flight_count"] == 0, timeout=2)
    await reader.close()


async def test_disposing_the_last_subscriber_requeues_what_it_held_at_once(nsqd) -> None:
    await publish(nsqd.tcp_address, "held", numbered(5))
    reader = Reader("held", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=5)
    held: list[Message[bytes]] = []
    subscription = reader.messages.subscribe(held.append)
    await eventually(lambda: len(held) == 5, timeout=5)
    started = time.monotonic()
    subscription.dispose()
    await eventually(lambda: nsqd.channel_stats("held", "c")["depth"] == 5, timeout=2)
    assert time.monotonic() - started < 1.0
    await eventually(lambda: reader.connections == {}, timeout=2)
    assert all(m.outcome == "req" for m in held)


# --- 7. the bound holds while RDY moves ----------------------------------------------------


async def test_the_bound_holds_across_three_nsqd(nsqd_factory) -> None:
    nsqds = [nsqd_factory() for _ in range(3)]
    for index, daemon in enumerate(nsqds):
        await publish(daemon.tcp_address, "bound", numbered(100 * (index + 1))[100 * index :])
    reader = Reader(
        "bound",
        "c",
        nsqd_tcp_addresses=[d.tcp_address for d in nsqds],
        max_in_flight=10,
    )

    async def slow(value: bytes) -> bytes:
        await asyncio.sleep(0.02)
        return value

    done: list[bytes] = []
    reader.messages.pipe(nsq.process_async(slow, concurrency=3)).subscribe(
        lambda m: done.append(m.value)
    )

    pool = ThreadPoolExecutor(len(nsqds))

    def total_in_flight() -> int:  # the three nsqd asked at once: a sum of one moment
        found = pool.map(lambda d: d.channel_stats("bound", "c").get("in_flight_count", 0), nsqds)
        return sum(found)

    with Sampler(total_in_flight, 0.02) as sampler:
        await eventually(lambda: len(done) == 300, timeout=30)
    await reader.close()
    pool.shutdown()
    assert len(sampler.values) > 50
    assert max(sampler.values) <= 10, sampler.values
    assert sorted(done) == sorted(numbered(300))


async def test_adding_an_nsqd_never_lifts_the_bound(nsqd_factory) -> None:
    first, second = nsqd_factory(), nsqd_factory()
    await publish(first.tcp_address, "grow", numbered(40))
    await publish(second.tcp_address, "grow", numbered(80)[40:])
    reader = Reader("grow", "c", nsqd_tcp_addresses=first.tcp_address, max_in_flight=10)
    held: list[Message[bytes]] = []
    reader.messages.subscribe(held.append)
    await eventually(lambda: len(held) == 10, timeout=5)
    reader.add_nsqd(second.tcp_address)
    await eventually(lambda: len(reader.connections) == 2, timeout=5)
    peak = 0
    for _ in range(40):  # release slowly: one message every 25 ms
        unsettled = [m for m in held if m.outcome is None]
        peak = max(peak, len(unsettled), reader.stats()["in_flight"])
        if unsettled:
            unsettled[0].fin()
        await asyncio.sleep(0.025)
    assert peak <= 10
    assert {m.address for m in held} == {first.tcp_address, second.tcp_address}
    await reader.close(0.5)


# --- 8. reader-level streams survive reconnects --------------------------------------------


async def test_reader_streams_keep_flowing_across_an_nsqd_restart(nsqd) -> None:
    reader = Reader(
        "restart",
        "c",
        nsqd_tcp_addresses=nsqd.tcp_address,
        heartbeat_interval=1.0,
        reconnect_interval=0.1,
    )
    beats: list[Heartbeat] = []
    events: list[ReaderEvent] = []
    conns: list[Connection] = []
    reader.heartbeats.subscribe(beats.append)
    reader.events.subscribe(events.append)
    reader.new_connections.subscribe(conns.append)
    reader.messages.subscribe(lambda m: m.fin())
    await eventually(lambda: len(beats) >= 1, timeout=5)
    before = len(beats)
    nsqd.restart()
    await eventually(lambda: len(conns) == 2, timeout=10)
    await eventually(lambda: len(beats) >= before + 1, timeout=5)
    kinds = [e.kind for e in events]
    assert kinds.index("disconnected") < len(kinds) - 1 - kinds[::-1].index("connected")
    assert all(b.address == nsqd.tcp_address for b in beats)
    assert conns[0] is not conns[1] and conns[1] is reader.connections[nsqd.tcp_address]
    await reader.close()


async def test_a_raising_compat_heartbeat_hook_keeps_the_connection(nsqd) -> None:
    import rxnsq.compat as pynsq_compat

    calls = [0]

    class Hooked(pynsq_compat.Reader):
        def heartbeat(self, conn: Any) -> None:
            calls[0] += 1
            raise RuntimeError("a hook with a bug")

    events: list[ReaderEvent] = []
    reader = Hooked(
        "hb",
        "c",
        message_handler=lambda m: True,
        nsqd_tcp_addresses=nsqd.tcp_address,
        heartbeat_interval=1,
    )
    reader.reader.events.subscribe(events.append)
    await eventually(lambda: calls[0] >= 3, timeout=6)
    assert [e.kind for e in events].count("connected") <= 1
    assert "disconnected" not in [e.kind for e in events]
    clients = nsqd.channel_stats("hb", "c")["clients"]
    assert len(clients) == 1
    await reader.close()


async def test_an_nsqd_that_requires_tls_is_a_negotiation_error(nsqd_factory, tmp_path) -> None:
    import trustme

    cert = trustme.CA().issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    nsqd = nsqd_factory(
        extra_args=[
            f"--tls-cert={tmp_path / 'cert.pem'}",
            f"--tls-key={tmp_path / 'key.pem'}",
            "--tls-required=true",
        ]
    )
    reader = Reader("t", "c", nsqd_tcp_addresses=nsqd.tcp_address)
    with pytest.raises(errors.NegotiationError, match="requires TLS"):
        await reader.start()


async def test_async_with_starts_and_closes_the_reader(nsqd) -> None:
    await publish(nsqd.tcp_address, "with", numbered(3))
    got: list[bytes] = []
    async with Reader("with", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=3) as reader:
        assert reader.connections  # started on entry
        reader.messages.pipe(nsq.process(got.append)).subscribe()
        await eventually(lambda: len(got) == 3, timeout=5)
    assert reader.is_closing and reader.connections == {}
    assert nsqd.channel_stats("with", "c")["depth"] == 0


async def test_reader_totals_and_hold_times(nsqd) -> None:
    await publish(nsqd.tcp_address, "hold", numbered(10))
    reader = Reader(
        "hold", "c", nsqd_tcp_addresses=nsqd.tcp_address, max_in_flight=10,
        measure_hold_times=True, default_requeue_delay=0,
    )  # fmt: skip

    async def slow(value: bytes) -> bytes:
        await asyncio.sleep(0.05)
        if value == b"3" and not retried:
            retried.append(value)
            raise ValueError("once")
        return value

    retried: list[bytes] = []
    done: list[bytes] = []
    reader.messages.pipe(nsq.process_async(slow, backoff=False)).subscribe(
        lambda m: done.append(m.value)
    )
    await eventually(lambda: len(done) == 10, timeout=10)
    stats = reader.stats()
    await reader.close()
    assert (stats["received"], stats["finished"], stats["requeued"]) == (11, 10, 1)
    assert stats["connects"] == 1
    hold = reader.hold_times
    assert hold is not None and hold.count == 11 and hold.sum >= 11 * 0.05
    assert hold.cumulative()[-1] == (float("inf"), 11)
    assert dict(hold.cumulative())[0.025] == 0  # nothing was held for less than 50 ms
