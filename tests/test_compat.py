"""pynsq's API on rxnsq: handler semantics, Writer callbacks, AsyncConn events, helpers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import rxnsq.compat as nsq
from rxnsq.compat.backoff_timer import BackoffTimer, PynsqBackoff
from rxnsq.testing import NsqdProcess, eventually

pytestmark = pytest.mark.nsqd


async def settled(nsqd: NsqdProcess, topic: str, count: int) -> dict[str, Any]:
    """Wait until ``count`` messages went through the channel and none is in flight."""
    return await eventually(
        lambda: (
            (c := nsqd.channel_stats(topic, "c"))
            and c["message_count"] >= count
            and c["in_flight_count"] == 0
            and c
        )
    )


async def test_true_finishes_false_requeues_with_backoff(nsqd) -> None:
    for body in (b"yes", b"no", b"yes"):
        nsqd.http_pub("hs", body)
    seen: list[tuple[bytes, int]] = []

    def handler(message: nsq.Message) -> bool:
        seen.append((message.body, message.attempts))
        return message.body == b"yes" or message.attempts > 1

    reader = nsq.Reader("hs", "c", message_handler=handler, nsqd_tcp_addresses=nsqd.tcp_address,
                        max_in_flight=3, max_backoff_duration=0.5, requeue_delay=0)  # fmt: skip
    levels: list[int] = []
    reader.reader.backoff.subscribe(lambda s: levels.append(s.level))
    stats = await settled(nsqd, "hs", 3)
    await eventually(lambda: (b"no", 2) in seen)
    stats = nsqd.channel_stats("hs", "c")
    assert stats["requeue_count"] == 1 and stats["depth"] == 0
    assert max(levels) >= 1  # False backed off
    await reader.close()


async def test_exception_requeues_and_none_finishes(nsqd, caplog) -> None:
    nsqd.http_pub("ex", b"boom")
    nsqd.http_pub("ex", b"none")
    attempts: dict[bytes, int] = {}

    def handler(message: nsq.Message) -> bool | None:
        attempts[message.body] = message.attempts
        if message.body == b"boom" and message.attempts == 1:
            raise RuntimeError("handler failed")
        return None if message.body == b"none" else True

    reader = nsq.Reader("ex", "c", message_handler=handler, nsqd_tcp_addresses=nsqd.tcp_address,
                        max_in_flight=2, max_backoff_duration=0.2, requeue_delay=0)  # fmt: skip
    await eventually(lambda: attempts.get(b"boom") == 2)
    stats = await settled(nsqd, "ex", 2)
    assert attempts[b"none"] == 1  # None finished it: not redelivered
    assert stats["requeue_count"] == 1 and stats["depth"] == 0
    assert "handler failed" in caplog.text and "returned None" in caplog.text
    await reader.close()


async def test_max_tries_calls_giving_up_then_finishes(nsqd) -> None:
    nsqd.http_pub("mt", b"poison")
    given_up: list[nsq.Message] = []

    class MyReader(nsq.Reader):
        def giving_up(self, message: nsq.Message) -> None:
            given_up.append(message)

    reader = MyReader("mt", "c", message_handler=lambda m: False, max_tries=2,
                      nsqd_tcp_addresses=nsqd.tcp_address, max_backoff_duration=0.05,
                      requeue_delay=0)  # fmt: skip
    await eventually(lambda: given_up)
    stats = await settled(nsqd, "mt", 1)
    assert given_up[0].attempts == 3 and given_up[0].body == b"poison"
    assert stats["depth"] == 0 and stats["requeue_count"] == 2
    await reader.close()


async def test_enable_async_messages_are_settled_later(nsqd) -> None:
    for i in range(4):
        nsqd.http_pub("as", b"%d" % i)
    held: list[nsq.Message] = []

    def handler(message: nsq.Message) -> None:
        message.enable_async()
        held.append(message)

    reader = nsq.Reader("as", "c", message_handler=handler, nsqd_tcp_addresses=nsqd.tcp_address,
                        max_in_flight=4)  # fmt: skip
    await eventually(lambda: len(held) == 4)
    await asyncio.sleep(0.3)
    assert nsqd.channel_stats("as", "c")["in_flight_count"] == 4  # nothing settled by the reader
    assert all(m.is_async() and not m.has_responded() for m in held)
    for message in held:
        message.touch()
        message.finish()
    stats = await settled(nsqd, "as", 4)
    assert stats["depth"] == 0 and stats["requeue_count"] == 0
    assert held[0].finish() is False  # a second response is a no-op
    await reader.close()


async def test_coroutine_handler_result_decides(nsqd) -> None:
    nsqd.http_pub("co", b"ok")
    nsqd.http_pub("co", b"retry")
    seen: list[tuple[bytes, int]] = []

    async def handler(message: nsq.Message) -> bool:
        await asyncio.sleep(0.01)
        seen.append((message.body, message.attempts))
        return message.body == b"ok" or message.attempts > 1

    reader = nsq.Reader("co", "c", message_handler=handler, nsqd_tcp_addresses=nsqd.tcp_address,
                        max_in_flight=2, max_backoff_duration=0.2, requeue_delay=0)  # fmt: skip
    await eventually(lambda: (b"retry", 2) in seen)
    stats = await settled(nsqd, "co", 2)
    assert stats["requeue_count"] == 1 and stats["depth"] == 0
    await reader.close()


async def test_hooks_preprocess_validate_heartbeat(nsqd) -> None:
    nsqd.http_pub("hk", b'{"keep": true}')
    nsqd.http_pub("hk", b'{"keep": false}')
    handled: list[dict[str, bool]] = []
    beats: list[Any] = []

    class Hooked(nsq.Reader):
        def preprocess_message(self, message: nsq.Message) -> Any:
            return message.with_value(json.loads(message.body))

        def validate_message(self, message: Any) -> bool:
            return bool(message.value["keep"])

        def heartbeat(self, conn: Any) -> None:
            beats.append(conn)

    def handler(message: Any) -> bool:
        handled.append(message.value)  # gets what preprocess_message returned
        return True

    reader = Hooked("hk", "c", message_handler=handler, nsqd_tcp_addresses=nsqd.tcp_address,
                    max_in_flight=2, heartbeat_interval=1)  # fmt: skip
    stats = await settled(nsqd, "hk", 2)
    assert handled == [{"keep": True}] and stats["depth"] == 0
    await eventually(lambda: beats, timeout=5)
    await reader.close()


async def test_set_max_in_flight_and_is_starved(nsqd) -> None:
    held: list[nsq.Message] = []

    def handler(message: nsq.Message) -> None:
        message.enable_async()
        held.append(message)

    reader = nsq.Reader("st", "c", message_handler=handler, nsqd_tcp_addresses=nsqd.tcp_address,
                        max_in_flight=4)  # fmt: skip
    await eventually(lambda: reader.conns)
    reader.set_max_in_flight(0)
    await eventually(lambda: nsqd.channel_stats("st", "c")["clients"][0]["ready_count"] == 0)
    for i in range(10):
        nsqd.http_pub("st", b"%d" % i)
    await asyncio.sleep(0.3)
    assert held == [] and reader.total_rdy == 0
    reader.set_max_in_flight(4)
    await eventually(lambda: len(held) == 4)
    assert reader.is_starved()
    for message in held:
        message.finish()
    await eventually(lambda: len(held) == 8)
    for message in held[4:]:
        message.finish()
    await reader.close()


async def test_writer_callbacks_get_ok_or_the_error(nsqd) -> None:
    writer = nsq.Writer([nsqd.tcp_address])
    got: list[Any] = []
    await writer.pub("wc", b"a", callback=lambda conn, data: got.append(data))
    await writer.mpub("wc", (b"b", "c"), callback=lambda conn, data: got.append(data))  # a tuple
    await writer.dpub("wc", 10, b"d", callback=lambda conn, data: got.append(data))
    with pytest.raises(nsq.Error):
        await writer.pub("bad topic", b"x", callback=lambda conn, data: got.append(data))
    assert got[:3] == [b"OK", b"OK", b"OK"]
    assert isinstance(got[3], nsq.Error) and isinstance(got[3], ValueError)
    await writer.close()


async def test_async_conn_events(nsqd) -> None:
    conn = nsq.AsyncConn("127.0.0.1", nsqd.tcp_port, heartbeat_interval=1)
    events: list[str] = []
    messages: list[nsq.Message] = []
    for name in ("connect", "identify", "identify_response", "ready", "heartbeat", "close"):
        conn.on(name, lambda name=name, **kwargs: events.append(name))
    conn.on("message", lambda conn, message: messages.append(message))

    def listener(**kwargs: Any) -> None: ...

    conn.on("response", listener)
    with pytest.raises(nsq.event.DuplicateListenerError):
        conn.on("response", listener)
    conn.off("response", listener)
    with pytest.raises(nsq.event.InvalidListenerError):
        conn.off("response", listener)
    conn.connect()
    await eventually(lambda: "ready" in events)
    assert events[:4] == ["connect", "identify", "identify_response", "ready"]
    conn.send(nsq.subscribe("ev", "c"))
    conn.send_rdy(1)
    nsqd.http_pub("ev", b"hello")
    await eventually(lambda: messages)
    assert messages[0].body == b"hello" and conn.in_flight == 1
    messages[0].finish()
    await eventually(lambda: conn.in_flight == 0)
    await eventually(lambda: "heartbeat" in events, timeout=5)
    conn.close()
    await eventually(lambda: "close" in events)


def test_backoff_timer_math() -> None:
    timer = BackoffTimer(0, 128)
    intervals = []
    for _ in range(12):
        timer.failure()
        intervals.append(timer.get_interval())
    assert intervals[0] == pytest.approx(3.584)
    assert intervals[1] == pytest.approx(7.168)
    assert intervals[9] == pytest.approx(35.84)
    assert intervals[10] == pytest.approx(36.224)
    timer.success()  # one step back: both units off
    assert timer.get_interval() == pytest.approx(intervals[11] - 3.2 - 0.384)
    assert BackoffTimer(0, 2).get_interval() == 0
    small = BackoffTimer(0, 2)
    small.failure()
    assert small.get_interval() == pytest.approx(0.056)
    assert PynsqBackoff(128).interval(2) == pytest.approx(7.168)


def test_protocol_helpers_and_sync_conn(nsqd) -> None:
    conn = nsq.SyncConn(timeout=5)
    conn.connect("127.0.0.1", nsqd.tcp_port)
    conn.send(nsq.identify({"feature_negotiation": True}))
    frame_type, data = nsq.unpack_response(conn.read_response())
    assert frame_type == nsq.FRAME_TYPE_RESPONSE and json.loads(data)["max_rdy_count"] == 2500
    conn.send(nsq.pub("sc", b"hi"))
    assert nsq.unpack_response(conn.read_response()) == (nsq.FRAME_TYPE_RESPONSE, b"OK")
    conn.send(nsq.subscribe("sc", "c"))
    assert nsq.unpack_response(conn.read_response())[1] == b"OK"
    conn.send(nsq.ready(1))
    frame_type, data = nsq.unpack_response(conn.read_response())
    assert frame_type == nsq.FRAME_TYPE_MESSAGE
    message = nsq.decode_message(data)
    assert message.body == b"hi" and message.attempts == 1
    conn.send(nsq.finish(message.id))
    conn.send(nsq.protocol.cls())
    assert nsq.unpack_response(conn.read_response())[1] == b"CLOSE_WAIT"
    conn.close()
    assert nsq.valid_topic_name("ok") and not nsq.valid_channel_name("not ok")
    with pytest.raises(nsq.Error):
        nsq.pub("t", b"")  # pynsq built a malformed command here


async def test_legacy_reader_positional_and_deprecated(nsqd) -> None:
    with pytest.warns(DeprecationWarning, match="LegacyReader"):
        legacy = nsq.LegacyReader(
            {"a": lambda m: True, "b": lambda m: True}, "lg", "ch", nsqd.tcp_address
        )
    assert [r.channel for r in legacy.readers] == ["ch.a", "ch.b"]
    nsqd.create_channel("lg", "ch.a")
    nsqd.create_channel("lg", "ch.b")
    nsqd.http_pub("lg", b"x")
    for name in ("ch.a", "ch.b"):
        await eventually(
            lambda n=name: (
                (c := nsqd.channel_stats("lg", n))
                and c["message_count"] == 1
                and c["in_flight_count"] == 0
            )
        )
    legacy.close()
    await asyncio.gather(*(r.reader.close() for r in legacy.readers))
