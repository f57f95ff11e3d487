"""The Writer's failures against real nsqd: fast and typed (the Reader's types for the same
cases), a publish timeout whose late answer is ignored, a close that accounts for every publish
and every sink item."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from rxnsq import errors
from rxnsq.connection import NegotiationError
from rxnsq.reader import Reader
from rxnsq.testing import eventually
from rxnsq.writer import PublishAck, Writer
from tests.test_connection import AuthServer  # speaks nsqd's auth protocol

pytestmark = pytest.mark.nsqd


def message_count(nsqd: Any, topic: str) -> int:
    topics = nsqd.stats(topic=topic)["topics"] or []
    return int(topics[0]["message_count"]) if topics else 0


@pytest.fixture
async def auth_server() -> AsyncIterator[AuthServer]:
    server = AuthServer()
    server.secrets["good"] = [{"topic": ".*", "channels": [".*"], "permissions": ["publish"]}]
    yield server
    server.http.stop()
    await server.http.close_all_connections()


@pytest.fixture
def stoppable(nsqd_factory) -> Iterator[Any]:
    """An nsqd the test may SIGSTOP; always continued before the harness stops it."""
    nsqd = nsqd_factory()
    try:
        yield nsqd
    finally:
        if nsqd.pid is not None:
            os.kill(nsqd.pid, signal.SIGCONT)


async def reader_error(address: str, **options: Any) -> BaseException:
    """The error a Reader's stream fails with for the same address and options."""
    reader = Reader("t", "c", nsqd_tcp_addresses=address, **options)
    failed = asyncio.get_running_loop().create_future()
    reader.messages.subscribe(on_error=lambda e: failed.done() or failed.set_result(e))
    try:
        return await asyncio.wait_for(failed, 10)
    finally:
        await reader.close(0)


CASES = ["refused", "http port", "wrong auth secret", "no auth secret", "tls not granted"]


@pytest.mark.parametrize("case", CASES)
async def test_the_first_and_the_tenth_publish_fail_at_once_with_the_readers_type(
    case: str, nsqd_factory, auth_server: AuthServer, unused_tcp_port: int
) -> None:
    options: dict[str, Any] = {}
    if case == "refused":
        address, expected, retriable = (
            f"127.0.0.1:{unused_tcp_port}",
            errors.NSQConnectionError,
            True,
        )
    elif case == "http port":
        address, expected, retriable = nsqd_factory().http_address, errors.WrongPortError, False
    elif case == "tls not granted":
        address, expected, retriable = nsqd_factory().tcp_address, NegotiationError, False
        options = {"tls_v1": True}
    else:
        nsqd = nsqd_factory(extra_args=[f"--auth-http-address={auth_server.address}"])
        address, expected, retriable = nsqd.tcp_address, errors.AuthError, False
        if case == "wrong auth secret":
            options = {"auth_secret": "wrong"}
    writer = Writer(address, **options)
    seen: list[BaseException] = []
    for call in range(10):
        started = time.perf_counter()
        with pytest.raises(expected) as info:
            if call % 2:
                await writer.pub("t", b"x")
            else:
                await writer.mpub("t", [b"x", b"y"])
        elapsed = time.perf_counter() - started
        assert elapsed < 0.5, f"call {call + 1} took {elapsed:.2f}s"
        error = info.value
        assert error.retriable is retriable
        assert address in str(error)
        assert error.__cause__ is not None
        seen.append(error)
    assert len({id(e) for e in seen}) == 10  # each call its own exception
    # a fire-and-forget publish and a sink fail the same way, at once
    future = writer.pub_nowait("t", b"x")
    with pytest.raises(expected):
        await asyncio.wait_for(future, 0.5)
    sink = writer.sink("t", retries=0)
    sink.on_next(b"x")
    sink.on_completed()
    await asyncio.wait_for(sink.done, 0.5)
    assert sink.failed == 1 and isinstance(sink.errors[0], expected)
    await writer.close()
    if not retriable:  # a Reader's stream fails with the same type (it retries a refusal)
        assert isinstance(await reader_error(address, **options), expected)


async def test_a_garbage_address_is_a_config_error_naming_the_port() -> None:
    for address, port in [("127.0.0.1:abc", "abc"), ("127.0.0.1:70000", "70000")]:
        with pytest.raises(errors.ConfigError, match=f"port '{port}'"):
            Writer(address)
        with pytest.raises(errors.ConfigError, match=f"port '{port}'"):
            Writer(["127.0.0.1:4150", address])


async def test_a_lost_nsqd_is_waited_for_up_to_reconnect_wait(nsqd) -> None:
    writer = Writer(nsqd.tcp_address, reconnect_wait=0.4, reconnect_interval=0.2)
    assert await writer.pub("t", b"first") == b"OK"
    await asyncio.to_thread(nsqd.stop)
    await eventually(lambda: not writer.connections)
    started = time.perf_counter()
    with pytest.raises(errors.NSQConnectionError) as info:
        await writer.pub("t", b"x")
    assert 0.3 < time.perf_counter() - started < 1.5 and info.value.retriable
    # with nsqd back inside the window, the publish waits for the reconnect and succeeds
    writer.reconnect_wait = 10.0
    publish = asyncio.create_task(writer.pub("t", b"after"))
    await asyncio.to_thread(nsqd.restart)
    assert await asyncio.wait_for(publish, 10) == b"OK"
    await writer.close()


async def test_close_with_nsqd_stopped_accounts_for_every_publish(stoppable, caplog) -> None:
    writer = Writer(stoppable.tcp_address)
    await writer.pub("t", b"connected")
    sink = writer.sink("t", max_batch=10)
    os.kill(stoppable.pid, signal.SIGSTOP)
    awaited = [asyncio.create_task(writer.pub("t", b"a%d" % i)) for i in range(5)]
    nowait = [writer.pub_nowait("t", b"n%d" % i) for i in range(5)]
    for i in range(25):
        sink.on_next(b"s%d" % i)
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    await writer.close(timeout=0.5)
    assert time.perf_counter() - started < 1.5
    outcomes = await asyncio.gather(*awaited, *nowait, return_exceptions=True)
    assert len(outcomes) == 10
    for outcome in outcomes:
        assert isinstance(outcome, errors.NSQError), repr(outcome)  # never CancelledError
        assert outcome.retriable
    assert sink.fed == 25 and sink.confirmed + sink.failed == 25 and sink.pending == 0
    assert sink.failed == 25
    assert sink.done.done()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_a_publish_to_a_stopped_nsqd_times_out_and_stays_failed(stoppable) -> None:
    writer = Writer(stoppable.tcp_address, publish_timeout=30)
    await writer.pub("t", b"connected")
    acks: list[PublishAck] = []
    writer.acks.subscribe(acks.append)
    sink = writer.sink("t", retries=0, timeout=0.5)
    os.kill(stoppable.pid, signal.SIGSTOP)
    nowait = writer.pub_nowait("t", b"nowait", timeout=0.5)
    for i in range(7):
        sink.on_next(b"s%d" % i)
    started = time.perf_counter()
    with pytest.raises(errors.PublishTimeoutError) as info:
        await writer.pub("t", b"awaited", timeout=0.5)
    assert 0.45 < time.perf_counter() - started < 1.0
    assert info.value.retriable and stoppable.tcp_address in str(info.value)
    with pytest.raises(errors.PublishTimeoutError):
        await nowait
    await eventually(lambda: sink.failed == 7, timeout=2)
    failed_acks = len(acks)
    assert failed_acks == 3 and not any(a.ok for a in acks)  # one MPUB, one PUB, one PUB
    os.kill(stoppable.pid, signal.SIGCONT)
    # nsqd now answers the three commands: the answers are ignored, the counts stay
    assert await writer.pub("t", b"later") == b"OK"  # and the replies stay in step
    await asyncio.sleep(0.2)
    assert sink.confirmed == 0 and sink.failed == 7
    assert [a.ok for a in acks] == [False, False, False, True]
    await writer.close()
    # nsqd did publish them in the end: a timeout means "may or may not have been published"
    assert message_count(stoppable, "t") == 1 + 1 + 7 + 1 + 1
