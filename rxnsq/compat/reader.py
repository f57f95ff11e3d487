"""pynsq's ``Reader`` (handler, hooks, attributes, ``set_max_in_flight``...) over
:class:`rxnsq.Reader`.

Every hook a subclass overrides runs inside a boundary: what it raises is logged with the
hook's name and the connection's id and changes nothing else (a failing message handler or
``process_message`` requeues the message, as in pynsq; a failing ``giving_up`` still finishes
it). Hooks receive :class:`~rxnsq.compat.AsyncConn` views with pynsq's attributes, read live.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

from tornado import gen
from tornado.httpclient import AsyncHTTPClient
from tornado.ioloop import IOLoop

from .. import reader as core
from ..connection import Connection
from ..flow import BackoffState
from ..message import Message as CoreMessage
from .backoff_timer import BackoffTimer, PynsqBackoff
from .conn import AsyncConn
from .message import Message
from .options import connection_options

__all__ = ["Reader"]

logger = logging.getLogger(__name__)

#: pynsq retried a connection that failed for good (TLS, AUTH, wrong port) every 15 s.
FATAL_RETRY_INTERVAL = 15.0
#: pynsq asked ``disabled()`` again this often while it said True.
DISABLED_RECHECK_INTERVAL = 15.0


class Reader:
    """Consume a topic/channel with ``message_handler(message)``, as in pynsq.

    The handler returns True (finish) or False (requeue with backoff), raises (requeue), or
    returns an awaitable whose truthy result finishes. Subclasses may override the hooks
    ``preprocess_message``, ``validate_message``, ``process_message``, ``giving_up``,
    ``heartbeat`` and ``disabled``. ``reader.reader`` is the rxnsq Reader underneath.

    Differences from pynsq: a handler returning None finishes the message (pynsq left it
    unanswered until it timed out) unless it called ``enable_async()``; what
    ``preprocess_message`` returns is what the handler gets; ``close()`` really stops (RDY 0,
    CLS, drain, no timers left) and can be awaited; tuples and sets of addresses work;
    options are checked with errors, not asserts. ``docs/migrating-from-pynsq.md`` lists
    every attribute.
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
        self.conn_kwargs = dict(kwargs)
        self.requeue_delay = requeue_delay
        self.max_backoff_duration = max_backoff_duration
        self.backoff_timer = BackoffTimer(0, max_backoff_duration)
        self.io_loop = IOLoop.current()
        self.http_client = AsyncHTTPClient()
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
            fatal_retry_interval=FATAL_RETRY_INTERVAL,
            giving_up=self._giving_up,
            **options,
        )
        self._max_in_flight = max_in_flight
        self._subscription: Any = None
        self._warned_none = False
        self._disabled_timer: asyncio.TimerHandle | None = None
        self.connection_attempts: dict[str, float] = {}
        #: pynsq's periodic callbacks; rxnsq polls and redistributes with its own timers.
        self.query_periodic = None
        self.redist_periodic = None
        self.random_rdy_ts = 0.0
        # like pynsq: bound to the IOLoop now, started when it runs
        self.io_loop.add_callback(self._run)

    def __repr__(self) -> str:
        return f"<compat.Reader {self.name}>"

    def _run(self) -> None:
        if self.message_handler is None and type(self).process_message is Reader.process_message:
            raise ValueError("a message_handler must be set before the reader starts")
        if self._subscription is not None or self.reader.is_closing:
            return
        self.reader.events.subscribe(self._on_event)
        self.reader.heartbeats.subscribe(self._on_heartbeat)
        self.reader.backoff.subscribe(self._on_backoff)
        self._subscription = self.reader.messages.subscribe(self._on_message)
        self._check_disabled()
        asyncio.get_running_loop().create_task(self.reader.start(require_nsqd=False))
        logger.info("[%s] starting reader", self.name)

    # --- the boundary around hooks ---------------------------------------------------------

    def _hook_failed(self, hook: str, conn: AsyncConn | None) -> None:
        where = f" ({conn.id})" if conn is not None else ""
        logger.exception("[%s] the %s hook raised%s; carrying on", self.name, hook, where)

    def _view(self, conn: Connection) -> AsyncConn:
        return AsyncConn.view(conn, self.requeue_delay)

    def _on_event(self, event: core.ReaderEvent) -> None:
        if event.kind in ("connected", "connect_failed"):
            self.connection_attempts[event.address] = self.io_loop.time()

    def _on_heartbeat(self, beat: core.Heartbeat) -> None:
        conn = self.reader.connections.get(beat.address)
        if conn is None:
            return
        view = self._view(conn)
        try:
            self.heartbeat(view)
        except Exception:
            self._hook_failed("heartbeat", view)

    def _on_backoff(self, state: BackoffState) -> None:
        timer = BackoffTimer(0, self.max_backoff_duration)
        for _ in range(state.level):
            timer.failure()
        self.backoff_timer = timer

    def _giving_up(self, core_message: CoreMessage[bytes]) -> None:
        # a raise reaches the core, which reports it and finishes the message all the same
        self.giving_up(Message.wrap(core_message))

    def _check_disabled(self) -> None:
        """Consult ``disabled()`` as pynsq does: while True, no RDY (asked again in 15 s)."""
        self._disabled_timer = None
        if self.reader.is_closing:
            return
        try:
            disabled = bool(type(self).disabled())
        except Exception:
            self._hook_failed("disabled", None)
            disabled = False
        self.reader.set_max_in_flight(0 if disabled else self._max_in_flight)
        if disabled or type(self).disabled is not Reader.disabled:
            self._disabled_timer = asyncio.get_running_loop().call_later(
                DISABLED_RECHECK_INTERVAL, self._check_disabled
            )

    def _on_message(self, core_message: CoreMessage[bytes]) -> None:
        message = Message.wrap(core_message)
        view = self._view_of(core_message)
        hook = "preprocess_message"
        try:
            prepared = self.preprocess_message(message)
            hook = "validate_message"
            if not self.validate_message(prepared):
                message.finish()
                return
            hook = "process_message"
            result = self.process_message(prepared)
        except Exception:
            self._hook_failed(hook, view)
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

    def _view_of(self, message: CoreMessage[Any]) -> AsyncConn | None:
        conn = message.connection
        return self._view(conn) if isinstance(conn, Connection) else None

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

    # --- pynsq's hooks ------------------------------------------------------------------------

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

    def heartbeat(self, conn: AsyncConn) -> None:
        """Hook: called on every heartbeat of a connection."""

    @classmethod
    def disabled(cls) -> bool:
        """Hook (deprecated in pynsq): while True, the reader asks for no messages; consulted
        at start and every 15 s. ``set_max_in_flight(0)`` is the direct way."""
        return False

    # --- pynsq's methods and attributes ------------------------------------------------------

    def set_message_handler(self, message_handler: Callable[[Message], Any]) -> None:
        if not callable(message_handler):
            raise TypeError("message_handler must be callable")
        self.message_handler = message_handler

    def is_starved(self) -> bool:
        """Whether some connection holds 85 % or more of its RDY (time to flush a batch)."""
        return self.reader.is_starved()

    def set_max_in_flight(self, max_in_flight: int) -> None:
        self._max_in_flight = max_in_flight
        self.reader.set_max_in_flight(max_in_flight)

    @property
    def max_in_flight(self) -> int:
        return self.reader.max_in_flight

    @property
    def max_tries(self) -> int:
        return self.reader.max_tries

    @property
    def nsqd_tcp_addresses(self) -> list[str]:
        return list(self.reader.nsqd_tcp_addresses)

    @property
    def lookupd_http_addresses(self) -> list[str]:
        return list(self.reader.lookupd_http_addresses)

    @property
    def lookupd_poll_interval(self) -> float:
        return self.reader.lookupd_poll_interval

    @property
    def lookupd_poll_jitter(self) -> float:
        return self.reader.lookupd_poll_jitter

    @property
    def lookupd_connect_timeout(self) -> float:
        return self.reader.lookupd_connect_timeout

    @property
    def lookupd_request_timeout(self) -> float:
        return self.reader.lookupd_request_timeout

    @property
    def low_rdy_idle_timeout(self) -> float:
        return self.reader.low_rdy_idle_timeout

    @property
    def lookupd_query_index(self) -> int:
        """Which nsqlookupd the next poll asks."""
        return self.reader.lookupd_query_index

    @property
    def conns(self) -> dict[str, AsyncConn]:
        """The ready connections by ``host:port``, as AsyncConn views."""
        views = (self._view(conn) for conn in self.reader.connections.values())
        return {view.id: view for view in views}

    @property
    def total_rdy(self) -> int:
        return self.reader.total_rdy

    @property
    def backoff_block(self) -> bool:
        """Whether a backoff wait is under way (RDY 0 everywhere)."""
        flow = self.reader.flow
        return flow is not None and flow.state.phase == "blocked"

    @property
    def backoff_block_completed(self) -> bool:
        """Whether the last backoff is over (full RDY restored)."""
        flow = self.reader.flow
        return flow is None or flow.state.phase == "normal"

    @property
    def need_rdy_redistributed(self) -> bool:
        flow = self.reader.flow
        return flow is not None and flow.needs_redistribution

    def connect_to_nsqd(self, host: str, port: int) -> AsyncConn | None:
        """Add an nsqd by address (kept and reconnected like the configured ones); returns
        its AsyncConn when already connected, else None (the connection follows)."""
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.reader.add_nsqd(address)
        conn = self.reader.connections.get(address)
        return self._view(conn) if conn is not None else None

    def query_lookupd(self) -> None:
        """Ask nsqlookupd for producers now."""
        self.reader.query_lookupd()

    def close(self) -> asyncio.Task[None] | None:
        """Stop: RDY 0, CLS, let in-flight messages settle, close. Await it to wait."""
        if self._subscription is not None:
            self._subscription.dispose()
        if self._disabled_timer is not None:
            self._disabled_timer.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.io_loop.add_callback(self.reader.close)
            return None
        return loop.create_task(self.reader.close())


def _addresses(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)
