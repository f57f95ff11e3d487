"""The protocol layer on its own: bytes in, frames and typed errors out, no server."""

from __future__ import annotations

import contextlib
import itertools
import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxnsq import errors, protocol
from rxnsq.protocol import Frame, FrameReader

MSG_ID = b"0123456789abcdef"


def frame_bytes(frame_type: int, data: bytes) -> bytes:
    return struct.pack(">ii", len(data) + 4, frame_type) + data


def message_data(timestamp: int, attempts: int, msg_id: bytes, body: bytes) -> bytes:
    return struct.pack(">qH", timestamp, attempts) + msg_id + body


# --- commands ---


def test_commands_encode_to_the_documented_bytes() -> None:
    assert protocol.MAGIC_V2 == b"  V2"
    assert protocol.encode_sub("t", "c") == b"SUB t c\n"
    assert protocol.encode_pub("t", b"hi") == b"PUB t\n\x00\x00\x00\x02hi"
    assert protocol.encode_dpub("t", 1500, b"hi") == b"DPUB t 1500\n\x00\x00\x00\x02hi"
    assert protocol.encode_rdy(0) == b"RDY 0\n"
    assert protocol.encode_rdy(2500) == b"RDY 2500\n"
    assert protocol.encode_fin(MSG_ID) == b"FIN " + MSG_ID + b"\n"
    assert protocol.encode_req(MSG_ID) == b"REQ " + MSG_ID + b" 0\n"
    assert protocol.encode_req(MSG_ID, 2000) == b"REQ " + MSG_ID + b" 2000\n"
    assert protocol.encode_touch(MSG_ID) == b"TOUCH " + MSG_ID + b"\n"
    assert protocol.encode_cls() == b"CLS\n"
    assert protocol.encode_nop() == b"NOP\n"
    assert protocol.encode_auth("s3cret") == b"AUTH\n\x00\x00\x00\x06s3cret"


def test_mpub_body_is_count_then_sized_messages() -> None:
    data = protocol.encode_mpub("t", [b"a", b"bc"])
    assert data.startswith(b"MPUB t\n")
    body = data[len(b"MPUB t\n") :]
    (size,) = struct.unpack(">I", body[:4])
    assert size == len(body) - 4 == 4 + (4 + 1) + (4 + 2)
    assert body[4:] == b"\x00\x00\x00\x02" + b"\x00\x00\x00\x01a" + b"\x00\x00\x00\x02bc"


def test_identify_is_compact_json_and_refuses_floats() -> None:
    data = protocol.encode_identify({"heartbeat_interval": 30000, "snappy": True})
    line, rest = data.split(b"\n", 1)
    assert line == b"IDENTIFY"
    (size,) = struct.unpack(">I", rest[:4])
    assert json.loads(rest[4:]) == {"heartbeat_interval": 30000, "snappy": True}
    assert size == len(rest) - 4
    with pytest.raises(TypeError, match="heartbeat_interval"):
        protocol.encode_identify({"heartbeat_interval": 30000.0})


@pytest.mark.parametrize(
    "call",
    [
        lambda: protocol.encode_pub("t", b""),
        lambda: protocol.encode_dpub("t", 10, b""),
        lambda: protocol.encode_mpub("t", []),
        lambda: protocol.encode_mpub("t", [b"a", b""]),
        lambda: protocol.encode_pub("t", b"x" * 11, max_size=10),
        lambda: protocol.encode_mpub("t", [b"x" * 8, b"y" * 8], max_body_size=20),
        lambda: protocol.encode_pub("t", "text"),
        lambda: protocol.encode_dpub("t", -1, b"x"),
        lambda: protocol.encode_auth(""),
    ],
)
def test_bad_bodies_are_refused_before_sending(call) -> None:
    with pytest.raises(errors.InvalidBodyError):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: protocol.encode_rdy(-1),
        lambda: protocol.encode_rdy(1.5),
        lambda: protocol.encode_fin(b"short"),
        lambda: protocol.encode_fin("0123456789abcdef"),
        lambda: protocol.encode_req(MSG_ID, -5),
        lambda: protocol.encode_req(MSG_ID, 1.5),
    ],
)
def test_bad_arguments_raise_value_error(call) -> None:
    with pytest.raises(ValueError):
        call()


# --- names ---


@pytest.mark.parametrize(
    "name",
    ["a", "clicks", "a.b_c-d", "x" * 64, "x" * 54 + "#ephemeral", "tail1234#ephemeral"],
)
def test_valid_names(name: str) -> None:
    assert protocol.is_valid_topic_name(name)
    assert protocol.check_channel_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "x" * 65, "x" * 55 + "#ephemeral", "a b", "a/b", "a#b", "#ephemeral", "ü", "a\n"],
)
def test_invalid_names(name: str) -> None:
    assert not protocol.is_valid_topic_name(name)
    with pytest.raises(errors.InvalidNameError, match="invalid topic name"):
        protocol.check_topic_name(name)
    with pytest.raises(errors.InvalidNameError):
        protocol.encode_sub("ok", name)


def test_name_of_wrong_type() -> None:
    with pytest.raises(errors.InvalidNameError, match="must be a str"):
        protocol.check_topic_name(b"bytes")


# --- frames ---


def test_reader_yields_frames_in_order_from_one_chunk() -> None:
    msg = message_data(1_700_000_000_000_000_000, 3, MSG_ID, b"body")
    data = frame_bytes(0, b"OK") + frame_bytes(1, b"E_INVALID x") + frame_bytes(2, msg)
    frames = FrameReader().feed(data)
    assert frames == [Frame(0, b"OK"), Frame(1, b"E_INVALID x"), Frame(2, msg)]
    raw = protocol.decode_message(frames[2].data)
    assert raw == protocol.RawMessage(MSG_ID, b"body", 3, 1_700_000_000_000_000_000)


def test_documented_example_bytes() -> None:
    ok = bytes.fromhex("00000006 00000000 4f4b".replace(" ", ""))
    assert FrameReader().feed(ok) == [Frame(0, b"OK")]
    hb = bytes.fromhex("0000000f00000000") + b"_heartbeat_"
    assert FrameReader().feed(hb) == [Frame(0, protocol.HEARTBEAT)]


def test_reader_keeps_partial_frames() -> None:
    reader = FrameReader()
    data = frame_bytes(0, b"CLOSE_WAIT")
    assert reader.feed(data[:3]) == []
    assert reader.feed(data[3:9]) == []
    assert reader.buffered == 9
    assert reader.feed(data[9:]) == [Frame(0, b"CLOSE_WAIT")]
    assert reader.buffered == 0


def test_http_reply_names_the_tcp_port() -> None:
    reader = FrameReader()
    with pytest.raises(errors.WrongPortError, match="TCP port"):
        reader.feed(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    # the reader stays broken: the frame boundaries are lost
    with pytest.raises(errors.WrongPortError):
        reader.feed(frame_bytes(0, b"OK"))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (struct.pack(">i", 3) + b"\0\0\0\0", "below the minimum"),
        (struct.pack(">i", -8), "below the minimum"),
        (struct.pack(">i", 1 << 30), "above the maximum"),
        (struct.pack(">ii", 6, 7) + b"OK", "unknown frame type 7"),
        (struct.pack(">ii", 6, -1) + b"OK", "unknown frame type -1"),
    ],
)
def test_corrupt_frames_raise_frame_error(data: bytes, match: str) -> None:
    with pytest.raises(errors.FrameError, match=match):
        FrameReader().feed(data)


def test_frame_size_limit_is_configurable() -> None:
    reader = FrameReader(max_frame_size=100)
    assert reader.feed(frame_bytes(0, b"x" * 96)) == [Frame(0, b"x" * 96)]
    with pytest.raises(errors.FrameError, match="above the maximum of 100"):
        reader.feed(frame_bytes(0, b"x" * 97)[:4])


def test_short_message_frame() -> None:
    with pytest.raises(errors.FrameError, match="shorter than"):
        protocol.decode_message(b"\0" * 25)


def test_attempts_are_unsigned() -> None:
    raw = protocol.decode_message(message_data(1, 65535, MSG_ID, b"x"))
    assert raw.attempts == 65535


frames_strategy = st.lists(
    st.one_of(
        st.builds(lambda d: (0, d), st.binary(max_size=64)),
        st.builds(lambda d: (1, b"E_INVALID " + d), st.binary(max_size=32)),
        st.builds(
            lambda ts, att, mid, body: (2, message_data(ts, att, mid, body)),
            st.integers(-(2**63), 2**63 - 1),
            st.integers(0, 65535),
            st.binary(min_size=16, max_size=16),
            st.binary(max_size=200),
        ),
    ),
    max_size=20,
)


@given(frames=frames_strategy, cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_round_trip_at_every_chunking(frames: list[tuple[int, bytes]], cuts: list[int]) -> None:
    stream = b"".join(frame_bytes(t, d) for t, d in frames)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    reader = FrameReader()
    got: list[Frame] = []
    for start, end in itertools.pairwise(points):
        got.extend(reader.feed(stream[start:end]))
    assert got == [Frame(t, d) for t, d in frames]
    assert reader.buffered == 0
    for frame in got:
        if frame.type == protocol.FRAME_TYPE_MESSAGE:
            raw = protocol.decode_message(frame.data)
            assert protocol.encode_fin(raw.id).startswith(b"FIN ")


@given(data=st.binary(max_size=300), chunk=st.integers(1, 50))
def test_arbitrary_bytes_give_frames_or_a_frame_error(data: bytes, chunk: int) -> None:
    reader = FrameReader(max_frame_size=1 << 20)
    for i in range(0, len(data), chunk):
        try:
            frames = reader.feed(data[i : i + chunk])
        except errors.FrameError:
            return
        for frame in frames:
            assert frame.type in (0, 1, 2)
            if frame.type == protocol.FRAME_TYPE_MESSAGE:
                with contextlib.suppress(errors.FrameError):
                    protocol.decode_message(frame.data)
            elif frame.type == protocol.FRAME_TYPE_ERROR:
                assert isinstance(errors.error_from_frame(frame.data), errors.ProtocolError)
    assert reader.buffered <= len(data)


# --- negotiation replies ---


def test_identify_response_from_ok_uses_defaults() -> None:
    resp = protocol.parse_identify_response(b"OK")
    assert resp.max_rdy_count == 2500
    assert not resp.tls_v1 and not resp.snappy and not resp.auth_required


def test_identify_response_from_json_keeps_unknown_fields() -> None:
    data = json.dumps(
        {
            "max_rdy_count": 50,
            "version": "1.3.0",
            "max_msg_timeout": 900000,
            "msg_timeout": 60000,
            "tls_v1": True,
            "snappy": True,
            "deflate": False,
            "auth_required": True,
            "topology_zone": "z1",
        }
    ).encode()
    resp = protocol.parse_identify_response(data)
    assert resp.max_rdy_count == 50 and resp.version == "1.3.0"
    assert resp.tls_v1 and resp.snappy and resp.auth_required and not resp.deflate
    assert resp.raw["topology_zone"] == "z1"


@pytest.mark.parametrize("data", [b"nonsense", b"[1, 2]"])
def test_bad_identify_response(data: bytes) -> None:
    with pytest.raises(errors.FrameError):
        protocol.parse_identify_response(data)


def test_auth_response() -> None:
    resp = protocol.parse_auth_response(
        b'{"identity":"bob","identity_url":"http://x","permission_count":2}'
    )
    assert resp == protocol.AuthResponse("bob", "http://x", 2)


# --- errors ---


@pytest.mark.parametrize(
    ("data", "cls", "code", "fatal"),
    [
        (b"E_INVALID invalid command FOO", errors.InvalidError, "E_INVALID", True),
        (b"E_BAD_PROTOCOL bad protocol magic", errors.InvalidError, "E_BAD_PROTOCOL", True),
        (b"E_BAD_BODY IDENTIFY invalid body", errors.BadBodyError, "E_BAD_BODY", True),
        (b"E_BAD_MESSAGE PUB invalid message body size 0", errors.BadMessageError, None, True),
        (b'E_BAD_TOPIC E_BAD_TOPIC MPUB topic name "a b"', errors.BadTopicError, None, True),
        (b"E_BAD_CHANNEL SUB channel name", errors.BadChannelError, None, True),
        (b"E_IDENTIFY_FAILED cannot enable both", errors.IdentifyError, None, True),
        (b"E_UNAUTHORIZED AUTH no authorizations found", errors.AuthError, None, True),
        (b"E_AUTH_FAILED AUTH failed", errors.AuthError, None, True),
        (b"E_AUTH_FIRST SUB auth required", errors.AuthError, None, True),
        (b"E_AUTH_DISABLED AUTH disabled", errors.AuthError, None, True),
        (b"E_PUB_FAILED PUB failed", errors.PublishError, None, True),
        (b"E_MPUB_FAILED MPUB failed", errors.PublishError, None, True),
        (b"E_SUB_FAILED SUB failed", errors.SubscribeError, None, True),
        (b"E_FIN_FAILED FIN x failed ID not in flight", errors.MessageResponseError, None, False),
        (b"E_REQ_FAILED REQ x failed", errors.MessageResponseError, None, False),
        (b"E_TOUCH_FAILED TOUCH x failed", errors.MessageResponseError, None, False),
        (b"E_SOMETHING_NEW text", errors.ProtocolError, "E_SOMETHING_NEW", True),
    ],
)
def test_error_frames_map_to_typed_errors(
    data: bytes, cls: type[errors.ProtocolError], code: str | None, fatal: bool
) -> None:
    err = errors.ProtocolError.from_frame(data)
    assert type(err) is cls
    assert isinstance(err, errors.NSQError)
    assert err.fatal is fatal
    assert err.text == data.decode()
    assert err.code == (code or data.split(b" ", 1)[0].decode())


def test_error_hierarchy_roles() -> None:
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.InvalidNameError, ValueError)
    assert issubclass(errors.WrongPortError, errors.FrameError)
    assert errors.ConnectionClosedError.retriable
    assert not errors.BadTopicError.retriable
    err = errors.ConfigError("max_in_flight", -1, "an int >= 0")
    assert "max_in_flight" in str(err) and "-1" in str(err)
