"""The protocol layer driving the real nsqd over a plain blocking socket."""

from __future__ import annotations

import json
import struct
import threading

import pytest

from rxnsq import errors, protocol
from rxnsq.sync import SyncConnection

pytestmark = pytest.mark.nsqd


def open_conn(address: str, **identify: object) -> tuple[SyncConnection, protocol.IdentifyResponse]:
    conn = SyncConnection(timeout=5.0)
    conn.connect(address)
    return conn, conn.identify(**identify)


def test_identify_negotiates_features(nsqd_factory) -> None:
    nsqd = nsqd_factory(extra_args=["--max-rdy-count=50", "--msg-timeout=5s"])
    conn, resp = open_conn(nsqd.tcp_address, heartbeat_interval=1000, user_agent="rxnsq-test/1")
    with conn:
        assert resp.max_rdy_count == 50
        assert resp.msg_timeout == 5000
        assert resp.version == "1.3.0"
        assert resp.raw["max_rdy_count"] == 50
        assert not resp.tls_v1 and not resp.snappy and not resp.auth_required


def test_identify_without_negotiation_answers_ok(nsqd) -> None:
    conn, resp = open_conn(nsqd.tcp_address, feature_negotiation=False)
    with conn:
        assert resp == protocol.IdentifyResponse()


def test_publish_subscribe_settle_and_close(nsqd) -> None:
    producer, _ = open_conn(nsqd.tcp_address)
    # the deferred message waits for nsqd's queue scan (its channel list refreshes every 5 s),
    # so the others must not time out meanwhile
    consumer, _ = open_conn(nsqd.tcp_address, heartbeat_interval=1000, msg_timeout=20000)
    with producer, consumer:
        assert consumer.sub("proto", "ch") == protocol.OK
        assert producer.pub("proto", b"one") == protocol.OK
        assert producer.mpub("proto", [b"two", b"three"]) == protocol.OK
        assert producer.dpub("proto", 10, b"four") == protocol.OK

        consumer.rdy(4)
        got = {}
        while len(got) < 4:
            msg = consumer.read_message()
            assert msg.attempts == 1
            assert len(msg.id) == 16
            assert msg.timestamp > 1_600_000_000 * 10**9  # nanoseconds
            got[msg.body] = msg
        assert set(got) == {b"one", b"two", b"three", b"four"}

        consumer.touch(got[b"one"].id)
        consumer.fin(got[b"one"].id)
        consumer.fin(got[b"two"].id)
        consumer.fin(got[b"three"].id)
        consumer.req(got[b"four"].id, 0)
        again = consumer.read_message()
        assert again.body == b"four"
        assert again.id == got[b"four"].id
        assert again.attempts == 2
        consumer.fin(again.id)

        assert consumer.cls() == protocol.CLOSE_WAIT
    stats = nsqd.stats(topic="proto")
    channel = stats["topics"][0]["channels"][0]
    assert channel["message_count"] == 4
    assert channel["requeue_count"] == 1
    assert channel["depth"] == 0 and channel["in_flight_count"] == 0


def raw_command(address: str, data: bytes) -> errors.ProtocolError:
    """Send a hand-built command (bypassing the encoders' checks) and return nsqd's error."""
    conn, _ = open_conn(address)
    with conn:
        conn.send(data)
        with pytest.raises(errors.ProtocolError) as info:
            conn.read_response()
        if info.value.fatal:
            with pytest.raises(errors.ConnectionClosedError):
                conn.read_response()
        return info.value


def test_invalid_topic_name(nsqd) -> None:
    err = raw_command(nsqd.tcp_address, b"PUB bad!topic\n" + struct.pack(">I", 1) + b"x")
    assert isinstance(err, errors.BadTopicError)
    assert err.code == "E_BAD_TOPIC" and "bad!topic" in err.text


def test_empty_body(nsqd) -> None:
    err = raw_command(nsqd.tcp_address, b"PUB t\n" + struct.pack(">I", 0))
    assert isinstance(err, errors.BadMessageError)
    assert "size 0" in err.text


def test_empty_mpub(nsqd) -> None:
    err = raw_command(nsqd.tcp_address, b"MPUB t\n" + struct.pack(">II", 4, 0))
    assert isinstance(err, errors.BadBodyError)


def test_oversized_message(nsqd_factory) -> None:
    nsqd = nsqd_factory(extra_args=["--max-msg-size=100"])
    err = raw_command(nsqd.tcp_address, protocol.encode_pub("t", b"x" * 101))
    assert isinstance(err, errors.BadMessageError)


def test_float_in_identify_is_what_nsqd_refuses(nsqd) -> None:
    body = json.dumps({"heartbeat_interval": 30000.0}).encode()
    err = raw_command(nsqd.tcp_address, b"IDENTIFY\n" + struct.pack(">I", len(body)) + body)
    assert isinstance(err, errors.BadBodyError)


def test_rdy_above_max_rdy_count(nsqd_factory) -> None:
    nsqd = nsqd_factory(extra_args=["--max-rdy-count=50"])
    conn, _ = open_conn(nsqd.tcp_address)
    with conn:
        conn.sub("t", "c")
        conn.rdy(51)
        with pytest.raises(errors.InvalidError, match="out of range 0-50"):
            conn.read_response()
        with pytest.raises(errors.ConnectionClosedError):
            conn.read_response()


def test_fin_of_unknown_id_is_not_fatal(nsqd) -> None:
    producer, _ = open_conn(nsqd.tcp_address)
    consumer, _ = open_conn(nsqd.tcp_address)
    with producer, consumer:
        consumer.sub("t", "c")
        consumer.fin(b"0000000000000000")
        with pytest.raises(errors.MessageResponseError) as info:
            consumer.read_response()
        assert info.value.code == "E_FIN_FAILED" and not info.value.fatal
        # the connection goes on: a message still arrives and can be finished
        producer.pub("t", b"after")
        consumer.rdy(1)
        msg = consumer.read_message()
        assert msg.body == b"after"
        consumer.fin(msg.id)
        assert consumer.cls() == protocol.CLOSE_WAIT


def test_cls_on_a_producer_is_fatal(nsqd) -> None:
    err = raw_command(nsqd.tcp_address, protocol.encode_cls())
    assert isinstance(err, errors.InvalidError)


def test_heartbeats_are_answered_while_reading(nsqd) -> None:
    conn, _ = open_conn(nsqd.tcp_address, heartbeat_interval=1000)
    with conn:
        conn.sub("hb", "c")
        conn.rdy(1)
        # a message comes only after 4.5 s; meanwhile heartbeats come and are answered
        later = threading.Timer(4.5, nsqd.http_pub, ("hb", b"late"))
        later.start()
        try:
            msg = conn.read_message()
        finally:
            later.join()
        assert msg.body == b"late"
        assert conn.heartbeats >= 3
        conn.fin(msg.id)
        # still alive after more than two heartbeat intervals
        assert conn.cls() == protocol.CLOSE_WAIT


def test_http_port_is_named(nsqd) -> None:
    conn = SyncConnection(timeout=5.0)
    conn.connect(nsqd.http_address)
    with conn, pytest.raises(errors.WrongPortError, match="TCP port"):
        conn.identify()


def test_refused_connection(unused_tcp_port: int) -> None:
    conn = SyncConnection(timeout=1.0)
    with pytest.raises(errors.NSQConnectionError, match="cannot connect"):
        conn.connect("127.0.0.1", unused_tcp_port)
