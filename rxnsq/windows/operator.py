"""The windowed aggregation operator: ``Message[V]`` in, :class:`WindowResult` out.

``windows.count(key=..., window=..., clock=..., lateness=...)`` (and ``fold``, ``reduce``,
``collect``) make a :class:`Windowed`: pipe messages into it like any operator; subscribe to
its ``late`` stream for the events that came after their window closed.

Two modes, one set of rules (:mod:`rxnsq.windows.plan`):

- **Small windows** (no ``store``): messages are held in flight (TOUCHed) while their window
  is open; a result carries them, and ``result.settle()`` FINs them (``requeue()`` REQs them).
  Everything a window holds counts against max_in_flight and must not outlive nsqd's
  max-msg-timeout: a configuration that cannot fit is a :class:`~rxnsq.errors.ConfigError`
  pointing to the store mode.
- **Large windows** (``store=SQLiteStore(...)`` or ``PostgresStore(...)``, with a ``name``):
  each batch of messages is folded into the store in one transaction together with the
  messages' ids, then FINed; a redelivered id already stored is FINed without folding.
  Final windows are claimed from the store (one consumer each), emitted, and retired from the
  store when ``result.settle()`` is called. Ids are kept ``id_retention`` seconds after their
  window is retired (default twice nsqd's msg_timeout: the longest a FIN lost in a crash can
  take to come back as a redelivery); a redelivery later than that finds the persisted
  watermark past its window and goes to the late stream, never into a result twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import reactivex
from reactivex import abc
from reactivex.disposable import CompositeDisposable, Disposable, SerialDisposable
from reactivex.scheduler import VirtualTimeScheduler

from ..errors import ConfigError
from ..message import ConsumerContext, Message
from ..ops import Batch
from ..scheduler import loop_scheduler
from ..streams import Broadcast
from .aggregate import Aggregation, Codec, collector, counter, folder, reducer
from .assign import Session, Sliding, Tumbling, Window, Windower
from .clock import Clock, EventClock, ProcessingClock, closed_up_to, processing_time, watermark
from .plan import Item, Plan, Snapshot, Spec, plan
from .results import Late, WindowResult
from .store import Claimed, FoldRequest, Store, decode_key, encode_key

__all__ = ["Windowed", "aggregate", "collect", "count", "fold", "reduce"]

logger = logging.getLogger(__name__)

V = TypeVar("V")
K = TypeVar("K", bound=Hashable)
A = TypeVar("A")

#: How long before nsqd's max-msg-timeout a held message makes the small mode give up.
_TIMEOUT_MARGIN = 0.1


def _positive(option: str, value: object, *, zero: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (not zero and value == 0):  # type: ignore[operator]
        raise ConfigError(option, value, f"a number of seconds {'>=' if zero else '>'} 0")
    return float(value)  # type: ignore[arg-type]


class Windowed(Generic[V, K, A]):
    """A keyed, windowed aggregation; call it on an ``Observable[Message[V]]`` (``pipe`` it).

    ``late`` is the stream of :class:`Late` events (settle them there; with nobody subscribed
    they are finished and counted, with a warning). ``stats()`` counts what happened.
    """

    def __init__(
        self,
        aggregation: Aggregation[V, A],
        *,
        key: Callable[[V], K],
        window: Windower,
        clock: Clock | None = None,
        lateness: float = 0.0,
        store: Store | None = None,
        name: str | None = None,
        id_retention: float | None = None,
        lease: float = 30.0,
        tick: float = 1.0,
        max_batch: int = 1000,
        touch_interval: float | None = None,
    ) -> None:
        if not isinstance(aggregation, Aggregation):
            raise ConfigError("aggregation", aggregation, "an Aggregation (counter(), folder()...)")
        if not callable(key):
            raise ConfigError("key", key, "a function of the message value giving its key")
        if not isinstance(window, Tumbling | Sliding | Session):
            raise ConfigError("window", window, "tumbling(...), sliding(...) or session(...)")
        clock = clock if clock is not None else processing_time()
        if not isinstance(clock, EventClock | ProcessingClock):
            raise ConfigError("clock", clock, "event_time(...) or processing_time()")
        if window.merging and not aggregation.can_merge:
            raise ConfigError("window", window, f"{aggregation.kind} without merge= cannot merge")
        if store is not None:
            missing = [m for m in ("fold", "claim", "retire", "sweep") if not hasattr(store, m)]
            if missing:
                raise ConfigError("store", store, "a Store (SQLiteStore, PostgresStore)")
            if aggregation.holds_messages:
                raise ConfigError(
                    "store", store, "collect holds the messages themselves: small windows only"
                )
            if not isinstance(name, str) or not name:
                raise ConfigError("name", name, "a non-empty str naming the aggregation's state")
        elif name is not None and not isinstance(name, str):
            raise ConfigError("name", name, "a str, or None")
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise ConfigError("max_batch", max_batch, "an int >= 1")
        self.aggregation = aggregation
        self.key = key
        self.window = window
        self.clock = clock
        self.lateness = _positive("lateness", lateness, zero=True)
        self.store = store
        self.name = name or f"{aggregation.kind}-{window.kind}"
        self.id_retention = (
            None if id_retention is None else _positive("id_retention", id_retention, zero=True)
        )
        self.lease = _positive("lease", lease)
        self.tick = _positive("tick", tick)
        self.max_batch = max_batch
        self.touch_interval = (
            None if touch_interval is None else _positive("touch_interval", touch_interval)
        )
        self.spec = Spec(window, aggregation, self.lateness, clock.delay, clock.idle)
        self._late: Broadcast[Late[V]] = Broadcast(f"{self.name} late", on_raise=self._late_raised)
        #: Events that came after their windows closed (:class:`Late`); settle them here.
        self.late: reactivex.Observable[Late[V]] = self._late.observable
        self.counts: Counter[str] = Counter()
        self._late_warned = 0.0
        self._runs: set[_StoredRun[V, K, A]] = set()
        self._progress = asyncio.Event()  # set by store workers after each round

    def __repr__(self) -> str:
        mode = f"store={self.store!r}" if self.store is not None else "held"
        return f"<Windowed {self.name} {self.window!r} {self.clock!r} {mode}>"

    def __call__(
        self, source: reactivex.Observable[Message[V]]
    ) -> reactivex.Observable[WindowResult[K, A]]:
        def subscribe(
            observer: abc.ObserverBase[WindowResult[K, A]],
            scheduler: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            run: _HeldRun[V, K, A] | _StoredRun[V, K, A]
            if self.store is None:
                run = _HeldRun(self, observer, scheduler or loop_scheduler())
            else:
                run = _StoredRun(self, self.store, observer, scheduler or loop_scheduler())
            return run.run(source, scheduler)

        return reactivex.create(subscribe)

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until every store-mode subscription has written what it was given (folds of
        received messages, retirements of settled results); small windows have nothing to
        write. Raises TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while any(run.busy for run in self._runs):
                self._progress.clear()
                await self._progress.wait()

    def stats(self) -> dict[str, int]:
        """Counts: ``folded``, ``duplicates``, ``late``, ``late_unobserved``, ``failed``,
        ``results``, ``settled``, ``requeued``, ``store_errors``..."""
        return dict(self.counts)

    # --- shared by both modes --------------------------------------------------------------

    def _late_raised(self, error: Exception, late: Late[V]) -> None:
        """A late-stream subscriber raised: the late message is requeued, the error reported."""
        late.message.req(backoff=True)
        _report(error, "windows late subscriber", late.message)

    def _emit_late(self, late: Late[V]) -> None:
        self.counts["late"] += 1
        if self._late.has_observers:
            self._late.emit(late)
            return
        self.counts["late_unobserved"] += 1
        late.message.fin()
        now = time.monotonic()
        if now - self._late_warned > 60.0:
            self._late_warned = now
            logger.warning(
                "%s: %d late events so far were finished unseen: subscribe to .late to "
                "handle them (last: key %r at %s, watermark %s)",
                self.name, self.counts["late_unobserved"], late.key, late.time, late.watermark,
            )  # fmt: skip

    def _item(self, message: Message[V], now: float) -> tuple[Item[V], Hashable] | None:
        """Key, event time and windows of ``message`` (user code: what it raises requeues
        the message and is reported)."""
        try:
            key = self.key(message.value)
            text = encode_key(key)
            ts = self.clock.time_of(message.value, now)
        except Exception as exc:
            self.counts["failed"] += 1
            message.req(backoff=True)
            _report(exc, f"{self.name} key/timestamp", message)
            return None
        return Item(text, ts, message.value, self.window.assign(ts)), key

    def _result_id(self, key: str, window: Window) -> str:
        return f"{self.name}:{key}:{window.start!r}:{window.end!r}"


def _report(error: BaseException, stage: str, message: Message[Any] | None) -> None:
    consumer = message.consumer if message is not None else None
    if consumer is not None:
        consumer.report_error(error, stage, message)
    else:
        logger.error("%s raised: %r", stage, error, exc_info=error)


def _deliver(
    observer: abc.ObserverBase[WindowResult[K, A]],
    result: WindowResult[K, A],
    first: Message[Any] | None,
    stage: str,
) -> None:
    """Emit ``result`` inside the boundary: a raising subscriber requeues it and is reported."""
    try:
        observer.on_next(result)
    except Exception as exc:
        result.requeue()
        _report(exc, stage, first)


def _ident(message: Message[Any]) -> bytes:
    """Which message a delivery is: nsqd gives a timed-out message back with the same id, on
    the same nsqd (two nsqd may mint one id: the address tells them apart)."""
    return message.address.encode() + b"/" + message.id


def _now(scheduler: abc.SchedulerBase) -> float:
    """System time in seconds: virtual in tests, the wall clock otherwise (windows of
    processing time are aligned to the epoch, like event time)."""
    if isinstance(scheduler, VirtualTimeScheduler):
        return scheduler.now.timestamp()
    return time.time()


def _every(scheduler: abc.SchedulerBase, seconds: float, action: Callable[[], None]) -> Any:
    """Run ``action`` every ``seconds`` on ``scheduler`` until the result is disposed."""
    timer = SerialDisposable()

    def run(_scheduler: abc.SchedulerBase, _state: object = None) -> None:
        action()
        if not timer.is_disposed:
            timer.disposable = scheduler.schedule_relative(seconds, run)

    timer.disposable = scheduler.schedule_relative(seconds, run)
    return timer


# --- small windows: held in flight ---------------------------------------------------------


class _HeldRun(Generic[V, K, A]):
    """One subscription of the small-window mode: windows and their messages in memory.

    ``members`` are the messages of each window (open, or emitted and not yet settled);
    ``refs[id]`` counts the windows holding a message, ``open_refs[id]`` the open ones, so a
    message is finished when its last window is settled and counts against max_in_flight while
    some open window holds it.
    """

    def __init__(
        self,
        op: Windowed[V, K, A],
        observer: abc.ObserverBase[WindowResult[K, A]],
        scheduler: abc.SchedulerBase,
    ) -> None:
        self.op = op
        self.observer = observer
        self.scheduler = scheduler
        self.state = Snapshot()
        self.members: dict[tuple[str, Window], list[Message[V]]] = {}
        self.where: dict[bytes, list[tuple[str, Window]]] = {}
        self.arrived: dict[bytes, float] = {}
        self.refs: dict[bytes, int] = {}
        self.open_refs: dict[bytes, int] = {}
        self.consumer: ConsumerContext | None = None
        self.max_age = 900.0
        self.started = False
        self.failed = False
        self.timers = CompositeDisposable()

    def run(
        self, source: reactivex.Observable[Message[V]], scheduler: abc.SchedulerBase | None
    ) -> abc.DisposableBase:
        self.timers.add(_every(self.scheduler, self.op.tick, self.on_tick))
        upstream = source.subscribe(
            self.on_next, self.observer.on_error, self.on_completed, scheduler=scheduler
        )
        return CompositeDisposable(upstream, self.timers, Disposable(self.dispose))

    def now(self) -> float:
        return _now(self.scheduler)

    def start(self, message: Message[V]) -> bool:
        """Checks and timers that need the first message's reader and connection."""
        self.started = True
        self.consumer = message.consumer
        connection = message.connection
        self.max_age = connection.max_msg_timeout
        interval = self.op.touch_interval or connection.msg_timeout / 2
        self.timers.add(_every(self.scheduler, interval, self.touch))
        if self.consumer is not None:
            self.timers.add(self.consumer.closing.subscribe(on_next=lambda _: self.give_back()))
        if isinstance(self.op.clock, ProcessingClock):
            span = self.op.window.span + self.op.lateness + self.op.tick
            if span >= self.max_age:
                self.fail(
                    ConfigError(
                        "window", self.op.window,
                        f"held windows must close within nsqd's max-msg-timeout "
                        f"({self.max_age:g}s) and this one takes {span:g}s: use a store "
                        "(store=SQLiteStore(...)) for long windows",
                    ),
                    message,
                )  # fmt: skip
                return False
        return True

    def on_next(self, message: Message[V]) -> None:
        if self.failed:
            message.req(0, backoff=False)
            return
        if not self.started and not self.start(message):
            return
        now = self.now()
        made = self.op._item(message, now)
        if made is None:
            return
        item, key = made
        known = self.where.get(_ident(message))
        if known is not None:  # nsqd took the old delivery back and sent it again: swap
            self.op.counts["duplicates"] += 1
            for slot in known:
                held = self.members.get(slot, [])
                for i, old in enumerate(held):
                    if _ident(old) == _ident(message):
                        held[i] = message
            self.arrived[_ident(message)] = now
            return
        placed = plan([item], self.state, self.op.spec, now)
        outcome = placed.outcomes[0]
        if outcome.kind == "late":
            late = Late(message, key, item.ts, outcome.windows, outcome.missed, outcome.watermark)
            self.op._emit_late(late)
        elif outcome.kind == "failed":
            self.op.counts["failed"] += 1
            message.req(backoff=True)
            assert outcome.error is not None
            _report(outcome.error, f"{self.op.name} aggregation", message)
        else:
            self.op.counts["folded"] += 1
            self.hold(item.key, message, outcome.windows, placed.merged, now)
            self.check_fit(message)
            if not self.failed:
                self.close_due([item.key], now)

    def hold(
        self,
        key: str,
        message: Message[V],
        windows: list[Window],
        merged: list[tuple[str, Window, Window]],
        now: float,
    ) -> None:
        for _key, absorbed, into in merged:  # a session merge: its messages move along
            moved = self.members.pop((key, absorbed), [])
            self.members.setdefault((key, into), []).extend(moved)
            for m in moved:
                self.where[_ident(m)] = [(key, into)]
        slots = [(key, w) for w in windows]
        for slot in slots:
            self.members.setdefault(slot, []).append(message)
        self.where[_ident(message)] = slots
        self.refs[_ident(message)] = self.open_refs[_ident(message)] = len(slots)
        self.arrived[_ident(message)] = now

    @property
    def open_held(self) -> int:
        return sum(1 for n in self.open_refs.values() if n > 0)

    def check_fit(self, message: Message[V]) -> None:
        consumer = self.consumer
        limit = consumer.max_in_flight if consumer is not None else 0
        if limit and len(self.open_refs) >= limit and self.open_held >= limit:
            self.fail(
                ConfigError(
                    "max_in_flight", limit,
                    f"the open windows hold {self.open_held} messages, all the reader may have "
                    "in flight, so none can be completed: raise max_in_flight or use a store "
                    "(store=SQLiteStore(...)) for windows larger than max_in_flight",
                ),
                message,
            )  # fmt: skip

    def fail(self, error: Exception, message: Message[V] | None) -> None:
        """The configuration cannot work: give every held message back and end the stream."""
        if message is not None and message.outcome is None and _ident(message) not in self.where:
            message.req(0, backoff=False)
        self.failed = True
        self.give_back()
        self.observer.on_error(error)

    def give_back(self) -> None:
        """Requeue the messages of every open window (the reader is closing, or we failed):
        their windows are forgotten and rebuilt when nsqd delivers them again."""
        for key, windows in list(self.state.windows.items()):
            for window, slot in list(windows.items()):
                if slot.open:
                    del windows[window]
                    self.release((key, window), fin=False, delay=0)

    def release(self, slot: tuple[str, Window], *, fin: bool, delay: float | None) -> None:
        """Settle the window's messages: FIN those no other window still holds, or REQ all
        (one backoff step unless ``delay`` is given)."""
        messages = self.members.pop(slot, [])
        requeue: list[Message[V]] = []
        for message in messages:
            left = self.refs.get(_ident(message), 1) - 1
            if fin and left > 0:
                self.refs[_ident(message)] = left
                continue
            for table in (self.refs, self.open_refs, self.arrived, self.where):
                table.pop(_ident(message), None)
            if fin:
                message.fin()
            else:
                requeue.append(message)
        if requeue:
            Batch(requeue).req_all(delay, backoff=delay is None)

    def on_tick(self) -> None:
        if self.failed:
            return
        now = self.now()
        self.close_due(list(self.state.windows), now)
        if self.arrived:
            oldest = min(self.arrived.values())
            if now - oldest >= self.max_age * (1 - _TIMEOUT_MARGIN):
                self.fail(
                    ConfigError(
                        "window", self.op.window,
                        f"a window held a message for {now - oldest:.0f}s, near nsqd's "
                        f"max-msg-timeout ({self.max_age:g}s), after which nsqd would deliver it "
                        "again: use a store (store=SQLiteStore(...)) for long windows",
                    ),
                    None,
                )  # fmt: skip

    def touch(self) -> None:
        for messages in self.members.values():
            for message in messages:
                message.touch()

    def close_due(self, keys: list[str], now: float) -> None:
        for key in keys:
            mark = watermark(self.state.clocks.get(key), now, self.op.clock.idle)
            windows = self.state.windows.get(key, {})
            due = sorted(
                w for w, s in windows.items() if s.open and w.end + self.op.lateness <= mark
            )
            for window in due:
                self.emit(key, window)

    def emit(self, key: str, window: Window) -> None:
        slot = self.state.windows[key][window]
        slot.open = False
        self.state.clocks[key] = closed_up_to(self.state.clocks[key], window.end)
        messages = list(self.members.get((key, window), []))
        for message in messages:
            if _ident(message) in self.open_refs:
                self.open_refs[_ident(message)] -= 1
        self.op.counts["results"] += 1
        result: WindowResult[K, A] = WindowResult(
            decode_key(key),  # type: ignore[arg-type]
            window,
            slot.acc,
            slot.count,
            self.op._result_id(key, window),
            self.settled,
            self.requeued,
            messages,
        )
        _deliver(self.observer, result, messages[0] if messages else None, self.op.name)

    def forget(self, result: WindowResult[K, A]) -> tuple[str, Window]:
        key = encode_key(result.key)
        windows = self.state.windows.get(key, {})
        windows.pop(result.window, None)
        return key, result.window

    def settled(self, result: WindowResult[K, A]) -> None:
        self.op.counts["settled"] += 1
        self.release(self.forget(result), fin=True, delay=None)

    def requeued(self, result: WindowResult[K, A], delay: float | None) -> None:
        self.op.counts["requeued"] += 1
        self.release(self.forget(result), fin=False, delay=delay)

    def on_completed(self) -> None:
        """End of a finite input: every open window is final (the watermark jumps to the
        end). A reader that closes is no end of input: its open windows are given back."""
        if self.consumer is not None and self.consumer.is_closing:
            self.give_back()
        elif not self.failed:
            pending = sorted(
                (w.end, w.start, k, w)
                for k, windows in self.state.windows.items()
                for w, s in windows.items()
                if s.open
            )
            for _end, _start, key, window in pending:
                self.emit(key, window)
        self.observer.on_completed()

    def dispose(self) -> None:
        """Requeue what open windows hold; results already out are their subscriber's to
        settle (like a :class:`~rxnsq.ops.Batch`)."""
        if not self.failed:
            self.give_back()


# --- large windows: folded into a store ----------------------------------------------------


class _StoredRun(Generic[V, K, A]):
    """One subscription of the store mode: a worker task that folds batches, claims final
    windows, retires processed ones and sweeps old ids, one store call at a time."""

    def __init__(
        self,
        op: Windowed[V, K, A],
        store: Store,
        observer: abc.ObserverBase[WindowResult[K, A]],
        scheduler: abc.SchedulerBase,
    ) -> None:
        self.op = op
        self.store = store
        self.observer = observer
        self.scheduler = scheduler
        self.owner = uuid.uuid4().hex
        self.pending: list[tuple[Item[V], Message[V], Hashable]] = []
        self.outstanding: dict[tuple[str, Window], WindowResult[K, A]] = {}
        self.to_retire: list[tuple[str, Window]] = []
        self.to_release: list[tuple[tuple[str, Window], float]] = []
        self.source: bytes | None = None
        self.retention: float | None = op.id_retention
        self.wake: asyncio.Event | None = None
        self.task: asyncio.Task[None] | None = None
        self.completed = False
        self.disposed = False
        self.claim_now = True
        self.folding = False
        self.last_message: Message[V] | None = None

    def run(
        self, source: reactivex.Observable[Message[V]], scheduler: abc.SchedulerBase | None
    ) -> abc.DisposableBase:
        loop = asyncio.get_running_loop()
        self.op._runs.add(self)
        self.wake = asyncio.Event()
        self.task = loop.create_task(self.work(), name=f"rxnsq-windows-{self.op.name}")
        upstream = source.subscribe(
            self.on_next, self.observer.on_error, self.on_completed, scheduler=scheduler
        )
        return CompositeDisposable(upstream, Disposable(self.dispose))

    def on_next(self, message: Message[V]) -> None:
        if self.source is None:
            consumer = message.consumer
            if consumer is not None:  # what the reader reads: part of a message's dedupe id
                self.source = f"{consumer.topic}/{consumer.channel}/".encode()
            else:
                self.source = b"-/-/"
            if self.retention is None:
                self.retention = 2 * message.connection.msg_timeout
        made = self.op._item(message, time.time())
        if made is None:
            return
        item, key = made
        item.dedupe = self.source + message.id
        self.pending.append((item, message, key))
        self.last_message = message
        assert self.wake is not None
        self.wake.set()

    def on_completed(self) -> None:
        self.completed = True
        assert self.wake is not None
        self.wake.set()

    @property
    def busy(self) -> bool:
        """Work received and not yet written to the store."""
        return bool(self.pending or self.to_retire or self.to_release or self.folding)

    def dispose(self) -> None:
        self.disposed = True
        self.op._runs.discard(self)
        if self.task is not None:
            self.task.cancel()
        for _item, message, _key in self.pending:
            message.req(0, backoff=False)
        self.pending.clear()

    async def work(self) -> None:
        assert self.wake is not None
        next_tick = time.monotonic()
        next_renew = time.monotonic() + self.op.lease / 3
        failures = 0
        while not self.disposed:
            timeout = max(0.0, next_tick - time.monotonic())
            if not self.pending and not self.to_retire and not self.to_release:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout)
            self.wake.clear()
            try:
                if self.to_release or self.to_retire:
                    await self.settle_claims()
                if self.pending:
                    await self.fold_batch()
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.op.tick
                    self.claim_now = True
                    await self.store.sweep(self.op.name, time.time())
                if self.claim_now:
                    self.claim_now = False
                    await self.claim()
                if time.monotonic() >= next_renew and self.outstanding:
                    next_renew = time.monotonic() + self.op.lease / 3
                    await self.store.renew(
                        self.op.name, self.owner, list(self.outstanding),
                        time.time() + self.op.lease,
                    )  # fmt: skip
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self.op.counts["store_errors"] += 1
                _report(exc, f"{self.op.name} store", self.last_message)
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))
            self.op._progress.set()
            if self.completed and not self.busy:
                self.op._runs.discard(self)
                self.observer.on_completed()
                return

    async def fold_batch(self) -> None:
        batch, self.pending = self.pending[: self.op.max_batch], self.pending[self.op.max_batch :]
        items = [item for item, _m, _k in batch]
        starts = [w.start for item in items for w in item.windows]
        ends = [w.end for item in items for w in item.windows]
        request = FoldRequest(
            keys=sorted({item.key for item in items}),
            ids=[item.dedupe for item in items if item.dedupe is not None],
            low=min(starts),
            high=max(ends),
            codec=self.op.aggregation.codec,
        )
        codec = self.op.aggregation.codec

        def planner(snapshot: Snapshot) -> Plan:
            return plan(items, snapshot, self.op.spec, time.time(), codec)

        self.folding = True
        try:
            result = await self.store.fold(self.op.name, request, planner)
        except asyncio.CancelledError:
            for _item, message, _key in batch:
                message.req(0, backoff=False)
            raise
        except Exception:
            Batch([m for _i, m, _k in batch]).req_all(backoff=True)
            raise
        finally:
            self.folding = False
        counts = self.op.counts
        for (item, message, key), outcome in zip(batch, result.outcomes, strict=True):
            if outcome.kind == "folded":
                counts["folded"] += 1
                message.fin()
            elif outcome.kind == "duplicate":
                counts["duplicates"] += 1
                message.fin()
            elif outcome.kind == "late":
                self.op._emit_late(
                    Late(message, key, item.ts, outcome.windows, outcome.missed, outcome.watermark)
                )
            else:
                counts["failed"] += 1
                message.req(backoff=True)
                assert outcome.error is not None
                _report(outcome.error, f"{self.op.name} aggregation", message)
        if result.clocks:
            self.claim_now = True

    async def claim(self) -> None:
        claimed = await self.store.claim(
            self.op.name,
            now=time.time(),
            lateness=self.op.lateness,
            idle=self.op.clock.idle,
            lease=self.op.lease,
            owner=self.owner,
            limit=self.op.max_batch,
        )
        for row in claimed:
            self.deliver(row)
        if len(claimed) == self.op.max_batch:
            self.claim_now = True

    def deliver(self, row: Claimed) -> None:
        slot = (row.key, row.window)
        if slot in self.outstanding:
            return  # ours already (a lease renewed late): still out
        try:
            value = self.op.aggregation.codec.decode(row.value)
        except Exception as exc:
            _report(exc, f"{self.op.name} codec", None)
            self.to_release.append((slot, time.time() + self.op.lease))
            return
        result: WindowResult[K, A] = WindowResult(
            decode_key(row.key),  # type: ignore[arg-type]
            row.window,
            value,
            row.count,
            self.op._result_id(row.key, row.window),
            self.settled,
            self.requeued,
        )
        self.outstanding[slot] = result
        self.op.counts["results"] += 1
        _deliver(self.observer, result, self.last_message, self.op.name)

    def settled(self, result: WindowResult[K, A]) -> None:
        self.op.counts["settled"] += 1
        slot = (encode_key(result.key), result.window)
        self.outstanding.pop(slot, None)
        self.to_retire.append(slot)
        if self.wake is not None:
            self.wake.set()

    def requeued(self, result: WindowResult[K, A], delay: float | None) -> None:
        self.op.counts["requeued"] += 1
        slot = (encode_key(result.key), result.window)
        self.outstanding.pop(slot, None)
        self.to_release.append((slot, time.time() + (delay if delay is not None else 1.0)))
        if self.wake is not None:
            self.wake.set()

    async def settle_claims(self) -> None:
        retire, self.to_retire = self.to_retire, []
        release, self.to_release = self.to_release, []
        try:
            if retire:
                assert self.retention is not None
                await self.store.retire(self.op.name, retire, time.time() + self.retention)
            for slot, at in release:
                await self.store.release(self.op.name, self.owner, [slot], at)
        except Exception:
            self.to_retire[:0] = retire
            self.to_release[:0] = release
            raise


# --- the factories -------------------------------------------------------------------------


def aggregate(
    aggregation: Aggregation[V, A],
    *,
    key: Callable[[V], K],
    window: Windower,
    clock: Clock | None = None,
    lateness: float = 0.0,
    store: Store | None = None,
    name: str | None = None,
    id_retention: float | None = None,
    lease: float = 30.0,
    tick: float = 1.0,
    max_batch: int = 1000,
    touch_interval: float | None = None,
) -> Windowed[V, K, A]:
    """A keyed windowed aggregation (see the module doc for the two modes).

    ``key(value)``: the key (str, int, float, bool, None or a tuple of them). ``window``:
    ``tumbling``/``sliding``/``session``. ``clock``: ``event_time(...)`` or
    ``processing_time()`` (default). ``lateness``: seconds a window stays open after the
    watermark passes its end (events in that time still count). ``store`` + ``name``: the
    large-window mode. ``id_retention``: seconds ids are kept after their window is retired
    (default twice nsqd's msg_timeout). ``lease``: seconds a claimed result may stay unsettled
    before another consumer may take it over (renewed while this one lives). ``tick``: how often
    idle watermarks are checked and final windows claimed.
    """
    return Windowed(
        aggregation, key=key, window=window, clock=clock, lateness=lateness, store=store,
        name=name, id_retention=id_retention, lease=lease, tick=tick, max_batch=max_batch,
        touch_interval=touch_interval,
    )  # fmt: skip


def count(*, key: Callable[[V], K], window: Windower, **options: Any) -> Windowed[V, K, int]:
    """How many events each key has per window (options as :func:`aggregate`)."""
    return aggregate(counter(), key=key, window=window, **options)


def fold(
    initial: Callable[[], A],
    fn: Callable[[A, V], A],
    *,
    key: Callable[[V], K],
    window: Windower,
    merge: Callable[[A, A], A] | None = None,
    codec: Codec[A] | None = None,
    **options: Any,
) -> Windowed[V, K, A]:
    """``fn(acc, value)`` over each key's events per window, from ``initial()``; ``merge`` is
    needed for session windows, ``codec`` for values JSON cannot hold (store mode)."""
    return aggregate(folder(initial, fn, merge=merge, codec=codec), key=key, window=window,
                     **options)  # fmt: skip


def reduce(
    fn: Callable[[V, V], V],
    *,
    key: Callable[[V], K],
    window: Windower,
    codec: Codec[V] | None = None,
    **options: Any,
) -> Windowed[V, K, V]:
    """``fn(a, b)`` over each key's values per window (options as :func:`aggregate`)."""
    return aggregate(reducer(fn, codec=codec), key=key, window=window, **options)


def collect(*, key: Callable[[V], K], window: Windower, **options: Any) -> Windowed[V, K, list[V]]:
    """Each key's values per window, with their messages on the result (small windows only)."""
    return aggregate(collector(), key=key, window=window, **options)
