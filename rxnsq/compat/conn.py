"""pynsq's ``AsyncConn``: an evented connection, over :class:`rxnsq.connection.Connection`."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tornado.ioloop import IOLoop

from ..connection import Connection, ConnectionEvent, ConnectionState
from ..errors import NSQError
from .event import EventedMixin
from .message import Message
from .options import connection_options

__all__ = ["AsyncConn"]

#: The core's event kinds that pynsq emits with ``data=``, under pynsq's names.
_WITH_DATA = {
    "identifying": "identify",
    "identified": "identify_response",
    "authorized": "auth_response",
    "response": "response",
}
#: The core's event kinds that pynsq emits with ``conn=`` only.
_PLAIN = {
    "connected": "connect",
    "authenticating": "auth",
    "ready": "ready",
    "heartbeat": "heartbeat",
    "finished": "resume",
}

logger = logging.getLogger(__name__)


class AsyncConn(EventedMixin):
    """One nsqd connection with pynsq's events (``on(name, callback)``): ``connect``,
    ``identify``, ``identify_response``, ``auth``, ``auth_response``, ``ready``, ``message``,
    ``response``, ``heartbeat``, ``backoff``, ``resume``, ``continue``, ``error``, ``close``.
    Listeners get keyword arguments (``conn=``, ``data=``, ``message=``, ``error=``).

    Differences: connecting has a timeout (``timeout``); TLS accepts an ``ssl.SSLContext``
    too; TLS asked for but not granted is an error.
    """

    def __init__(self, host: str, port: int, **kwargs: Any) -> None:
        super().__init__()
        options, requeue_delay = connection_options(kwargs)
        self.host, self.port = host, port
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._conn = Connection(address, **options)
        self._conn.requeue_delay = lambda attempts: requeue_delay * attempts
        self._conn.events.subscribe(self._forward)
        self._task: asyncio.Task[Any] | None = None

    @property
    def id(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.id

    @property
    def connection(self) -> Connection:
        """The rxnsq connection underneath (its observables, ``await close()``...)."""
        return self._conn

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
            self.trigger("message", conn=self, message=Message(message))
        elif kind == "error":
            self.trigger("error", conn=self, error=data)
        elif kind == "closed":
            if isinstance(data, NSQError) and self._conn.identify_response is None:
                self.trigger("error", conn=self, error=data)
            self.trigger("close", conn=self)
        elif kind in _WITH_DATA:
            self.trigger(_WITH_DATA[kind], conn=self, data=data)
        elif kind == "requeued":
            self.trigger("backoff" if data else "continue", conn=self)
        elif kind in _PLAIN:
            self.trigger(_PLAIN[kind], conn=self)

    # pynsq's methods and counters

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
