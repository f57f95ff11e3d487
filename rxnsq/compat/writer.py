"""pynsq's ``Writer`` (``pub``/``mpub``/``dpub`` with ``callback(conn, data)``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tornado.ioloop import IOLoop

from .. import writer as core
from ..connection import Connection
from ..errors import NSQError
from .options import connection_options

__all__ = ["Writer"]

logger = logging.getLogger(__name__)

Callback = Callable[[Connection | None, Any], Any]


class Writer:
    """Publish to nsqd as in pynsq. Each call returns an asyncio future.

    Differences from pynsq: the future resolves on nsqd's ``OK`` (pynsq's resolved when
    the bytes were written) and raises the error; a publish made before any connection is up
    waits for the connect attempt instead of failing at once; publishes go round-robin, not
    at random; ``str`` bodies and tuples work, anything else that is not a body (None, an int,
    a list for ``pub``) fails with ``InvalidBodyError`` through the callback and the future;
    ``close()`` exists and waits for pending confirmations. ``writer.writer`` is the rxnsq
    Writer underneath.
    """

    def __init__(
        self,
        nsqd_tcp_addresses: str | Sequence[str],
        reconnect_interval: float = 15.0,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        options, _ = connection_options(kwargs)
        self.writer = core.Writer(
            nsqd_tcp_addresses, reconnect_interval=reconnect_interval, name=name, **options
        )
        self.name = self.writer.name
        IOLoop.current().add_callback(self.writer.start)  # connect when the loop runs, as pynsq

    def __repr__(self) -> str:
        return f"<compat.Writer {self.name}>"

    def pub(
        self, topic: str, msg: bytes | str, callback: Callback | None = None
    ) -> asyncio.Future[Any]:
        """PUB; bad input (None, an int, a list...) reaches ``callback`` as a typed
        :class:`~rxnsq.errors.InvalidBodyError` and fails the returned future (never a
        ``TypeError`` here, never a coerced body)."""
        callback = self._callback(callback)
        try:
            return self.writer.pub_nowait(topic, msg, callback=callback)  # type: ignore[return-value]
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

    @property
    def conns(self) -> dict[str, Connection]:
        return self.writer.connections

    def _callback(self, callback: Callback | None) -> Callback:
        if callback is not None:
            return callback

        def log_failure(conn: Connection | None, data: Any) -> None:
            if isinstance(data, Exception):
                logger.error("[%s] failed to publish: %s", self.name, data)

        return log_failure

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
