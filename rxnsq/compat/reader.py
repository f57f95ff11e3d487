"""pynsq's ``Reader`` (handler, hooks, ``set_max_in_flight``...) over :class:`rxnsq.Reader`."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

from tornado import gen
from tornado.ioloop import IOLoop

from .. import reader as core
from ..connection import Connection
from ..message import Message as CoreMessage
from .backoff_timer import PynsqBackoff
from .message import Message
from .options import connection_options

__all__ = ["Reader"]

logger = logging.getLogger(__name__)


class Reader:
    """Consume a topic/channel with ``message_handler(message)``, as in pynsq.

    The handler returns True (finish) or False (requeue with backoff), raises (requeue), or
    returns an awaitable whose truthy result finishes. Subclasses may override the hooks
    ``preprocess_message``, ``validate_message``, ``process_message``, ``giving_up`` and
    ``heartbeat``. ``reader.reader`` is the rxnsq Reader underneath.

    Differences from pynsq: a handler returning None finishes the message (pynsq left it
    unanswered until it timed out) unless it called ``enable_async()``; what
    ``preprocess_message`` returns is what the handler gets; ``close()`` really stops (RDY 0,
    CLS, drain, no timers left) and can be awaited; tuples and sets of addresses work;
    options are checked with errors, not asserts.
    """

    def __init__(
        self,
        topic: str,
        channel: str,
        message_handler: Callable[[Message], Any] | None = None,
        name: str | None = None,
        nsqd_tcp_addresses: str | Sequence[str] | None = None,
        lookupd_http_addresses: str | Sequence[str] | None = None,
        max_tries: int = 5,
        max_in_flight: int = 1,
        lookupd_poll_interval: float = 60,
        low_rdy_idle_timeout: float = 10,
        max_backoff_duration: float = 128,
        lookupd_poll_jitter: float = 0.3,
        lookupd_connect_timeout: float = 1,
        lookupd_request_timeout: float = 2,
        **kwargs: Any,
    ) -> None:
        options, requeue_delay = connection_options(kwargs)
        self.message_handler: Callable[[Message], Any] | None = None
        if message_handler is not None:
            self.set_message_handler(message_handler)
        self.name = name or f"{topic}:{channel}"
        self.topic, self.channel = topic, channel
        self.reader = core.Reader(
            topic,
            channel,
            nsqd_tcp_addresses=_addresses(nsqd_tcp_addresses),
            lookupd_http_addresses=_addresses(lookupd_http_addresses),
            max_in_flight=max_in_flight,
            max_tries=max_tries,
            lookupd_poll_interval=lookupd_poll_interval,
            lookupd_poll_jitter=lookupd_poll_jitter,
            lookupd_connect_timeout=lookupd_connect_timeout,
            lookupd_request_timeout=lookupd_request_timeout,
            low_rdy_idle_timeout=low_rdy_idle_timeout,
            max_backoff_duration=max_backoff_duration,
            backoff=PynsqBackoff(max_backoff_duration),
            default_requeue_delay=requeue_delay,
            max_requeue_delay=3600.0,
            giving_up=lambda message: self.giving_up(_compat(message)),
            **options,
        )
        self._subscription: Any = None
        self._warned_none = False
        # like pynsq: bound to the IOLoop now, started when it runs
        IOLoop.current().add_callback(self._run)

    def __repr__(self) -> str:
        return f"<compat.Reader {self.name}>"

    def _run(self) -> None:
        if self.message_handler is None and type(self).process_message is Reader.process_message:
            raise ValueError("a message_handler must be set before the reader starts")
        if self._subscription is not None or self.reader.is_closing:
            return
        self.reader.events.subscribe(self._on_event)
        self._subscription = self.reader.messages.subscribe(self._on_message)
        asyncio.get_running_loop().create_task(self.reader.start(require_nsqd=False))
        logger.info("[%s] starting reader", self.name)

    def _on_event(self, event: core.ReaderEvent) -> None:
        if event.kind == "connected":
            conn = self.reader.connections.get(event.address)
            if conn is not None:

                def beat(_at: float, conn: Connection = conn) -> None:
                    self.heartbeat(conn)

                conn.heartbeats.subscribe(beat)

    def _on_message(self, core_message: CoreMessage[bytes]) -> None:
        message = Message(core_message)
        try:
            prepared = self.preprocess_message(message)
            if not self.validate_message(prepared):
                message.finish()
                return
            result = self.process_message(prepared)
        except Exception:
            logger.exception("[%s] uncaught exception while handling message", self.name)
            message.requeue()
            return
        if result is not None and not isinstance(result, bool) and inspect.isawaitable(result):
            message.enable_async()
            future = gen.convert_yielded(result)
            future.add_done_callback(lambda f: self._settle_later(message, f))
            return
        if message.is_async() or message.has_responded():
            return
        if result is None:
            if not self._warned_none:
                self._warned_none = True
                logger.warning(
                    "[%s] the handler returned None: treated as success (finished); "
                    "return True or False, or call message.enable_async()",
                    self.name,
                )
            message.finish()
        elif result:
            message.finish()
        else:
            message.requeue()

    def _settle_later(self, message: Message, future: asyncio.Future[Any]) -> None:
        if message.has_responded():
            return
        if future.cancelled() or future.exception() is not None:
            logger.error("[%s] asynchronous handler failed: %r", self.name, future)
            message.requeue()
        elif future.result():
            message.finish()
        else:
            message.requeue()

    # pynsq's API

    def set_message_handler(self, message_handler: Callable[[Message], Any]) -> None:
        if not callable(message_handler):
            raise TypeError("message_handler must be callable")
        self.message_handler = message_handler

    def process_message(self, message: Any) -> Any:
        """Hook: handle one message; by default the message handler."""
        assert self.message_handler is not None
        return self.message_handler(message)

    def preprocess_message(self, message: Message) -> Any:
        """Hook: transform the message before validation and handling."""
        return message

    def validate_message(self, message: Any) -> bool:
        """Hook: False finishes the message without handling it."""
        return True

    def giving_up(self, message: Message) -> None:
        """Hook: the message exceeded max_tries and will be finished."""
        logger.warning(
            "[%s] giving up on message %s after %d tries",
            self.name,
            message.id.decode(errors="replace"),
            message.attempts,
        )

    def heartbeat(self, conn: Connection) -> None:
        """Hook: called on every heartbeat of a connection."""

    @classmethod
    def disabled(cls) -> bool:
        """Deprecated pynsq hook; not consulted (use ``set_max_in_flight(0)``)."""
        return False

    def is_starved(self) -> bool:
        return self.reader.is_starved()

    def set_max_in_flight(self, max_in_flight: int) -> None:
        self.reader.set_max_in_flight(max_in_flight)

    @property
    def max_in_flight(self) -> int:
        return self.reader.max_in_flight

    @property
    def conns(self) -> dict[str, Connection]:
        return self.reader.connections

    @property
    def total_rdy(self) -> int:
        return self.reader.total_rdy

    def connect_to_nsqd(self, host: str, port: int) -> None:
        """Add an nsqd by address (kept and reconnected like the configured ones)."""
        self.reader.add_nsqd(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

    def query_lookupd(self) -> None:
        """Ask nsqlookupd for producers now."""
        self.reader.query_lookupd()

    def close(self) -> asyncio.Task[None] | None:
        """Stop: RDY 0, CLS, let in-flight messages settle, close. Await it to wait."""
        if self._subscription is not None:
            self._subscription.dispose()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            IOLoop.current().add_callback(self.reader.close)
            return None
        return loop.create_task(self.reader.close())


def _compat(message: CoreMessage[Any]) -> Message:
    return message if isinstance(message, Message) else Message(message)


def _addresses(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)
