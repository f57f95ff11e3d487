"""A blocking nsqd connection for scripts and tests (pynsq's ``SyncConn``, typed).

One plain TCP socket, the protocol layer on top, no loop and no threads. It answers
heartbeats with NOP while it reads. TLS and compression are not offered here: use the
asynchronous connection for those.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from . import protocol
from .address import split_tcp_address
from .errors import ConnectionClosedError, ConnectTimeoutError, NSQConnectionError, error_from_frame
from .protocol import Frame, IdentifyResponse, RawMessage

__all__ = ["SyncConnection"]

logger = logging.getLogger(__name__)


class SyncConnection:
    """A blocking connection to one nsqd.

    ``timeout`` (seconds) bounds connecting and each read. Reads skip heartbeats, answering
    each with NOP, so a script that reads now and then is never dropped by nsqd.
    """

    def __init__(
        self,
        timeout: float = 5.0,
        max_frame_size: int = protocol.DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self._timeout = timeout
        self._socket: socket.socket | None = None
        self._reader = protocol.FrameReader(max_frame_size)
        self._frames: deque[Frame] = deque()
        self.address = ""
        self.heartbeats = 0

    def __repr__(self) -> str:
        state = "open" if self._socket is not None else "closed"
        return f"<SyncConnection {self.address or '-'} {state}>"

    @property
    def timeout(self) -> float:
        """Seconds allowed for connecting and for each read."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._timeout = value
        if self._socket is not None:
            self._socket.settimeout(value)

    def __enter__(self) -> SyncConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self, host: str, port: int | None = None) -> None:
        """Open the socket and send the protocol magic. ``host`` may be ``"host:port"``."""
        if port is None:
            host, port = split_tcp_address(host, "host", default_port=4150)
        self.address = f"{host}:{port}"
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout)
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                f"no connection to nsqd at {self.address} within {self.timeout}s"
            ) from exc
        except OSError as exc:
            raise NSQConnectionError(f"cannot connect to nsqd at {self.address}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket = sock
        self.send(protocol.MAGIC_V2)

    def close(self) -> None:
        """Close the socket (nothing is sent: producers must not send CLS)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def send(self, data: bytes) -> None:
        """Write bytes, typically from a ``protocol.encode_*`` function."""
        if self._socket is None:
            raise ConnectionClosedError("the connection is not open")
        try:
            self._socket.sendall(data)
        except OSError as exc:
            self.close()
            raise ConnectionClosedError(f"writing to {self.address} failed: {exc}") from exc

    def read_frame(self) -> Frame:
        """The next frame that is not a heartbeat (heartbeats are answered with NOP)."""
        while True:
            while not self._frames:
                self._frames.extend(self._reader.feed(self._recv()))
            frame = self._frames.popleft()
            if frame.type == protocol.FRAME_TYPE_RESPONSE and frame.data == protocol.HEARTBEAT:
                self.heartbeats += 1
                self.send(protocol.encode_nop())
                continue
            return frame

    def _recv(self) -> bytes:
        if self._socket is None:
            raise ConnectionClosedError("the connection is not open")
        try:
            data = self._socket.recv(65536)
        except TimeoutError as exc:
            raise TimeoutError(f"nothing from {self.address} within {self.timeout}s") from exc
        except OSError as exc:
            self.close()
            raise ConnectionClosedError(f"reading from {self.address} failed: {exc}") from exc
        if not data:
            self.close()
            raise ConnectionClosedError(f"nsqd at {self.address} closed the connection")
        return data

    def read_response(self) -> bytes:
        """The data of the next response frame; an error frame raises its typed error."""
        frame = self.read_frame()
        if frame.type == protocol.FRAME_TYPE_ERROR:
            raise error_from_frame(frame.data)
        if frame.type != protocol.FRAME_TYPE_RESPONSE:
            raise NSQConnectionError(f"expected a response, got a frame of type {frame.type}")
        return frame.data

    def read_message(self) -> RawMessage:
        """The next message; an error frame raises its typed error."""
        frame = self.read_frame()
        if frame.type == protocol.FRAME_TYPE_ERROR:
            raise error_from_frame(frame.data)
        if frame.type != protocol.FRAME_TYPE_MESSAGE:
            raise NSQConnectionError(f"expected a message, got {frame.data[:80]!r}")
        return protocol.decode_message(frame.data)

    def _command(self, data: bytes) -> bytes:
        self.send(data)
        return self.read_response()

    def identify(self, **fields: Any) -> IdentifyResponse:
        """IDENTIFY with feature negotiation; returns what nsqd granted.

        TLS, snappy and deflate cannot be negotiated on this connection and are refused.
        """
        for feature in ("tls_v1", "snappy", "deflate"):
            if fields.get(feature):
                raise ValueError(f"{feature} is not available on a SyncConnection")
        fields.setdefault("feature_negotiation", True)
        fields.setdefault("client_id", socket.gethostname().split(".")[0])
        fields.setdefault("hostname", socket.gethostname())
        return protocol.parse_identify_response(self._command(protocol.encode_identify(fields)))

    def pub(self, topic: str, body: bytes) -> bytes:
        """Publish one message and wait for nsqd's ``OK``."""
        return self._command(protocol.encode_pub(topic, body))

    def mpub(self, topic: str, bodies: Iterable[bytes]) -> bytes:
        """Publish several messages atomically and wait for nsqd's ``OK``."""
        return self._command(protocol.encode_mpub(topic, bodies))

    def dpub(self, topic: str, delay_ms: int, body: bytes) -> bytes:
        """Publish one message deferred by ``delay_ms`` and wait for nsqd's ``OK``."""
        return self._command(protocol.encode_dpub(topic, delay_ms, body))

    def sub(self, topic: str, channel: str) -> bytes:
        """Subscribe and wait for nsqd's ``OK``."""
        return self._command(protocol.encode_sub(topic, channel))

    def rdy(self, count: int) -> None:
        """Allow ``count`` messages in flight (no reply)."""
        self.send(protocol.encode_rdy(count))

    def fin(self, message_id: bytes) -> None:
        """Finish a message (no reply on success)."""
        self.send(protocol.encode_fin(message_id))

    def req(self, message_id: bytes, delay_ms: int = 0) -> None:
        """Requeue a message (no reply on success)."""
        self.send(protocol.encode_req(message_id, delay_ms))

    def touch(self, message_id: bytes) -> None:
        """Reset a message's timeout (no reply on success)."""
        self.send(protocol.encode_touch(message_id))

    def cls(self) -> bytes:
        """Ask a subscribed connection to close; returns ``CLOSE_WAIT``.

        Messages already on their way may arrive before it; they are skipped here, and nsqd
        requeues them when the socket closes.
        """
        self.send(protocol.encode_cls())
        while True:
            frame = self.read_frame()
            if frame.type == protocol.FRAME_TYPE_MESSAGE:
                continue
            if frame.type == protocol.FRAME_TYPE_ERROR:
                raise error_from_frame(frame.data)
            return frame.data
