"""The producer: awaitable PUB/MPUB/DPUB, an Observer sink that batches, a publish operator.

Every publish is either confirmed by nsqd's ``OK`` or reported failed: nothing counts as
published because its bytes reached a socket. Replies are matched in order per connection;
when a connection drops, what was pending on it fails with a retryable
:class:`~rxnsq.errors.ConnectionClosedError`.

``Writer(addresses)`` does no IO; the first publish connects to every nsqd on the running
loop. Publishes go round-robin over the connections that are up; a lost nsqd is retried with
a doubling delay up to ``reconnect_interval``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import reactivex
from reactivex import abc
from reactivex.disposable import Disposable
from reactivex.subject import Subject

from . import protocol, runner
from .config import ConnectionOptions, address_list, check_range
from .connection import Connection, ConnectionState
from .errors import ConfigError, InvalidBodyError, NSQConnectionError, NSQError
from .message import Message

__all__ = ["Deferred", "PublishAck", "PublishResult", "Sink", "SinkOverflowError", "Writer"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: nsqd's defaults for --max-msg-size and --max-body-size.
DEFAULT_MAX_MSG_SIZE = 1024 * 1024
DEFAULT_MAX_BODY_SIZE = 5 * 1024 * 1024

Callback = Callable[[Connection | None, Any], Any]
Command = Callable[[Connection], "asyncio.Future[bytes]"]


class SinkOverflowError(NSQError):
    """A sink had ``max_pending`` items unconfirmed: the item was not published."""

    retriable = True


@dataclass(frozen=True, slots=True)
class Deferred:
    """An item for a sink that goes out as DPUB, delivered ``delay`` seconds later."""

    body: bytes | str
    delay: float


@dataclass(frozen=True, slots=True)
class PublishAck:
    """One publish command's outcome: ``count`` messages to ``topic``, confirmed or not."""

    topic: str
    count: int
    ok: bool
    error: Exception | None = None
    address: str = ""
    latency: float = 0.0


@dataclass(frozen=True, slots=True)
class PublishResult(Generic[T]):
    """What ``writer.publish()`` emits for each source item, after nsqd answered."""

    item: T
    ok: bool
    error: Exception | None = None

    def settle(self) -> None:
        """For a consumed message: FIN when its republish was confirmed, otherwise REQ with
        one backoff step, so a destination outage slows consumption instead of spinning."""
        if isinstance(self.item, Message):
            if self.ok:
                self.item.fin()
            else:
                self.item.req(backoff=True)  # the destination is in trouble: slow down


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a task's exception as seen: its callback or ack already reported it."""
    if not task.cancelled():
        task.exception()


def _to_bytes(body: bytes | str | bytearray | memoryview) -> bytes:
    return body.encode() if isinstance(body, str) else bytes(body)


class Writer:
    """Publish to nsqd.

    ``nsqd_tcp_addresses``: one address or several. ``reconnect_interval``: the longest wait
    between reconnect attempts (the first is after a second). ``name``: shown in logs.
    ``max_msg_size``/``max_body_size``: nsqd's limits, used to split sink batches and refuse
    oversized bodies before sending. Other keywords are connection options.
    """

    def __init__(
        self,
        nsqd_tcp_addresses: str | Sequence[str],
        *,
        reconnect_interval: float = 15.0,
        name: str | None = None,
        max_msg_size: int = DEFAULT_MAX_MSG_SIZE,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        **connection_options: Any,
    ) -> None:
        addresses = address_list("nsqd_tcp_addresses", nsqd_tcp_addresses)
        if not addresses:
            raise ConfigError("nsqd_tcp_addresses", nsqd_tcp_addresses, "one or more addresses")
        check_range("reconnect_interval", reconnect_interval, 0.01, 3600.0)
        check_range("max_msg_size", max_msg_size, 1, 1 << 31, integer=True)
        check_range("max_body_size", max_body_size, 8, 1 << 31, integer=True)
        self.nsqd_tcp_addresses = addresses
        self.reconnect_interval = reconnect_interval
        self.name = name or "writer"
        self.max_msg_size = max_msg_size
        self.max_body_size = max_body_size
        self.connection_options = ConnectionOptions(**connection_options)
        self.acks: Subject[PublishAck] = Subject()

        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: dict[str, Connection] = {}
        self._connecting: dict[str, asyncio.Task[None]] = {}
        self._reconnects: dict[str, asyncio.TimerHandle] = {}
        self._delays: dict[str, float] = {}
        self._next = 0
        self._valid_topics: set[str] = set()
        self._up: asyncio.Event | None = None
        self._pending: set[asyncio.Future[Any]] = set()
        self._sinks: list[Sink] = []
        self._closing = False
        self._close_started = False
        self.last_error: Exception | None = None
        runner.register(self)

    def __repr__(self) -> str:
        return f"<Writer {self.name} up={sorted(self._conns)}>"

    @property
    def connections(self) -> dict[str, Connection]:
        """The connections that are up, by address."""
        return dict(self._conns)

    @property
    def closing(self) -> bool:
        """True once ``close()`` has begun: stop feeding the writer."""
        return self._closing or self._close_started

    def _repr_html_(self) -> str:
        from .notebook import writer_html

        return writer_html(self.name, self._conns, self._sinks)

    # --- connections -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to every nsqd now (publishing does it anyway); returns after the first
        attempts, whether or not they succeeded."""
        self._start()
        if self._connecting:
            await asyncio.wait(list(self._connecting.values()))

    def _start(self) -> None:
        if self._closing:
            raise NSQConnectionError(f"{self!r} is closed: no more publishing")
        if self._loop is not None:
            return
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "rxnsq.Writer needs a running asyncio loop: publish from async code, "
                "or run your main coroutine with rxnsq.run(main())"
            ) from None
        self._up = asyncio.Event()
        for address in self.nsqd_tcp_addresses:
            self._connect_soon(address)

    def _connect_soon(self, address: str) -> None:
        self._reconnects.pop(address, None)
        if self._closing or address in self._connecting:
            return
        assert self._loop is not None
        task = self._loop.create_task(self._connect(address), name=f"rxnsq-writer {address}")
        self._connecting[address] = task
        task.add_done_callback(lambda _t: self._connecting.pop(address, None))

    async def _connect(self, address: str) -> None:
        conn = Connection(address, options=self.connection_options)
        try:
            await conn.connect()
        except NSQError as exc:
            self.last_error = exc
            logger.warning("%s: cannot connect to %s: %s", self.name, address, exc)
            self._schedule_reconnect(address)
            return
        if self._closing:
            await conn.close(0)
            return
        if conn.closed:  # it died right after the handshake
            self._schedule_reconnect(address)
            return
        self._conns[address] = conn
        self._delays.pop(address, None)
        conn.states.subscribe(lambda state: self._on_state(conn, state))
        assert self._up is not None
        self._up.set()
        logger.info("%s: connected to %s", self.name, address)

    def _on_state(self, conn: Connection, state: ConnectionState) -> None:
        if state is not ConnectionState.CLOSED or self._conns.get(conn.address) is not conn:
            return
        del self._conns[conn.address]
        if not self._conns and self._up is not None:
            self._up.clear()
        if not self._closing:
            logger.warning("%s: lost %s", self.name, conn.address)
            self._schedule_reconnect(conn.address)

    def _schedule_reconnect(self, address: str) -> None:
        if self._closing or self._loop is None:
            return
        delay = self._delays.get(address, min(1.0, self.reconnect_interval))
        self._delays[address] = min(delay * 2, self.reconnect_interval)
        self._reconnects[address] = self._loop.call_later(
            delay * random.uniform(0.8, 1.2), self._connect_soon, address
        )

    async def _pick(self) -> Connection:
        """A connection that is up, round-robin; waits for one up to the connect timeout."""
        self._start()
        if not self._conns:
            assert self._up is not None
            waiting = set(self._connecting.values())
            try:
                async with asyncio.timeout(self.connection_options.connect_timeout):
                    while not self._conns:
                        if not waiting and not self._reconnects and not self._connecting:
                            break
                        await self._up.wait()
            except TimeoutError:
                pass
            if not self._conns:
                raise NSQConnectionError(
                    f"{self.name}: no nsqd is reachable ({', '.join(self.nsqd_tcp_addresses)})"
                    + (f": {self.last_error}" if self.last_error else "")
                )
        return self._next_connection()

    def _next_connection(self) -> Connection:
        conns = list(self._conns.values())
        self._next = (self._next + 1) % len(conns)
        return conns[self._next]

    # --- awaitable publishing ---------------------------------------------------------------

    async def pub(self, topic: str, body: bytes | str, callback: Callback | None = None) -> bytes:
        """Publish one message; returns once nsqd confirmed it (raises the typed error if not).

        ``callback(conn, data)`` (pynsq's form) gets the reply or the error as well.
        """

        def prepare() -> tuple[int, Command]:
            self._check_topic(topic)
            data = protocol.check_body(_to_bytes(body), self.max_msg_size)
            return 1, lambda c: c.pub(topic, data)

        return await self._run(topic, prepare, callback)

    async def mpub(
        self, topic: str, bodies: Iterable[bytes | str], callback: Callback | None = None
    ) -> bytes:
        """Publish several messages atomically in one MPUB; returns once nsqd confirmed."""

        def prepare() -> tuple[int, Command]:
            self._check_topic(topic)
            items = [protocol.check_body(_to_bytes(b), self.max_msg_size) for b in bodies]
            if not items:
                raise InvalidBodyError("MPUB needs at least one message")
            size = 4 + sum(4 + len(b) for b in items)
            if size > self.max_body_size:
                raise InvalidBodyError(
                    f"MPUB body of {size} bytes is above max_body_size {self.max_body_size}"
                )
            return len(items), lambda c: c.mpub(topic, items)

        return await self._run(topic, prepare, callback)

    async def dpub(
        self, topic: str, body: bytes | str, delay: float, callback: Callback | None = None
    ) -> bytes:
        """Publish one message that nsqd delivers ``delay`` seconds from now."""

        def prepare() -> tuple[int, Command]:
            self._check_topic(topic)
            data = protocol.check_body(_to_bytes(body), self.max_msg_size)
            if delay < 0:
                raise InvalidBodyError(f"DPUB delay must be >= 0 seconds, not {delay!r}")
            return 1, lambda c: c.dpub(topic, delay, data)

        return await self._run(topic, prepare, callback)

    def _check_topic(self, topic: str) -> None:
        """Refuse an invalid topic before any IO; each name is checked once per writer."""
        if topic not in self._valid_topics:
            protocol.check_topic_name(topic)
            self._valid_topics.add(topic)

    def pub_nowait(
        self, topic: str, body: bytes | str, callback: Callback | None = None
    ) -> asyncio.Future[bytes]:
        """PUB without awaiting: returns at once a future of nsqd's reply (for pipelining
        many publishes, as pynsq's ``pub`` is used). Bad input raises here; an nsqd error or
        a lost connection fails the future (and reaches ``callback``)."""
        if not self._conns or self._close_started:
            task = asyncio.ensure_future(self.pub(topic, body, callback))
            task.add_done_callback(_retrieve)
            return task
        try:
            self._check_topic(topic)
            data = protocol.check_body(_to_bytes(body), self.max_msg_size)
        except NSQError as exc:
            if callback is not None:
                callback(None, exc)
            raise
        conn = self._next_connection()
        future = conn.pub(topic, data)
        self._pending.add(future)
        started = asyncio.get_running_loop().time()

        def done(f: asyncio.Future[bytes]) -> None:
            self._pending.discard(f)
            error = None if f.cancelled() else f.exception()
            if f.cancelled():
                error = NSQConnectionError("publish cancelled")
            self._ack(topic, 1, error, conn, started)
            if callback is not None:
                callback(conn, error if error is not None else f.result())

        future.add_done_callback(done)
        return future

    async def _mpub_checked(self, topic: str, bodies: list[bytes]) -> bytes:
        """Publish bodies a sink already checked, one by one as they arrived."""
        if len(bodies) == 1:
            body = bodies[0]
            return await self._run(topic, lambda: (1, lambda c: c.pub(topic, body)), None)
        return await self._run(
            topic, lambda: (len(bodies), lambda c: c.mpub(topic, bodies, checked=True)), None
        )

    async def _run(
        self,
        topic: str,
        prepare: Callable[[], tuple[int, Command]],
        callback: Callback | None,
    ) -> bytes:
        """Check the input (no IO for bad input), publish, and report the outcome once."""
        conn: Connection | None = None
        count = 1
        started = asyncio.get_running_loop().time()
        try:
            count, command = prepare()
            conn = await self._pick()
            future = command(conn)
            self._pending.add(future)
            try:
                result = await asyncio.shield(future)
            finally:
                self._pending.discard(future)
        except NSQError as exc:
            self._ack(topic, count, exc, conn, started)
            if callback is not None:
                callback(conn, exc)
            raise
        self._ack(topic, count, None, conn, started)
        if callback is not None:
            callback(conn, result)
        return result

    def _ack(
        self,
        topic: str,
        count: int,
        error: Exception | None,
        conn: Connection | None,
        started: float,
    ) -> None:
        if self.acks.observers:
            latency = asyncio.get_running_loop().time() - started
            address = conn.address if conn is not None else ""
            self.acks.on_next(PublishAck(topic, count, error is None, error, address, latency))

    # --- streams -----------------------------------------------------------------------------

    def sink(
        self,
        topic: str,
        *,
        max_batch: int = 500,
        max_delay: float = 0.005,
        max_bytes: int | None = None,
        max_pending: int = 100_000,
        on_overflow: Literal["error", "drop_oldest"] = "error",
        retries: int = 3,
    ) -> Sink:
        """An Observer that publishes every item it receives to ``topic``.

        Items (bytes, str, or :class:`Deferred` for DPUB) are gathered into MPUB batches of
        at most ``max_batch`` messages and ``max_bytes`` (default: nsqd's body limit), sent
        when full or ``max_delay`` seconds after the first item. ``on_completed`` flushes;
        ``await sink.done`` waits until every item is confirmed or failed. At most
        ``max_pending`` items may wait unconfirmed: past that, ``"error"`` fails the new
        item, ``"drop_oldest"`` fails the oldest unsent one (failures go to ``acks`` and
        ``sink.failed``). A batch lost with its connection is retried ``retries`` times.
        """
        protocol.check_topic_name(topic)
        sink = Sink(
            self,
            topic,
            max_batch=max_batch,
            max_delay=max_delay,
            max_bytes=min(max_bytes or self.max_body_size, self.max_body_size),
            max_pending=max_pending,
            on_overflow=on_overflow,
            retries=retries,
        )
        self._sinks.append(sink)
        return sink

    def publish(
        self, topic: str, body: Callable[[Any], bytes | str] | None = None
    ) -> Callable[[reactivex.Observable[Any]], reactivex.Observable[PublishResult[Any]]]:
        """An operator: publish each item (``body(item)``, by default the item itself or a
        Message's body) and emit ``PublishResult(item, ok, error)`` once nsqd answered.

        With a consumed message as the item, ``rxnsq.ops.settle()`` afterwards finishes it
        only when its republish was confirmed (and requeues it otherwise): at-least-once.
        """
        protocol.check_topic_name(topic)

        def default_body(item: Any) -> bytes | str:
            return item.body if isinstance(item, Message) else item  # type: ignore[no-any-return]

        make_body = body or default_body

        def apply(source: reactivex.Observable[Any]) -> reactivex.Observable[PublishResult[Any]]:
            def subscribe(
                observer: abc.ObserverBase[PublishResult[Any]],
                scheduler: abc.SchedulerBase | None = None,
            ) -> abc.DisposableBase:
                loop = asyncio.get_running_loop()
                outstanding: set[asyncio.Task[None]] = set()
                state = {"completed": False, "disposed": False}

                async def one(item: Any) -> None:
                    try:
                        await self.pub(topic, make_body(item))
                    except (NSQError, ValueError) as exc:
                        result = PublishResult(item, False, exc)
                    else:
                        result = PublishResult(item, True, None)
                    if not state["disposed"]:
                        observer.on_next(result)

                def finished(task: asyncio.Task[None]) -> None:
                    outstanding.discard(task)
                    if state["completed"] and not outstanding and not state["disposed"]:
                        observer.on_completed()

                def on_next(item: Any) -> None:
                    task = loop.create_task(one(item))
                    outstanding.add(task)
                    task.add_done_callback(finished)

                def on_completed() -> None:
                    state["completed"] = True
                    if not outstanding:
                        observer.on_completed()

                def dispose() -> None:
                    state["disposed"] = True

                subscription = source.subscribe(
                    on_next, observer.on_error, on_completed, scheduler=scheduler
                )
                return reactivex.disposable.CompositeDisposable(subscription, Disposable(dispose))

            return reactivex.create(subscribe)

        return apply

    # --- closing -----------------------------------------------------------------------------

    async def close(self, timeout: float = 30.0) -> None:
        """Flush sinks, wait up to ``timeout`` seconds for pending confirmations, then close
        every connection. Publishing afterwards raises."""
        if self._closing or self._close_started:
            return
        self._close_started = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for sink in self._sinks:
            sink.flush()
        try:
            async with asyncio.timeout_at(deadline):
                for sink in self._sinks:
                    await sink.done_sending()
                while self._pending:
                    await asyncio.wait(list(self._pending))
        except TimeoutError:
            logger.warning("%s: closing with publishes still unconfirmed", self.name)
        self._closing = True
        for handle in self._reconnects.values():
            handle.cancel()
        self._reconnects.clear()
        for task in list(self._connecting.values()):
            task.cancel()
        await asyncio.gather(*(c.close(0) for c in list(self._conns.values())))
        self._conns.clear()
        for sink in self._sinks:
            sink.abandon()
        self.acks.on_completed()


class Sink(abc.ObserverBase[Any]):
    """A Writer's Observer for one topic (see :meth:`Writer.sink`)."""

    def __init__(
        self,
        writer: Writer,
        topic: str,
        *,
        max_batch: int,
        max_delay: float,
        max_bytes: int,
        max_pending: int,
        on_overflow: str,
        retries: int,
    ) -> None:
        check_range("max_batch", max_batch, 1, 1 << 20, integer=True)
        check_range("max_delay", max_delay, 0.0, 3600.0)
        check_range("max_pending", max_pending, 1, 1 << 31, integer=True)
        check_range("retries", retries, 0, 1000, integer=True)
        if on_overflow not in ("error", "drop_oldest"):
            raise ConfigError("on_overflow", on_overflow, '"error" or "drop_oldest"')
        self.writer = writer
        self.topic = topic
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_bytes = max_bytes
        self.max_pending = max_pending
        self.on_overflow = on_overflow
        self.retries = retries
        self.confirmed = 0
        self.failed = 0
        self.commands = 0
        self.errors: list[Exception] = []
        self._buffer: list[bytes] = []
        self._buffer_bytes = 0
        self._sending = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._completed = False
        self._done: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return (
            f"<Sink {self.topic} confirmed={self.confirmed} failed={self.failed} "
            f"pending={self.pending}>"
        )

    @property
    def pending(self) -> int:
        """Items received but not yet confirmed or failed."""
        return len(self._buffer) + self._sending

    @property
    def done(self) -> asyncio.Future[None]:
        """Resolves when the source completed and every item was confirmed or failed."""
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
            self._check_done()
        return self._done

    # Observer

    def on_next(self, value: Any) -> None:
        writer = self.writer
        if writer._loop is None or writer._close_started:
            try:
                writer._start()
            except (RuntimeError, NSQError) as exc:
                self._fail_items(1, exc)
                return
        if type(value) is bytes and 0 < len(value) <= writer.max_msg_size:
            body = value  # checked here, once: the fast path
        elif isinstance(value, Deferred):
            self._send_deferred(value)
            return
        else:
            try:
                body = protocol.check_body(_to_bytes(value), writer.max_msg_size)
            except (InvalidBodyError, TypeError, AttributeError) as exc:
                error = exc if isinstance(exc, NSQError) else InvalidBodyError(str(exc))
                self._fail_items(1, error)
                return
        pending = len(self._buffer) + self._sending
        if pending >= self.max_pending:
            overflow = SinkOverflowError(
                f"sink for {self.topic!r} has {pending} items unconfirmed (max_pending)"
            )
            if self.on_overflow == "drop_oldest" and self._buffer:
                dropped = self._buffer.pop(0)
                self._buffer_bytes -= len(dropped)
                self._fail_items(1, overflow)
            else:
                self._fail_items(1, overflow)
                return
        if self._buffer and self._buffer_bytes + 4 + len(body) + 4 > self.max_bytes:
            self.flush()
        self._buffer.append(body)
        self._buffer_bytes += 4 + len(body)
        if len(self._buffer) >= self.max_batch:
            self.flush()
        elif self._timer is None:
            assert self.writer._loop is not None
            self._timer = self.writer._loop.call_later(self.max_delay, self.flush)

    def on_error(self, error: Exception) -> None:
        logger.error("sink for %s: the source failed: %r", self.topic, error)
        self.on_completed()

    def on_completed(self) -> None:
        self._completed = True
        self.flush()
        self._check_done()

    # sending

    def flush(self) -> None:
        """Send what is buffered now (never an empty MPUB)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        bodies, self._buffer, self._buffer_bytes = self._buffer, [], 0
        self._sending += len(bodies)  # counted as pending from now, not when the task runs
        self._launch(self._send(bodies))

    def _launch(self, coro: Awaitable[None]) -> None:
        loop = self.writer._loop
        assert loop is not None
        task = loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, bodies: list[bytes]) -> None:
        try:
            for attempt in range(self.retries + 1):
                try:
                    self.commands += 1
                    await self.writer._mpub_checked(self.topic, bodies)
                except NSQError as exc:
                    if exc.retriable and attempt < self.retries and not self.writer._closing:
                        await asyncio.sleep(0.1 * (attempt + 1))
                        continue
                    self._fail_items(len(bodies), exc, acked=True)
                else:
                    self.confirmed += len(bodies)
                break
        finally:
            self._sending -= len(bodies)
            self._check_done()

    def _send_deferred(self, item: Deferred) -> None:
        async def send() -> None:
            try:
                self.commands += 1
                await self.writer.dpub(self.topic, item.body, item.delay)
                self.confirmed += 1
            except (NSQError, ValueError) as exc:
                self._fail_items(1, exc, acked=isinstance(exc, NSQError))
            finally:
                self._sending -= 1
                self._check_done()

        self._sending += 1
        self._launch(send())

    def _fail_items(self, count: int, error: Exception, acked: bool = False) -> None:
        self.failed += count
        if len(self.errors) < 100:
            self.errors.append(error)
        if not acked and self.writer.acks.observers:
            self.writer.acks.on_next(PublishAck(self.topic, count, False, error))

    def _check_done(self) -> None:
        if self._completed and self.pending == 0 and self._done and not self._done.done():
            self._done.set_result(None)

    async def done_sending(self) -> None:
        """Wait until nothing is buffered or unconfirmed (for ``Writer.close``)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    def abandon(self) -> None:
        """The writer is closed: whatever is still buffered fails."""
        if self._buffer:
            self._fail_items(len(self._buffer), NSQConnectionError("the writer was closed"))
            self._buffer.clear()
        if self._timer is not None:
            self._timer.cancel()
        self._completed = True
        self._check_done()
