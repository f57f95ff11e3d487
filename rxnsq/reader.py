"""The consumer: a topic/channel on many nsqd as one hot ``Observable[Message]``.

``Reader`` joins discovery (direct addresses or nsqlookupd), one :class:`Connection` per
nsqd and a :class:`~rxnsq.flow.FlowController`. Messages reach ``reader.messages`` straight
from each connection's read loop; settling them (``fin``/``req``) feeds the flow controller
before the command is written, so RDY and backoff follow how fast and how well the pipeline
settles. Nothing is delivered while nobody subscribes: RDY stays 0.

Constructing a Reader does no IO. The first subscription to ``messages`` (or
``await reader.start()``) connects on the running loop, so it works in scripts, tornado apps
and Jupyter alike. A reader started by a subscription closes when the last subscription is
disposed (what it held goes back to nsqd at once); one started with ``start()`` runs until
``close()``.

User code runs inside a boundary: what a subscriber or an operator downstream of
``messages`` raises is caught where the reader hands the message over; the message (if still
unsettled) is requeued with one backoff step and the error is reported once on
``reader.errors`` and in the log. A subscriber's ``on_error`` is called only when the stream
itself fails (a fatal configuration error such as a refused AUTH or a wrong port), never for a
per-message error: one bad message does not end a pipeline.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Self

import reactivex
from reactivex import abc
from reactivex.disposable import Disposable

from . import protocol, runner
from .address import http_address_list, tcp_address_list
from .config import ConnectionOptions, check_range
from .connection import Connection, Heartbeat
from .errors import (
    FATAL_CONNECT_ERRORS,
    ConfigError,
    ConnectionClosedError,
    NSQConnectionError,
    NSQError,
    StateError,
)
from .flow import BackoffState, BackoffStrategy, FlowController
from .histogram import Histogram
from .message import Message
from .producers import VanishedProducers
from .reconnect import ReconnectDelays
from .scheduler import LoopScheduler
from .streams import Broadcast

__all__ = ["CaughtError", "Heartbeat", "Reader", "ReaderEvent"]

logger = logging.getLogger(__name__)


#: How often at most the "abandoned messages" warning repeats (seconds).
_ABANDON_WARNING_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class ReaderEvent:
    """Something that happened to the reader: ``kind``, the nsqd ``address`` involved, a
    ``detail`` (an error for failures) and the ``message`` it concerns, if any.

    Kinds: ``connected``, ``disconnected``, ``connect_failed``, ``vanished`` (no longer listed
    by nsqlookupd), ``lookupd_error``, ``giving_up``, ``abandoned`` (nsqd took an unsettled
    message back after msg_timeout), ``closing``, ``closed``.
    """

    kind: str
    address: str = ""
    detail: Any = None
    message: Message[Any] | None = None


@dataclass(frozen=True, slots=True)
class CaughtError:
    """An exception user code raised that the reader caught at its boundary: the ``error``,
    the ``stage`` that ran the code, the ``message`` it concerned and its nsqd ``address``."""

    error: BaseException
    stage: str
    message: Message[Any] | None = None
    address: str = ""


@dataclass(frozen=True, slots=True)
class _ConnectionLink:
    """The Reader's side of its connections (a :class:`~rxnsq.connection.ConnectionDelegate`)
    as the reader's bound methods, so a connection calls straight into the reader."""

    on_message: Callable[[Connection, Message[bytes]], None]
    on_settle: Callable[[Connection, Message[Any], bool | None], None]
    on_abandon: Callable[[Connection, list[Message[Any]]], None]
    on_heartbeat: Callable[[Connection], None]
    on_subscriber_error: Callable[[Connection, Exception, Message[Any] | None], None]
    on_closed: Callable[[Connection, NSQError], None]


class Reader:
    """Consume ``topic``/``channel`` from nsqd, as an Rx stream of :class:`Message`.

    Parameters follow pynsq's Reader (durations in seconds): ``nsqd_tcp_addresses`` and/or
    ``lookupd_http_addresses``; ``max_in_flight`` (the bound on unsettled messages across
    all connections); ``max_tries`` (a message delivered more often goes to ``giving_up`` and
    is finished; 0 = no limit); ``lookupd_poll_interval``, ``lookupd_poll_jitter``,
    ``lookupd_connect_timeout``, ``lookupd_request_timeout``; ``low_rdy_idle_timeout``;
    ``max_backoff_duration`` (0 disables backoff) and ``backoff`` (a strategy);
    ``default_requeue_delay`` (per attempt) capped by ``max_requeue_delay``;
    ``reconnect_interval`` (first retry for a lost direct nsqd, doubling up to
    ``lookupd_poll_interval``); ``lookupd_vanish_grace`` (how long an nsqd must be missing
    from nsqlookupd's answers before its connection is closed); ``fatal_retry_interval``
    (None: an error no reconnect can cure, such as a refused AUTH or a wrong port, fails the
    stream at once; a number of seconds: log it and try again after that long, as pynsq did);
    ``measure_hold_times`` (keep :attr:`hold_times`, a histogram of how long each message was
    held from delivery to FIN/REQ: what a metrics exporter reports as handler latency).
    Other keywords are connection options (:class:`~rxnsq.config.ConnectionOptions`).
    """

    def __init__(
        self,
        topic: str,
        channel: str,
        *,
        nsqd_tcp_addresses: str | Sequence[str] = (),
        lookupd_http_addresses: str | Sequence[str] = (),
        max_in_flight: int = 1,
        max_tries: int = 5,
        lookupd_poll_interval: float = 60.0,
        lookupd_poll_jitter: float = 0.3,
        lookupd_connect_timeout: float = 1.0,
        lookupd_request_timeout: float = 2.0,
        low_rdy_idle_timeout: float = 10.0,
        max_backoff_duration: float = 128.0,
        backoff: BackoffStrategy | None = None,
        default_requeue_delay: float = 90.0,
        max_requeue_delay: float = 900.0,
        redistribute_interval: float = 5.0,
        reconnect_interval: float = 1.0,
        lookupd_vanish_grace: float = 60.0,
        fatal_retry_interval: float | None = None,
        measure_hold_times: bool = False,
        giving_up: Callable[[Message[bytes]], Any] | None = None,
        **connection_options: Any,
    ) -> None:
        self.topic = protocol.check_topic_name(topic)
        self.channel = protocol.check_channel_name(channel)
        self.nsqd_tcp_addresses = tcp_address_list("nsqd_tcp_addresses", nsqd_tcp_addresses)
        self.lookupd_http_addresses = http_address_list(
            "lookupd_http_addresses", lookupd_http_addresses, "127.0.0.1:4161"
        )
        if not self.nsqd_tcp_addresses and not self.lookupd_http_addresses:
            raise ConfigError(
                "nsqd_tcp_addresses", [], "give nsqd_tcp_addresses or lookupd_http_addresses"
            )
        check_range("max_in_flight", max_in_flight, 0, 1 << 31, integer=True)
        check_range("max_tries", max_tries, 0, 65535, integer=True)
        check_range("lookupd_poll_interval", lookupd_poll_interval, 0.01, 3600.0)
        check_range("lookupd_poll_jitter", lookupd_poll_jitter, 0.0, 1.0)
        check_range("lookupd_connect_timeout", lookupd_connect_timeout, 0.001, 3600.0)
        check_range("lookupd_request_timeout", lookupd_request_timeout, 0.001, 3600.0)
        check_range("low_rdy_idle_timeout", low_rdy_idle_timeout, 0.001, 3600.0)
        check_range("max_backoff_duration", max_backoff_duration, 0.0, 3600.0)
        check_range("default_requeue_delay", default_requeue_delay, 0.0, 3600.0)
        check_range("max_requeue_delay", max_requeue_delay, 0.0, 3600.0)
        check_range("redistribute_interval", redistribute_interval, 0.001, 3600.0)
        check_range("reconnect_interval", reconnect_interval, 0.001, 3600.0)
        check_range("lookupd_vanish_grace", lookupd_vanish_grace, 0.0, 86400.0)
        if fatal_retry_interval is not None:
            check_range("fatal_retry_interval", fatal_retry_interval, 0.001, 86400.0)
        self.connection_options = ConnectionOptions(**connection_options)
        self.max_tries = max_tries
        self.lookupd_poll_interval = lookupd_poll_interval
        self.lookupd_poll_jitter = lookupd_poll_jitter
        self.lookupd_connect_timeout = lookupd_connect_timeout
        self.lookupd_request_timeout = lookupd_request_timeout
        self.default_requeue_delay = default_requeue_delay
        self.max_requeue_delay = max_requeue_delay
        self.reconnect_interval = reconnect_interval
        self.lookupd_vanish_grace = lookupd_vanish_grace
        self.fatal_retry_interval = fatal_retry_interval
        self.low_rdy_idle_timeout = low_rdy_idle_timeout
        self.giving_up = giving_up
        self._max_in_flight = max_in_flight
        self._flow_options: dict[str, Any] = {
            "backoff": backoff,
            "max_backoff_duration": max_backoff_duration,
            "low_rdy_idle_timeout": low_rdy_idle_timeout,
            "redistribute_interval": redistribute_interval,
        }

        self._out: Broadcast[Message[bytes]] = Broadcast(
            f"{self.topic}/{self.channel} messages", on_raise=self._on_subscriber_error
        )
        self.messages: reactivex.Observable[Message[bytes]] = reactivex.create(self._subscribe)
        self._backoff: Broadcast[BackoffState] = Broadcast(
            f"{self.topic}/{self.channel} backoff", replay=True
        )
        self._backoff.emit(BackoffState(0, 0.0, "normal"))
        self._events: Broadcast[ReaderEvent] = Broadcast(f"{self.topic}/{self.channel} events")
        self._errors: Broadcast[CaughtError] = Broadcast(f"{self.topic}/{self.channel} errors")
        self._heartbeats: Broadcast[Heartbeat] = Broadcast(f"{self.topic}/{self.channel} beats")
        self._new_connections: Broadcast[Connection] = Broadcast(
            f"{self.topic}/{self.channel} connections"
        )
        self._closing_signal: Broadcast[None] = Broadcast(
            f"{self.topic}/{self.channel} closing", replay=True
        )
        #: What happened to the reader (:class:`ReaderEvent`), across reconnects.
        self.events: reactivex.Observable[ReaderEvent] = self._events.observable
        #: Exceptions user code raised that the reader caught (:class:`CaughtError`).
        self.errors: reactivex.Observable[CaughtError] = self._errors.observable
        #: Every heartbeat of every connection (:class:`Heartbeat`), across reconnects.
        self.heartbeats: reactivex.Observable[Heartbeat] = self._heartbeats.observable
        #: Emits once, then completes, when ``close()`` begins (a late subscriber still gets
        #: it): pipelines holding messages (an open batch) can finish them now.
        self.closing: reactivex.Observable[None] = self._closing_signal.observable
        #: The loop's scheduler: give it to timed RxPY operators (``subscribe(...,
        #: scheduler=reader.scheduler)``) so their timers fire on the loop, not on threads.
        self.scheduler = LoopScheduler()

        self._loop: asyncio.AbstractEventLoop | None = None
        self._link = _ConnectionLink(
            on_message=self._on_message,
            on_settle=self._on_settle,
            on_abandon=self._on_abandon,
            on_heartbeat=self._on_heartbeat,
            on_subscriber_error=self._on_connection_subscriber_error,
            on_closed=self._on_closed,
        )
        self._flow: FlowController | None = None
        self._conns: dict[str, Connection] = {}
        self._connecting: set[str] = set()
        self._reconnects: dict[str, asyncio.TimerHandle] = {}
        self._reconnect_delays = ReconnectDelays(
            reconnect_interval, max(lookupd_poll_interval, reconnect_interval)
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._poller: Any = None
        self._vanished = VanishedProducers(
            len(self.lookupd_http_addresses), lookupd_vanish_grace, time.monotonic
        )
        self._subscribers = 0
        self._started_by_subscription = False
        self._started = False
        self._closing = False
        self._closed: asyncio.Future[None] | None = None
        self._peeking: Callable[[Message[bytes]], None] | None = None
        self._connect_errors: dict[str, NSQError] = {}
        self._abandon_warned_at: float | None = None
        self._abandoned_since_warning = 0
        #: Counters over the reader's life (per-connection ones end with their connection).
        self.received = 0
        self.finished = 0
        self.requeued = 0
        self.given_up = 0
        self.abandoned = 0
        self.caught_errors = 0
        self.connects = 0
        self.hold_times: Histogram | None = Histogram() if measure_hold_times else None
        runner.register(self)

    def __repr__(self) -> str:
        return (
            f"<Reader {self.topic}/{self.channel} connections={len(self._conns)} "
            f"max_in_flight={self._max_in_flight}>"
        )

    # --- public API --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """``async with Reader(...) as reader:`` starts it (``start()``) and closes it."""
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def backoff(self) -> reactivex.Observable[BackoffState]:
        """Backoff state changes, starting with the current state."""
        return self._backoff.observable

    @property
    def max_in_flight(self) -> int:
        """The bound on unsettled messages across all connections."""
        return self._max_in_flight

    @property
    def flow(self) -> FlowController | None:
        """The RDY and backoff logic (read its ``state``; it is driven by the reader), once
        the reader has started."""
        return self._flow

    @property
    def lookupd_query_index(self) -> int:
        """Which nsqlookupd the next poll asks (they take turns)."""
        return self._poller.next_index if self._poller is not None else 0

    @property
    def total_rdy(self) -> int:
        """The sum of RDY over all connections now."""
        return self._flow.total_rdy if self._flow is not None else 0

    @property
    def is_closing(self) -> bool:
        """True once ``close()`` has begun (or the reader was closed)."""
        return self._closing

    @property
    def connections(self) -> dict[str, Connection]:
        """The open connections by nsqd address."""
        return dict(self._conns)

    @property
    def new_connections(self) -> reactivex.Observable[Connection]:
        """Each connection as it becomes ready, the current ones first: subscribe to a
        connection's own streams here and a reconnect never leaves you on a dead one."""

        def subscribe(
            observer: abc.ObserverBase[Connection], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            for conn in list(self._conns.values()):
                observer.on_next(conn)
            return self._new_connections.observable.subscribe(observer, scheduler=scheduler)

        return reactivex.create(subscribe)

    async def start(self, *, require_nsqd: bool = True) -> None:
        """Connect on the running loop (idempotent). Returns once the first connection
        attempts have finished; discovery goes on in the background.

        With direct addresses only (no nsqlookupd), if none of them could be connected the
        reader is closed and the first attempt's error is raised (``ConnectTimeoutError``,
        ``NSQConnectionError``, ``AuthError``...); ``require_nsqd=False`` keeps the reader
        retrying in the background instead (for a consumer started before its nsqd).
        """
        self._ensure_started(by_subscription=False)
        pending = [t for t in self._tasks if t.get_name().startswith("rxnsq-connect")]
        if pending:
            await asyncio.wait(pending)
        if (
            require_nsqd
            and self.nsqd_tcp_addresses
            and not self.lookupd_http_addresses
            and not self._conns
        ):
            error = next(iter(self._connect_errors.values()), None) or NSQConnectionError(
                f"none of {', '.join(self.nsqd_tcp_addresses)} could be connected"
            )
            await self.close(0)
            raise error

    def set_max_in_flight(self, max_in_flight: int) -> None:
        """Change the bound on unsettled messages at run time; 0 pauses delivery."""
        check_range("max_in_flight", max_in_flight, 0, 1 << 31, integer=True)
        self._max_in_flight = max_in_flight
        self._apply_max_in_flight()

    async def peek(self, count: int = 5, timeout: float = 5.0) -> list[Message[bytes]]:
        """Up to ``count`` messages, each requeued: look at a channel, consume nothing.

        nsqd is asked for no more than ``count`` messages (RDY across all connections), they
        are never given up whatever their attempts, and once they are in hand RDY returns to
        what it was before the REQs go out. What a peek costs the channel: each peeked message
        is delivered once more (its ``attempts`` rises by one) and goes to the back of the
        queue. Only for a reader nobody is consuming from (:class:`StateError` otherwise).
        Starts the reader (if needed) without tying its life to this call.
        """
        check_range("count", count, 1, 1 << 31, integer=True)
        check_range("timeout", timeout, 0.0, 86400.0)
        if self._subscribers:
            raise StateError(
                f"{self!r} is consuming: peek with a reader nobody subscribes to "
                "(a second Reader on the channel)"
            )
        if self._peeking is not None:
            raise StateError(f"{self!r} is already peeking")
        await self.start(require_nsqd=False)
        assert self._loop is not None and self._flow is not None
        got: list[Message[bytes]] = []
        enough = self._loop.create_future()

        def take(message: Message[bytes]) -> None:
            got.append(message)
            if len(got) >= count and not enough.done():
                enough.set_result(None)

        self._peeking = take
        self._flow.set_max_in_flight(count)
        try:
            await asyncio.wait([enough], timeout=timeout)
        finally:
            self._peeking = None
            self._apply_max_in_flight()  # RDY back to what it was, before the REQs
            for message in got:
                message.req(0, backoff=False)
        return got

    def _repr_html_(self) -> str:
        from .notebook import reader_html

        return reader_html(self.stats())

    def add_nsqd(self, address: str) -> None:
        """Consume from one more nsqd, kept and reconnected like ``nsqd_tcp_addresses``."""
        if address not in self.nsqd_tcp_addresses:
            self.nsqd_tcp_addresses = (*self.nsqd_tcp_addresses, address)
        if self._started and address not in self._conns and address not in self._connecting:
            self._connect_soon(address)

    def query_lookupd(self) -> None:
        """Ask nsqlookupd for producers now instead of at the next poll."""
        if self._poller is not None:
            self._poller.query_now()

    def is_starved(self) -> bool:
        """Whether some connection has 85 % of its RDY in flight: time to flush a batch."""
        return self._flow is not None and self._flow.is_starved()

    def stats(self) -> dict[str, Any]:
        """Per-connection RDY, in-flight, finished, requeued, plus the backoff state."""
        flow = self._flow
        state = flow.state if flow is not None else BackoffState(0, 0.0, "normal")
        return {
            "topic": self.topic,
            "channel": self.channel,
            "max_in_flight": self._max_in_flight,
            "backoff_level": state.level,
            "backoff_phase": state.phase,
            "in_flight": sum(conn.in_flight for conn in self._conns.values()),
            "received": self.received,
            "finished": self.finished,
            "requeued": self.requeued,
            "given_up": self.given_up,
            "abandoned": self.abandoned,
            "errors": self.caught_errors,
            "connects": self.connects,
            "connections": {
                address: {
                    "state": conn.state.value,
                    "rdy": flow.rdy(conn) if flow else 0,
                    "in_flight": conn.in_flight,
                    "finished": conn.finished,
                    "requeued": conn.requeued,
                    "abandoned": conn.abandoned,
                }
                for address, conn in self._conns.items()
            },
        }

    def report_error(
        self, error: BaseException, stage: str, message: Message[Any] | None = None
    ) -> None:
        """Report an exception that user code raised and a stage caught: logged once (with
        the message id and address) and emitted on :attr:`errors`."""
        self.caught_errors += 1
        address = message.address if message is not None else ""
        if message is not None:
            logger.error(
                "%s raised on message %s from %s (%s): %r",
                stage,
                message.id.decode(errors="replace"),
                address,
                message.outcome or "unsettled",
                error,
                exc_info=error,
            )
        else:
            logger.error("%s raised: %r", stage, error, exc_info=error)
        if self._errors.has_observers:
            caught = CaughtError(error, stage, message, address)
            if self._loop is not None:
                self._loop.call_soon(self._errors.emit, caught)
            else:
                self._errors.emit(caught)

    async def close(self, timeout: float = 30.0) -> None:
        """Stop gracefully: RDY 0, CLS, let in-flight messages settle for up to ``timeout``
        seconds, requeue the rest, close every connection and timer. Called again while a
        close is draining, ``timeout=0`` requeues what is still in flight at once."""
        if not self._closing:
            self._closing_signal.emit(None)
            self._closing_signal.complete()
            self._event("closing")
        if not self._started:
            self._closing = True
            self._out.complete()
            return
        if self._closing:
            if self._closed is not None:
                if timeout <= 0 and not self._closed.done():
                    self._requeue_held()  # stop waiting: the drain ends now
                await asyncio.shield(self._closed)
            return
        self._closing = True
        assert self._loop is not None
        self._closed = self._loop.create_future()
        try:
            if self._flow is not None:
                self._flow.close()
            for handle in self._reconnects.values():
                handle.cancel()
            self._reconnects.clear()
            if self._poller is not None:
                await self._poller.close()
            others = [t for t in self._tasks if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            if others:
                await asyncio.wait(others)
            await asyncio.gather(
                *(conn.close(timeout) for conn in list(self._conns.values())),
                return_exceptions=True,
            )
            self._conns.clear()
            self._out.complete()
            self._event("closed")
        finally:
            self._closed.set_result(None)

    async def iter(self, maxsize: int | None = None) -> AsyncIterator[Message[bytes]]:
        """Pull messages with ``async for``; settle each one yourself.

        ``maxsize`` lowers max_in_flight to it while iterating: since nsqd never has more
        than RDY messages unsettled, the local queue never holds more than ``maxsize``.
        Leaving the loop requeues (without backoff) what was delivered but not yet taken.
        """
        if maxsize is not None:
            check_range("maxsize", maxsize, 1, 1 << 31, integer=True)
            self.set_max_in_flight(min(self._max_in_flight, maxsize) or maxsize)
        queue: asyncio.Queue[Message[bytes] | Exception | None] = asyncio.Queue()
        subscription = self.messages.subscribe(
            on_next=queue.put_nowait,
            on_completed=lambda: queue.put_nowait(None),
            on_error=queue.put_nowait,
        )
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, Exception):
                    raise item  # the stream failed (a fatal configuration error)
                yield item
        finally:
            subscription.dispose()
            while not queue.empty():
                leftover = queue.get_nowait()
                if isinstance(leftover, Message):
                    leftover.req(0, backoff=False)

    # --- starting ----------------------------------------------------------------------------

    def _subscribe(
        self, observer: abc.ObserverBase[Message[bytes]], scheduler: abc.SchedulerBase | None
    ) -> abc.DisposableBase:
        if self._closing:
            observer.on_error(NSQConnectionError(f"{self!r} is closed"))
            return Disposable()
        if self._peeking is not None:
            observer.on_error(StateError(f"{self!r} is peeking: subscribe after the peek"))
            return Disposable()
        subscription = self._out.observable.subscribe(observer)
        try:
            self._ensure_started(by_subscription=True)
        except RuntimeError as exc:
            subscription.dispose()
            observer.on_error(exc)
            return Disposable()
        self._subscribers += 1
        if self._subscribers == 1:
            self._apply_max_in_flight()
        disposed = False

        def dispose() -> None:
            nonlocal disposed
            if disposed:
                return
            disposed = True
            subscription.dispose()
            self._subscribers -= 1
            if self._subscribers == 0 and not self._closing:
                self._apply_max_in_flight()  # RDY 0 first, then give back what was held
                self._requeue_held()
                if self._started_by_subscription:
                    self._spawn(self.close(), "rxnsq-close")

        return Disposable(dispose)

    def _requeue_held(self) -> None:
        """Nobody is left to settle what is in flight: nsqd gets it back now."""
        count = 0
        for conn in list(self._conns.values()):
            count += conn.requeue_unsettled()
            if self._flow is not None:
                self._flow.on_release(conn)
        if count:
            logger.info("%s: requeued %d messages nobody will settle", self, count)

    def _ensure_started(self, by_subscription: bool) -> None:
        if self._started:
            if not by_subscription:
                self._started_by_subscription = False
            return
        if self._closing:
            raise NSQConnectionError(f"{self!r} is closed")
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "rxnsq.Reader needs a running asyncio loop: subscribe from async code, "
                "await reader.start(), or run your main coroutine with rxnsq.run(main())"
            ) from None
        self._started = True
        self._started_by_subscription = by_subscription
        self.scheduler.bind(self._loop)
        loop = self._loop
        self._flow = FlowController(
            0,
            send_rdy=self._send_rdy,  # type: ignore[arg-type]
            call_later=loop.call_later,
            clock=loop.time,
            on_backoff=self._on_backoff,
            **self._flow_options,
        )
        for address in self.nsqd_tcp_addresses:
            self._connect_soon(address)
        if self.lookupd_http_addresses:
            self._start_lookupd()
        self._apply_max_in_flight()

    def _start_lookupd(self) -> None:
        from .lookupd import LookupdPoller

        self._poller = LookupdPoller(
            self.lookupd_http_addresses,
            self.topic,
            poll_interval=self.lookupd_poll_interval,
            poll_jitter=self.lookupd_poll_jitter,
            connect_timeout=self.lookupd_connect_timeout,
            request_timeout=self.lookupd_request_timeout,
            auth_secret=self.connection_options.auth_secret,
            on_producers=self._on_producers,
            on_error=lambda exc: self._event("lookupd_error", detail=exc),
        )
        self._poller.start()

    def _on_producers(self, producers: Sequence[Any]) -> None:
        listed = {producer.tcp_address for producer in producers}
        for address in listed:
            if address not in self._conns and address not in self._connecting:
                self._connect_soon(address)
        # direct addresses are never dropped
        discovered = [a for a in self._conns if a not in self.nsqd_tcp_addresses]
        for address in self._vanished.answer(listed, discovered):
            logger.info("%s: no longer listed by nsqlookupd; disconnecting", address)
            self._event("vanished", address)
            self._spawn(self._conns[address].close(), f"rxnsq-drop {address}")

    def _apply_max_in_flight(self) -> None:
        if self._flow is not None and self._peeking is None:
            self._flow.set_max_in_flight(self._max_in_flight if self._subscribers else 0)

    # --- connections -------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        assert self._loop is not None
        task = self._loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _connect_soon(self, address: str) -> None:
        self._reconnects.pop(address, None)
        self._connecting.add(address)
        self._spawn(self._connect(address), f"rxnsq-connect {address}")

    async def _connect(self, address: str) -> None:
        conn = Connection(
            address,
            options=self.connection_options,
            delegate=self._link,
            consumer=self,
            requeue_delay=self._requeue_delay,
            max_requeue_delay=self.max_requeue_delay,
        )
        try:
            await conn.connect()
            await conn.subscribe(self.topic, self.channel)
        except asyncio.CancelledError:
            await conn.close(0)
            raise
        except NSQError as exc:
            if isinstance(exc, ConnectionClosedError) and isinstance(exc.__cause__, NSQError):
                exc = exc.__cause__  # the reason the connection closed, not just that it did
            await conn.close(0)
            first = address not in self._connect_errors
            self._connect_errors[address] = exc
            self._event("connect_failed", address, exc)
            if isinstance(exc, FATAL_CONNECT_ERRORS):
                logger.error("%s: %s", address, exc)
                if self.fatal_retry_interval is None:
                    self._fail(exc)
                else:
                    self._schedule_reconnect(address, self.fatal_retry_interval)
                return
            if first:
                logger.error("%s: cannot consume %s/%s: %s", address, self.topic, self.channel, exc)
            else:
                logger.warning("%s: cannot consume: %s", address, exc)
            self._schedule_reconnect(address)
            return
        finally:
            self._connecting.discard(address)
        if self._closing:
            await conn.close(0)
            return
        if conn.closed:  # it died between SUB's OK and here
            reason = conn.close_reason or NSQConnectionError(f"{address}: closed")
            self._event("connect_failed", address, reason)
            self._schedule_reconnect(address)
            return
        self._conns[address] = conn
        self._connect_errors.pop(address, None)
        self._reconnect_delays.reset(address)
        assert self._flow is not None
        self._flow.add(conn)
        self.connects += 1
        self._event("connected", address)
        self._new_connections.emit(conn)
        if conn.max_rdy_count < self._max_in_flight:
            logger.warning(
                "%s: max_in_flight %d is above nsqd's max_rdy_count %d",
                address,
                self._max_in_flight,
                conn.max_rdy_count,
            )

    def _on_closed(self, conn: Connection, reason: NSQError) -> None:
        if self._conns.get(conn.address) is conn:
            del self._conns[conn.address]
        if self._flow is not None:
            self._flow.remove(conn)
        if self._closing or conn.subscription is None:
            return
        self._event("disconnected", conn.address, reason)
        if conn.address in self.nsqd_tcp_addresses:
            self._schedule_reconnect(conn.address)
        elif self._poller is not None:
            self._poller.query_now()

    def _schedule_reconnect(self, address: str, delay: float | None = None) -> None:
        if self._closing or address not in self.nsqd_tcp_addresses or self._loop is None:
            if self._poller is not None and not self._closing:
                self._poller.query_now()
            return
        if delay is None:
            delay = self._reconnect_delays.next(address)
        logger.info("%s: reconnecting in %.1fs", address, delay)
        self._reconnects[address] = self._loop.call_later(delay, self._connect_soon, address)

    def _fail(self, error: Exception) -> None:
        if not self._closing:
            self._out.fail(error)
            self._spawn(self.close(0), "rxnsq-close")

    # --- messages and settlement -------------------------------------------------------------

    def _on_message(self, conn: Connection, message: Message[bytes]) -> None:
        self.received += 1
        flow = self._flow
        if flow is not None:
            flow.on_message(conn)
        if self._peeking is not None:
            self._peeking(message)  # a peek never gives up: it settles nothing for good
            return
        if self.max_tries and message.attempts > self.max_tries:
            self._give_up(message)
            return
        if not self._out.has_observers:
            # sent before the last subscriber left: nobody will settle it, so give it back
            message.req(0, backoff=False)
            return
        self._out.emit(message)

    def _on_subscriber_error(self, error: Exception, message: Message[bytes]) -> None:
        """The boundary: a subscriber (or an operator before it) raised on ``message``."""
        if message.outcome is None:
            message.req(backoff=True)
        self.report_error(error, "the pipeline", message)

    def _on_connection_subscriber_error(
        self, conn: Connection, error: Exception, message: Message[Any] | None
    ) -> None:
        self.report_error(error, f"a subscriber of {conn.address}'s stream", message)

    def _give_up(self, message: Message[bytes]) -> None:
        self.given_up += 1
        self._event("giving_up", message.address, message=message)
        hook = self.giving_up
        if hook is None:
            logger.warning(
                "giving up on message %s after %d attempts", message.id.decode(), message.attempts
            )
            message.fin()
            return
        try:
            result = hook(message)
        except Exception as exc:
            # finished all the same: a REQ would bring it straight back to the same hook
            self.report_error(exc, "the giving_up hook", message)
            message.fin()
            return
        if inspect.isawaitable(result):
            self._spawn(self._finish_after(result, message), "rxnsq-giving-up")
        else:
            message.fin()

    async def _finish_after(self, result: Awaitable[Any], message: Message[bytes]) -> None:
        try:
            await result
        except Exception as exc:
            # an async hook usually moves the message elsewhere (a dead-letter topic): if that
            # failed, keep the message, back after the usual delay for its attempts
            self.report_error(exc, "the giving_up hook", message)
            message.req(backoff=False)
        else:
            message.fin()

    def _on_abandon(self, conn: Connection, messages: list[Message[Any]]) -> None:
        self.abandoned += len(messages)
        if self._flow is not None:
            self._flow.on_release(conn)
        for message in messages:
            self._event("abandoned", conn.address, message=message)
        self._warn_abandoned(conn, messages)

    def _warn_abandoned(self, conn: Connection, messages: list[Message[Any]]) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self._abandoned_since_warning += len(messages)
        last = self._abandon_warned_at
        if last is not None and now - last < _ABANDON_WARNING_INTERVAL:
            return
        logger.warning(
            "%s: %d messages (e.g. %s) were neither settled nor touched within msg_timeout "
            "(%.1fs); nsqd took them back and will deliver them again. Likely a stage dropped "
            "them without settling (a plain ops.filter/distinct/skip/debounce...): use "
            "nsq.where, nsq.batch or nsq.guard(...), or settle every message%s",
            conn.address,
            self._abandoned_since_warning,
            messages[0].id.decode(errors="replace"),
            conn.msg_timeout,
            "" if last is None else f" ({self.abandoned} so far)",
        )
        self._abandon_warned_at = now
        self._abandoned_since_warning = 0

    def _on_heartbeat(self, conn: Connection) -> None:
        if self._heartbeats.has_observers:
            self._heartbeats.emit(Heartbeat(conn.address, time.time()))

    def _requeue_delay(self, attempts: int) -> float:
        return min(self.default_requeue_delay * attempts, self.max_requeue_delay)

    def _on_settle(self, conn: Connection, message: Message[Any], backoff: bool | None) -> None:
        if backoff is None:
            self.finished += 1
        else:
            self.requeued += 1
        if self.hold_times is not None and self._loop is not None:
            self.hold_times.observe(self._loop.time() - message.delivery.received)
        if self._flow is not None:
            self._flow.on_settle(conn, backoff)

    def _send_rdy(self, conn: Connection, count: int) -> None:
        conn.rdy(count)

    def _on_backoff(self, state: BackoffState) -> None:
        if self._loop is not None:
            self._loop.call_soon(self._backoff.emit, state)

    def _event(
        self,
        kind: str,
        address: str = "",
        detail: Any = None,
        *,
        message: Message[Any] | None = None,
    ) -> None:
        if self._events.has_observers and self._loop is not None:
            event = ReaderEvent(kind, address, detail, message)
            self._loop.call_soon(self._events.emit, event)
