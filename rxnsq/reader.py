"""The consumer: a topic/channel on many nsqd as one hot ``Observable[Message]``.

``Reader`` joins discovery (direct addresses or nsqlookupd), one :class:`Connection` per
nsqd and a :class:`~rxnsq.flow.FlowController`. Messages reach ``reader.messages`` straight
from each connection's read loop; settling them (``fin``/``req``) feeds the flow controller
before the command is written, so RDY and backoff follow how fast and how well the pipeline
settles. Nothing is delivered while nobody subscribes: RDY stays 0.

Constructing a Reader does no IO. The first subscription to ``messages`` (or
``await reader.start()``) connects on the running loop, so it works in scripts, tornado apps
and Jupyter alike. A reader started by a subscription closes gracefully when the last
subscription is disposed; one started with ``start()`` runs until ``close()``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import reactivex
from reactivex import abc
from reactivex.disposable import Disposable
from reactivex.scheduler.eventloop import AsyncIOScheduler
from reactivex.subject import BehaviorSubject, Subject

from . import protocol, runner
from .config import ConnectionOptions, address_list, check_range
from .connection import Connection, ConnectionState, NegotiationError
from .errors import AuthError, ConfigError, NSQConnectionError, NSQError, WrongPortError
from .flow import BackoffState, BackoffStrategy, FlowController
from .message import Delivery, Message

__all__ = ["Reader", "ReaderEvent"]

logger = logging.getLogger(__name__)

#: Errors that no reconnect can cure: the stream fails with them.
_FATAL = (AuthError, NegotiationError, WrongPortError, ConfigError)


@dataclass(frozen=True, slots=True)
class ReaderEvent:
    """Something that happened to the reader: ``kind`` and the nsqd ``address`` involved."""

    kind: str
    address: str = ""
    detail: Any = None


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
    from nsqlookupd's answers before its connection is closed). Other keywords are connection
    options
    (:class:`~rxnsq.config.ConnectionOptions`).
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
        giving_up: Callable[[Message[bytes]], Any] | None = None,
        **connection_options: Any,
    ) -> None:
        self.topic = protocol.check_topic_name(topic)
        self.channel = protocol.check_channel_name(channel)
        self.nsqd_tcp_addresses = address_list("nsqd_tcp_addresses", nsqd_tcp_addresses)
        self.lookupd_http_addresses = address_list("lookupd_http_addresses", lookupd_http_addresses)
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
        self.giving_up = giving_up
        self._max_in_flight = max_in_flight
        self._flow_options: dict[str, Any] = {
            "backoff": backoff,
            "max_backoff_duration": max_backoff_duration,
            "low_rdy_idle_timeout": low_rdy_idle_timeout,
            "redistribute_interval": redistribute_interval,
        }

        self._subject: Subject[Message[bytes]] = Subject()
        self.messages: reactivex.Observable[Message[bytes]] = reactivex.create(self._subscribe)
        self._backoff: BehaviorSubject[BackoffState] = BehaviorSubject(
            BackoffState(0, 0.0, "normal")
        )
        self.events: Subject[ReaderEvent] = Subject()
        #: Emits once, then completes, when ``close()`` begins: pipelines holding messages
        #: (an open batch) can finish them now (``take_until(reader.closing)``).
        self.closing: Subject[None] = Subject()

        self._loop: asyncio.AbstractEventLoop | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self._flow: FlowController | None = None
        self._conns: dict[str, Connection] = {}
        self._connecting: set[str] = set()
        self._reconnects: dict[str, asyncio.TimerHandle] = {}
        self._reconnect_delay: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._poller: Any = None
        self._recent_listings: deque[set[str]] = deque(
            maxlen=max(1, len(self.lookupd_http_addresses))
        )
        self._missing_since: dict[str, float] = {}
        self._subscribers = 0
        self._started_by_subscription = False
        self._started = False
        self._closing = False
        self._closed: asyncio.Future[None] | None = None
        self.given_up = 0
        runner.register(self)

    def __repr__(self) -> str:
        return (
            f"<Reader {self.topic}/{self.channel} connections={len(self._conns)} "
            f"max_in_flight={self._max_in_flight}>"
        )

    # --- public API --------------------------------------------------------------------------

    @property
    def backoff(self) -> reactivex.Observable[BackoffState]:
        """Backoff state changes, starting with the current state."""
        return self._backoff

    @property
    def max_in_flight(self) -> int:
        return self._max_in_flight

    @property
    def connections(self) -> dict[str, Connection]:
        """The open connections by nsqd address."""
        return dict(self._conns)

    async def start(self) -> None:
        """Connect on the running loop (idempotent). Returns once the first connection
        attempts have finished; discovery goes on in the background."""
        self._ensure_started(by_subscription=False)
        pending = [t for t in self._tasks if t.get_name().startswith("rxnsq-connect")]
        if pending:
            await asyncio.wait(pending)

    def set_max_in_flight(self, max_in_flight: int) -> None:
        """Change the bound on unsettled messages at run time; 0 pauses delivery."""
        check_range("max_in_flight", max_in_flight, 0, 1 << 31, integer=True)
        self._max_in_flight = max_in_flight
        self._apply_max_in_flight()

    async def peek(self, count: int = 5, timeout: float = 5.0) -> list[Message[bytes]]:
        """Up to ``count`` messages, each requeued at once: look at a topic, consume nothing.

        Starts the reader (if needed) without tying its life to this call.
        """
        from .ops import peek

        await self.start()
        got: list[Message[bytes]] = []
        done = asyncio.get_running_loop().create_future()
        subscription = self.messages.pipe(peek(count)).subscribe(
            on_next=got.append,
            on_completed=lambda: done.done() or done.set_result(None),
            on_error=lambda exc: done.done() or done.set_exception(exc),
        )
        try:
            await asyncio.wait_for(done, timeout)
        except TimeoutError:
            pass
        finally:
            subscription.dispose()
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
        state = self._backoff.value
        return {
            "topic": self.topic,
            "channel": self.channel,
            "max_in_flight": self._max_in_flight,
            "backoff_level": state.level,
            "backoff_phase": state.phase,
            "given_up": self.given_up,
            "connections": {
                address: {
                    "state": conn.state.value,
                    "rdy": flow.rdy(conn) if flow else 0,
                    "in_flight": conn.in_flight,
                    "finished": conn.finished,
                    "requeued": conn.requeued,
                }
                for address, conn in self._conns.items()
            },
        }

    async def close(self, timeout: float = 30.0) -> None:
        """Stop gracefully: RDY 0, CLS, let in-flight messages settle for up to ``timeout``
        seconds, requeue the rest, close every connection and timer."""
        if not self._closing:
            self.closing.on_next(None)
            self.closing.on_completed()
        if not self._started:
            self._closing = True
            self._subject.on_completed()
            return
        if self._closing:
            if self._closed is not None:
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
            self._subject.on_completed()
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
        queue: asyncio.Queue[Message[bytes] | None] = asyncio.Queue()
        subscription = self.messages.subscribe(
            on_next=queue.put_nowait,
            on_completed=lambda: queue.put_nowait(None),
            on_error=lambda _exc: queue.put_nowait(None),
        )
        try:
            while (message := await queue.get()) is not None:
                yield message
        finally:
            subscription.dispose()
            while not queue.empty():
                leftover = queue.get_nowait()
                if leftover is not None:
                    leftover.req(0, backoff=False)

    # --- starting ----------------------------------------------------------------------------

    def _subscribe(
        self, observer: abc.ObserverBase[Message[bytes]], scheduler: abc.SchedulerBase | None
    ) -> abc.DisposableBase:
        if self._closing:
            observer.on_error(NSQConnectionError(f"{self!r} is closed"))
            return Disposable()
        subscription = self._subject.subscribe(observer)
        try:
            self._ensure_started(by_subscription=True)
        except RuntimeError as exc:
            subscription.dispose()
            observer.on_error(exc)
            return Disposable()
        self._subscribers += 1
        if self._subscribers == 1:
            self._apply_max_in_flight()

        def dispose() -> None:
            subscription.dispose()
            self._subscribers -= 1
            if self._subscribers == 0 and not self._closing:
                self._apply_max_in_flight()
                if self._started_by_subscription:
                    self._spawn(self.close(), "rxnsq-close")

        return Disposable(dispose)

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
        self.scheduler = AsyncIOScheduler(self._loop)
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
        # Each poll asks one lookupd: a producer is missing only when none of the last answers
        # (one per lookupd) lists it, and it is dropped once it has been missing for
        # ``lookupd_vanish_grace`` seconds (a restarted lookupd knows an nsqd again only after
        # the nsqd's next registration). Direct addresses are never dropped.
        self._recent_listings.append(listed)
        if len(self._recent_listings) < self._recent_listings.maxlen:  # type: ignore[operator]
            return
        known = set().union(*self._recent_listings)
        assert self._loop is not None
        now = self._loop.time()
        for address in list(self._missing_since):
            if address in known or address not in self._conns:
                del self._missing_since[address]
        for address, conn in list(self._conns.items()):
            if address in known or address in self.nsqd_tcp_addresses:
                continue
            since = self._missing_since.setdefault(address, now)
            if now - since >= self.lookupd_vanish_grace:
                del self._missing_since[address]
                logger.info("%s: no longer listed by nsqlookupd; disconnecting", address)
                self._event("vanished", address)
                self._spawn(conn.close(), f"rxnsq-drop {address}")

    def _apply_max_in_flight(self) -> None:
        if self._flow is not None:
            self._flow.set_max_in_flight(self._max_in_flight if self._subscribers else 0)

    # --- connections -------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        assert self._loop is not None
        task = self._loop.create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _connect_soon(self, address: str) -> None:
        self._reconnects.pop(address, None)
        self._connecting.add(address)
        self._spawn(self._connect(address), f"rxnsq-connect {address}")

    async def _connect(self, address: str) -> None:
        conn = Connection(address, options=self.connection_options)
        conn.requeue_delay = self._requeue_delay
        conn.max_requeue_delay = self.max_requeue_delay
        conn.on_settle = self._on_settle
        conn.consumer = self
        try:
            await conn.connect()
            conn.on_message = functools.partial(self._on_message, conn)
            await conn.subscribe(self.topic, self.channel)
        except asyncio.CancelledError:
            await conn.close(0)
            raise
        except NSQError as exc:
            if isinstance(exc.__cause__, NSQError):
                exc = exc.__cause__  # the reason the connection closed, not just that it did
            await conn.close(0)
            self._event("connect_failed", address, exc)
            if isinstance(exc, _FATAL):
                logger.error("%s: %s", address, exc)
                self._fail(exc)
                return
            logger.warning("%s: cannot consume: %s", address, exc)
            self._schedule_reconnect(address)
            return
        finally:
            self._connecting.discard(address)
        if self._closing:
            await conn.close(0)
            return
        if conn.closed:  # it died between SUB's OK and here: its states stream is over
            reason = conn.close_reason or NSQConnectionError(f"{address}: closed")
            self._event("connect_failed", address, reason)
            self._schedule_reconnect(address)
            return
        self._conns[address] = conn
        self._reconnect_delay.pop(address, None)
        assert self._flow is not None
        self._flow.add(conn)
        conn.states.subscribe(lambda state: self._on_state(conn, state))
        self._event("connected", address)
        if conn.max_rdy_count < self._max_in_flight:
            logger.warning(
                "%s: max_in_flight %d is above nsqd's max_rdy_count %d",
                address,
                self._max_in_flight,
                conn.max_rdy_count,
            )

    def _on_state(self, conn: Connection, state: ConnectionState) -> None:
        if state is not ConnectionState.CLOSED:
            return
        if self._conns.get(conn.address) is conn:
            del self._conns[conn.address]
        if self._flow is not None:
            self._flow.remove(conn)
        if self._closing:
            return
        self._event("disconnected", conn.address)
        if conn.address in self.nsqd_tcp_addresses:
            self._schedule_reconnect(conn.address)
        elif self._poller is not None:
            self._poller.query_now()

    def _schedule_reconnect(self, address: str) -> None:
        if self._closing or address not in self.nsqd_tcp_addresses or self._loop is None:
            if self._poller is not None and not self._closing:
                self._poller.query_now()
            return
        delay = self._reconnect_delay.get(address, self.reconnect_interval)
        self._reconnect_delay[address] = min(delay * 2, max(self.lookupd_poll_interval, delay))
        delay *= random.uniform(0.8, 1.2)
        logger.info("%s: reconnecting in %.1fs", address, delay)
        self._reconnects[address] = self._loop.call_later(delay, self._connect_soon, address)

    def _fail(self, error: Exception) -> None:
        if not self._closing:
            self._subject.on_error(error)
            self._spawn(self.close(0), "rxnsq-close")

    # --- messages and settlement -------------------------------------------------------------

    def _on_message(self, conn: Connection, message: Message[bytes]) -> None:
        flow = self._flow
        if flow is not None:
            flow.on_message(conn)
        if self.max_tries and message.attempts > self.max_tries:
            self._give_up(message)
            return
        if not self._subject.observers:
            # sent before the last subscriber left: nobody will settle it, so give it back
            message.req(0, backoff=False)
            return
        self._subject.on_next(message)

    def _give_up(self, message: Message[bytes]) -> None:
        self.given_up += 1
        self._event("giving_up", message.connection.address, message)
        hook = self.giving_up
        if hook is None:
            logger.warning(
                "giving up on message %s after %d attempts", message.id.decode(), message.attempts
            )
            message.fin()
            return
        try:
            result = hook(message)
        except Exception:
            logger.exception("giving_up hook failed for %s; requeueing", message.id.decode())
            message.req(backoff=False)
            return
        if inspect.isawaitable(result):
            self._spawn(self._finish_after(result, message), "rxnsq-giving-up")
        else:
            message.fin()

    async def _finish_after(self, result: Awaitable[Any], message: Message[bytes]) -> None:
        try:
            await result
        except Exception:
            logger.exception("giving_up hook failed for %s; requeueing", message.id.decode())
            message.req(backoff=False)
        else:
            message.fin()

    def _requeue_delay(self, attempts: int) -> float:
        return min(self.default_requeue_delay * attempts, self.max_requeue_delay)

    def _on_settle(self, conn: Connection, delivery: Delivery, backoff: bool | None) -> None:
        if self._flow is not None:
            self._flow.on_settle(conn, backoff)

    def _send_rdy(self, conn: Connection, count: int) -> None:
        conn.rdy(count)

    def _on_backoff(self, state: BackoffState) -> None:
        if self._loop is not None:
            self._loop.call_soon(self._backoff.on_next, state)

    def _event(self, kind: str, address: str = "", detail: Any = None) -> None:
        if self.events.observers and self._loop is not None:
            self._loop.call_soon(self.events.on_next, ReaderEvent(kind, address, detail))
