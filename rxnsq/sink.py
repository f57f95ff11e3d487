"""A Writer's Observer for one topic: items in, batched MPUB/PUB/DPUB commands out.

Three ways to feed it, by what the producer can do:

``sink.on_next(item)`` (or ``source.subscribe(sink)``)
    The Observer form, for Rx sources and plain loops. The cheapest (no await per item), but it
    cannot slow its caller: past the bound (``max_pending`` items or ``max_pending_bytes`` of
    bodies unconfirmed) the item fails with :class:`~rxnsq.errors.SinkOverflowError` (or
    evicts the oldest unsent one, ``on_overflow="drop_oldest"``). From a thread other than the
    loop's it hands the item to the loop (``call_soon_threadsafe``, one wake-up per loop turn)
    and, with ``on_overflow="block"``, waits there for room.
``await sink.send(item)``
    For async producers: waits for room instead of failing, so memory stays bounded whatever
    the producer's pace. Costs a coroutine per item (it suspends only when full, and once per
    batch to let the batch go out).
``await sink.feed(items)``
    ``send`` over an iterable or async iterable; returns how many items were fed.

Counts are in items (a list is one item): ``fed == confirmed + failed + pending``. Bytes are
counted as sent: each message's body plus its 4-byte size word. Every failed item is counted in
``failed``, emitted on ``failures`` as a ``PublishResult`` and reported on the writer's ``acks``
(per command, or per item when it never reached one).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import reactivex
from reactivex import abc

from . import protocol
from ._items import Deferred, PublishResult, again, body_bytes
from .config import check_range
from .errors import (
    ConfigError,
    ConnectionClosedError,
    InvalidBodyError,
    NSQError,
    SinkOverflowError,
)
from .streams import Broadcast

#: Called once per publish command with None (confirmed) or the error.
Done = Callable[[Exception | None], None]


@dataclass(frozen=True, slots=True)
class WriterLink:
    """What a :class:`Sink` needs of its Writer, given by the Writer as its own bound methods
    and limits: the sink never reaches into the Writer's fields (nor imports it)."""

    #: The writer's name, for messages.
    name: str
    #: nsqd's --max-msg-size and --max-body-size, as the writer was told.
    max_msg_size: int
    max_body_size: int
    #: Whether the writer's ``close()`` has begun.
    is_closing: Callable[[], bool]

    #: The writer's loop, bound to the running one on first use (RuntimeError without one).
    bind: Callable[[], asyncio.AbstractEventLoop]
    #: The id of the loop's thread, None until bound.
    thread: Callable[[], int | None]
    #: Run ``fn(*args)`` on the loop, from any thread, in call order.
    post: Callable[..., None]
    #: An item (body, Deferred, list) as encoded commands ``(bytes, message count)``; raises
    #: InvalidBodyError for what is not an item.
    commands_for: Callable[[str, object], list[tuple[bytes, int]]]
    #: Connect to every nsqd if not yet.
    ensure_started: Callable[[], None]
    #: Send commands for one item (now, or once a connection is up); ``done`` once each.
    submit: Callable[[str, list[tuple[bytes, int]], float, Done], None]
    #: Report on ``acks`` messages that failed before any command was sent.
    ack_failed: Callable[[str, int, Exception], None]


__all__ = ["Sink"]

logger = logging.getLogger("rxnsq.writer")

_get_ident = threading.get_ident
_COMPLETED = object()


class _Job:
    """Items sent together (a batch of bodies, or one Deferred/list item) until all their
    commands are answered; retried command by command."""

    __slots__ = ("attempt", "failed", "items", "left", "nbytes", "parts")

    def __init__(self, items: list[Any], nbytes: int, parts: int) -> None:
        """``nbytes``: the items' bytes as sent (bodies plus their 4-byte size words)."""
        self.items = items
        self.nbytes = nbytes
        self.parts = parts
        self.attempt = 0
        self.left = 0
        self.failed: list[tuple[tuple[bytes, int], Exception]] = []


class Sink(abc.ObserverBase[Any]):
    """A Writer's Observer for one topic; make one with :meth:`Writer.sink`.

    ``fed``, ``confirmed``, ``failed`` and ``pending`` count items; ``commands`` counts
    publish commands sent (retries included); ``errors`` keeps the first 100 errors;
    ``failures`` emits a failed :class:`~rxnsq.writer.PublishResult` per failed item (its
    ``item`` is the body as sent, or the Deferred/list fed); ``await sink.done`` waits until the
    source completed and every item was confirmed or failed.
    """

    def __init__(
        self,
        link: WriterLink,
        topic: str,
        *,
        max_batch: int,
        max_delay: float,
        max_bytes: int,
        max_pending: int,
        max_pending_bytes: int,
        on_overflow: str,
        retries: int,
        timeout: float,
    ) -> None:
        check_range("max_batch", max_batch, 1, 1 << 20, integer=True)
        check_range("max_delay", max_delay, 0.0, 3600.0)
        check_range("max_bytes", max_bytes, 16, link.max_body_size, integer=True)
        check_range("max_pending", max_pending, 1, 1 << 31, integer=True)
        check_range("max_pending_bytes", max_pending_bytes, 1, 1 << 40, integer=True)
        check_range("retries", retries, 0, 1000, integer=True)
        if on_overflow not in ("error", "drop_oldest", "block"):
            raise ConfigError("on_overflow", on_overflow, '"error", "drop_oldest" or "block"')
        self._link = link
        self.topic = topic
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.max_bytes = max_bytes
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.on_overflow = on_overflow
        self.retries = retries
        self.timeout = timeout
        self.confirmed = 0
        self.failed = 0
        self.commands = 0
        self.errors: list[Exception] = []
        self._failures: Broadcast[PublishResult[Any]] = Broadcast(f"sink {topic} failures")
        #: One failed :class:`PublishResult` per failed item.
        self.failures: reactivex.Observable[PublishResult[Any]] = self._failures.observable
        #: The error the source ended with (``on_error``), if any.
        self.source_error: Exception | None = None

        self._max_msg_size = link.max_msg_size
        self._buffer: list[bytes] = []
        self._buffer_size = 4  # the MPUB body: a count word, then a size word per message
        self._fed = 0  # items fed, apart from those in the buffer
        self._inflight = 0  # pending items apart from the buffer: sent, retried, or waiting
        self._inflight_bytes = 0
        # what the next buffered bodies may fill without a check of their own (fast path)
        self._batch_items = 0
        self._batch_bytes = 0
        self._flush_at = max_batch - 1  # the index of a batch's last body
        self._timer: asyncio.TimerHandle | None = None
        self._open = True  # accepting items: the source has not completed, the writer is open
        self._completed = False
        self._closed_error: NSQError | None = None
        self._done: asyncio.Future[None] | None = None
        self._room: list[asyncio.Future[None]] = []
        self._retrying: dict[_Job, asyncio.TimerHandle] = {}
        self._cond = threading.Condition()
        self._blocked = 0
        self._handed = 0
        self._overflowing = False
        self._flushes = 0
        self._thread: int | None = None
        self._limits()
        try:
            link.bind()
            self._thread = link.thread()
        except RuntimeError:
            pass  # bound on first use, on the loop that feeds it

    def __repr__(self) -> str:
        return (
            f"<Sink {self.topic} confirmed={self.confirmed} failed={self.failed} "
            f"pending={self.pending}>"
        )

    @property
    def fed(self) -> int:
        """Items received (``confirmed + failed + pending``)."""
        return self._fed + len(self._buffer)

    @property
    def pending(self) -> int:
        """Items received and not yet confirmed or failed (buffered, sent, or to be retried)."""
        return self._inflight + len(self._buffer)

    @property
    def pending_bytes(self) -> int:
        """Bytes of the pending items, as sent (bodies and their 4-byte size words)."""
        return self._inflight_bytes + self._buffer_size - 4

    @property
    def done(self) -> asyncio.Future[None]:
        """Resolves when the source completed and every item was confirmed or failed."""
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
            self._check_done()
        return self._done

    # --- the Observer ---------------------------------------------------------------------------

    def on_next(self, value: Any) -> None:
        """Take one item. Never raises for a bad or unsendable item: it is counted failed."""
        if type(value) is bytes and self._thread == _get_ident():
            # the fast path: a body that fits in the batch and in the bounds, on the loop
            buffer = self._buffer
            count = len(buffer)
            if count < self._batch_items:
                size = len(value)
                total = self._buffer_size + size + 4
                if total <= self._batch_bytes and 0 < size <= self._max_msg_size:
                    buffer.append(value)
                    self._buffer_size = total
                    if count == self._flush_at:
                        self.flush()
                    elif count == 0 and self._timer is None:
                        self._arm_timer()
                    return
        if self._thread != _get_ident():
            self._from_elsewhere(value)
            return
        self._put(value, bounded=True)

    def on_error(self, error: Exception) -> None:
        """The source failed: what it sent is still published; the sink completes."""
        if self._thread is not None and self._thread != _get_ident():
            self._link.post(self.on_error, error)
            return
        logger.error("sink for %s: the source failed: %r", self.topic, error)
        self.source_error = error
        self._complete()

    def on_completed(self) -> None:
        """The source completed: send what is buffered; ``done`` resolves once all is settled."""
        if self._thread is not None and self._thread != _get_ident():
            self._link.post(self._complete)
            return
        self._complete()

    def _complete(self) -> None:
        self._completed = True
        self._close_intake()
        self._check_done()

    def _close_intake(self) -> None:
        """Take no more items (each later one fails); send what is buffered."""
        self._open = False
        self._batch_items = 0  # every item goes through the general path, which refuses it
        self.flush()

    # --- feeding with backpressure ---------------------------------------------------------------

    async def send(self, item: Any) -> None:
        """Feed one item, first waiting (never failing) while the sink is full."""
        self._check_loop_thread("send")
        await self._put_waiting(item)

    async def feed(self, items: Iterable[Any] | AsyncIterable[Any]) -> int:
        """``send`` every item of an iterable or async iterable; returns how many were fed.
        The sink is not completed: call ``on_completed()`` when there is nothing more."""
        self._check_loop_thread("feed")
        count = 0
        if isinstance(items, AsyncIterable):
            async for item in items:
                await self._put_waiting(item)
                count += 1
        else:
            for item in items:
                await self._put_waiting(item)
                count += 1
        return count

    def _check_loop_thread(self, name: str) -> None:
        if self._thread is None:
            self._bind()
        if self._thread != _get_ident():
            raise RuntimeError(
                f"await sink.{name}() on the writer's loop; from another thread call "
                "sink.on_next(item) (with on_overflow='block' to wait for room)"
            )

    async def _put_waiting(self, item: Any) -> None:
        # a body the fast path takes has room by construction: no further check
        if not (
            type(item) is bytes
            and len(self._buffer) < self._batch_items
            and self._buffer_size + len(item) + 4 <= self._batch_bytes
        ):
            size = _size_hint(item)
            while self._open and not self._has_room(size):
                waiter = asyncio.get_running_loop().create_future()
                self._room.append(waiter)
                try:
                    await waiter
                finally:
                    if waiter in self._room:
                        self._room.remove(waiter)
        flushes = self._flushes
        self.on_next(item)
        if self._flushes != flushes:
            await asyncio.sleep(0)  # let the batch go out while the producer goes on

    def _has_room(self, size: int) -> bool:
        """Room for one more item of ``size`` body bytes (an item alone always fits)."""
        pending = self.pending
        return pending < self.max_pending and (
            pending == 0 or self.pending_bytes + size + 4 <= self.max_pending_bytes
        )

    def _limits(self) -> None:
        """What the buffer may take on the fast path, from the room left once what is already
        sent is counted; recomputed whenever that changes."""
        if not self._open:
            self._batch_items = 0
            return
        self._batch_items = min(self.max_batch, self.max_pending - self._inflight)
        self._batch_bytes = min(self.max_bytes, 4 + self.max_pending_bytes - self._inflight_bytes)

    # --- off the loop --------------------------------------------------------------------------

    def _bind(self) -> None:
        self._link.bind()
        self._thread = self._link.thread()

    def _from_elsewhere(self, value: Any) -> None:
        if self._thread is None:
            self._bind()  # raises a clear RuntimeError when no loop runs here
            self.on_next(value)
            return
        if self.on_overflow == "block":
            with self._cond:
                self._blocked += 1
                try:
                    while self._open and not self._has_room_for_thread():
                        self._cond.wait(0.05)
                finally:
                    self._blocked -= 1
                self._handed += 1
        self._link.post(self._put_handed, value)

    def _has_room_for_thread(self) -> bool:
        return (
            self.pending + self._handed < self.max_pending
            and self.pending_bytes < self.max_pending_bytes
        )

    def _put_handed(self, value: Any) -> None:
        if self.on_overflow == "block":
            with self._cond:
                self._handed -= 1
            self._put(value, bounded=False)  # the producer waited for room already
        else:
            self.on_next(value)

    # --- the general path ------------------------------------------------------------------------

    def _put(self, value: Any, bounded: bool) -> None:
        """The general path: any item, checked; ``bounded=False`` for items whose producer
        already waited for room (a thread with ``on_overflow="block"``)."""
        if self._thread is None:
            self._bind()
        if not self._open:
            self._refuse(value, self._not_open_error())
            return
        if isinstance(value, Deferred | list | tuple):
            try:
                commands = self._link.commands_for(self.topic, value)
            except NSQError as exc:
                self._refuse(value, exc)
                return
            size = sum(len(data) for data, _count in commands)
            if bounded and not self._make_room(size):
                self._overflow(value)
                return
            if isinstance(value, list | tuple):
                self.flush()  # what came before goes first
            self._fed += 1
            self._inflight += 1
            self._inflight_bytes += size + 4
            self._limits()
            self._start_job(_Job([value], size + 4, len(commands)), commands)
            return
        try:
            body = body_bytes(value, self.topic, self._max_msg_size)
        except InvalidBodyError as exc:
            self._refuse(value, exc)
            return
        size = len(body)
        if bounded and not self._make_room(size):
            self._overflow(body)
            return
        if self._buffer and self._buffer_size + 4 + size > self.max_bytes:
            self.flush()
        self._buffer.append(body)
        self._buffer_size += 4 + size
        if len(self._buffer) >= self.max_batch:
            self.flush()
        elif self._timer is None:
            self._arm_timer()

    def _refuse(self, value: Any, error: Exception) -> None:
        """An item fed that never becomes pending: counted fed and failed at once."""
        self._fed += 1
        self._fail_item(value, error, acked=False)

    def _arm_timer(self) -> None:
        """A batch began with no timer running: it is sent at the latest ``max_delay`` from
        now (a timer is not cancelled by a flush: it may send a later batch early, which
        costs less than a timer per batch). Connects the writer if it is not yet."""
        self._link.ensure_started()
        self._timer = self._link.bind().call_later(self.max_delay, self._on_timer)

    def _not_open_error(self) -> NSQError:
        if self._closed_error is not None or self._link.is_closing():
            return ConnectionClosedError(
                f"{self._link.name} is closing: item for {self.topic!r} not published"
            )
        return NSQError(f"the sink for {self.topic!r} already completed: item not published")

    def _make_room(self, size: int) -> bool:
        """Room for an item of ``size`` bytes, evicting the oldest unsent bodies when the policy
        is ``drop_oldest``."""
        if self._has_room(size):
            return True
        if self.on_overflow != "drop_oldest":
            return False
        while self._buffer and not self._has_room(size):
            dropped = self._buffer.pop(0)
            self._buffer_size -= 4 + len(dropped)
            self._refuse(dropped, self._overflow_error())
        return self._has_room(size)

    def _overflow(self, value: Any) -> None:
        error = self._overflow_error()
        if not self._overflowing:
            self._overflowing = True
            hint = (
                " (on_overflow='block' waits only on threads other than the loop's)"
                if self.on_overflow == "block"
                else ""
            )
            logger.warning("%s; failing items until there is room%s", error, hint)
        self._refuse(value, error)

    def _overflow_error(self) -> SinkOverflowError:
        return SinkOverflowError(
            f"sink for {self.topic!r} is full: {self.pending} items / {self.pending_bytes} "
            f"bytes unconfirmed (max_pending={self.max_pending}, max_pending_bytes="
            f"{self.max_pending_bytes}); feed with `await sink.send(item)` to wait for room"
        )

    # --- sending ---------------------------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Send what is buffered now (never an empty MPUB)."""
        if self._thread is not None and self._thread != _get_ident():
            self._link.post(self.flush)
            return
        bodies = self._buffer
        if not bodies:
            return
        count = len(bodies)
        nbytes = self._buffer_size - 4
        self._buffer = []
        self._buffer_size = 4
        self._flushes += 1
        self._fed += count
        self._inflight += count
        self._inflight_bytes += nbytes
        self._limits()
        if count == 1:
            data = protocol.encode_checked_pub(self.topic, bodies[0])
        else:
            data = protocol.encode_checked_mpub(self.topic, bodies)
        self._start_job(_Job(bodies, nbytes, 1), [(data, count)])

    def _start_job(self, job: _Job, commands: list[tuple[bytes, int]]) -> None:
        job.left = len(commands)
        self.commands += len(commands)
        for command in commands:
            self._link.submit(
                self.topic, [command], self.timeout, partial(self._part_done, job, command)
            )

    def _part_done(self, job: _Job, command: tuple[bytes, int], error: Exception | None) -> None:
        job.left -= 1
        if error is not None:
            job.failed.append((command, error))
        if job.left:
            return
        if not job.failed:
            self.confirmed += len(job.items)
            self._release(len(job.items), job.nbytes)
            self._check_done()
            return
        error = job.failed[-1][1]
        if (
            isinstance(error, NSQError)
            and error.retriable
            and job.attempt < self.retries
            and not self._link.is_closing()
            and self._closed_error is None
        ):
            retry = [command for command, _error in job.failed]
            job.failed = []
            job.attempt += 1
            self._retrying[job] = self._link.bind().call_later(
                0.1 * job.attempt, self._retry, job, retry
            )
            return
        if job.parts > 1:
            error = again(
                error if isinstance(error, NSQError) else NSQError(str(error)),
                f"a list for {self.topic!r} split into {job.parts} MPUBs (above max_bytes) "
                f"was not all confirmed: {error}",
            )
        self._fail_job(job, error)

    def _retry(self, job: _Job, commands: list[tuple[bytes, int]]) -> None:
        del self._retrying[job]
        self._start_job(job, commands)

    def _fail_job(self, job: _Job, error: Exception) -> None:
        self._release(len(job.items), job.nbytes)
        for item in job.items:
            self._fail_item(item, error, acked=True)
        self._check_done()

    def _fail_item(self, item: Any, error: Exception, *, acked: bool) -> None:
        """Count one item failed and report it (``acked``: the writer already did, per command)."""
        self.failed += 1
        if len(self.errors) < 100:
            self.errors.append(error)
        if not acked:
            count = len(item) if isinstance(item, list | tuple) else 1
            self._link.ack_failed(self.topic, count, error)
        if self._failures.has_observers:  # a raising subscriber is logged by the stream
            count = len(item) if isinstance(item, list | tuple) else 1
            self._failures.emit(PublishResult(item, False, error, count))
        self._check_done()

    def _release(self, items: int, nbytes: int) -> None:
        self._inflight -= items
        self._inflight_bytes -= nbytes
        self._limits()
        if self._overflowing and self.pending <= self.max_pending // 2:
            self._overflowing = False
        room = self._room
        if room:
            self._room = []
            for waiter in room:
                if not waiter.done():
                    waiter.set_result(None)
        if self._blocked:
            with self._cond:
                self._cond.notify_all()

    def _check_done(self) -> None:
        done = self._done
        if self._completed and self.pending == 0 and done is not None and not done.done():
            done.set_result(None)

    # --- closing ---------------------------------------------------------------------------------

    def closing(self) -> None:
        """The writer is closing: take no more items, send what is buffered."""
        self._close_intake()

    def abandon(self, error: NSQError) -> None:
        """The writer is closed: whatever is still buffered or waiting to be retried fails."""
        self._closed_error = error
        self._open = False
        self._batch_items = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._buffer:
            bodies, nbytes = self._buffer, self._buffer_size - 4
            self._buffer, self._buffer_size = [], 4
            self._fed += len(bodies)
            self._inflight += len(bodies)
            self._inflight_bytes += nbytes
            self._fail_job(_Job(bodies, nbytes, 1), error)
        for job, handle in list(self._retrying.items()):
            handle.cancel()
            del self._retrying[job]
            self._fail_job(job, error)
        for waiter in self._room:
            if not waiter.done():
                waiter.set_result(None)
        self._room = []
        with self._cond:
            self._cond.notify_all()
        self._completed = True
        self._check_done()


def _size_hint(item: Any) -> int:
    if isinstance(item, bytes | bytearray | str):
        return len(item)
    if isinstance(item, memoryview):
        return item.nbytes
    return 0
