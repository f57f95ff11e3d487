"""The tornado connection against the real nsqd: every negotiated feature, events, faults."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trustme
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from rxnsq import errors
from rxnsq.config import ConnectionOptions
from rxnsq.connection import Connection, ConnectionState, NegotiationError
from rxnsq.message import Message
from rxnsq.testing import wait_until

pytestmark = pytest.mark.nsqd


# --- helpers ---------------------------------------------------------------------------------


async def connect(address: str, **options: Any) -> Connection:
    conn = Connection(address, **options)
    await conn.connect()
    return conn


async def consume(conn: Connection, topic: str, count: int, settle: bool = True) -> list[Message]:
    """Subscribe and collect ``count`` messages (finishing each when ``settle``)."""
    got: list[Message] = []
    done = asyncio.get_running_loop().create_future()

    def on_message(message: Message) -> None:
        got.append(message)
        if settle:
            message.fin()
        if len(got) == count and not done.done():
            done.set_result(None)

    conn.messages.subscribe(on_message)
    await conn.subscribe(topic, "ch")
    conn.rdy(min(count, conn.max_rdy_count))
    await asyncio.wait_for(done, 20)
    return got


async def round_trip(address: str, count: int = 300, **options: Any) -> tuple[Connection, ...]:
    """Publish ``count`` bodies on one connection and consume them on another, both with
    ``options``; assert the bodies arrive intact."""
    producer = await connect(address, **options)
    consumer = await connect(address, **options)
    bodies = [b"%05d:" % i + bytes([i % 251]) * (i * 37 % 5000 + 1) for i in range(count)]
    await producer.pub("rt", bodies[0])
    await producer.mpub("rt", bodies[1 : count // 2])
    await asyncio.gather(*(producer.pub("rt", b) for b in bodies[count // 2 :]))
    got = await consume(consumer, "rt", count)
    assert sorted(m.body for m in got) == sorted(bodies)
    assert consumer.finished == count and consumer.in_flight == 0
    await consumer.close()
    await producer.close()
    return producer, consumer


# --- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"cert": folder / "server.pem", "key": folder / "server.key", "ca": folder / "ca.pem"}
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    ca.cert_pem.write_to_path(str(paths["ca"]))
    return {name: str(path) for name, path in paths.items()}


@pytest.fixture
def tls_nsqd(nsqd_factory, tls_files):
    return nsqd_factory(
        extra_args=[f"--tls-cert={tls_files['cert']}", f"--tls-key={tls_files['key']}"]
    )


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_plain(nsqd) -> None:
    _producer, consumer = await round_trip(nsqd.tcp_address)
    assert consumer.identify_response is not None
    assert not consumer.identify_response.tls_v1


async def test_snappy(nsqd) -> None:
    _, consumer = await round_trip(nsqd.tcp_address, snappy=True)
    assert consumer.identify_response is not None and consumer.identify_response.snappy


async def test_deflate(nsqd) -> None:
    _, consumer = await round_trip(nsqd.tcp_address, deflate=True, deflate_level=3)
    response = consumer.identify_response
    assert response is not None and response.deflate and response.deflate_level == 3


async def test_tls(tls_nsqd, client_tls) -> None:
    _, consumer = await round_trip(tls_nsqd.tcp_address, tls_v1=True, tls_options=client_tls)
    assert consumer.identify_response is not None and consumer.identify_response.tls_v1


async def test_tls_snappy(tls_nsqd, client_tls) -> None:
    await round_trip(tls_nsqd.tcp_address, tls_options=client_tls, snappy=True)


async def test_tls_deflate(tls_nsqd, client_tls) -> None:
    await round_trip(tls_nsqd.tcp_address, tls_options=client_tls, deflate=True)


async def test_tls_with_pynsq_options_dict(tls_nsqd, tls_files) -> None:
    await round_trip(
        tls_nsqd.tcp_address, count=20, tls_v1=True, tls_options={"ca_certs": tls_files["ca"]}
    )


async def test_tls_required(nsqd_factory, tls_files, client_tls) -> None:
    nsqd = nsqd_factory(
        extra_args=[
            f"--tls-cert={tls_files['cert']}",
            f"--tls-key={tls_files['key']}",
            "--tls-required=true",
        ]
    )
    await round_trip(nsqd.tcp_address, count=50, tls_v1=True, tls_options=client_tls)
    # without TLS, nsqd refuses every command after IDENTIFY
    plain = await connect(nsqd.tcp_address)
    with pytest.raises(errors.NegotiationError, match="requires TLS") as caught:
        await plain.pub("rt", b"x")
    assert isinstance(caught.value.__cause__, errors.InvalidError)  # nsqd's own words
    assert plain.closed


async def test_tls_verifies_the_certificate_by_default(tls_nsqd) -> None:
    conn = Connection(tls_nsqd.tcp_address, tls_v1=True)  # the system CAs do not know our CA
    with pytest.raises(NegotiationError, match="certificate verify failed"):
        await conn.connect()
    assert conn.closed


async def test_tls_verifies_the_hostname(nsqd_factory, ca, client_tls, tmp_path) -> None:
    cert = ca.issue_cert("nsqd.example")  # a trusted CA, but not a certificate for 127.0.0.1
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "other.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "other.key"))
    nsqd = nsqd_factory(
        extra_args=[f"--tls-cert={tmp_path / 'other.pem'}", f"--tls-key={tmp_path / 'other.key'}"]
    )
    conn = Connection(nsqd.tcp_address, tls_v1=True, tls_options=client_tls)
    with pytest.raises(NegotiationError, match=r"127\.0\.0\.1"):
        await conn.connect()
    assert conn.closed


async def test_tls_asked_but_not_granted_fails_closed(nsqd, client_tls) -> None:
    conn = Connection(nsqd.tcp_address, tls_v1=True, tls_options=client_tls)
    with pytest.raises(NegotiationError, match="did not grant it"):
        await conn.connect()
    assert conn.closed


# --- AUTH --------------------------------------------------------------------------------------


class AuthServer:
    """A small HTTP server speaking nsqd's auth protocol (GET /auth?secret=...)."""

    def __init__(self) -> None:
        self.secrets: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[dict[str, str]] = []
        server = self

        class Handler(RequestHandler):
            def get(self) -> None:
                args = {k: self.get_argument(k) for k in self.request.arguments}
                server.requests.append(args)
                grants = server.secrets.get(args.get("secret", ""))
                if grants is None:
                    self.set_status(403)
                    self.finish({"message": "NOT_AUTHORIZED"})
                    return
                self.finish(
                    {
                        "ttl": 60,
                        "identity": "tester",
                        "identity_url": "http://127.0.0.1/tester",
                        "authorizations": grants,
                    }
                )

        sockets = bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]
        self.http = HTTPServer(Application([("/auth", Handler)]))
        self.http.add_sockets(sockets)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def auth_server() -> AsyncIterator[AuthServer]:
    server = AuthServer()
    yield server
    server.http.stop()
    await server.http.close_all_connections()


@pytest.fixture
def auth_nsqd(nsqd_factory, auth_server: AuthServer):
    auth_server.secrets["good"] = [
        {"topic": "rt", "channels": [".*"], "permissions": ["subscribe", "publish"]}
    ]
    auth_server.secrets["other-topic"] = [
        {"topic": "^elsewhere$", "channels": [".*"], "permissions": ["subscribe", "publish"]}
    ]
    return nsqd_factory(extra_args=[f"--auth-http-address={auth_server.address}"])


async def test_auth_good_secret(auth_nsqd, auth_server: AuthServer, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="rxnsq")
    _producer, consumer = await round_trip(auth_nsqd.tcp_address, count=50, auth_secret="good")
    assert consumer.auth_response is not None
    assert consumer.auth_response.identity == "tester"
    assert consumer.auth_response.permission_count == 1
    assert auth_server.requests and auth_server.requests[0]["secret"] == "good"
    # the secret never shows
    assert "good" not in repr(consumer.options) and "good" not in repr(consumer)
    assert "'good'" not in caplog.text and "secret=good" not in caplog.text


async def test_auth_wrong_secret(auth_nsqd) -> None:
    conn = Connection(auth_nsqd.tcp_address, auth_secret="wrong")
    with pytest.raises(errors.AuthError) as info:
        await conn.connect()
    assert info.value.code == "E_AUTH_FAILED"
    assert "wrong" not in str(info.value)
    assert conn.closed


async def test_auth_secret_missing(auth_nsqd) -> None:
    conn = Connection(auth_nsqd.tcp_address)
    with pytest.raises(errors.AuthError, match="requires authorization"):
        await conn.connect()


async def test_auth_without_rights_to_the_topic(auth_nsqd) -> None:
    producer = await connect(auth_nsqd.tcp_address, auth_secret="other-topic")
    with pytest.raises(errors.AuthError) as info:
        await producer.pub("rt", b"x")
    assert info.value.code == "E_UNAUTHORIZED"
    consumer = await connect(auth_nsqd.tcp_address, auth_secret="other-topic")
    with pytest.raises(errors.AuthError, match="E_UNAUTHORIZED"):
        await consumer.subscribe("rt", "ch")


# --- heartbeats, sample rate, message timeout ------------------------------------------------


async def test_idle_connection_survives_heartbeats(nsqd) -> None:
    conn = await connect(nsqd.tcp_address, heartbeat_interval=1.0)
    beats: list[float] = []
    conn.heartbeats.subscribe(beats.append)
    await asyncio.sleep(5.6)
    assert conn.is_ready
    assert len(beats) >= 5
    assert await conn.pub("hb", b"still alive") == b"OK"
    await conn.close()


async def test_stalled_nsqd_is_detected_by_missed_heartbeats(nsqd) -> None:
    conn = await connect(nsqd.tcp_address, heartbeat_interval=1.0)
    closed = asyncio.get_running_loop().create_future()
    conn.events.subscribe(lambda e: e.kind == "closed" and closed.set_result(e.data))
    os.kill(nsqd.pid, signal.SIGSTOP)  # the real nsqd stops answering; the socket stays open
    try:
        error = await asyncio.wait_for(closed, 6)
        assert isinstance(error, errors.ConnectionClosedError)
        assert "two heartbeat intervals" in str(error)
        assert conn.closed
    finally:
        os.kill(nsqd.pid, signal.SIGCONT)


async def test_msg_timeout_redelivers_unsettled(nsqd) -> None:
    producer = await connect(nsqd.tcp_address)
    consumer = await connect(nsqd.tcp_address, msg_timeout=1.0)
    assert consumer.identify_response is not None
    assert consumer.identify_response.msg_timeout == 1000
    await producer.pub("mt", b"once")
    loop = asyncio.get_running_loop()
    seen: list[tuple[int, float]] = []
    done = loop.create_future()

    def on_message(message: Message) -> None:
        seen.append((message.attempts, loop.time()))
        if message.attempts == 2:
            message.fin()
            done.set_result(None)

    consumer.messages.subscribe(on_message)
    await consumer.subscribe("mt", "ch")
    consumer.rdy(1)
    await asyncio.wait_for(done, 10)
    assert [a for a, _ in seen] == [1, 2]
    # nsqd scans a new channel for timeouts once its 5 s channel-list refresh picks it up
    assert 0.9 <= seen[1][1] - seen[0][1] <= 8.0
    await consumer.close(timeout=1)
    await producer.close()


async def test_sample_rate(nsqd) -> None:
    producer = await connect(nsqd.tcp_address)
    consumer = await connect(nsqd.tcp_address, sample_rate=30)
    assert consumer.identify_response is not None
    assert consumer.identify_response.sample_rate == 30
    got: list[bytes] = []

    def on_message(message: Message) -> None:
        got.append(message.body)
        message.fin()

    consumer.messages.subscribe(on_message)
    await consumer.subscribe("sr", "ch")
    consumer.rdy(100)
    await producer.mpub("sr", [b"%d" % i for i in range(1000)])
    for _ in range(100):
        channel = nsqd.stats(topic="sr")["topics"][0]["channels"][0]
        if channel["depth"] == 0 and channel["in_flight_count"] == 0:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.2)
    # nsqd drops what it does not sample: about 30 % arrives
    assert 150 <= len(got) <= 450, len(got)
    await consumer.close()
    await producer.close()


# --- wrong addresses and faults --------------------------------------------------------------


async def test_http_port_gives_the_tcp_port_error(nsqd) -> None:
    conn = Connection(nsqd.http_address)
    with pytest.raises(errors.WrongPortError, match="TCP port"):
        await conn.connect()
    assert conn.closed


async def test_refused_connection(unused_tcp_port: int) -> None:
    conn = Connection(f"127.0.0.1:{unused_tcp_port}")
    with pytest.raises(errors.NSQConnectionError, match="cannot connect"):
        await conn.connect()
    assert conn.closed


async def test_silent_peer_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # the kernel accepts; nobody ever answers
        conn = Connection(f"127.0.0.1:{listener.getsockname()[1]}", connect_timeout=0.5)
        with pytest.raises(errors.ConnectTimeoutError, match="handshake"):
            await conn.connect()
        assert conn.closed


async def test_killed_nsqd_closes_and_fails_pending(nsqd) -> None:
    conn = await connect(nsqd.tcp_address)
    events: list[str] = []
    states: list[ConnectionState] = []
    conn.events.subscribe(lambda e: events.append(e.kind))
    conn.states.subscribe(states.append)
    await conn.pub("k", b"x")
    pending = [conn.pub("k", b"y" * 100_000) for _ in range(200)]
    nsqd.kill()
    results = await asyncio.gather(*pending, return_exceptions=True)
    failures = [r for r in results if isinstance(r, Exception)]
    assert failures, "killing nsqd failed nothing"
    assert all(isinstance(f, errors.ConnectionClosedError) for f in failures)
    assert all(r == b"OK" for r in results if not isinstance(r, Exception))
    await asyncio.sleep(0)
    assert conn.closed and states[-1] is ConnectionState.CLOSED
    assert events[-1] == "closed"
    with pytest.raises(errors.ConnectionClosedError):
        conn.pub("k", b"z")


async def test_fatal_error_fails_the_command_and_the_rest(nsqd) -> None:
    conn = await connect(nsqd.tcp_address)
    errors_seen: list[errors.ProtocolError] = []
    conn.errors.subscribe(errors_seen.append)
    # a bad topic is fatal; the PUB pipelined behind it was never read by nsqd
    first = conn.command(b"PUB bad!topic\n\x00\x00\x00\x01x")
    behind = conn.pub("f", b"x")
    with pytest.raises(errors.BadTopicError):
        await first
    with pytest.raises(errors.ConnectionClosedError, match="E_BAD_TOPIC"):
        await behind
    assert [e.code for e in errors_seen] == ["E_BAD_TOPIC"]
    assert conn.closed


async def test_non_fatal_error_keeps_the_connection(nsqd) -> None:
    conn = await connect(nsqd.tcp_address)
    seen: list[errors.ProtocolError] = []
    conn.errors.subscribe(seen.append)
    await conn.subscribe("nf", "ch")
    conn.send(b"FIN 0000000000000000\n")
    await asyncio.sleep(0.2)
    assert [e.code for e in seen] == ["E_FIN_FAILED"]
    assert conn.is_ready
    await conn.close()


# --- observables, coalescing, close, options --------------------------------------------------


async def test_states_and_events(nsqd) -> None:
    conn = Connection(nsqd.tcp_address)
    states: list[ConnectionState] = []
    events: list[str] = []
    conn.states.subscribe(states.append)
    conn.events.subscribe(lambda e: events.append(e.kind))
    await conn.connect()
    got: list[Message] = []
    conn.messages.subscribe(got.append)
    await conn.subscribe("ev", "ch")
    await conn.pub("ev", b"m")
    conn.rdy(1)
    while not got:
        await asyncio.sleep(0.01)
    got[0].fin()
    await conn.close()
    assert states == [
        ConnectionState.INIT,
        ConnectionState.CONNECTING,
        ConnectionState.IDENTIFYING,
        ConnectionState.READY,
        ConnectionState.CLOSING,
        ConnectionState.CLOSED,
    ]
    assert events[:4] == ["connected", "identifying", "identified", "ready"]
    assert "response" in events
    assert events.index("finished") > events.index("message")
    assert events[-1] == "closed"


async def test_writes_are_coalesced_per_loop_turn(nsqd) -> None:
    conn = await connect(nsqd.tcp_address, snappy=True)
    writes: list[bytes] = []
    stream = conn._stream
    assert stream is not None
    original: Callable[..., Any] = stream.write

    def counting_write(data: bytes) -> Any:
        writes.append(data)
        return original(data)

    stream.write = counting_write
    futures = [conn.pub("co", b"%d" % i) for i in range(100)]
    conn.send(b"NOP\n")
    assert writes == []  # nothing is written inside the calls
    assert await asyncio.gather(*futures) == [b"OK"] * 100
    assert len(writes) == 1  # one write (one snappy chunk) for the whole turn
    await conn.close()


async def test_close_lets_in_flight_messages_settle(nsqd) -> None:
    producer = await connect(nsqd.tcp_address)
    await producer.mpub("cl", [b"a", b"b", b"c"])
    consumer = await connect(nsqd.tcp_address)
    held = await consume(consumer, "cl", 3, settle=False)
    assert consumer.in_flight == 3
    loop = asyncio.get_running_loop()
    for i, message in enumerate(held):
        loop.call_later(0.1 * (i + 1), message.fin)
    await consumer.close(timeout=5)
    assert consumer.finished == 3 and consumer.in_flight == 0
    # nsqd reads the last FIN a moment after the socket closes; a lost FIN would stay in
    # flight until the 60 s timeout
    channel = await asyncio.to_thread(
        wait_until,
        lambda: (
            (c := nsqd.stats(topic="cl")["topics"][0]["channels"][0])["in_flight_count"] == 0 and c
        ),
        timeout=5,
    )
    assert channel["depth"] == 0 and channel["message_count"] == 3
    assert channel["requeue_count"] == 0 and channel["timeout_count"] == 0
    await producer.close()


async def test_settling_twice_sends_once(nsqd) -> None:
    producer = await connect(nsqd.tcp_address)
    await producer.pub("tw", b"a")
    consumer = await connect(nsqd.tcp_address)
    (message,) = await consume(consumer, "tw", 1, settle=False)
    assert message.fin() is True
    assert message.fin() is False
    assert message.req() is False
    assert message.with_value(json.loads(b"1")).fin() is False
    assert consumer.finished == 1 and consumer.requeued == 0
    await consumer.close()
    await producer.close()


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"heartbeat_interval": 0.5}, "heartbeat_interval"),
        ({"output_buffer_timeout": 0.001}, "output_buffer_timeout"),
        ({"output_buffer_size": 10}, "output_buffer_size"),
        ({"deflate_level": 10}, "deflate_level"),
        ({"sample_rate": 100}, "sample_rate"),
        ({"msg_timeout": 0.5}, "msg_timeout"),
        ({"snappy": True, "deflate": True}, "snappy"),
        ({"auth_secret": ""}, "auth_secret"),
        ({"tls_options": {"bogus": 1}}, "tls_options"),
    ],
)
def test_options_are_checked_before_connecting(options: dict[str, Any], name: str) -> None:
    with pytest.raises(errors.ConfigError, match=name) as info:
        ConnectionOptions(**options).ssl_context() if name == "tls_options" else Connection(
            "127.0.0.1:4150", **options
        )
    assert info.value.option == name


def test_identify_fields_are_integers() -> None:
    fields = ConnectionOptions(
        heartbeat_interval=1.5, output_buffer_timeout=0.1, msg_timeout=2.25
    ).identify_fields()
    assert fields["heartbeat_interval"] == 1500
    assert fields["output_buffer_timeout"] == 100
    assert fields["msg_timeout"] == 2250
    assert fields["user_agent"].startswith("rxnsq/")
    for key in ("client_id", "hostname", "feature_negotiation", "tls_v1", "snappy", "deflate"):
        assert key in fields
    assert all(not isinstance(v, float) for v in fields.values())


async def test_subscribing_twice_is_a_clear_error(nsqd) -> None:
    conn = await connect(nsqd.tcp_address)
    await conn.subscribe("twice", "c")
    with pytest.raises(errors.NSQConnectionError, match="already subscribed"):
        await conn.subscribe("twice", "other")
    assert conn.is_ready  # nothing was sent: nsqd would have closed the connection
    await conn.close()
