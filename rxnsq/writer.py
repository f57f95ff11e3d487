"""The producer: awaitable PUB/MPUB/DPUB, an Observer sink that batches, a publish operator.

One item model everywhere (see :mod:`rxnsq._items`): a body is ``bytes``, ``bytearray``,
``memoryview`` or ``str``; in a stream an item is a body, a :class:`Deferred` (DPUB) or a
list/tuple of bodies (one MPUB). Anything else fails with
:class:`~rxnsq.errors.InvalidBodyError` before any IO; nothing is coerced.

One item, one outcome: every publish is either confirmed by nsqd's ``OK`` or reported failed
with a typed :class:`~rxnsq.errors.NSQError`: an ``E_*`` error, a lost connection
(:class:`~rxnsq.errors.ConnectionClosedError`), no answer within the publish timeout
(:class:`~rxnsq.errors.PublishTimeoutError`), or the connection error itself when no nsqd is
connected (a refused connection, a wrong port, TLS or AUTH refused: the same types the Reader
raises). Nothing counts as published because its bytes reached a socket, and an answer that
arrives after a publish was reported failed is ignored.

``Writer(addresses)`` does no IO; the first publish connects to every nsqd on the running
loop. Publishes go round-robin over the connections that are up; a lost nsqd is retried with
a doubling delay up to ``reconnect_interval``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Literal, Self

import reactivex
from reactivex import abc
from reactivex.disposable import CompositeDisposable, Disposable

from . import _items, protocol, runner
from ._items import Body, Deferred, Item, PublishAck, PublishResult
from .address import tcp_address_list
from .config import ConnectionOptions, check_range
from .connection import Connection, ConnectionState, Heartbeat
from .errors import (
    FATAL_CONNECT_ERRORS,
    ConfigError,
    ConnectionClosedError,
    InvalidBodyError,
    NSQConnectionError,
    NSQError,
    PublishTimeoutError,
    SinkOverflowError,
)
from .message import Message
from .reconnect import ReconnectDelays
from .sink import Done, Sink, WriterLink
from .streams import Broadcast

__all__ = [
    "Body",
    "Deferred",
    "Item",
    "PublishAck",
    "PublishResult",
    "Sink",
    "SinkOverflowError",
    "Writer",
]

logger = logging.getLogger(__name__)

#: nsqd's defaults for --max-msg-size, --max-body-size and --max-req-timeout.
DEFAULT_MAX_MSG_SIZE = 1024 * 1024
DEFAULT_MAX_BODY_SIZE = 5 * 1024 * 1024
DEFAULT_MAX_REQ_TIMEOUT = 3600.0

#: Connection errors no reconnect can cure (the Reader fails its stream with the same).

Callback = Callable[[Connection | None, Any], Any]
#: Called once per command with None (confirmed) or the error.


class Writer:
    """Publish to nsqd.

    ``nsqd_tcp_addresses``: one ``host:port`` or several (checked here: a bad port is a
    :class:`~rxnsq.errors.ConfigError`). ``reconnect_interval``: the longest wait between
    reconnect attempts (the first is after a second). ``reconnect_wait`` (default 2 s): how long
    a publish made while no nsqd is connected waits for one that was connected and was lost to
    come back (a restart, a network blip); an nsqd that never connected (refused, wrong port,
    TLS or AUTH refused) is not waited for, so the publish fails at once with its connection
    error. A connect attempt already under way is always waited for (up to the connect
    timeout). ``publish_timeout`` (default 10 s): how long a publish waits for
    nsqd's answer before it fails with a retriable
    :class:`~rxnsq.errors.PublishTimeoutError`; each call can give its own ``timeout``.
    ``max_msg_size``/``max_body_size``/``max_req_timeout``: nsqd's ``--max-msg-size``,
    ``--max-body-size`` and ``--max-req-timeout``, used to refuse bodies and delays before
    sending and to split MPUBs. ``name``: shown in logs. Other keywords are connection options.

    Publishing methods are for the writer's loop; ``pub_nowait`` and a sink's ``on_next``,
    ``on_completed`` and ``on_error`` may also be called from any other thread.
    """

    def __init__(
        self,
        nsqd_tcp_addresses: str | Iterable[str],
        *,
        reconnect_interval: float = 15.0,
        reconnect_wait: float = 2.0,
        publish_timeout: float = 10.0,
        name: str | None = None,
        max_msg_size: int = DEFAULT_MAX_MSG_SIZE,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        max_req_timeout: float = DEFAULT_MAX_REQ_TIMEOUT,
        **connection_options: Any,
    ) -> None:
        addresses = tcp_address_list("nsqd_tcp_addresses", nsqd_tcp_addresses)
        if not addresses:
            raise ConfigError("nsqd_tcp_addresses", nsqd_tcp_addresses, "one or more addresses")
        check_range("reconnect_interval", reconnect_interval, 0.01, 3600.0)
        check_range("reconnect_wait", reconnect_wait, 0.0, 3600.0)
        check_range("publish_timeout", publish_timeout, 0.001, 86400.0)
        check_range("max_msg_size", max_msg_size, 1, 1 << 31, integer=True)
        check_range("max_body_size", max_body_size, 8, 1 << 31, integer=True)
        check_range("max_req_timeout", max_req_timeout, 0.0, 86400.0 * 365)
        if max_body_size < max_msg_size + 8:
            raise ConfigError(
                "max_body_size", max_body_size, f"at least max_msg_size + 8 ({max_msg_size + 8})"
            )
        if name is not None and not isinstance(name, str):
            raise ConfigError("name", name, "a str or None")
        self.nsqd_tcp_addresses = addresses
        self.reconnect_interval = reconnect_interval
        self.reconnect_wait = reconnect_wait
        self.publish_timeout = publish_timeout
        self.name = name or "writer"
        self.max_msg_size = max_msg_size
        self.max_body_size = max_body_size
        self.max_req_timeout = max_req_timeout
        self.connection_options = ConnectionOptions(**connection_options)
        self._acks: Broadcast[PublishAck] = Broadcast(f"{self.name} acks")
        self._closing_signal: Broadcast[None] = Broadcast(f"{self.name} closing", replay=True)
        #: One :class:`PublishAck` per publish command (and per item failed before sending).
        self.acks: reactivex.Observable[PublishAck] = self._acks.observable
        #: Emits once, then completes, when ``close()`` begins (late subscribers too).
        self.closing: reactivex.Observable[None] = self._closing_signal.observable
        self._heartbeats: Broadcast[Heartbeat] = Broadcast(f"{self.name} heartbeats")
        #: Every heartbeat of every connection (:class:`~rxnsq.reader.Heartbeat`).
        self.heartbeats: reactivex.Observable[Heartbeat] = self._heartbeats.observable
        #: The latest connection error (None once every nsqd is connected).
        self.last_error: Exception | None = None

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._started = False
        self._conns: dict[str, Connection] = {}
        self._conn_list: list[Connection] = []
        self._next = 0
        self._connecting: dict[str, asyncio.Task[None]] = {}
        self._reconnects: dict[str, asyncio.TimerHandle] = {}
        self._delays = ReconnectDelays(min(1.0, reconnect_interval), reconnect_interval)
        self._errors: dict[str, NSQError] = {}
        self._lost: set[str] = set()  # were connected, not back yet: worth waiting for
        self._changed: asyncio.Future[None] | None = None
        self._valid_topics: set[str] = set()
        # unanswered commands by timeout value: deadlines grow within each deque
        self._tracked: dict[float, deque[tuple[float, asyncio.Future[bytes], str, str]]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._waiting: set[asyncio.Task[Any]] = set()
        self._inbox: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._inbox_scheduled = False
        self._sinks: list[Sink] = []
        self._link = WriterLink(
            name=self.name,
            max_msg_size=self.max_msg_size,
            max_body_size=self.max_body_size,
            is_closing=lambda: self._close_started,
            bind=self._bind,
            thread=lambda: self._thread,
            post=self._post,
            commands_for=self._commands_for,
            ensure_started=self._ensure_started,
            submit=self._submit,
            ack_failed=self._ack_failed,
        )
        self._close_started = False
        self._closing = False
        self._closed: asyncio.Future[None] | None = None
        self._close_deadline: float | None = None
        runner.register(self)

    def __repr__(self) -> str:
        return f"<Writer {self.name} up={sorted(self._conns)}>"

    @property
    def connections(self) -> dict[str, Connection]:
        """The connections that are up, by address."""
        return dict(self._conns)

    @property
    def is_closing(self) -> bool:
        """True once ``close()`` has begun: stop feeding the writer."""
        return self._close_started

    async def __aenter__(self) -> Self:
        """``async with Writer(...) as writer:`` connects (``start()``) and closes it."""
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def pending(self) -> int:
        """Publish commands sent and not yet answered (or failed)."""
        return sum(1 for dq in self._tracked.values() for entry in dq if not entry[1].done())

    def _repr_html_(self) -> str:
        from .notebook import writer_html

        return writer_html(self.name, self._conns, self._sinks)

    # --- the loop ------------------------------------------------------------------------------

    def _bind(self) -> asyncio.AbstractEventLoop:
        """The writer's loop: the running one, the first time (no IO)."""
        if self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError(
                    "rxnsq.Writer needs a running asyncio loop: publish from async code, "
                    "or run your main coroutine with rxnsq.run(main())"
                ) from None
            self._thread = threading.get_ident()
        return self._loop

    def _on_loop(self) -> bool:
        """Called on the writer's loop thread (or the writer is not bound yet)."""
        return self._thread is None or self._thread == threading.get_ident()

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the writer's loop, from any thread, in call order. Calls made
        between two loop turns share one wake-up."""
        assert self._loop is not None
        self._inbox.append((fn, args))
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            self._loop.call_soon_threadsafe(self._drain_inbox)

    def _drain_inbox(self) -> None:
        self._inbox_scheduled = False  # before draining: a later post schedules again
        inbox = self._inbox
        while inbox:
            fn, args = inbox.popleft()
            try:
                fn(*args)
            except Exception:
                logger.exception("%s: a call handed over from another thread failed", self.name)

    # --- connections ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to every nsqd now (publishing does it anyway); returns after the first
        attempts, whether or not they succeeded."""
        self._start()
        if self._connecting:
            await asyncio.wait(list(self._connecting.values()))

    def _start(self) -> None:
        """For a new publish: refused once ``close()`` began; else connect if not yet."""
        if self._close_started:
            raise ConnectionClosedError(f"{self.name} is closed: no more publishing")
        if not self._started:
            self._ensure_started()

    def _ensure_started(self) -> None:
        """Connect to every nsqd on the first use (also for what a sink flushes on close)."""
        if self._started or self._closing:
            return
        self._bind()
        self._started = True
        for address in self.nsqd_tcp_addresses:
            self._connect_soon(address)

    def _connect_soon(self, address: str) -> None:
        self._reconnects.pop(address, None)
        if self._closing or address in self._connecting:
            return
        assert self._loop is not None
        task = self._loop.create_task(self._connect(address), name=f"rxnsq-writer {address}")
        self._connecting[address] = task

        def attempted(_task: asyncio.Task[None]) -> None:
            self._connecting.pop(address, None)
            self._notify()

        task.add_done_callback(attempted)

    async def _connect(self, address: str) -> None:
        conn = Connection(address, options=self.connection_options)
        try:
            await conn.connect()
        except asyncio.CancelledError:
            return
        except NSQError as exc:
            if isinstance(exc.__cause__, NSQError):
                exc = exc.__cause__  # why the connection closed, not just that it did
            self._connect_failed(address, exc)
            return
        except Exception as exc:  # a certificate file missing, a bad TLS context...
            error = NSQConnectionError(f"cannot connect to nsqd at {address}: {exc!r}")
            error.__cause__ = exc
            self._connect_failed(address, error)
            return
        if self._closing:
            await conn.close(0)
            return
        if conn.closed:  # it died right after the handshake
            reason = conn.close_reason or ConnectionClosedError(f"{address}: closed")
            self._connect_failed(address, reason)
            return
        self._conns[address] = conn
        self._conn_list = list(self._conns.values())
        self._errors.pop(address, None)
        self._delays.reset(address)
        self._lost.discard(address)
        if not self._errors:
            self.last_error = None
        conn.states.subscribe(lambda state: self._on_state(conn, state))
        conn.heartbeats.subscribe(lambda _at: self._on_heartbeat(conn))
        self._notify()
        logger.info("%s: connected to %s", self.name, address)

    def _on_heartbeat(self, conn: Connection) -> None:
        if self._heartbeats.has_observers:
            self._heartbeats.emit(Heartbeat(conn.address, time.time()))

    def add_nsqd(self, address: str) -> None:
        """Publish to one more nsqd too (connected now if the writer runs, else at start)."""
        (address,) = tcp_address_list("address", address)
        if address in self.nsqd_tcp_addresses:
            return
        self.nsqd_tcp_addresses = (*self.nsqd_tcp_addresses, address)
        if self._started and not self._closing:
            self._connect_soon(address)

    def _connect_failed(self, address: str, error: NSQError) -> None:
        self._errors[address] = error
        self.last_error = error
        fatal = isinstance(error, FATAL_CONNECT_ERRORS)
        if fatal:
            self._lost.discard(address)  # no reconnect will cure it: do not wait for one
            logger.error("%s: cannot connect to %s: %s", self.name, address, error)
        else:
            logger.warning("%s: cannot connect to %s: %s", self.name, address, error)
        self._schedule_reconnect(address, fatal)

    def _on_state(self, conn: Connection, state: ConnectionState) -> None:
        if state is not ConnectionState.CLOSED or self._conns.get(conn.address) is not conn:
            return
        del self._conns[conn.address]
        self._conn_list = list(self._conns.values())
        if not self._closing:
            reason = conn.close_reason
            error = ConnectionClosedError(
                f"lost the connection to nsqd at {conn.address}"
                + (f" ({reason})" if reason else "")
            )
            error.__cause__ = reason
            self._errors[conn.address] = error
            self._lost.add(conn.address)
            self.last_error = error
            logger.warning("%s: lost %s", self.name, conn.address)
            self._schedule_reconnect(conn.address, False)
        self._notify()

    def _schedule_reconnect(self, address: str, fatal: bool) -> None:
        if self._closing or self._loop is None:
            return
        # a fatal failure: only a change on the nsqd side helps, so try again but seldom
        delay = self.reconnect_interval if fatal else self._delays.next(address)
        self._reconnects[address] = self._loop.call_later(delay, self._connect_soon, address)

    def _notify(self) -> None:
        """Wake whatever waits for a connection (one came up, an attempt ended, closing)."""
        changed = self._changed
        if changed is not None and not changed.done():
            changed.set_result(None)

    def _ready_connection(self) -> Connection | None:
        """A connection that is up, round-robin; None when there is none."""
        conns = self._conn_list
        if not conns:
            return None
        if len(conns) == 1:
            return conns[0]
        self._next = (self._next + 1) % len(conns)
        return conns[self._next]

    async def _wait_connection(self, topic: str, deadline: float) -> Connection:
        """A connection, waiting for attempts under way (and ``reconnect_wait``) but never past
        ``deadline``; else the connection error, typed as it came."""
        loop = self._bind()
        wait_until = min(deadline, loop.time() + (self.reconnect_wait if self._lost else 0.0))
        while True:
            if self._closing:
                raise ConnectionClosedError(f"{self.name} was closed: {topic!r} not published")
            conn = self._ready_connection()
            if conn is not None:
                return conn
            now = loop.time()
            if now >= deadline:
                raise PublishTimeoutError(
                    f"{self.name}: no connection to nsqd within the publish timeout, "
                    f"{topic!r} not published ({self._error_summary()})"
                )
            if not self._connecting and now >= wait_until:
                raise self._unavailable(topic)
            if self._changed is None or self._changed.done():
                self._changed = loop.create_future()
            limit = deadline if self._connecting else wait_until
            await asyncio.wait([self._changed], timeout=limit - now)

    def _error_summary(self) -> str:
        known = [f"{a}: {self._errors[a]}" for a in self.nsqd_tcp_addresses if a in self._errors]
        return "; ".join(known) or "not connected yet"

    def _unavailable(self, topic: str) -> NSQError:
        """The error for a publish that has no connection: the type of the connection error
        (a fatal one first), with every address and its error in the message."""
        errors = [self._errors[a] for a in self.nsqd_tcp_addresses if a in self._errors]
        message = (
            f"{self.name}: cannot publish to {topic!r}: no nsqd is connected "
            f"({self._error_summary()})"
        )
        if not errors:
            return NSQConnectionError(message)
        worst = next((e for e in errors if isinstance(e, FATAL_CONNECT_ERRORS)), errors[0])
        return _items.again(worst, message)

    # --- sending -------------------------------------------------------------------------------

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return self.publish_timeout
        check_range("timeout", timeout, 0.001, 86400.0)
        return timeout

    def _check_topic(self, topic: str) -> None:
        """Refuse an invalid topic before any IO; each name is checked once per writer."""
        if type(topic) is not str or topic not in self._valid_topics:
            protocol.check_topic_name(topic)
            self._valid_topics.add(topic)

    def _issue(
        self,
        conn: Connection,
        data: bytes,
        topic: str,
        count: int,
        timeout: float,
        started: float,
        done: Done | None = None,
    ) -> asyncio.Future[bytes]:
        """Send one publish command on ``conn``; watched for its timeout and for close; its
        outcome goes to ``acks`` and to ``done`` (one callback for both)."""
        future = conn.command(data)
        deadline = started + timeout
        tracked = self._tracked.get(timeout)
        if tracked is None:
            tracked = self._tracked[timeout] = deque()
        else:
            while tracked and tracked[0][1].done():
                tracked.popleft()
        tracked.append((deadline, future, conn.address, topic))
        sweep = self._sweep
        if sweep is None or deadline < sweep.when():
            if sweep is not None:
                sweep.cancel()
            assert self._loop is not None
            self._sweep = self._loop.call_at(deadline, self._expire)
        if done is not None or self._acks.has_observers:
            future.add_done_callback(
                partial(self._answered, topic, count, conn.address, started, done)
            )
        return future

    def _answered(
        self,
        topic: str,
        count: int,
        address: str,
        started: float,
        done: Done | None,
        future: asyncio.Future[bytes],
    ) -> None:
        error = (
            None
            if not future.cancelled() and future.exception() is None
            else self._error_of(future)
        )
        if self._acks.has_observers:
            assert self._loop is not None
            self._acks.emit(
                PublishAck(topic, count, error is None, error, address, self._loop.time() - started)
            )
        if done is not None:
            done(error)

    @staticmethod
    def _error_of(future: asyncio.Future[Any]) -> NSQError:
        if future.cancelled():
            return ConnectionClosedError("the publish was cancelled before nsqd answered")
        error = future.exception()
        if isinstance(error, NSQError):
            return error
        wrapped = NSQConnectionError(f"publish failed: {error!r}")
        wrapped.__cause__ = error
        return wrapped

    def _ack_failed(self, topic: str, count: int, error: Exception) -> None:
        """An ack for messages that failed before any command was sent."""
        if self._acks.has_observers:
            self._acks.emit(PublishAck(topic, count, False, error))

    def _expire(self) -> None:
        """Fail every command whose timeout passed without nsqd's answer."""
        self._sweep = None
        assert self._loop is not None
        now = self._loop.time()
        soonest: float | None = None
        for timeout, tracked in list(self._tracked.items()):
            while tracked:
                deadline, future, address, topic = tracked[0]
                if future.done():
                    tracked.popleft()
                elif deadline <= now:
                    tracked.popleft()
                    future.set_exception(
                        PublishTimeoutError(
                            f"{self.name}: nsqd at {address} did not answer a publish to "
                            f"{topic!r} within {timeout:g}s; it may or may not have been "
                            "published (a later answer is ignored)"
                        )
                    )
                    future.exception()  # reported through its callbacks
                else:
                    soonest = deadline if soonest is None else min(soonest, deadline)
                    break
            if not tracked:
                del self._tracked[timeout]
        if soonest is not None:
            self._sweep = self._loop.call_at(soonest, self._expire)

    def _submit(
        self, topic: str, commands: list[tuple[bytes, int]], timeout: float, done: Done
    ) -> None:
        """Send commands for one item now when a connection is up, else once one is (or fail
        them); ``done`` is called once per command with None or the error."""
        loop = self._bind()
        started = loop.time()
        conn = self._ready_connection()
        if conn is not None:
            self._issue_all(conn, topic, commands, timeout, started, done)
            return
        task = loop.create_task(self._submit_later(topic, commands, timeout, started, done))
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    async def _submit_later(
        self,
        topic: str,
        commands: list[tuple[bytes, int]],
        timeout: float,
        started: float,
        done: Done,
    ) -> None:
        try:
            self._ensure_started()
            conn = await self._wait_connection(topic, started + timeout)
        except Exception as exc:  # NSQError; anything else is a bug, still reported per command
            error = exc
            if not isinstance(exc, NSQError):
                logger.exception("%s: waiting for a connection failed", self.name)
                error = NSQConnectionError(f"{self.name}: {exc!r}")
                error.__cause__ = exc
            for _data, count in commands:
                self._ack_failed(topic, count, error)
                done(error)
            return
        self._issue_all(conn, topic, commands, timeout, started, done)

    def _issue_all(
        self,
        conn: Connection,
        topic: str,
        commands: list[tuple[bytes, int]],
        timeout: float,
        started: float,
        done: Done,
    ) -> None:
        for data, count in commands:
            try:
                self._issue(conn, data, topic, count, timeout, started, done)
            except NSQError as exc:  # the connection is closing under us
                self._ack_failed(topic, count, exc)
                done(exc)

    # --- awaitable publishing ------------------------------------------------------------------

    async def pub(
        self,
        topic: str,
        body: Body,
        callback: Callback | None = None,
        *,
        timeout: float | None = None,
    ) -> bytes:
        """Publish one message; returns nsqd's ``OK`` once it confirmed, else raises the typed
        error (after ``timeout`` seconds without an answer: :class:`PublishTimeoutError`).

        ``callback(conn, data)`` (pynsq's form) gets the reply or the error as well.
        """

        def prepare() -> tuple[bytes, int]:
            data = _items.body_bytes(body, topic, self.max_msg_size)
            return protocol.encode_checked_pub(topic, data), 1

        return await self._call(topic, prepare, callback, timeout)

    async def mpub(
        self,
        topic: str,
        bodies: Iterable[Body],
        callback: Callback | None = None,
        *,
        timeout: float | None = None,
    ) -> bytes:
        """Publish several messages atomically in one MPUB; returns once nsqd confirmed.

        ``bodies`` is a list (or tuple, or other iterable) of bodies; a single body is an
        error, as is a total above ``max_body_size`` (an awaited MPUB is never split).
        """

        def prepare() -> tuple[bytes, int]:
            items = _items.bodies_bytes(bodies, topic, self.max_msg_size)
            size = protocol.mpub_body_size(items)
            if size > self.max_body_size:
                raise InvalidBodyError(
                    f"MPUB to {topic!r} of {size} bytes is above max_body_size "
                    f"{self.max_body_size} (nsqd's --max-body-size): publish fewer at once, "
                    "or publish the list through a sink, which splits it"
                )
            return protocol.encode_checked_mpub(topic, items), len(items)

        return await self._call(topic, prepare, callback, timeout)

    async def dpub(
        self,
        topic: str,
        body: Body,
        delay: float,
        callback: Callback | None = None,
        *,
        timeout: float | None = None,
    ) -> bytes:
        """Publish one message that nsqd delivers ``delay`` seconds from now (0 to
        ``max_req_timeout``)."""

        def prepare() -> tuple[bytes, int]:
            data = _items.body_bytes(body, topic, self.max_msg_size)
            ms = _items.delay_ms(delay, topic, self.max_req_timeout)
            return protocol.encode_checked_dpub(topic, ms, data), 1

        return await self._call(topic, prepare, callback, timeout)

    async def _call(
        self,
        topic: str,
        prepare: Callable[[], tuple[bytes, int]],
        callback: Callback | None,
        timeout: float | None,
    ) -> bytes:
        """Check the input (no IO for bad input), publish, and report the outcome once."""
        loop = self._bind()
        if not self._on_loop():
            raise RuntimeError(
                f"{self.name}: await pub/mpub/dpub on the writer's own loop; from another "
                "thread use pub_nowait() or a sink"
            )
        conn: Connection | None = None
        count = 1
        sent = False
        try:
            limit = self._timeout(timeout)
            self._check_topic(topic)
            data, count = prepare()
            self._start()
            started = loop.time()
            conn = self._ready_connection() or await self._wait_connection(topic, started + limit)
            future = self._issue(conn, data, topic, count, limit, started)
            sent = True
            result = await asyncio.shield(future)
        except NSQError as exc:
            if not sent:
                self._ack_failed(topic, count, exc)
            _call_back(callback, conn, exc)
            raise
        _call_back(callback, conn, result)
        return result

    def pub_nowait(
        self,
        topic: str,
        body: Body,
        callback: Callback | None = None,
        *,
        timeout: float | None = None,
    ) -> asyncio.Future[bytes] | concurrent.futures.Future[bytes]:
        """PUB without awaiting: returns at once a future of nsqd's reply (for pipelining
        many publishes, as pynsq's ``pub`` is used).

        Bad input raises here (and reaches ``callback``); an nsqd error, a lost connection or
        the timeout fails the future (and reaches ``callback``). From another thread it hands
        the publish to the writer's loop and returns a ``concurrent.futures.Future``;
        ``callback`` then runs on the loop thread.
        """
        try:
            limit = self._timeout(timeout)
            self._check_topic(topic)
            data = protocol.encode_checked_pub(
                topic, _items.body_bytes(body, topic, self.max_msg_size)
            )
        except NSQError as exc:
            if self._on_loop():
                self._ack_failed(topic, 1, exc)
            _call_back(callback, None, exc)
            raise
        if not self._on_loop():
            result: concurrent.futures.Future[bytes] = concurrent.futures.Future()
            self._post(self._pub_from_thread, topic, data, callback, limit, result)
            return result
        return self._pub_on_loop(topic, data, callback, limit)

    def _pub_on_loop(
        self, topic: str, data: bytes, callback: Callback | None, timeout: float
    ) -> asyncio.Future[bytes]:
        try:
            self._start()
        except (NSQError, RuntimeError) as exc:
            if isinstance(exc, NSQError):
                self._ack_failed(topic, 1, exc)
                _call_back(callback, None, exc)
            raise
        assert self._loop is not None
        conn = self._ready_connection()
        if conn is not None and conn.is_ready:
            future = self._issue(conn, data, topic, 1, timeout, self._loop.time())
            future.add_done_callback(partial(_nowait_done, callback, conn))
            return future
        # no connection yet: wait for one in a task; the returned future carries the outcome
        outcome: asyncio.Future[bytes] = self._loop.create_future()

        def done(error: Exception | None) -> None:
            if error is None:
                outcome.set_result(protocol.OK)
            else:
                outcome.set_exception(error)
                outcome.exception()
            _call_back(callback, self._ready_connection(), error if error else protocol.OK)

        self._submit(topic, [(data, 1)], timeout, done)
        return outcome

    def _pub_from_thread(
        self,
        topic: str,
        data: bytes,
        callback: Callback | None,
        timeout: float,
        result: concurrent.futures.Future[bytes],
    ) -> None:
        try:
            future = self._pub_on_loop(topic, data, callback, timeout)
        except Exception as exc:
            result.set_exception(exc)
            return

        def transfer(f: asyncio.Future[bytes]) -> None:
            if f.cancelled():
                result.set_exception(self._error_of(f))
            elif f.exception() is not None:
                result.set_exception(f.exception())
            else:
                result.set_result(f.result())

        future.add_done_callback(transfer)

    # --- streams -------------------------------------------------------------------------------

    def sink(
        self,
        topic: str,
        *,
        max_batch: int = 500,
        max_delay: float = 0.005,
        max_bytes: int | None = None,
        max_pending: int = 100_000,
        max_pending_bytes: int = 4 * 1024 * 1024,
        on_overflow: Literal["error", "drop_oldest", "block"] = "error",
        retries: int = 3,
        timeout: float | None = None,
    ) -> Sink:
        """An Observer that publishes every item it receives to ``topic`` (see :class:`Sink`).

        Bodies are gathered into MPUB batches of at most ``max_batch`` messages and
        ``max_bytes`` (default: ``max_body_size``), sent when full or ``max_delay`` seconds after
        the first; a :class:`Deferred` goes out as DPUB and a list/tuple as its own MPUB.
        At most ``max_pending`` items and ``max_pending_bytes`` of bodies wait unconfirmed;
        past that an item fed through ``on_next`` fails with :class:`SinkOverflowError`
        (``"error"``), fails the oldest unsent one instead (``"drop_oldest"``), or, from a
        thread other than the loop's, waits for room (``"block"``). ``await sink.send(item)``
        and ``await sink.feed(items)`` always wait for room. A batch that failed for a reason a
        retry can cure is sent again up to ``retries`` times.
        """
        protocol.check_topic_name(topic)
        sink = Sink(
            self._link,
            topic,
            max_batch=max_batch,
            max_delay=max_delay,
            max_bytes=self.max_body_size if max_bytes is None else max_bytes,
            max_pending=max_pending,
            max_pending_bytes=max_pending_bytes,
            on_overflow=on_overflow,
            retries=retries,
            timeout=self._timeout(timeout),
        )
        self._sinks.append(sink)
        return sink

    def publish(
        self,
        topic: str,
        body: Callable[[Any], Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Callable[[reactivex.Observable[Any]], reactivex.Observable[PublishResult[Any]]]:
        """An operator: publish each source item and emit one ``PublishResult(item, ok,
        error)`` per item once nsqd answered, in the order the items came.

        What is published is ``body(item)`` when ``body`` is given, else a Message's body or
        the item itself: a body (PUB), a :class:`Deferred` (DPUB) or a list/tuple of bodies
        (MPUB). An invalid item, or a ``body`` function that raised, is a failed result with
        :class:`~rxnsq.errors.InvalidBodyError` (the function's exception as ``__cause__``).

        With a consumed message as the item, ``rxnsq.ops.settle()`` afterwards finishes it
        once its republish was confirmed, finishes it with a logged report when the item is
        invalid, and requeues it otherwise (at-least-once; a destination outage backs off).
        """
        protocol.check_topic_name(topic)
        if body is not None and not callable(body):
            raise ConfigError("body", body, "a function of the item, or None")
        limit = self._timeout(timeout)

        def apply(source: reactivex.Observable[Any]) -> reactivex.Observable[PublishResult[Any]]:
            def subscribe(
                observer: abc.ObserverBase[PublishResult[Any]],
                scheduler: abc.SchedulerBase | None = None,
            ) -> abc.DisposableBase:
                stage = _PublishStage(self._link, topic, body, limit, observer)
                subscription = source.subscribe(
                    stage.on_next, stage.on_error, stage.on_completed, scheduler=scheduler
                )
                return CompositeDisposable(subscription, Disposable(stage.dispose))

            return reactivex.create(subscribe)

        return apply

    def _commands_for(self, topic: str, item: object) -> list[tuple[bytes, int]]:
        return _items.commands_for(
            item, topic, self.max_msg_size, self.max_body_size, self.max_req_timeout
        )

    # --- closing -------------------------------------------------------------------------------

    async def close(self, timeout: float = 30.0) -> None:
        """Flush sinks and wait up to ``timeout`` seconds for every pending publish; what is
        still unanswered then fails with a retriable
        :class:`~rxnsq.errors.ConnectionClosedError` (it may or may not have been published).
        Then every connection is closed. Publishing afterwards raises."""
        check_range("timeout", timeout, 0.0, 86400.0)
        if self._close_started:
            if self._closed is not None:
                if self._close_deadline is not None and self._loop is not None:
                    # called again (a second signal): the drain ends no later than this
                    self._close_deadline = min(self._close_deadline, self._loop.time() + timeout)
                await asyncio.shield(self._closed)
            return
        self._close_started = True
        self._closing_signal.emit(None)
        self._closing_signal.complete()
        if self._loop is None:
            self._closing = True
            self._acks.complete()
            return
        loop = asyncio.get_running_loop()
        self._closed = loop.create_future()
        try:
            await self._drain_and_close(loop, timeout)
        finally:
            self._closed.set_result(None)

    async def _drain_and_close(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._close_deadline = loop.time() + timeout
        for sink in self._sinks:
            sink.closing()
        while True:
            unanswered = [e[1] for dq in self._tracked.values() for e in dq if not e[1].done()]
            busy = unanswered or self._waiting or any(s.pending for s in self._sinks)
            left = self._close_deadline - loop.time()
            if not busy or left <= 0:
                break
            waits: list[asyncio.Future[Any]] = [*unanswered, *self._waiting]
            if waits:
                await asyncio.wait(waits, timeout=min(left, 0.05), return_when="FIRST_COMPLETED")
            else:  # sink retries waiting for their delay
                await asyncio.sleep(min(left, 0.01))
        self._fail_unanswered(timeout)
        self._closing = True
        self._notify()  # publishes still waiting for a connection fail now
        if self._waiting:
            await asyncio.wait(list(self._waiting))
        for handle in self._reconnects.values():
            handle.cancel()
        self._reconnects.clear()
        for task in list(self._connecting.values()):
            task.cancel()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        await asyncio.gather(*(c.close(0) for c in list(self._conns.values())))
        self._conns.clear()
        self._conn_list = []
        for sink in self._sinks:
            sink.abandon(ConnectionClosedError(f"{self.name} was closed before it was sent"))
        await asyncio.sleep(0)  # failure callbacks run before close() returns
        self._acks.complete()

    def _fail_unanswered(self, timeout: float) -> None:
        count = 0
        for tracked in self._tracked.values():
            for _deadline, future, address, topic in tracked:
                if not future.done():
                    future.set_exception(
                        ConnectionClosedError(
                            f"{self.name} closed after {timeout:g}s before nsqd at {address} "
                            f"answered a publish to {topic!r}; it may or may not have been "
                            "published"
                        )
                    )
                    future.exception()
                    count += 1
        self._tracked.clear()
        if count:
            logger.warning("%s: closed with %d publishes unanswered (failed)", self.name, count)


def _call_back(callback: Callback | None, conn: Connection | None, data: Any) -> None:
    """A user's callback, inside a boundary: what it raises is logged, never propagated into
    the loop or the publish."""
    if callback is None:
        return
    try:
        callback(conn, data)
    except Exception:
        logger.exception("publish callback %r failed", callback)


def _nowait_done(
    callback: Callback | None, conn: Connection, future: asyncio.Future[bytes]
) -> None:
    if future.cancelled():
        _call_back(callback, conn, Writer._error_of(future))
        return
    error = future.exception()
    _call_back(callback, conn, error if error is not None else future.result())


class _Entry:
    """One source item in a publish stage, until its result is emitted."""

    __slots__ = ("count", "error", "item", "left", "parts", "result")

    def __init__(self, item: Any) -> None:
        self.item = item
        self.result: PublishResult[Any] | None = None
        self.error: Exception | None = None
        self.left = 0
        self.parts = 0
        self.count = 0


class _PublishStage:
    """``writer.publish()`` for one subscription: one result per item, in input order."""

    def __init__(
        self,
        link: WriterLink,
        topic: str,
        body: Callable[[Any], Any] | None,
        timeout: float,
        observer: abc.ObserverBase[PublishResult[Any]],
    ) -> None:
        self.link = link
        self.topic = topic
        self.body = body
        self.timeout = timeout
        self.observer = observer
        self.queue: deque[_Entry] = deque()
        self.ended: Exception | bool = False  # the source's error, or True once completed
        self.disposed = False

    def on_next(self, item: Any) -> None:
        entry = _Entry(item)
        self.queue.append(entry)
        if self.link.is_closing():  # like every new publish once close() began
            error = ConnectionClosedError(
                f"{self.link.name} is closing: item for {self.topic!r} not published"
            )
            self.link.ack_failed(self.topic, 1, error)
            entry.result = PublishResult(item, False, error)
            self._emit()
            return
        try:
            value = self._value(item)
            commands = self.link.commands_for(self.topic, value)
        except NSQError as exc:
            self.link.ack_failed(self.topic, 1, exc)
            entry.result = PublishResult(item, False, exc)
            self._emit()
            return
        entry.left = entry.parts = len(commands)
        entry.count = sum(count for _data, count in commands)
        self.link.submit(self.topic, commands, self.timeout, partial(self._done, entry))

    def _value(self, item: Any) -> Any:
        if self.body is None:
            return item.body if isinstance(item, Message) else item
        try:
            return self.body(item)
        except Exception as exc:
            where = (
                f" for message {item.id.decode(errors='replace')}"
                if isinstance(item, Message)
                else ""
            )
            error = InvalidBodyError(
                f"publish to {self.topic!r}: the body function raised{where}: {exc!r}"
            )
            raise error from exc

    def _done(self, entry: _Entry, error: Exception | None) -> None:
        entry.left -= 1
        if error is not None and entry.error is None:
            entry.error = error
        if entry.left:
            return
        error = entry.error
        if error is not None and entry.parts > 1:
            error = _items.again(
                error if isinstance(error, NSQError) else NSQConnectionError(str(error)),
                f"a list of {entry.count} messages to {self.topic!r} "
                f"was split into {entry.parts} MPUBs (above max_body_size) and not all were "
                f"confirmed: {error}",
            )
        entry.result = PublishResult(entry.item, error is None, error, entry.count, entry.parts)
        self._emit()

    def _emit(self) -> None:
        queue = self.queue
        while queue and queue[0].result is not None:
            result = queue.popleft().result
            if self.disposed:
                continue
            try:
                self.observer.on_next(result)  # type: ignore[arg-type]
            except Exception:
                logger.exception("publish to %r: the subscriber failed on a result", self.topic)
        if not queue and self.ended is not False and not self.disposed:
            self.disposed = True
            if self.ended is True:
                self.observer.on_completed()
            else:
                self.observer.on_error(self.ended)

    def on_error(self, error: Exception) -> None:
        self.ended = error  # after the results of the items already received
        self._emit()

    def on_completed(self) -> None:
        self.ended = True
        self._emit()

    def dispose(self) -> None:
        self.disposed = True
