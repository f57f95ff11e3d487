"""pynsq's ``AsyncConn``: an evented connection, over :class:`rxnsq.connection.Connection`.

The same class serves two uses. ``AsyncConn(host, port, ...)`` (pynsq's signature and
defaults) builds and connects its own connection. :meth:`AsyncConn.view` wraps a connection a
compat Reader or Writer already owns, so that hooks (``heartbeat(conn)``, callbacks) get an
object with pynsq's attributes, read live from the connection, never a copy.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from tornado.ioloop import IOLoop

from .._version import __version__
from ..connection import Connection, ConnectionEvent, ConnectionState
from ..errors import NSQError
from .event import EventedMixin
from .message import Message
from .options import connection_options

__all__ = ["CONNECTED", "CONNECTING", "DISCONNECTED", "INIT", "AsyncConn"]

logger = logging.getLogger(__name__)

# pynsq's connection states
INIT = "INIT"
DISCONNECTED = "DISCONNECTED"
CONNECTING = "CONNECTING"
CONNECTED = "CONNECTED"

_STATES = {
    ConnectionState.INIT: INIT,
    ConnectionState.CONNECTING: CONNECTING,
    ConnectionState.IDENTIFYING: CONNECTED,
    ConnectionState.READY: CONNECTED,
    ConnectionState.CLOSING: CONNECTED,
    ConnectionState.CLOSED: DISCONNECTED,
}

#: The core's event kinds that pynsq emits with ``data=``, under pynsq's names.
_WITH_DATA = {"identifying": "identify", "response": "response"}
#: The core's event kinds that pynsq emits with ``conn=`` only.
_PLAIN = {
    "connected": "connect",
    "authenticating": "auth",
    "ready": "ready",
    "heartbeat": "heartbeat",
    "finished": "resume",
}

_views: weakref.WeakKeyDictionary[Connection, AsyncConn] = weakref.WeakKeyDictionary()


class AsyncConn(EventedMixin):
    """One nsqd connection with pynsq's events (``on(name, callback)``): ``connect``,
    ``identify``, ``identify_response``, ``auth``, ``auth_response``, ``ready``, ``message``,
    ``response``, ``heartbeat``, ``backoff``, ``resume``, ``continue``, ``error``, ``close``.
    Listeners get keyword arguments (``conn=``, ``data=``, ``message=``, ``error=``); the data
    of ``identify_response`` and ``auth_response`` are dicts, as pynsq's are.

    Differences: ``timeout`` is the connect timeout (pynsq ignored it); TLS accepts an
    ``ssl.SSLContext`` too; TLS asked for but not granted is an error; a listener that raises
    is logged and the connection goes on.
    """

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float = 1.0,
        heartbeat_interval: float = 30,
        requeue_delay: float = 90,
        tls_v1: bool = False,
        tls_options: Any = None,
        snappy: bool = False,
        deflate: bool = False,
        deflate_level: int = 6,
        user_agent: str = f"rxnsq/{__version__}",
        output_buffer_size: int = 16384,
        output_buffer_timeout: int = 250,
        sample_rate: int = 0,
        auth_secret: str | bytes | None = None,
        msg_timeout: float | None = None,
        hostname: str | None = None,
    ) -> None:
        options, _ = connection_options(
            {
                "timeout": timeout,
                "heartbeat_interval": heartbeat_interval,
                "tls_v1": tls_v1,
                "tls_options": tls_options,
                "snappy": snappy,
                "deflate": deflate,
                "deflate_level": deflate_level,
                "user_agent": user_agent,
                "output_buffer_size": output_buffer_size,
                "output_buffer_timeout": output_buffer_timeout,
                "sample_rate": sample_rate,
                "auth_secret": auth_secret,
                "msg_timeout": msg_timeout,
                "hostname": hostname,
            }
        )
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        conn = Connection(
            address, requeue_delay=lambda attempts: requeue_delay * attempts, **options
        )
        self._setup(conn, requeue_delay)
        self._task: asyncio.Task[Any] | None = None

    @classmethod
    def view(cls, conn: Connection, requeue_delay: float = 90.0) -> AsyncConn:
        """The AsyncConn of a connection that already exists (one per connection)."""
        existing = _views.get(conn)
        if existing is not None:
            return existing
        view = cls.__new__(cls)
        view._setup(conn, requeue_delay)
        view._task = None
        _views[conn] = view
        return view

    def _setup(self, conn: Connection, requeue_delay: float) -> None:
        EventedMixin.__init__(self)
        self._conn = conn
        self.host, self.port = conn.host, conn.port
        self.requeue_delay = requeue_delay
        self.rdy_timeout = None
        self.callback_queue: list[Any] = []
        conn.events.subscribe(self._forward)

    @property
    def id(self) -> str:
        """``host:port``, as pynsq names a connection."""
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"<compat.AsyncConn {self.id} {self.state}>"

    @property
    def connection(self) -> Connection:
        """The rxnsq connection underneath (its observables, ``await close()``...)."""
        return self._conn

    # pynsq's attributes, read live from the connection

    @property
    def state(self) -> str:
        """``INIT``, ``CONNECTING``, ``CONNECTED`` or ``DISCONNECTED``."""
        return _STATES[self._conn.state]

    @property
    def rdy(self) -> int:
        return self._conn.rdy_count

    last_rdy = rdy

    @property
    def in_flight(self) -> int:
        return self._conn.in_flight

    @property
    def max_rdy_count(self) -> int:
        return self._conn.max_rdy_count

    @property
    def last_msg_timestamp(self) -> float:
        """When the last message arrived (the loop's clock), 0 before any."""
        return self._conn.last_message_time

    @property
    def last_recv_timestamp(self) -> float:
        """When bytes last arrived from nsqd (the loop's clock)."""
        return self._conn.last_read_time

    @property
    def timeout(self) -> float:
        return self._conn.options.connect_timeout

    @property
    def heartbeat_interval(self) -> float:
        return self._conn.options.heartbeat_interval

    @property
    def tls_v1(self) -> bool:
        """TLS as negotiated (before that: as asked for)."""
        granted = self._conn.identify_response
        return granted.tls_v1 if granted is not None else self._conn.options.wants_tls

    @property
    def tls_options(self) -> Any:
        return self._conn.options.tls_options

    @property
    def snappy(self) -> bool:
        """Snappy as negotiated (before that: as asked for)."""
        granted = self._conn.identify_response
        return granted.snappy if granted is not None else self._conn.options.snappy

    @property
    def deflate(self) -> bool:
        """Deflate as negotiated (before that: as asked for)."""
        granted = self._conn.identify_response
        return granted.deflate if granted is not None else self._conn.options.deflate

    @property
    def deflate_level(self) -> int:
        granted = self._conn.identify_response
        if granted is not None and granted.deflate:
            return granted.deflate_level
        return self._conn.options.deflate_level

    @property
    def user_agent(self) -> str:
        return self._conn.options.user_agent

    @property
    def output_buffer_size(self) -> int:
        return self._conn.options.output_buffer_size

    @property
    def output_buffer_timeout(self) -> float:
        """In milliseconds, as pynsq gives it."""
        timeout = self._conn.options.output_buffer_timeout
        return timeout if timeout == -1 else timeout * 1000

    @property
    def sample_rate(self) -> int:
        return self._conn.options.sample_rate

    @property
    def auth_secret(self) -> str | bytes | None:
        return self._conn.options.auth_secret

    @property
    def msg_timeout(self) -> float | None:
        return self._conn.options.msg_timeout

    @property
    def hostname(self) -> str:
        return str(self._conn.options.identify_fields()["hostname"])

    @property
    def short_hostname(self) -> str:
        return self.hostname.split(".")[0]

    @property
    def stream(self) -> Any:
        """The tornado IOStream while connected, else None."""
        return self._conn.stream

    @property
    def socket(self) -> Any:
        stream = self._conn.stream
        return stream.socket if stream is not None else None

    @property
    def encoder(self) -> Any:
        """The codec outgoing bytes go through (identity, snappy or deflate)."""
        return self._conn.codec

    # connecting and events

    def connect(self) -> None:
        """Start connecting on the IOLoop; ``ready`` (or ``error`` and ``close``) follows."""
        if self._conn.state is not ConnectionState.INIT:
            return
        IOLoop.current().add_callback(self._start)

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            await self._conn.connect()
        except NSQError as exc:
            logger.warning("%s: %s", self.id, exc)

    def _forward(self, event: ConnectionEvent) -> None:
        """The core's events under pynsq's names, with pynsq's keyword arguments."""
        kind, data, message = event
        if kind == "message" and message is not None:
            self.trigger("message", conn=self, message=Message.wrap(message))
        elif kind == "error":
            self.trigger("error", conn=self, error=data)
        elif kind == "closed":
            if isinstance(data, NSQError) and self._conn.identify_response is None:
                self.trigger("error", conn=self, error=data)
            self.trigger("close", conn=self)
        elif kind == "identified":
            self.trigger("identify_response", conn=self, data=dict(data.raw) or {})
        elif kind == "authorized":
            self.trigger("auth_response", conn=self, data=_auth_dict(data))
        elif kind in _WITH_DATA:
            self.trigger(_WITH_DATA[kind], conn=self, data=data)
        elif kind == "requeued":
            self.trigger("backoff" if data else "continue", conn=self)
        elif kind in _PLAIN:
            self.trigger(_PLAIN[kind], conn=self)

    # pynsq's methods

    def connected(self) -> bool:
        return self._conn.state in (ConnectionState.READY, ConnectionState.CLOSING)

    def connecting(self) -> bool:
        return self._conn.state in (ConnectionState.CONNECTING, ConnectionState.IDENTIFYING)

    def closed(self) -> bool:
        return self._conn.state in (ConnectionState.INIT, ConnectionState.CLOSED)

    def close(self) -> None:
        """Close the socket now (pynsq's close); ``await conn.connection.close()`` drains."""
        self._conn.abort()

    def send(self, data: bytes) -> None:
        self._conn.send(data)

    def send_rdy(self, value: int) -> bool:
        changed = value != self._conn.rdy_count
        self._conn.rdy(value)
        return changed

    def upgrade_to_tls(self, options: Any = None) -> None:
        """Not needed: TLS is negotiated during ``connect()`` (``tls_v1=True``)."""
        raise NotImplementedError("rxnsq negotiates TLS during connect(): pass tls_v1=True")

    def upgrade_to_snappy(self) -> None:
        """Not needed: snappy is negotiated during ``connect()`` (``snappy=True``)."""
        raise NotImplementedError("rxnsq negotiates snappy during connect(): pass snappy=True")

    def upgrade_to_deflate(self) -> None:
        """Not needed: deflate is negotiated during ``connect()`` (``deflate=True``)."""
        raise NotImplementedError("rxnsq negotiates deflate during connect(): pass deflate=True")


def _auth_dict(data: Any) -> dict[str, Any]:
    """nsqd's AUTH reply as pynsq hands it to listeners: a dict."""
    return {
        "identity": data.identity,
        "identity_url": data.identity_url,
        "permission_count": data.permission_count,
    }
