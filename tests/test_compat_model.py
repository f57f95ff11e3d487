"""pynsq's object model in ``rxnsq.compat``: hooks that cannot hurt, pynsq's attributes and
objects, pynsq's numbers, shutdown within a grace period. Against real nsqd; where a test says
so, the same code runs under pynsq 0.9.1 (``import nsq``) beside it for comparison."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nsq as pynsq
import pytest

import rxnsq.compat as nsq
from rxnsq.compat import reader as compat_reader
from rxnsq.config import ConnectionOptions
from rxnsq.testing import eventually

pytestmark = pytest.mark.nsqd

ROOT = Path(__file__).resolve().parent.parent


CONN_ATTRIBUTES = (
    "id", "state", "rdy", "last_rdy", "in_flight", "max_rdy_count", "tls_v1", "snappy",
    "deflate", "heartbeat_interval", "short_hostname", "last_msg_timestamp",
    "last_recv_timestamp",
)  # fmt: skip


def clients(nsqd: Any, topic: str, channel: str) -> list[dict[str, Any]]:
    return nsqd.channel_stats(topic, channel).get("clients") or []


# --- 1. hooks that cannot hurt -------------------------------------------------------------


@pytest.mark.parametrize("raises", [False, True])
async def test_a_heartbeat_hook_gets_pynsq_attributes_and_cannot_drop_the_connection(
    nsqd: Any, raises: bool, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[dict[str, Any]] = []

    class Hooked(nsq.Reader):
        def heartbeat(self, conn: Any) -> None:
            logging.getLogger("app").info("heartbeat from %s", conn.id)  # the common pattern
            seen.append({name: getattr(conn, name) for name in CONN_ATTRIBUTES})
            if raises:
                raise RuntimeError("hook bug")

    reader = Hooked("hb", "c", message_handler=lambda m: True,
                    nsqd_tcp_addresses=nsqd.tcp_address, heartbeat_interval=1)  # fmt: skip
    events: list[str] = []
    reader.reader.events.subscribe(lambda e: events.append(e.kind))
    await eventually(lambda: len(seen) >= 3, timeout=6)
    assert events.count("connected") <= 1 and "disconnected" not in events
    assert len(clients(nsqd, "hb", "c")) == 1  # one TCP connection over the whole test
    first = seen[0]
    assert first["id"] == nsqd.tcp_address and first["state"] == "CONNECTED"
    assert first["rdy"] == first["last_rdy"] == 1 and first["in_flight"] == 0
    assert first["max_rdy_count"] == 2500 and first["heartbeat_interval"] == 1
    assert first["tls_v1"] is False and first["snappy"] is False
    assert seen[-1]["last_recv_timestamp"] > seen[0]["last_recv_timestamp"]  # live, not copies
    if raises:
        assert f"the heartbeat hook raised ({nsqd.tcp_address})" in caplog.text
    await reader.close()


async def test_pynsq_itself_calls_the_same_heartbeat_hook(nsqd: Any) -> None:
    """The same subclass under pynsq 0.9.1, for comparison: one connection, conn.id works."""
    ids: list[str] = []

    class Hooked(pynsq.Reader):
        def heartbeat(self, conn: Any) -> None:
            ids.append(conn.id)

    reader = Hooked("hbp", "c", message_handler=lambda m: True,
                    nsqd_tcp_addresses=[nsqd.tcp_address], heartbeat_interval=1)  # fmt: skip
    await eventually(lambda: len(ids) >= 2, timeout=6)
    assert set(ids) == {nsqd.tcp_address} and len(clients(nsqd, "hbp", "c")) == 1
    reader.close()


@pytest.mark.parametrize("hook", ["reads max_tries", "raises"])
async def test_giving_up_hooks_end_with_the_message_finished_once(nsqd: Any, hook: str) -> None:
    nsqd.http_pub("gu", b"poison")
    gave_up: list[tuple[bytes, int]] = []

    class Reader(nsq.Reader):
        def giving_up(self, message: Any) -> None:
            # what pynsq's own default hook reads
            gave_up.append((message.body, self.max_tries))
            if hook == "raises":
                raise RuntimeError("dead-letter store down")

    reader = Reader("gu", "c", message_handler=lambda m: False, nsqd_tcp_addresses=nsqd.tcp_address,
                    max_tries=2, requeue_delay=0, max_backoff_duration=0.05)  # fmt: skip
    await eventually(lambda: gave_up, timeout=10)
    await eventually(lambda: nsqd.channel_stats("gu", "c")["in_flight_count"] == 0, timeout=5)
    await asyncio.sleep(0.3)  # a REQ loop would show up here
    stats = nsqd.channel_stats("gu", "c")
    assert gave_up == [(b"poison", 2)]
    assert stats["depth"] == 0 and stats["requeue_count"] == 2  # attempts 1 and 2, then FIN
    await reader.close()


async def test_a_raising_processing_hook_requeues_and_names_itself(
    nsqd: Any, caplog: pytest.LogCaptureFixture
) -> None:
    nsqd.http_pub("pm", b"x")
    calls: list[int] = []

    class Reader(nsq.Reader):
        def process_message(self, message: Any) -> bool:  # overrides the handler entirely
            calls.append(message.attempts)
            if message.attempts == 1:
                raise ValueError("first try fails")
            return True

    reader = Reader("pm", "c", nsqd_tcp_addresses=nsqd.tcp_address, requeue_delay=0,
                    max_backoff_duration=0.05)  # fmt: skip
    await eventually(lambda: calls == [1, 2], timeout=10)
    await eventually(lambda: nsqd.channel_stats("pm", "c")["depth"] == 0, timeout=5)
    assert f"the process_message hook raised ({nsqd.tcp_address})" in caplog.text
    await reader.close()


async def test_disabled_is_consulted(nsqd: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat_reader, "DISABLED_RECHECK_INTERVAL", 0.2)
    switch = {"off": True}
    got: list[bytes] = []

    class Reader(nsq.Reader):
        @classmethod
        def disabled(cls) -> bool:
            return switch["off"]

    nsqd.http_pub("dis", b"m")
    reader = Reader("dis", "c", message_handler=lambda m: got.append(m.body) or True,
                    nsqd_tcp_addresses=nsqd.tcp_address)  # fmt: skip
    await eventually(lambda: reader.conns, timeout=5)
    await asyncio.sleep(0.5)
    assert got == [] and reader.total_rdy == 0
    switch["off"] = False
    await eventually(lambda: got == [b"m"], timeout=5)
    await reader.close()


async def test_a_raising_event_listener_is_logged_and_the_others_run(
    nsqd: Any, caplog: pytest.LogCaptureFixture
) -> None:
    conn = nsq.AsyncConn("127.0.0.1", nsqd.tcp_port)
    order: list[str] = []

    def bad(**kwargs: Any) -> None:
        order.append("bad")
        raise RuntimeError("listener bug")

    conn.on("ready", bad)
    conn.on("ready", lambda **kwargs: order.append("good"))
    conn.trigger("ready", conn=conn)  # pynsq's public trigger
    assert order == ["bad", "good"] and "listener of the 'ready' event raised" in caplog.text
    conn.connect()
    await eventually(lambda: order.count("good") == 2, timeout=5)
    assert conn.connected()
    conn.close()


# --- 2. pynsq's objects --------------------------------------------------------------------


def test_a_message_built_by_hand_can_be_finished_and_requeued() -> None:
    message = nsq.Message(b"0123456789abcdef", b"body", 0, 1)
    events: list[str] = []
    message.on("finish", lambda **kw: events.append("finish"))
    assert (message.id, message.body, message.timestamp, message.attempts) == (
        b"0123456789abcdef", b"body", 0, 1,
    )  # fmt: skip
    assert message.finish() is True and message.has_responded()
    assert message.finish() is False and events == ["finish"]
    assert [c.name for c in message.commands] == ["FIN"]
    other = nsq.Message(b"fedcba9876543210", b"x", 0, 2)
    assert other.requeue(delay=1.5, backoff=False) is True
    assert other.commands[0][2:] == (1.5, False)
    third = nsq.Message(b"0000000000000003", b"y", 0, 1)
    third.requeue(time_ms=2500)
    assert third.commands[0].delay == 2.5


def test_decode_message_gives_a_message_with_finish() -> None:
    import struct

    data = struct.pack(">qH", 123, 2) + b"0123456789abcdef" + b"payload"
    message = nsq.decode_message(data)
    assert (message.timestamp, message.attempts, message.body) == (123, 2, b"payload")
    assert message.finish() is True


async def test_identify_and_auth_event_data_are_dicts(nsqd: Any) -> None:
    conn = nsq.AsyncConn("127.0.0.1", nsqd.tcp_port)
    data: dict[str, Any] = {}
    conn.on("identify_response", lambda conn, data_=None, **kw: None)  # a second listener
    conn.on("identify_response", lambda **kw: data.update(kw["data"]))
    conn.connect()
    await eventually(lambda: data, timeout=5)
    assert data["max_rdy_count"] == 2500 and isinstance(data["version"], str)
    conn.close()


def test_backoff_timer_has_pynsq_attributes() -> None:
    ours, theirs = nsq.BackoffTimer(0, 128), pynsq.BackoffTimer(0, 128)
    for timer in (ours, theirs):
        timer.failure()
        timer.failure()
        timer.success()
        timer.update_interval()
    assert ours.interval == pytest.approx(theirs.interval) == pytest.approx(3.584)
    assert ours.get_interval() == pytest.approx(theirs.get_interval())
    with pytest.raises(TypeError):
        nsq.BackoffTimer("0", 128)


def test_async_conn_takes_pynsq_parameters_and_defaults() -> None:
    ours = inspect.signature(nsq.AsyncConn.__init__).parameters
    theirs = inspect.signature(pynsq.AsyncConn.__init__).parameters
    assert list(ours) == list(theirs)
    for name, param in theirs.items():
        if name not in ("self", "user_agent"):  # rxnsq says who it is
            assert ours[name].default == param.default, name
    conn = nsq.AsyncConn("127.0.0.1", 4150)
    assert conn.timeout == 1.0 and conn.connection.options.connect_timeout == 1.0


def test_client_id_follows_the_given_hostname() -> None:
    fields = ConnectionOptions(hostname="worker-7.example.com").identify_fields()
    assert fields["client_id"] == "worker-7" and fields["hostname"] == "worker-7.example.com"


# --- 3. pynsq's numbers and behaviour ------------------------------------------------------


async def test_a_compat_reader_keeps_retrying_a_wrong_port(
    nsqd: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(compat_reader, "FATAL_RETRY_INTERVAL", 0.2)
    reader = nsq.Reader("t", "c", message_handler=lambda m: True,
                        nsqd_tcp_addresses=nsqd.http_address)  # fmt: skip
    failures: list[Any] = []
    reader.reader.events.subscribe(lambda e: e.kind == "connect_failed" and failures.append(e))
    await eventually(lambda: len(failures) >= 3, timeout=5)
    assert not reader.reader.is_closing  # the core alone would have failed for good
    assert caplog.text.count("the peer answered with HTTP") >= 3  # logged each time
    await reader.close()


async def test_untested_methods_of_pynsq_work(nsqd_factory: Any, nsqlookupd: Any) -> None:
    first = nsqd_factory(lookupd_tcp_addresses=[nsqlookupd.tcp_address])
    second = nsqd_factory()
    for daemon in (first, second):
        daemon.http_pub("untested", b"from " + daemon.tcp_address.encode())
    got: list[bytes] = []
    reader = nsq.Reader("untested", "c", lookupd_http_addresses=nsqlookupd.http_address,
                        max_in_flight=4, lookupd_connect_timeout=0.5)  # fmt: skip
    reader.set_message_handler(lambda m: got.append(m.body) or True)
    assert reader.lookupd_connect_timeout == 0.5 and reader.reader.lookupd_connect_timeout == 0.5
    reader.query_lookupd()
    await eventually(lambda: len(got) == 1, timeout=10)
    assert reader.connect_to_nsqd("127.0.0.1", second.tcp_port) is None  # connects later
    await eventually(lambda: len(got) == 2, timeout=10)
    assert set(reader.conns) == {first.tcp_address, second.tcp_address}
    assert reader.nsqd_tcp_addresses == [second.tcp_address]
    await reader.close()


async def test_requeue_with_a_delay_defers_the_message_in_nsqd(nsqd: Any) -> None:
    nsqd.http_pub("delay", b"later")
    seen: list[float] = []

    def handler(message: Any) -> None:
        seen.append(time.monotonic())
        if len(seen) == 1:
            message.requeue(time_ms=600, backoff=False)
        else:
            message.finish()

    reader = nsq.Reader("delay", "c", message_handler=handler, nsqd_tcp_addresses=nsqd.tcp_address)
    await eventually(lambda: len(seen) == 2, timeout=10)
    assert seen[1] - seen[0] >= 0.5
    await reader.close()


# --- 4. shutdown within a grace period -----------------------------------------------------


def _run_script(code: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip


@pytest.mark.parametrize("client", ["rxnsq.compat", "nsq"])
def test_sigterm_to_the_async_batching_example_holding_messages(
    nsqlookupd: Any, nsqd_factory: Any, client: str
) -> None:
    nsqd = nsqd_factory(lookupd_tcp_addresses=[nsqlookupd.tcp_address])
    for i in range(5):  # three are finished together; two stay held by the example
        nsqd.http_pub("nsq_reader", b"job %d" % i)
    code = (ROOT / "examples" / "pynsq" / "async_batching.py").read_text()
    code = code.replace("127.0.0.1:4161", nsqlookupd.http_address)
    code = code.replace("import rxnsq.compat as nsq", f"import {client} as nsq")
    proc = _run_script(code, {**os.environ, "PYTHONUNBUFFERED": "1"})

    def held() -> bool:
        stats = nsqd.channel_stats("nsq_reader", "async")
        return bool(stats) and stats.get("message_count") == 5 and stats["in_flight_count"] == 2

    deadline = time.monotonic() + 20
    while not held() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held()
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    took = time.monotonic() - started
    stats = nsqd.channel_stats("nsq_reader", "async")
    assert proc.returncode == 0, output
    if client == "rxnsq.compat":
        # drained within the documented bound (8 s), then the held two went back to nsqd
        assert took < 8 + 2, took
        assert stats["depth"] == 2 and stats["in_flight_count"] == 0
    else:
        # pynsq stops at once and leaves the two in flight until nsqd's msg_timeout
        assert stats["depth"] == 0 and stats["in_flight_count"] == 2
    assert output.count("deferring processing") == 4


# --- 5. the attribute table in the migration guide -----------------------------------------


def _documented() -> dict[str, set[str]]:
    """``object -> names`` from the migration guide's attribute table."""
    import re

    text = (ROOT / "docs" / "migrating-from-pynsq.md").read_text()
    table = text.split("## Attributes and hooks", 1)[1]
    found: dict[str, set[str]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("object", "---"):
            found.setdefault(cells[0], set()).update(re.findall(r"`([a-z_0-9]+)`", cells[1]))
    return found


def _public(obj: Any) -> set[str]:
    names = {n for n in dir(obj) if not n.startswith("_")}
    return {n for n in names if not inspect.ismodule(getattr(type(obj), n, None))}


async def test_every_pynsq_attribute_is_documented_and_present(nsqd: Any) -> None:
    documented = _documented()
    pairs = {
        "Reader": (
            pynsq.Reader("t", "c", message_handler=print, nsqd_tcp_addresses=[nsqd.tcp_address]),
            nsq.Reader("t", "c", message_handler=print, nsqd_tcp_addresses=[nsqd.tcp_address]),
        ),
        "AsyncConn": (pynsq.AsyncConn("127.0.0.1", 1), nsq.AsyncConn("127.0.0.1", 1)),
        "Message": (
            pynsq.Message(b"0123456789abcdef", b"b", 0, 1),
            nsq.Message(b"0123456789abcdef", b"b", 0, 1),
        ),
        "BackoffTimer": (pynsq.BackoffTimer(0, 10), nsq.BackoffTimer(0, 10)),
        "Writer": (pynsq.Writer([nsqd.tcp_address]), nsq.Writer([nsqd.tcp_address])),
    }
    for kind, (theirs, ours) in pairs.items():
        missing_in_doc = _public(theirs) - documented[kind]
        assert not missing_in_doc, f"{kind}: pynsq has {sorted(missing_in_doc)}, not in the guide"
        absent = {name for name in documented[kind] if not hasattr(ours, name)}
        assert not absent, f"compat {kind} lacks {sorted(absent)}"
    await asyncio.sleep(0.2)  # pynsq's close() fails before its reader started (its bug)
    pairs["Reader"][0].close()
    await pairs["Reader"][1].close()
    await pairs["Writer"][1].close()
    assert pairs["Writer"][1].name == pairs["Writer"][0].name == nsqd.tcp_address
    await asyncio.sleep(0.2)
    for conn in pairs["Writer"][0].conns.values():  # pynsq's Writer has no close()
        conn.close()


def test_a_second_sigterm_stops_the_drain_at_once(nsqlookupd: Any, nsqd_factory: Any) -> None:
    nsqd = nsqd_factory(lookupd_tcp_addresses=[nsqlookupd.tcp_address])
    for i in range(2):  # both stay held by the example (it finishes in threes)
        nsqd.http_pub("nsq_reader", b"job %d" % i)
    code = (ROOT / "examples" / "pynsq" / "async_batching.py").read_text()
    proc = _run_script(code.replace("127.0.0.1:4161", nsqlookupd.http_address), dict(os.environ))

    def held() -> bool:
        return nsqd.channel_stats("nsq_reader", "async").get("in_flight_count") == 2

    deadline = time.monotonic() + 20
    while not held() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)  # again: stop waiting for the two held messages
    proc.communicate(timeout=30)
    assert time.monotonic() - started < 2 and proc.returncode == 0
    stats = nsqd.channel_stats("nsq_reader", "async")
    assert stats["depth"] == 2 and stats["in_flight_count"] == 0  # requeued, not left to time out


@pytest.mark.parametrize("module", ["rxnsq.compat", "nsq"])
async def test_writer_heartbeat_hook_is_called(nsqd: Any, module: str) -> None:
    """pynsq calls ``Writer.heartbeat(conn)``; so does the compat Writer (a raising hook is
    logged and the connection stays)."""
    lib = nsq if module == "rxnsq.compat" else pynsq
    ids: list[str] = []

    class Writer(lib.Writer):  # type: ignore[name-defined]
        def heartbeat(self, conn: Any) -> None:
            ids.append(conn.id)
            if module == "rxnsq.compat" and len(ids) == 1:
                raise RuntimeError("hook bug")

    writer = Writer([nsqd.tcp_address], heartbeat_interval=1)
    await eventually(lambda: len(ids) >= 3, timeout=8)
    assert set(ids) == {nsqd.tcp_address}
    if module == "rxnsq.compat":
        assert len(writer.conns) == 1 and writer.conns[nsqd.tcp_address].id == nsqd.tcp_address
        await writer.close()
    else:
        for conn in list(writer.conns.values()):  # pynsq's Writer has no close()
            conn.close()
        await asyncio.sleep(0.1)
