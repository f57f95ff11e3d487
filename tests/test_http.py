"""nsqd's and nsqlookupd's HTTP APIs (rxnsq.http) against the real daemons."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from rxnsq import errors
from rxnsq.http import LookupdHTTPClient, NsqdHTTPClient
from rxnsq.protocol import RawMessage
from rxnsq.sync import SyncConnection
from rxnsq.testing import NsqCluster, NsqdFactory, NsqdProcess, wait_until


def closed_port() -> int:
    """A loopback port nothing listens on (free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def channel_stats(nsqd: NsqdProcess, topic: str, channel: str) -> dict[str, Any]:
    [topic_stats] = nsqd.stats(topic, channel)["topics"]
    [stats] = topic_stats["channels"]
    result: dict[str, Any] = stats
    return result


def consume(
    address: str, topic: str, channel: str, count: int, timeout: float = 5.0
) -> list[RawMessage]:
    """Read ``count`` messages with a blocking connection, FIN each (run it in a thread)."""
    with SyncConnection(timeout=timeout) as conn:
        conn.connect(address)
        conn.identify()
        conn.sub(topic, channel)
        conn.rdy(count)
        messages = []
        for _ in range(count):
            message = conn.read_message()
            conn.fin(message.id)
            messages.append(message)
        return messages


# --- nsqd --------------------------------------------------------------------------------------


async def test_ping_info_and_stats(nsqd: NsqdProcess) -> None:
    async with NsqdHTTPClient(nsqd.http_address) as client:
        assert client.url == nsqd.http_url
        await client.ping()
        info = await client.info()
        assert info["version"] == "1.3.0"
        assert (info["tcp_port"], info["http_port"]) == (nsqd.tcp_port, nsqd.http_port)
        stats = await client.stats()
        assert stats["version"] == "1.3.0" and stats["health"] == "OK"
        assert "producers" in stats
        with pytest.raises(ValueError, match="topic"):
            await client.stats(channel="c")


async def test_pub_shows_in_stats_and_reaches_a_consumer(nsqd: NsqdProcess) -> None:
    async with NsqdHTTPClient(nsqd.http_url) as client:
        await client.create_topic("orders")
        await client.create_channel("orders", "audit")
        await client.pub("orders", b"hello")
        await client.pub("orders", bytearray(b"world"))
        await client.pub("orders", "héllo")  # text goes as UTF-8
        audit = channel_stats(nsqd, "orders", "audit")
        assert audit["depth"] == 3
        own = await client.stats("orders", "audit", include_clients=False)
        assert own["topics"][0]["message_count"] == 3
        assert own["topics"][0]["channels"][0]["depth"] == 3

    got = await asyncio.to_thread(consume, nsqd.tcp_address, "orders", "audit", 3)
    assert [m.body for m in got] == [b"hello", b"world", "héllo".encode()]
    assert channel_stats(nsqd, "orders", "audit")["depth"] == 0


async def test_binary_mpub_keeps_newlines_and_any_bytes(nsqd: NsqdProcess) -> None:
    bodies = [b"one\ntwo", b"\n", b"\n\n\n", b"\x00\xff\r\n binary", b"x" * 5000, b"last"]
    async with NsqdHTTPClient(nsqd.http_address) as client:
        await client.create_topic("lines")
        await client.create_channel("lines", "c")
        await client.mpub("lines", bodies)
        await client.mpub("lines", iter([b"from\nan iterator"]))
    assert channel_stats(nsqd, "lines", "c")["depth"] == len(bodies) + 1
    got = await asyncio.to_thread(consume, nsqd.tcp_address, "lines", "c", len(bodies) + 1)
    assert [m.body for m in got] == [*bodies, b"from\nan iterator"]


async def test_deferred_pub_waits_in_the_deferred_queue(nsqd: NsqdProcess) -> None:
    async with NsqdHTTPClient(nsqd.http_address) as client:
        # the channel first: nsqd only defers into channels that exist when the message arrives
        await client.create_topic("later")
        await client.create_channel("later", "c")
        await client.pub("later", b"in an hour", defer=3600.0)
        stats = await asyncio.to_thread(
            wait_until,
            lambda: (s := channel_stats(nsqd, "later", "c"))["deferred_count"] == 1 and s,
            message="the deferred message",
        )
        assert stats["depth"] == 0

        # beyond --max-req-timeout (1h by default): nsqd 1.3.0 refuses it
        with pytest.raises(errors.HTTPAPIError, match="INVALID_DEFER") as info:
            await client.pub("later", b"x", defer=3600.001)
        assert info.value.status == 400


async def test_deferred_pub_arrives_after_the_delay(nsqd: NsqdProcess) -> None:
    async with NsqdHTTPClient(nsqd.http_address) as client:
        await client.create_topic("soon")
        await client.create_channel("soon", "c")
        sent = time.monotonic()
        await client.pub("soon", b"one second", defer=1.0)
    # nsqd moves due deferred messages in its queue scan, whose channel list refreshes every
    # 5 s: delivery comes at 1 s at the earliest, some seconds later at worst
    [message] = await asyncio.to_thread(consume, nsqd.tcp_address, "soon", "c", 1, 15.0)
    assert message.body == b"one second"
    assert time.monotonic() - sent >= 1.0


async def test_bad_input_fails_locally_without_a_request() -> None:
    # nothing listens there: any request would raise NSQConnectionError instead
    client = NsqdHTTPClient(f"127.0.0.1:{closed_port()}")
    with pytest.raises(errors.InvalidNameError):
        await client.pub("bad topic", b"x")
    with pytest.raises(errors.InvalidNameError):
        await client.create_channel("t", "bad/channel")
    with pytest.raises(errors.InvalidNameError):
        await client.stats("t" * 65)
    with pytest.raises(errors.InvalidBodyError, match="empty"):
        await client.pub("t", b"")
    with pytest.raises(errors.InvalidBodyError, match="bytes"):
        await client.pub("t", 42)
    with pytest.raises(errors.InvalidBodyError, match="at least one"):
        await client.mpub("t", [])
    with pytest.raises(errors.InvalidBodyError, match="empty"):
        await client.mpub("t", [b"a", b""])
    with pytest.raises(errors.ConfigError, match="defer"):
        await client.pub("t", b"x", defer=-1)
    assert client._client is None  # no HTTP client was even made
    await client.close()


def test_addresses_are_checked_when_constructing() -> None:
    for bad in ("127.0.0.1", "http://h", "ftp://h:1", ""):
        with pytest.raises(errors.ConfigError, match="nsqd_http_address"):
            NsqdHTTPClient(bad)
        with pytest.raises(errors.ConfigError, match="lookupd_http_address"):
            LookupdHTTPClient(bad)
    assert NsqdHTTPClient("http://h:1/prefix/").url == "http://h:1/prefix"
    assert NsqdHTTPClient("[::1]:4151").url == "http://[::1]:4151"
    with pytest.raises(errors.ConfigError, match="request_timeout"):
        NsqdHTTPClient("h:1", request_timeout=0)


async def test_an_oversized_body_gets_nsqds_reason(nsqd_factory: NsqdFactory) -> None:
    nsqd = nsqd_factory(extra_args=["--max-msg-size=100"])
    async with NsqdHTTPClient(nsqd.http_address) as client:
        await client.pub("big", b"x" * 100)
        with pytest.raises(errors.HTTPInvalidBodyError) as info:
            await client.pub("big", b"x" * 101)
        exc = info.value
        assert isinstance(exc, errors.InvalidBodyError) and isinstance(exc, errors.HTTPAPIError)
        assert (exc.status, exc.message) == (413, "MSG_TOO_BIG")
        assert exc.url == f"{nsqd.http_url}/pub?topic=big"
        assert "MSG_TOO_BIG" in str(exc) and "413" in str(exc)

        with pytest.raises(errors.InvalidBodyError) as mpub_info:
            await client.mpub("big", [b"ok", b"y" * 101])
        assert isinstance(mpub_info.value, errors.HTTPAPIError)
        assert (mpub_info.value.status, mpub_info.value.message) == (413, "BAD_MESSAGE")
    assert nsqd.stats("big")["topics"][0]["message_count"] == 1  # MPUB is all or nothing


async def test_a_wrong_port_is_a_clear_connection_error(nsqd: NsqdProcess) -> None:
    port = closed_port()
    async with NsqdHTTPClient(f"127.0.0.1:{port}") as client:
        with pytest.raises(errors.NSQConnectionError, match="refused") as info:
            await client.pub("t", b"x")
        assert f"POST http://127.0.0.1:{port}/pub?topic=t" in str(info.value)
        assert info.value.retriable
    # the TCP port: nsqd reads "POST" as a protocol magic and hangs up
    async with NsqdHTTPClient(nsqd.tcp_address) as client:
        with pytest.raises(errors.NSQConnectionError, match="TCP port"):
            await client.ping()
    # nsqlookupd's endpoints are not nsqd's
    async with LookupdHTTPClient(nsqd.http_address) as lookupd:
        with pytest.raises(errors.HTTPAPIError, match="NOT_FOUND") as not_found:
            await lookupd.nodes()
        assert not_found.value.status == 404


async def test_topic_and_channel_admin_shows_in_stats(nsqd: NsqdProcess) -> None:
    def topic_stats() -> dict[str, Any] | None:
        topics = nsqd.stats("admin")["topics"] or []
        return topics[0] if topics else None

    async with NsqdHTTPClient(nsqd.http_address) as client:
        with pytest.raises(errors.HTTPAPIError) as info:
            await client.create_channel("admin", "c")  # the topic must exist first
        assert (info.value.status, info.value.message) == (404, "TOPIC_NOT_FOUND")

        await client.create_topic("admin")
        await client.create_topic("admin")  # idempotent
        await client.create_channel("admin", "c")
        topic = topic_stats()
        assert topic is not None and [c["channel_name"] for c in topic["channels"]] == ["c"]

        await client.pause_topic("admin")
        assert topic_stats()["paused"] is True
        await client.unpause_topic("admin")
        assert topic_stats()["paused"] is False
        await client.pause_channel("admin", "c")
        assert channel_stats(nsqd, "admin", "c")["paused"] is True
        await client.unpause_channel("admin", "c")
        assert channel_stats(nsqd, "admin", "c")["paused"] is False

        await client.mpub("admin", [b"a", b"b", b"c"])
        await asyncio.to_thread(wait_until, lambda: channel_stats(nsqd, "admin", "c")["depth"] == 3)
        await client.empty_channel("admin", "c")
        assert channel_stats(nsqd, "admin", "c")["depth"] == 0

        # a paused topic keeps messages in the topic; empty_topic drops them
        await client.pause_topic("admin")
        await client.pub("admin", b"held")
        assert topic_stats()["depth"] == 1
        await client.empty_topic("admin")
        assert topic_stats()["depth"] == 0

        await client.delete_channel("admin", "c")
        assert topic_stats()["channels"] == []
        with pytest.raises(errors.HTTPAPIError) as info:
            await client.delete_channel("admin", "c")
        assert (info.value.status, info.value.message) == (404, "CHANNEL_NOT_FOUND")
        await client.delete_topic("admin")
        assert topic_stats() is None
        with pytest.raises(errors.HTTPAPIError, match="TOPIC_NOT_FOUND"):
            await client.delete_topic("admin")


async def test_close_is_final_and_leaves_a_shared_client_open(nsqd: NsqdProcess) -> None:
    client = NsqdHTTPClient(nsqd.http_address)
    await client.ping()
    await client.close()
    await client.close()
    with pytest.raises(RuntimeError, match="closed"):
        await client.ping()

    from tornado.httpclient import AsyncHTTPClient

    shared = AsyncHTTPClient(force_instance=True)
    try:
        async with NsqdHTTPClient(nsqd.http_address, client=shared) as first:
            await first.ping()
        async with NsqdHTTPClient(nsqd.http_address, client=shared) as second:
            await second.ping()  # the shared client still works
    finally:
        shared.close()


def test_http_errors_map_to_typed_classes() -> None:
    url = "http://127.0.0.1:4151/pub?topic=t"
    for message in ("MSG_EMPTY", "MSG_TOO_BIG", "BODY_TOO_BIG", "BAD_MESSAGE", "BAD_BODY"):
        exc = errors.error_from_http("POST", url, 413, message)
        assert isinstance(exc, errors.HTTPInvalidBodyError)
        assert isinstance(exc, errors.InvalidBodyError) and isinstance(exc, ValueError)
    for message in ("INVALID_TOPIC", "INVALID_ARG_TOPIC", "INVALID_ARG_CHANNEL"):
        exc = errors.error_from_http("POST", url, 400, message)
        assert isinstance(exc, errors.HTTPInvalidNameError)
        assert isinstance(exc, errors.InvalidNameError)
    other = errors.error_from_http("POST", url, 503, "EXITING")
    assert type(other) is errors.HTTPAPIError
    assert (other.method, other.url, other.status, other.message) == ("POST", url, 503, "EXITING")
    assert str(other) == f"POST {url} -> HTTP 503: EXITING"


# --- nsqlookupd --------------------------------------------------------------------------------


async def test_lookupd_endpoints(nsq_cluster: NsqCluster) -> None:
    [lookupd] = nsq_cluster.lookupds
    for nsqd in nsq_cluster.nsqds:
        nsqd.create_channel("found", "c1")
    await asyncio.to_thread(wait_until, lambda: len(lookupd.producers("found")) == 3, timeout=10.0)

    async with LookupdHTTPClient(lookupd.http_url) as client:
        await client.ping()
        assert (await client.info())["version"] == "1.3.0"

        producers = await client.lookup("found")
        assert sorted(p.tcp_address for p in producers) == sorted(nsq_cluster.nsqd_tcp_addresses)
        assert await client.lookup("missing") == []
        assert "found" in await client.topics()
        assert await client.channels("found") == ["c1"]
        assert await client.channels("missing") == []

        nodes = await client.nodes()
        assert sorted(n["tcp_port"] for n in nodes) == sorted(n.tcp_port for n in nsq_cluster.nsqds)
        assert all("found" in n["topics"] for n in nodes)

        # lookupd-only registrations: no producer behind them
        await client.create_topic("planned")
        await client.create_channel("planned", "later")
        assert "planned" in await client.topics()
        assert await client.channels("planned") == ["later"]
        assert await client.lookup("planned") == []
        await client.delete_channel("planned", "later")
        assert await client.channels("planned") == []
        with pytest.raises(errors.HTTPAPIError) as info:
            await client.delete_channel("planned", "later")
        assert (info.value.status, info.value.message) == (404, "CHANNEL_NOT_FOUND")
        await client.delete_topic("planned")
        assert "planned" not in await client.topics()

        # a tombstoned producer drops out of /lookup for that topic
        victim = producers[0]
        await client.tombstone_topic_producer("found", victim)
        remaining = await client.lookup("found")
        assert victim.tcp_address not in {p.tcp_address for p in remaining}
        assert len(remaining) == 2
        [node] = [n for n in await client.nodes() if n["tcp_port"] == victim.tcp_port]
        assert node["tombstones"][node["topics"].index("found")] is True

        with pytest.raises(errors.InvalidNameError):
            await client.channels("bad topic")


async def test_lookupd_client_errors(nsqd: NsqdProcess) -> None:
    async with LookupdHTTPClient(f"127.0.0.1:{closed_port()}") as client:
        with pytest.raises(errors.NSQConnectionError, match="refused"):
            await client.topics()
        # lookup() keeps discovery's contract: LookupdError for every failure
        with pytest.raises(errors.LookupdError, match="refused"):
            await client.lookup("t")
    async with LookupdHTTPClient(nsqd.http_address) as client:
        with pytest.raises(errors.LookupdError, match="NOT_FOUND"):
            await client.lookup("t")
