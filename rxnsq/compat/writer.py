"""pynsq's ``Writer`` (``pub``/``mpub``/``dpub`` with ``callback(conn, data)``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tornado.ioloop import IOLoop

from .. import writer as core
from ..address import tcp_address_list
from ..connection import Connection, Heartbeat
from ..errors import NSQError
from .conn import AsyncConn
from .options import connection_options

__all__ = ["Writer"]

logger = logging.getLogger(__name__)

Callback = Callable[[AsyncConn | None, Any], Any]


class Writer:
    """Publish to nsqd as in pynsq. Each call returns an asyncio future.

    Differences from pynsq: the future resolves on nsqd's ``OK`` (pynsq's resolved when
    the bytes were written) and raises the error; a publish made before any connection is up
    waits for the connect attempt instead of failing at once; publishes go round-robin, not
    at random; ``str`` bodies and tuples work, anything else that is not a body (None, an int,
    a list for ``pub``) fails with ``InvalidBodyError`` through the callback and the future;
    ``close()`` exists and waits for pending confirmations. ``writer.writer`` is the rxnsq
    Writer underneath. Callbacks and the ``heartbeat`` hook get :class:`AsyncConn` views of
    the connection; what they raise is logged and changes nothing else.
    """

    def __init__(
        self,
        nsqd_tcp_addresses: str | Sequence[str],
        reconnect_interval: float = 15.0,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        options, requeue_delay = connection_options(kwargs)
        addresses = tcp_address_list("nsqd_tcp_addresses", nsqd_tcp_addresses)
        self.name = name or (addresses[0] if addresses else "writer")  # pynsq's default
        self.writer = core.Writer(
            addresses, reconnect_interval=reconnect_interval, name=self.name, **options
        )
        self.conn_kwargs = dict(kwargs)
        self.requeue_delay = requeue_delay
        self.io_loop = IOLoop.current()
        self.writer.heartbeats.subscribe(self._on_heartbeat)
        self.io_loop.add_callback(self.writer.start)  # connect when the loop runs, as pynsq

    def __repr__(self) -> str:
        return f"<compat.Writer {self.name}>"

    def pub(
        self, topic: str, msg: bytes | str, callback: Callback | None = None
    ) -> asyncio.Future[Any]:
        """PUB; bad input (None, an int, a list...) reaches ``callback`` as a typed
        :class:`~rxnsq.errors.InvalidBodyError` and fails the returned future (never a
        ``TypeError`` here, never a coerced body)."""
        try:
            future = self.writer.pub_nowait(topic, msg, callback=self._callback(callback))
            return future  # type: ignore[return-value]
        except NSQError as exc:  # the callback already has it
            return _failed(exc)

    def mpub(
        self, topic: str, msg: bytes | str | Iterable[bytes | str], callback: Callback | None = None
    ) -> asyncio.Future[Any]:
        """MPUB; a single body is published as a list of one, as pynsq does."""
        bodies = [msg] if isinstance(msg, bytes | str) else msg
        return self._spawn(self.writer.mpub(topic, bodies, callback=self._callback(callback)))

    def dpub(
        self, topic: str, delay_ms: int, msg: bytes | str, callback: Callback | None = None
    ) -> asyncio.Future[Any]:
        """DPUB, deferred by ``delay_ms`` milliseconds."""
        delay: Any = delay_ms
        if isinstance(delay_ms, int | float) and not isinstance(delay_ms, bool):
            delay = delay_ms / 1000
        return self._spawn(self.writer.dpub(topic, msg, delay, callback=self._callback(callback)))

    def close(self) -> asyncio.Task[None]:
        """Wait for pending publishes, then close every connection."""
        return self._spawn(self.writer.close())

    # pynsq's hook, methods and attributes

    def heartbeat(self, conn: AsyncConn) -> None:
        """Hook: called on every heartbeat of a connection."""

    def connect(self) -> None:
        """Connect to every nsqd (publishing does it anyway)."""
        self._spawn(self.writer.start())

    def connect_to_nsqd(self, host: str, port: int) -> None:
        """Publish to one more nsqd too."""
        self.writer.add_nsqd(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

    @property
    def nsqd_tcp_addresses(self) -> list[str]:
        return list(self.writer.nsqd_tcp_addresses)

    @property
    def reconnect_interval(self) -> float:
        return self.writer.reconnect_interval

    @property
    def conns(self) -> dict[str, AsyncConn]:
        """The connections that are up, by ``host:port``, as AsyncConn views."""
        views = (self._view(conn) for conn in self.writer.connections.values())
        return {view.id: view for view in views}

    def _view(self, conn: Connection) -> AsyncConn:
        return AsyncConn.view(conn, self.requeue_delay)

    def _on_heartbeat(self, beat: Heartbeat) -> None:
        conn = self.writer.connections.get(beat.address)
        if conn is None:
            return
        view = self._view(conn)
        try:
            self.heartbeat(view)
        except Exception:
            logger.exception("[%s] the heartbeat hook raised (%s); carrying on", self.name, view.id)

    def _callback(self, callback: Callback | None) -> Callable[[Connection | None, Any], None]:
        """The core's ``callback(connection, data)`` as pynsq's ``callback(conn, data)``."""

        def call(conn: Connection | None, data: Any) -> None:
            view = self._view(conn) if conn is not None else None
            if callback is None:
                if isinstance(data, Exception):
                    logger.error("[%s] failed to publish: %s", self.name, data)
                return
            try:
                callback(view, data)
            except Exception:
                logger.exception("[%s] a publish callback raised; carrying on", self.name)

        return call

    @staticmethod
    def _spawn(coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        # the callback has the outcome; a task nobody awaits must not warn about it
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task


def _failed(error: Exception) -> asyncio.Future[Any]:
    """An already failed future whose error was reported (no "never retrieved" warning)."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    future.exception()
    return future
