"""nsqlookupd discovery (rxnsq.lookupd) against real nsqlookupd + nsqd, and a canned server for
what a 1.3.0 nsqlookupd cannot answer."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from rxnsq import errors
from rxnsq.lookupd import LookupdPoller, Producer, lookup, lookupd_url
from rxnsq.testing import NsqCluster, NsqClusterFactory, wait_until

# --- a canned HTTP server ----------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=lambda: {"channels": [], "producers": []})
    delay: float = 0.0


@dataclass
class CannedServer:
    """Answers every GET with ``reply`` (a Reply or a function of the path) and records the
    requests. Only for replies a real nsqlookupd 1.3.0 cannot give (the 0.x wrapped shape, the
    ``address`` field, a 500, a non-JSON body, a slow reply, which one of two got asked)."""

    url: str
    reply: Reply | Callable[[str], Reply] = field(default_factory=Reply)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)


class _CannedHandler(tornado.web.RequestHandler):
    def initialize(self, server: CannedServer) -> None:
        self.server = server

    async def get(self) -> None:
        server = self.server
        server.requests.append((self.request.uri or "", dict(self.request.headers)))
        reply = server.reply(self.request.path) if callable(server.reply) else server.reply
        if reply.delay:
            await asyncio.sleep(reply.delay)
        self.set_status(reply.status)
        body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        self.finish(body)


@pytest.fixture
async def canned() -> AsyncIterator[Callable[[], CannedServer]]:
    servers: list[tornado.httpserver.HTTPServer] = []

    def start() -> CannedServer:
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        port = sockets[0].getsockname()[1]
        state = CannedServer(url=f"http://127.0.0.1:{port}")
        app = tornado.web.Application([(r"/.*", _CannedHandler, {"server": state})])
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets(sockets)
        servers.append(server)
        return state

    yield start
    for server in servers:
        server.stop()
        await server.close_all_connections()


def closed_port() -> int:
    """A loopback port nothing listens on (free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def producer_json(host: str, tcp_port: int, http_port: int = 4151) -> dict[str, Any]:
    return {
        "remote_address": f"{host}:55555",
        "hostname": "box",
        "broadcast_address": host,
        "tcp_port": tcp_port,
        "http_port": http_port,
        "version": "1.3.0",
    }


async def registered(cluster: NsqCluster, topic: str, count: int) -> None:
    """Wait until the cluster's first lookupd lists ``count`` producers of ``topic``."""
    [lookupd, *_] = cluster.lookupds
    await asyncio.to_thread(
        wait_until,
        lambda: len(lookupd.producers(topic)) == count,
        timeout=10.0,
        message=f"{count} producers of {topic!r}",
    )


# --- addresses and producers -------------------------------------------------------------------


def test_lookupd_url_accepts_the_usual_address_forms() -> None:
    expected = "http://127.0.0.1:4161/lookup?topic=clicks"
    assert lookupd_url("127.0.0.1:4161", "clicks") == expected
    assert lookupd_url("http://127.0.0.1:4161", "clicks") == expected
    assert lookupd_url("http://127.0.0.1:4161/", "clicks") == "http://127.0.0.1:4161/?topic=clicks"
    assert (
        lookupd_url("http://host:4161/lookup", "clicks") == "http://host:4161/lookup?topic=clicks"
    )
    assert lookupd_url("localhost:4161", "t") == "http://localhost:4161/lookup?topic=t"
    assert lookupd_url("[::1]:4161", "t") == "http://[::1]:4161/lookup?topic=t"
    assert lookupd_url("https://h:443/x", "t") == "https://h:443/x?topic=t"
    # an existing query is kept as it is; a topic in it is replaced, not duplicated
    assert lookupd_url("http://h:1/lookup?a=1&b=x%20y&topic=old", "new") == (
        "http://h:1/lookup?a=1&b=x%20y&topic=new"
    )
    assert lookupd_url("h:1", "t#ephemeral") == "http://h:1/lookup?topic=t%23ephemeral"


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "http://127.0.0.1", "[::1]", "h:99999", "h:port", "ftp://h:21", ""]
)
def test_lookupd_url_requires_an_http_address_with_a_port(address: str) -> None:
    with pytest.raises(errors.ConfigError, match="lookupd_http_addresses") as info:
        lookupd_url(address, "t")
    assert isinstance(info.value, ValueError)


def test_lookupd_url_checks_the_topic() -> None:
    with pytest.raises(errors.InvalidNameError):
        lookupd_url("127.0.0.1:4161", "bad topic")


def test_producer_addresses_and_parsing() -> None:
    producer = Producer("10.0.0.1", 4150, 4151, "box", "1.3.0")
    assert producer.tcp_address == "10.0.0.1:4150"
    assert producer.http_address == "10.0.0.1:4151"
    v6 = Producer("::1", 4150, 4151)
    assert (v6.tcp_address, v6.http_address) == ("[::1]:4150", "[::1]:4151")
    assert Producer.from_json(producer_json("10.0.0.1", 4150)) == producer
    # a very old lookupd says "address"; broadcast_address wins when both are there
    assert Producer.from_json({"address": "h", "tcp_port": 1}) == Producer("h", 1)
    both = {"address": "old", "broadcast_address": "new", "tcp_port": 1}
    assert Producer.from_json(both).broadcast_address == "new"
    for bad in ({"tcp_port": 1}, {"broadcast_address": "h"}, {"address": "h", "tcp_port": "1"}):
        with pytest.raises(ValueError):
            Producer.from_json(bad)


# --- lookup() against the real daemons ---------------------------------------------------------


async def test_lookup_finds_every_producer(nsq_cluster: NsqCluster) -> None:
    [lookupd_address] = nsq_cluster.lookupd_http_urls
    for nsqd in nsq_cluster.nsqds:
        nsqd.create_topic("discover")
    await registered(nsq_cluster, "discover", 3)

    producers = await lookup(lookupd_address, "discover")
    assert sorted(p.tcp_address for p in producers) == sorted(nsq_cluster.nsqd_tcp_addresses)
    by_tcp = {p.tcp_address: p for p in producers}
    for nsqd in nsq_cluster.nsqds:
        producer = by_tcp[nsqd.tcp_address]
        assert producer.http_port == nsqd.http_port
        assert producer.broadcast_address == "127.0.0.1"
        assert producer.version == "1.3.0"
        assert producer.hostname
    # the bare host:port form works the same
    [address] = nsq_cluster.lookupd_http_addresses
    assert sorted(await lookup(address, "discover"), key=lambda p: p.tcp_port) == sorted(
        producers, key=lambda p: p.tcp_port
    )


async def test_lookup_of_an_unknown_topic_is_empty(nsqlookupd: Any) -> None:
    assert await lookup(nsqlookupd.http_address, "never-published") == []


async def test_lookup_on_a_wrong_port_names_the_url_and_the_reason(nsq_cluster: NsqCluster) -> None:
    nsqd = nsq_cluster.nsqds[0]
    # nsqd's TCP port reads "GET " as a protocol magic and hangs up
    with pytest.raises(errors.LookupdError, match="TCP port") as info:
        await lookup(nsqd.tcp_address, "t")
    assert info.value.url == f"http://{nsqd.tcp_address}/lookup?topic=t"
    assert info.value.status is None
    assert info.value.retriable
    assert nsqd.tcp_address in str(info.value)

    port = closed_port()
    with pytest.raises(errors.LookupdError, match="refused") as info:
        await lookup(f"127.0.0.1:{port}", "t")
    assert f"127.0.0.1:{port}/lookup?topic=t" in str(info.value)
    assert isinstance(info.value.__cause__, errors.NSQConnectionError)

    # nsqd's HTTP port answers /lookup with 404 NOT_FOUND: not to be read as "no producers"
    with pytest.raises(errors.LookupdError, match=r"NOT_FOUND .*nsqlookupd") as info:
        await lookup(nsqd.http_address, "t")
    assert info.value.status == 404


async def test_lookup_rejects_a_bad_topic_without_io() -> None:
    with pytest.raises(errors.InvalidNameError):
        await lookup(f"127.0.0.1:{closed_port()}", "no spaces")


# --- lookup() against canned replies -----------------------------------------------------------


async def test_lookup_reads_the_legacy_wrapped_shape_and_the_address_field(
    canned: Callable[[], CannedServer],
) -> None:
    server = canned()
    server.reply = Reply(
        body={
            "status_code": 200,
            "status_txt": "OK",
            "data": {
                "channels": ["c"],
                "producers": [
                    {"address": "10.0.0.1", "tcp_port": 4150, "http_port": 4151},  # 0.2.x
                    producer_json("10.0.0.2", 4150),
                    producer_json("10.0.0.2", 4150),  # listed twice: de-duplicated
                    {"hostname": "no address"},  # skipped with a warning
                ],
            },
        }
    )
    producers = await lookup(server.url, "t", auth_secret="s3cret")
    assert [p.tcp_address for p in producers] == ["10.0.0.1:4150", "10.0.0.2:4150"]
    assert producers[0] == Producer("10.0.0.1", 4150, 4151)

    [(uri, headers)] = server.requests
    assert uri == "/lookup?topic=t"
    assert headers["Accept"] == "application/vnd.nsq; version=1.0"
    assert headers["Authorization"] == "Bearer s3cret"


async def test_lookup_maps_each_failure_to_a_typed_error(
    canned: Callable[[], CannedServer],
) -> None:
    server = canned()
    # a 0.x lookupd without the Accept header: 500 and the wrapper
    server.reply = Reply(500, {"status_code": 500, "status_txt": "TOPIC_NOT_FOUND", "data": None})
    assert await lookup(server.url, "t") == []
    server.reply = Reply(200, {"status_code": 500, "status_txt": "TOPIC_NOT_FOUND", "data": {}})
    assert await lookup(server.url, "t") == []

    server.reply = Reply(500, {"message": "INTERNAL_ERROR"})
    with pytest.raises(errors.LookupdError, match=r"HTTP 500\): INTERNAL_ERROR") as info:
        await lookup(server.url, "t")
    assert (info.value.status, info.value.reason) == (500, "INTERNAL_ERROR")

    server.reply = Reply(200, b"<html>not json</html>")
    with pytest.raises(errors.LookupdError, match="not JSON"):
        await lookup(server.url, "t")
    server.reply = Reply(200, {"topics": []})
    with pytest.raises(errors.LookupdError, match="no producers list"):
        await lookup(server.url, "t")

    server.reply = Reply(delay=1.0)
    with pytest.raises(errors.LookupdError, match="Timeout"):
        await lookup(server.url, "t", request_timeout=0.1)


# --- the poller --------------------------------------------------------------------------------


class Recorder:
    """Collects what a poller reports; ``wait_for`` waits (briefly) for a condition on it."""

    def __init__(self) -> None:
        self.results: list[list[Producer]] = []
        self.errors: list[Exception] = []
        self._changed = asyncio.Event()

    def on_producers(self, producers: list[Producer]) -> None:
        self.results.append(producers)
        self._changed.set()

    def on_error(self, exc: Exception) -> None:
        self.errors.append(exc)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


def poller_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t.get_name().startswith("rxnsq-lookupd")}


async def test_poller_reports_new_producers(nsq_cluster: NsqCluster) -> None:
    for nsqd in nsq_cluster.nsqds:
        nsqd.create_topic("grow")
    await registered(nsq_cluster, "grow", 3)
    seen = Recorder()
    poller = LookupdPoller(
        nsq_cluster.lookupd_http_urls,
        "grow",
        on_producers=seen.on_producers,
        on_error=seen.on_error,
        poll_interval=0.2,
    )
    poller.start()
    try:
        await seen.wait_for(lambda: len(seen.results) >= 1)
        assert {p.tcp_address for p in seen.results[0]} == set(nsq_cluster.nsqd_tcp_addresses)

        fourth = await asyncio.to_thread(nsq_cluster.add_nsqd)
        fourth.create_topic("grow")
        await seen.wait_for(lambda: any(len(r) == 4 for r in seen.results))
        latest = seen.results[-1]
        assert fourth.tcp_address in {p.tcp_address for p in latest}
        assert seen.errors == []
    finally:
        await poller.close()
    assert poller_tasks() == set()


async def test_query_now_queries_at_once_and_coalesces(nsq_cluster: NsqCluster) -> None:
    seen = Recorder()
    poller = LookupdPoller(
        nsq_cluster.lookupd_http_addresses,
        "later",
        on_producers=seen.on_producers,
        poll_interval=3600.0,
    )
    with pytest.raises(RuntimeError, match="before start"):
        poller.query_now()
    poller.start()
    try:
        await seen.wait_for(lambda: len(seen.results) == 1)
        assert seen.results == [[]]  # unknown topic: empty, not an error

        nsqd = nsq_cluster.nsqds[0]
        nsqd.create_topic("later")
        await registered(nsq_cluster, "later", 1)
        first, second = poller.query_now(), poller.query_now()
        assert first is second  # one query running: the second call joins it
        await first
        assert len(seen.results) == 2
        assert [p.tcp_address for p in seen.results[1]] == [nsqd.tcp_address]
    finally:
        await poller.close()
    await poller.query_now()  # a no-op once closed
    assert len(seen.results) == 2


class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999999])
async def test_poller_schedule_and_jitter_bounds(
    canned: Callable[[], CannedServer], draw: float
) -> None:
    server = canned()
    events: list[object] = []
    parked = asyncio.Event()

    async def fake_sleep(delay: float) -> None:
        events.append(delay)
        if len(events) >= 7:  # 3 queries, 4 waits: enough, stay here until closed
            parked.set()
            await asyncio.Future()
        await asyncio.sleep(0)

    poller = LookupdPoller(
        server.url,
        "t",
        on_producers=lambda producers: events.append("query"),
        poll_interval=10.0,
        poll_jitter=0.3,
        random=FixedRandom(draw),
        sleep=fake_sleep,
    )
    poller.start()
    async with asyncio.timeout(10):
        await parked.wait()
    await poller.close()

    jitter = events[1]
    assert isinstance(jitter, float)
    assert 0.0 <= jitter < 0.3 * 10.0
    assert jitter == pytest.approx(draw * 0.3 * 10.0)
    # query at once, then the jitter, then an interval before each further query
    assert events == ["query", jitter, 10.0, "query", 10.0, "query", 10.0]
    assert poller_tasks() == set()


async def test_poller_jitter_uses_the_given_random(canned: Callable[[], CannedServer]) -> None:
    server = canned()
    sleeps: list[float] = []
    parked = asyncio.Event()

    async def fake_sleep(delay: float) -> None:
        sleeps.append(delay)
        parked.set()
        await asyncio.Future()

    poller = LookupdPoller(
        server.url,
        "t",
        on_producers=lambda producers: None,
        poll_interval=2.0,
        poll_jitter=0.5,
        random=random.Random(1234),
        sleep=fake_sleep,
    )
    poller.start()
    await asyncio.wait_for(parked.wait(), 10)
    await poller.close()
    assert sleeps == [random.Random(1234).random() * 0.5 * 2.0]
    assert 0.0 <= sleeps[0] < 1.0


async def test_poller_round_robins_over_lookupds(canned: Callable[[], CannedServer]) -> None:
    first, second = canned(), canned()
    first.reply = Reply(body={"producers": [producer_json("10.0.0.1", 1)]})
    second.reply = Reply(body={"producers": [producer_json("10.0.0.2", 2)]})
    seen = Recorder()
    poller = LookupdPoller(
        [first.url, second.url],
        "t",
        on_producers=seen.on_producers,
        poll_interval=0.05,
        poll_jitter=0.0,
    )
    poller.start()
    try:
        await seen.wait_for(lambda: len(seen.results) >= 4)
    finally:
        await poller.close()
    hosts = [[p.broadcast_address for p in result] for result in seen.results[:4]]
    assert hosts == [["10.0.0.1"], ["10.0.0.2"], ["10.0.0.1"], ["10.0.0.2"]]
    # one lookupd per tick: the two servers shared the queries
    assert abs(len(first.requests) - len(second.requests)) <= 1


async def test_poller_skips_a_dead_lookupd(nsq_cluster_factory: NsqClusterFactory) -> None:
    cluster = nsq_cluster_factory(nsqd_count=1, lookupd_count=2)
    cluster.nsqds[0].create_topic("survive")
    for lookupd in cluster.lookupds:
        await asyncio.to_thread(
            wait_until, lambda lookupd=lookupd: lookupd.producers("survive"), timeout=10.0
        )
    dead, alive = cluster.lookupds
    dead.stop()
    seen = Recorder()
    poller = LookupdPoller(
        [dead.http_address, alive.http_address],
        "survive",
        on_producers=seen.on_producers,
        on_error=seen.on_error,
        poll_interval=0.1,
        poll_jitter=0.0,
    )
    poller.start()
    try:
        await seen.wait_for(lambda: len(seen.results) >= 3)
    finally:
        await poller.close()
    # every tick got an answer: from the live lookupd, after the dead one failed
    for result in seen.results:
        assert [p.tcp_address for p in result] == cluster.nsqd_tcp_addresses
    assert seen.errors
    for exc in seen.errors:
        assert isinstance(exc, errors.LookupdError)
        assert dead.http_address in exc.url
    assert len(seen.errors) >= len(seen.results) - 1


async def test_poller_reports_when_every_lookupd_fails() -> None:
    seen = Recorder()
    addresses = [f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"]
    poller = LookupdPoller(
        addresses, "t", on_producers=seen.on_producers, on_error=seen.on_error, poll_interval=60
    )
    poller.start()
    try:
        await seen.wait_for(lambda: len(seen.errors) >= 2)
    finally:
        await poller.close()
    assert seen.results == []
    assert sorted(exc.url for exc in seen.errors if isinstance(exc, errors.LookupdError)) == sorted(
        lookupd_url(address, "t") for address in addresses
    )


async def test_close_waits_for_a_query_in_flight_and_drops_its_result(
    canned: Callable[[], CannedServer],
) -> None:
    server = canned()
    server.reply = Reply(body={"producers": [producer_json("10.0.0.1", 1)]}, delay=0.3)
    seen = Recorder()
    before = asyncio.all_tasks()
    poller = LookupdPoller(server.url, "t", on_producers=seen.on_producers, poll_interval=60)
    poller.start()
    async with asyncio.timeout(5):
        while not server.requests:
            await asyncio.sleep(0.01)
    assert poller.running
    await poller.close()
    assert not poller.running
    assert seen.results == []
    assert asyncio.all_tasks() - before == set()
    await poller.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        poller.start()


async def test_a_failing_callback_does_not_stop_the_poller(
    canned: Callable[[], CannedServer],
) -> None:
    server = canned()
    calls: list[int] = []

    def on_producers(producers: list[Producer]) -> None:
        calls.append(len(producers))
        raise RuntimeError("user bug")

    poller = LookupdPoller(server.url, "t", on_producers=on_producers, poll_interval=0.05)
    poller.start()
    try:
        async with asyncio.timeout(5):
            while len(calls) < 3:
                await asyncio.sleep(0.01)
    finally:
        await poller.close()


def test_poller_validates_without_io_and_needs_a_loop() -> None:
    def make(**kwargs: Any) -> LookupdPoller:
        options: dict[str, Any] = {"on_producers": lambda producers: None}
        options.update(kwargs)
        addresses = options.pop("addresses", "127.0.0.1:4161")
        return LookupdPoller(addresses, options.pop("topic", "t"), **options)

    with pytest.raises(errors.ConfigError, match="lookupd_http_addresses"):
        make(addresses="127.0.0.1")
    with pytest.raises(errors.ConfigError, match="lookupd_http_addresses"):
        make(addresses=[])
    with pytest.raises(errors.ConfigError, match="poll_interval"):
        make(poll_interval=0)
    with pytest.raises(errors.ConfigError, match="poll_jitter"):
        make(poll_jitter=1.5)
    with pytest.raises(errors.InvalidNameError):
        make(topic="a b")
    poller = make(addresses=("127.0.0.1:4161", "http://[::1]:4161"))
    assert poller.addresses == ("127.0.0.1:4161", "http://[::1]:4161")
    with pytest.raises(RuntimeError, match="running asyncio loop"):
        poller.start()
