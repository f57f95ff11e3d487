"""One TCP connection to one nsqd, on tornado's IOStream, with its events as observables.

The connection does the whole handshake (magic, IDENTIFY, TLS, snappy or deflate, AUTH) before
anything else is sent, answers heartbeats itself, coalesces every command issued in one loop
turn into one write, and tells what happens on the wire through Rx subjects:

``messages``
    every delivered :class:`~rxnsq.message.Message`, from the read loop.
``heartbeats``
    the loop time of each heartbeat (already answered with NOP).
``responses``
    response frames nobody waited for.
``errors``
    every error frame as a typed error; non-fatal ones leave the connection open.
``state``
    :class:`ConnectionState` changes (a new subscriber gets the current one first).
``events``
    every :class:`ConnectionEvent` of the connection's life, in order (``connected`` ...
    ``ready``, ``message``, ``finished``, ``requeued``, ..., ``closed``).

Emissions happen from the read loop or through ``call_soon``, never inside ``fin()``,
``req()``, ``touch()``, ``rdy()`` or a publish call, so Rx operators are never re-entered.
What a subscriber raises is caught and logged (a message it concerned is requeued): it never
reaches the read loop. These streams end with the connection; a Reader's own streams
(``reader.events``, ``reader.heartbeats``...) go on across reconnects.

A consumer (the Reader) is told what happens through a :class:`ConnectionDelegate` given at
construction. The connection keeps every unsettled message until it is settled or nsqd takes
it back after ``msg_timeout`` (then it is *abandoned*: counted, reported, never FINed).
Settling from another thread hands over to the connection's loop at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import ssl
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import reactivex
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

from . import protocol
from .address import join_host_port, split_tcp_address
from .codecs import Codec, DeflateCodec, IdentityCodec, SnappyCodec
from .config import ConnectionOptions
from .errors import (
    AuthError,
    ConnectionClosedError,
    ConnectTimeoutError,
    FrameError,
    IdentifyRefusedError,
    InvalidError,
    NegotiationError,
    NSQConnectionError,
    NSQError,
    ProtocolError,
    error_from_frame,
)
from .message import ConsumerContext, Delivery, Message
from .protocol import Frame, IdentifyResponse
from .streams import Broadcast

__all__ = [
    "Connection",
    "ConnectionDelegate",
    "ConnectionEvent",
    "ConnectionState",
    "Heartbeat",
    "NegotiationError",
    "default_requeue_delay",
]

logger = logging.getLogger(__name__)

_READ_CHUNK = 65536


class ConnectionState(enum.Enum):
    """Where a connection is in its life."""

    INIT = "init"
    CONNECTING = "connecting"
    IDENTIFYING = "identifying"
    READY = "ready"
    CLOSING = "closing"
    CLOSED = "closed"


class ConnectionEvent(NamedTuple):
    """Something that happened on one connection: its ``kind``, what goes with it and the
    message it concerns, if any.

    Kinds, in a connection's life: ``connected`` (TCP), ``identifying`` (data: the IDENTIFY
    fields), ``identified`` (the :class:`~rxnsq.protocol.IdentifyResponse`),
    ``authenticating``, ``authorized`` (the :class:`~rxnsq.protocol.AuthResponse`), ``ready``;
    then ``message``, ``finished``, ``requeued`` (data: whether it backs off), ``heartbeat``,
    ``response`` (the bytes), ``error`` (the typed error frame); last ``closed`` (data: why).
    """

    kind: str
    data: Any = None
    message: Message[Any] | None = None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """nsqd at ``address`` sent a heartbeat at ``time`` (seconds since the epoch)."""

    address: str
    time: float


class ConnectionDelegate(Protocol):
    """What a connection tells the consumer that owns it; every call is on the loop."""

    def on_message(self, conn: Connection, message: Message[bytes]) -> None:
        """A message arrived (before the connection's own ``messages`` stream has it)."""
        ...

    def on_settle(self, conn: Connection, message: Message[Any], backoff: bool | None) -> None:
        """A message was settled: FIN (None), REQ with or without backoff. Called after it
        left ``conn.in_flight`` and before the command is queued, so RDY changes go first."""
        ...

    def on_abandon(self, conn: Connection, messages: list[Message[Any]]) -> None:
        """nsqd took these messages back: neither settled nor touched within msg_timeout."""
        ...

    def on_heartbeat(self, conn: Connection) -> None: ...

    def on_subscriber_error(
        self, conn: Connection, error: Exception, message: Message[Any] | None
    ) -> None:
        """A subscriber of one of the connection's streams raised."""
        ...

    def on_closed(self, conn: Connection, reason: NSQError) -> None: ...


def default_requeue_delay(attempts: int) -> float:
    """go-nsq's default: 90 s per attempt, at most 15 minutes."""
    return min(90.0 * attempts, 900.0)


class Connection:
    """A connection to one nsqd.

    ``Connection("127.0.0.1:4150", snappy=True)`` takes the options of
    :class:`~rxnsq.config.ConnectionOptions` as keywords (or ``options=``); they are
    checked here, before any IO. ``await conn.connect()`` opens it on the running loop.
    """

    def __init__(
        self,
        address: str,
        options: ConnectionOptions | None = None,
        *,
        delegate: ConnectionDelegate | None = None,
        consumer: ConsumerContext | None = None,
        requeue_delay: Callable[[int], float] = default_requeue_delay,
        max_requeue_delay: float = 3600.0,
        **kwargs: Any,
    ) -> None:
        if options is not None and kwargs:
            raise TypeError("give either options= or keyword options, not both")
        self.options = options if options is not None else ConnectionOptions(**kwargs)
        self.host, self.port = split_tcp_address(address, "address")
        self.address = join_host_port(self.host, self.port)
        self.identify_response: IdentifyResponse | None = None
        self.auth_response: protocol.AuthResponse | None = None
        #: The REQ delay for a message's attempt count when ``req()`` gives none.
        self.requeue_delay = requeue_delay
        #: Upper bound for any REQ delay, the computed default or one given to ``req()``.
        self.max_requeue_delay = max_requeue_delay
        self._delegate = delegate
        self._consumer = consumer

        self._messages: Broadcast[Message[bytes]] = Broadcast(
            f"{self.address} messages", on_raise=self._on_message_subscriber_error
        )
        self._heartbeats: Broadcast[float] = Broadcast(f"{self.address} heartbeats")
        self._responses: Broadcast[bytes] = Broadcast(f"{self.address} responses")
        self._errors: Broadcast[ProtocolError] = Broadcast(f"{self.address} errors")
        self._events: Broadcast[ConnectionEvent] = Broadcast(f"{self.address} events")
        self._state = ConnectionState.INIT
        self._states: Broadcast[ConnectionState] = Broadcast(f"{self.address} states", replay=True)
        self._states.emit(ConnectionState.INIT)

        self.rdy_count = 0
        #: Unsettled deliveries (in arrival order) and the first Message of each.
        self._unsettled: dict[Delivery, Message[bytes]] = {}
        self.finished = 0
        self.requeued = 0
        self.abandoned = 0
        #: Settlements that came too late to send anything: already settled, abandoned or
        #: the connection was gone (the second of two racing threads, a FIN after a timeout).
        self.duplicate_settlements = 0
        self.last_message_time = 0.0
        self.subscription: tuple[str, str] | None = None

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._stream: IOStream | None = None
        self._codec: Codec = IdentityCodec()
        self._reader = protocol.FrameReader(self.options.max_frame_size)
        self._pending: deque[asyncio.Future[bytes]] = deque()
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        self._writable = False
        self._last_write: asyncio.Future[None] | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._liveness: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self._drained: asyncio.Future[None] | None = None
        self._close_error: NSQError | None = None
        #: Why the connection closed (a FrameError, an E_* error, a lost socket...).
        self.close_reason: NSQError | None = None

    def __repr__(self) -> str:
        return f"<Connection {self.address} {self.state.value} rdy={self.rdy_count}>"

    # --- observables and state -------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The current state."""
        return self._state

    @property
    def messages(self) -> reactivex.Observable[Message[bytes]]:
        """Every delivered message, from the read loop."""
        return self._messages.observable

    @property
    def heartbeats(self) -> reactivex.Observable[float]:
        """The loop time of each heartbeat (already answered with NOP)."""
        return self._heartbeats.observable

    @property
    def responses(self) -> reactivex.Observable[bytes]:
        """Response frames nobody waited for."""
        return self._responses.observable

    @property
    def errors(self) -> reactivex.Observable[ProtocolError]:
        """Every error frame as a typed error."""
        return self._errors.observable

    @property
    def events(self) -> reactivex.Observable[ConnectionEvent]:
        """Every :class:`ConnectionEvent`, from connecting to closing."""
        return self._events.observable

    @property
    def last_read_time(self) -> float:
        """The loop time bytes last arrived from nsqd."""
        return self._last_read

    @property
    def stream(self) -> IOStream | None:
        """The tornado IOStream while the connection is open."""
        return self._stream

    @property
    def codec(self) -> Codec:
        """The codec bytes go through (identity, snappy or deflate, as negotiated)."""
        return self._codec

    @property
    def consumer(self) -> ConsumerContext | None:
        """The Reader consuming through this connection, if any."""
        return self._consumer

    @property
    def msg_timeout(self) -> float:
        """Seconds nsqd gives a message before taking it back (as negotiated)."""
        granted = self.identify_response.msg_timeout if self.identify_response else 0
        if granted > 0:
            return granted / 1000
        return self.options.msg_timeout or 60.0

    @property
    def max_msg_timeout(self) -> float:
        """The most time TOUCH can win a message in total (nsqd's --max-msg-timeout)."""
        granted = self.identify_response.max_msg_timeout if self.identify_response else 0
        return granted / 1000 if granted > 0 else 900.0

    @property
    def states(self) -> reactivex.Observable[ConnectionState]:
        """State changes, starting with the current state."""
        return self._states.observable

    @property
    def is_ready(self) -> bool:
        """The handshake is done and the connection is open."""
        return self._state is ConnectionState.READY

    @property
    def closed(self) -> bool:
        return self._state is ConnectionState.CLOSED

    def _set_state(self, state: ConnectionState) -> None:
        if self._state is not state:
            self._state = state
            self._states.emit(state)

    def _event(self, kind: str, data: Any = None, message: Message[Any] | None = None) -> None:
        if self._events.has_observers:
            self._events.emit(ConnectionEvent(kind, data, message))

    def _on_message_subscriber_error(self, error: Exception, message: Message[bytes]) -> None:
        if message.outcome is None:
            message.req(backoff=True)
        if self._delegate is not None:
            self._delegate.on_subscriber_error(self, error, message)
        else:
            logger.error(
                "%s: a subscriber raised on message %s; requeued",
                self.address,
                message.id.decode(errors="replace"),
                exc_info=error,
            )

    # --- connecting ------------------------------------------------------------------------

    async def connect(self) -> IdentifyResponse:
        """Open the TCP connection and do the whole handshake; returns what nsqd granted.

        Raises :class:`~rxnsq.errors.ConnectTimeoutError`, :class:`NSQConnectionError`,
        :class:`~rxnsq.errors.WrongPortError` (the HTTP port was given),
        :class:`NegotiationError` (TLS not granted) or the typed error nsqd sent.
        """
        if self.state is not ConnectionState.INIT:
            raise NSQConnectionError(f"{self.address}: connect() was already called")
        self._loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        self._set_state(ConnectionState.CONNECTING)
        timeout = self.options.connect_timeout
        try:
            try:
                async with asyncio.timeout(timeout):
                    self._stream = await TCPClient().connect(self.host, self.port)
            except TimeoutError as exc:
                raise ConnectTimeoutError(
                    f"no TCP connection to nsqd at {self.address} within {timeout}s"
                ) from exc
            except (OSError, StreamClosedError) as exc:
                reason = getattr(exc, "real_error", None) or exc
                raise NSQConnectionError(
                    f"cannot connect to nsqd at {self.address}: {reason}"
                ) from exc
            self._stream.set_nodelay(True)
            self._event("connected")
            try:
                async with asyncio.timeout(timeout):
                    response = await self._handshake()
            except TimeoutError as exc:
                raise ConnectTimeoutError(
                    f"nsqd at {self.address} did not finish the handshake within {timeout}s"
                ) from exc
        except BaseException as exc:
            error = exc if isinstance(exc, NSQError) else None
            self._teardown(error or ConnectionClosedError(f"{self.address}: connect failed"))
            raise
        self._last_read = self._loop.time()
        self._set_state(ConnectionState.READY)
        self._writable = True
        self._read_task = self._loop.create_task(self._read_loop())
        self._arm_liveness()
        self._event("ready")
        logger.info("%s: ready (nsqd %s)", self.address, response.version or "?")
        return response

    async def _handshake(self) -> IdentifyResponse:
        assert self._stream is not None
        self._set_state(ConnectionState.IDENTIFYING)
        fields = self.options.identify_fields()
        self._stream.write(protocol.MAGIC_V2 + protocol.encode_identify(fields))
        self._event("identifying", fields)
        try:
            reply = await self._handshake_reply()
        except ProtocolError as exc:
            refused = protocol.identify_refusal(exc.text)
            if refused is None:
                raise
            option, value = refused
            raise IdentifyRefusedError(option, value, exc.text) from exc
        response = protocol.parse_identify_response(reply)
        self.identify_response = response
        self._event("identified", response)
        logger.debug("%s: IDENTIFY response %s", self.address, response)

        if self.options.wants_tls:
            if not response.tls_v1:
                raise NegotiationError(
                    f"TLS was asked for but nsqd at {self.address} did not grant it "
                    "(start nsqd with --tls-cert and --tls-key); not continuing in plaintext"
                )
            await self._upgrade_tls()
        if response.snappy:
            await self._upgrade_codec(SnappyCodec())
        elif response.deflate:
            await self._upgrade_codec(DeflateCodec(self.options.deflate_level))
        elif self.options.snappy or self.options.deflate:
            logger.warning("%s: nsqd did not grant compression; continuing without", self.address)

        if response.auth_required:
            await self._authenticate()
        elif self.options.auth_secret is not None:
            logger.warning("%s: auth_secret given but nsqd does not require AUTH", self.address)
        return response

    async def _handshake_reply(self) -> bytes:
        """The next response during the handshake; heartbeats are skipped (answered after)."""
        assert self._stream is not None
        while True:
            frame = self._reader.feed_one()
            while frame is None:
                chunk = await self._stream.read_bytes(_READ_CHUNK, partial=True)
                frame = self._reader.feed_one(self._codec.decode(chunk))
            if frame.type == protocol.FRAME_TYPE_ERROR:
                raise error_from_frame(frame.data)
            if frame.type != protocol.FRAME_TYPE_RESPONSE:
                raise FrameError(f"{self.address}: a message arrived during the handshake")
            if frame.data == protocol.HEARTBEAT:
                self.send(protocol.encode_nop())  # queued; flushed once the handshake is done
                continue
            return frame.data

    def _take_raw_leftover(self) -> bytes:
        """Bytes read past the last handshake frame, still in their wire encoding."""
        return self._reader.take_buffered()

    async def _upgrade_tls(self) -> None:
        assert self._stream is not None
        if self._take_raw_leftover():
            raise FrameError(f"{self.address}: unexpected bytes before the TLS handshake")
        context = self.options.ssl_context()
        plain, self._stream = self._stream, None  # start_tls takes the socket over
        try:
            self._stream = await plain.start_tls(
                False, ssl_options=context, server_hostname=self.host
            )
        except (ssl.SSLError, StreamClosedError, OSError) as exc:
            reason = getattr(exc, "real_error", None) or exc
            raise NegotiationError(f"TLS handshake with {self.address} failed: {reason}") from exc
        self._expect_ok(await self._handshake_reply(), "TLS")
        logger.info("%s: upgraded to TLS", self.address)

    async def _upgrade_codec(self, codec: Codec) -> None:
        leftover = self._take_raw_leftover()
        self._codec = codec
        if leftover:
            self._reader.feed(codec.decode(leftover), limit=0)
        self._expect_ok(await self._handshake_reply(), codec.name)
        logger.info("%s: upgraded to %s", self.address, codec.name)

    def _expect_ok(self, data: bytes, step: str) -> None:
        if data != protocol.OK:
            raise FrameError(f"{self.address}: expected OK after the {step} upgrade, got {data!r}")

    async def _authenticate(self) -> None:
        assert self._stream is not None
        secret = self.options.auth_secret
        if secret is None:
            raise AuthError(
                "E_AUTH_REQUIRED",
                f"nsqd at {self.address} requires authorization: give auth_secret",
            )
        self._stream.write(self._codec.encode(protocol.encode_auth(secret)))
        self._event("authenticating")
        self.auth_response = protocol.parse_auth_response(await self._handshake_reply())
        self._event("authorized", self.auth_response)
        logger.info(
            "%s: authorized as %r (%d permissions)",
            self.address,
            self.auth_response.identity,
            self.auth_response.permission_count,
        )

    # --- writing ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue bytes; everything queued in one loop turn goes out in one write."""
        self._outbox.append(data)
        if not self._flush_scheduled and self._writable:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._outbox or self._stream is None:
            return
        data = b"".join(self._outbox) if len(self._outbox) > 1 else self._outbox[0]
        self._outbox.clear()
        # on a closed stream the read loop sees the close and fails what is pending
        with contextlib.suppress(StreamClosedError):
            self._last_write = self._stream.write(self._codec.encode(data))

    def command(self, data: bytes) -> asyncio.Future[bytes]:
        """Send an encoded command that nsqd answers (PUB, MPUB, DPUB, SUB, CLS); the future
        resolves with the answer, in FIFO order, or fails with the typed error."""
        if self._state is not ConnectionState.READY:
            raise ConnectionClosedError(
                f"{self.address}: connection is {self.state.value}, not ready"
            )
        assert self._loop is not None
        future: asyncio.Future[bytes] = self._loop.create_future()
        self._pending.append(future)
        self.send(data)
        return future

    def pub(self, topic: str, body: bytes) -> asyncio.Future[bytes]:
        """PUB; the future resolves with ``OK`` or fails with the typed error."""
        return self.command(protocol.encode_pub(topic, body))

    def mpub(
        self, topic: str, bodies: Iterable[bytes], *, checked: bool = False
    ) -> asyncio.Future[bytes]:
        """MPUB (atomic); the future resolves with ``OK`` or fails with the typed error.

        ``checked=True`` skips the per-message checks for bodies (a list) already checked.
        """
        if checked:
            return self.command(protocol.encode_checked_mpub(topic, bodies))  # type: ignore[arg-type]
        return self.command(protocol.encode_mpub(topic, bodies))

    def dpub(self, topic: str, delay: float, body: bytes) -> asyncio.Future[bytes]:
        """DPUB, deferred by ``delay`` seconds; resolves with ``OK`` or fails."""
        return self.command(protocol.encode_dpub(topic, round(delay * 1000), body))

    async def subscribe(self, topic: str, channel: str) -> None:
        """SUB and wait for nsqd's ``OK`` (so a bad topic or missing right raises here)."""
        if self.subscription is not None:
            raise NSQConnectionError(f"{self.address}: already subscribed to {self.subscription}")
        command = protocol.encode_sub(topic, channel)
        self.subscription = (topic, channel)
        await self.command(command)
        self._arm_sweeper()
        logger.info("%s: subscribed to %s/%s", self.address, topic, channel)

    def rdy(self, count: int) -> None:
        """Send RDY ``count`` when it differs from the last value sent."""
        max_rdy = self.max_rdy_count
        if count > max_rdy:
            raise ValueError(f"RDY {count} is above nsqd's max_rdy_count of {max_rdy}")
        if count != self.rdy_count and self._state is ConnectionState.READY:
            self.rdy_count = count
            self.send(protocol.encode_rdy(count))

    @property
    def max_rdy_count(self) -> int:
        """The largest RDY this nsqd accepts."""
        response = self.identify_response
        return response.max_rdy_count if response else protocol.DEFAULT_MAX_RDY_COUNT

    # --- settlement (called by Message) -----------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Messages delivered here and neither settled nor taken back by nsqd yet."""
        return len(self._unsettled)

    def unsettled(self) -> list[Message[bytes]]:
        """The messages delivered here and not yet settled, oldest first."""
        return list(self._unsettled.values())

    def settle_fin(self, message: Message[Any]) -> None:
        if threading.get_ident() != self._thread_id and self._loop is not None:
            self._loop.call_soon_threadsafe(self._fin, message)
        else:
            self._fin(message)

    def settle_req(self, message: Message[Any], delay: float | None, backoff: bool) -> None:
        if threading.get_ident() != self._thread_id and self._loop is not None:
            self._loop.call_soon_threadsafe(self._req, message, delay, backoff)
        else:
            self._req(message, delay, backoff)

    def settle_touch(self, message: Message[Any]) -> None:
        if threading.get_ident() != self._thread_id and self._loop is not None:
            self._loop.call_soon_threadsafe(self._touch, message)
        else:
            self._touch(message)

    def _fin(self, message: Message[Any]) -> None:
        delivery = message.delivery
        if self._unsettled.pop(delivery, None) is None:
            self.duplicate_settlements += 1
            return
        self.finished += 1
        if self._delegate is not None:
            self._delegate.on_settle(self, message, None)
        self.send(b"FIN " + delivery.id + b"\n")
        self._settled()
        self._event_soon("finished", None, message)

    def _req(self, message: Message[Any], delay: float | None, backoff: bool) -> None:
        delivery = message.delivery
        if self._unsettled.pop(delivery, None) is None:
            self.duplicate_settlements += 1
            return
        self.requeued += 1
        if self._delegate is not None:
            self._delegate.on_settle(self, message, backoff)
        if delay is None:
            delay = self.requeue_delay(delivery.attempts)
        delay = min(delay, self.max_requeue_delay)
        self.send(protocol.encode_req(delivery.id, max(0, math.floor(delay * 1000))))
        self._settled()
        self._event_soon("requeued", backoff, message)

    def _touch(self, message: Message[Any]) -> None:
        delivery = message.delivery
        if delivery not in self._unsettled or delivery.outcome is not None:
            return
        assert self._loop is not None
        # nsqd restarts the timeout, but never past max_msg_timeout after the first delivery
        limit = delivery.received + self.max_msg_timeout
        delivery.deadline = min(self._loop.time() + self.msg_timeout, limit)
        self.send(b"TOUCH " + delivery.id + b"\n")

    def _settled(self) -> None:
        if not self._unsettled and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _event_soon(self, kind: str, data: Any, message: Message[Any]) -> None:
        if self._loop is not None and self._events.has_observers:
            self._loop.call_soon(self._event, kind, data, message)

    # --- abandoned messages ------------------------------------------------------------------

    def _arm_sweeper(self) -> None:
        if self._loop is None or self._sweeper is not None:
            return
        interval = min(1.0, max(0.05, self.msg_timeout / 10))
        self._sweeper = self._loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        """Let go of messages nsqd has taken back (their deadline passed unsettled)."""
        self._sweeper = None
        if self._unsettled:
            assert self._loop is not None
            now = self._loop.time()
            expired = [
                message
                for delivery, message in self._unsettled.items()
                if delivery.deadline <= now and delivery.outcome is None
            ]
            if expired:
                self._abandon(expired)
        if self._state in (ConnectionState.READY, ConnectionState.CLOSING):
            self._arm_sweeper()

    def _make_room(self, now: float) -> None:
        """nsqd sent a message while we count the window full: it took some back. Let go of
        those closest to their deadline (the sweep would, a moment later)."""
        excess = len(self._unsettled) + 1 - self.rdy_count
        margin = min(0.5, self.msg_timeout / 10)
        due = [
            message
            for delivery, message in self._unsettled.items()
            if delivery.deadline - margin <= now and delivery.outcome is None
        ]
        if due:
            due.sort(key=lambda m: m.delivery.deadline)
            self._abandon(due[:excess])

    def _abandon(self, messages: list[Message[bytes]]) -> None:
        for message in messages:
            delivery = message.delivery
            del self._unsettled[delivery]
            delivery.outcome = "abandoned"
        self.abandoned += len(messages)
        if self._delegate is not None:
            self._delegate.on_abandon(self, messages)
        else:
            logger.warning(
                "%s: %d messages were neither settled nor touched within msg_timeout (%.1fs); "
                "nsqd took them back and will deliver them again",
                self.address,
                len(messages),
                self.msg_timeout,
            )
        self._settled()

    # --- reading ---------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        stream = self._stream
        assert stream is not None and self._loop is not None
        error: NSQError | None = None
        try:
            self._flush()  # NOPs for heartbeats seen during the handshake
            self._dispatch(self._reader.feed(b""))  # frames read along with the handshake
            while True:
                chunk = await stream.read_bytes(_READ_CHUNK, partial=True)
                self._last_read = self._loop.time()
                self._dispatch(self._reader.feed(self._codec.decode(chunk)))
        except StreamClosedError as exc:
            if self._close_error is None:
                reason = exc.real_error or "closed by nsqd"
                error = ConnectionClosedError(f"{self.address}: connection lost ({reason})")
        except NSQError as exc:
            error = exc
            if isinstance(exc, FrameError):
                logger.error("%s: %s", self.address, exc)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            logger.exception("%s: unexpected error in the read loop", self.address)
            error = ConnectionClosedError(f"{self.address}: {exc!r}")
        self._teardown(
            self._close_error or error or ConnectionClosedError(f"{self.address}: closed")
        )

    def _dispatch(self, frames: list[Frame]) -> None:
        for frame_type, data in frames:
            if frame_type == protocol.FRAME_TYPE_MESSAGE:
                self._on_message(data)
            elif frame_type == protocol.FRAME_TYPE_RESPONSE:
                self._on_response(data)
            else:
                self._on_error(error_from_frame(data))

    def _on_message(self, data: bytes) -> None:
        now = self._last_read
        message = Message.from_raw(protocol.decode_message(data), self, now)
        if len(self._unsettled) >= self.rdy_count and self._unsettled:
            self._make_room(now)
        self._unsettled[message.delivery] = message
        self.last_message_time = now
        if self._delegate is not None:
            self._delegate.on_message(self, message)
        if self._messages.has_observers:
            self._messages.emit(message)
        if self._events.has_observers:
            self._event("message", None, message)

    def _on_response(self, data: bytes) -> None:
        if data == protocol.HEARTBEAT:
            self.send(protocol.encode_nop())
            if self._delegate is not None:
                self._delegate.on_heartbeat(self)
            self._heartbeats.emit(self._last_read)
            self._event("heartbeat")
            return
        if self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_result(data)
        else:
            logger.warning("%s: unexpected response %r", self.address, data[:80])
            self._responses.emit(data)
        self._event("response", data)

    def _on_error(self, error: ProtocolError) -> None:
        self._errors.emit(error)
        self._event("error", error)
        if not error.fatal:
            logger.warning("%s: %s", self.address, error.text)
            return
        logger.error("%s: %s", self.address, error.text)
        failure: NSQError = error
        if isinstance(error, InvalidError) and "TLS required" in error.text:
            failure = NegotiationError(
                f"nsqd at {self.address} requires TLS ({error.text}): "
                "set tls_v1=True (or tls_options)"
            )
            failure.__cause__ = error
        if self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(failure)
        raise failure

    # --- liveness --------------------------------------------------------------------------

    def _arm_liveness(self) -> None:
        interval = self.options.heartbeat_interval
        if interval <= 0 or self._loop is None:
            return
        self._liveness = self._loop.call_later(interval, self._check_liveness)

    def _check_liveness(self) -> None:
        assert self._loop is not None
        limit = 2 * self.options.heartbeat_interval
        silent = self._loop.time() - self._last_read
        if silent > limit:
            self._close_error = ConnectionClosedError(
                f"{self.address}: nothing received for {silent:.1f}s (two heartbeat intervals); "
                "closing the connection as dead"
            )
            logger.warning("%s", self._close_error)
            self.abort()
            return
        self._arm_liveness()

    # --- closing ---------------------------------------------------------------------------

    async def close(self, timeout: float = 30.0) -> None:
        """Close cleanly: CLS and CLOSE_WAIT when subscribed, let in-flight messages settle
        (up to ``timeout`` seconds), wait for pending publishes, then close the socket."""
        if self.state in (ConnectionState.CLOSED, ConnectionState.CLOSING):
            await self._wait_closed()
            return
        if self.state is not ConnectionState.READY:
            self.abort()
            return
        assert self._loop is not None
        deadline = self._loop.time() + timeout
        try:
            if self.subscription is not None:
                self.rdy_count = 0
                cls = self.command(protocol.encode_cls())
                self._set_state(ConnectionState.CLOSING)
                async with asyncio.timeout(timeout):
                    await cls
            else:
                self._set_state(ConnectionState.CLOSING)
            if self._pending:
                async with asyncio.timeout_at(deadline):
                    await asyncio.gather(*self._pending, return_exceptions=True)
            if self.in_flight > 0:
                self._drained = self._loop.create_future()
                async with asyncio.timeout_at(deadline):
                    await self._drained
            self._flush()
            if self._last_write is not None:
                async with asyncio.timeout_at(deadline):
                    await self._last_write  # the last FIN/REQ reaches nsqd before the close
        except TimeoutError:
            logger.warning(
                "%s: closing with %d messages in flight and %d pending after %.1fs; "
                "requeueing the messages",
                self.address,
                self.in_flight,
                len(self._pending),
                timeout,
            )
            self.requeue_unsettled()
            self._flush()
        except (NSQError, StreamClosedError) as exc:
            logger.warning("%s: error while closing: %s", self.address, exc)
        self._close_error = self._close_error or ConnectionClosedError(f"{self.address}: closed")
        if self._stream is not None:
            self._stream.close()
        await self._wait_closed()

    def requeue_unsettled(self) -> int:
        """REQ (at once, without backoff) every message still in flight here; returns how many.

        For shutdown: nsqd redelivers them now instead of after their timeout.
        """
        count = 0
        for delivery in self._unsettled:
            if delivery.outcome == "fin":  # finished on another thread, not yet on the loop
                self.finished += 1
                self.send(b"FIN " + delivery.id + b"\n")
                continue
            delivery.outcome = "req"
            self.requeued += 1
            self.send(protocol.encode_req(delivery.id, 0))
            count += 1
        self._unsettled.clear()
        self._settled()
        return count

    async def _wait_closed(self) -> None:
        task = self._read_task
        if task is not None and task is not asyncio.current_task():
            await asyncio.wait([task])

    def abort(self) -> None:
        """Close the socket now, without draining; the read loop fails what is pending."""
        if self._stream is not None:
            self._stream.close()
        elif self._read_task is None:
            self._teardown(ConnectionClosedError(f"{self.address}: closed"))

    def _teardown(self, error: NSQError) -> None:
        if self._state is ConnectionState.CLOSED:
            return
        if self._liveness is not None:
            self._liveness.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        # nsqd requeues what was in flight when the connection goes; settling it is moot
        self._unsettled.clear()
        if self._stream is not None and not self._stream.closed():
            self._stream.close()
        pending = list(self._pending)
        self._pending.clear()
        if isinstance(error, ConnectionClosedError):
            pending_error = error
        else:
            pending_error = ConnectionClosedError(
                f"{self.address}: not done, connection closed ({error})"
            )
            pending_error.__cause__ = error  # why it closed, typed (FrameError, E_* ...)
        for future in pending:
            if not future.done():
                future.set_exception(pending_error)
                future.exception()  # a caller that gave up on it must not get a warning
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._outbox.clear()
        self._writable = False
        self.rdy_count = 0
        self.close_reason = error
        self._set_state(ConnectionState.CLOSED)
        self._event("closed", error)
        for stream in (self._messages, self._heartbeats, self._responses, self._errors):
            stream.complete()
        self._events.complete()
        self._states.complete()
        if self._delegate is not None:
            self._delegate.on_closed(self, error)
        if not isinstance(error, ConnectionClosedError) or self._close_error is not error:
            logger.info("%s: closed: %s", self.address, error)
