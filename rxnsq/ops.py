"""Ack-aware operators: each settles a message at the end of the stage that holds it.

Settling at the end keeps every buffer downstream of ``reader.messages`` bounded by
max_in_flight (nsqd sends no more than RDY unsettled messages). Settling early (FIN on
receipt) removes that bound, so these operators never do it. What a stage drops is finished,
what fails is requeued, and a bad input does not slow the channel down:

=================  ====================================================================
``decode(fn)``     value -> fn(value); a failure FINs the message (no backoff) and reports
``where(pred)``    drops (and FINs) messages whose value fails ``pred``
``process(fn)``    runs ``fn(value)``; FIN and emit on return, REQ with backoff on raise
``process_async``  the same for a coroutine function, at most ``concurrency`` at once
``batch(...)``     lists by count, time and bytes, optionally one per key; never empty;
                   TOUCHes what it holds; flushes early when the reader is starved
``process_batch``  ``fn(values)``; FIN all on success, REQ all (one backoff step) on raise
``settle()``       FIN every Message, REQ every :class:`Failure`
``guard(op)``      wraps a standard RxPY operator that drops messages (filter, distinct,
                   debounce...): what it drops is settled, never left to time out
``take(n)``        the first ``n`` messages; later ones are requeued at once
``peek(n)``        the first ``n`` messages, requeued at once (look without consuming)
=================  ====================================================================

Timers run on the scheduler given at subscription, by default the running loop's; nothing is
emitted synchronously from inside a ``fin()``/``req()`` call. What a subscriber raises when
an operator emits from a timer (a batch closing on time) is caught there: the messages it
concerned are requeued and the error is reported to the reader (``reader.errors``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeAlias, TypeVar, overload

import reactivex
from reactivex import abc
from reactivex.disposable import CompositeDisposable, Disposable

from .errors import ConfigError
from .message import ConsumerContext, Delivery, Message
from .scheduler import loop_scheduler

__all__ = [
    "Batch",
    "Failure",
    "Operator",
    "SupportsSettle",
    "batch",
    "decode",
    "guard",
    "peek",
    "process",
    "process_async",
    "process_batch",
    "settle",
    "take",
    "where",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
U = TypeVar("U")
A = TypeVar("A")
B = TypeVar("B")

#: An Rx operator: a function from one Observable to another.
Operator: TypeAlias = Callable[[reactivex.Observable[A]], reactivex.Observable[B]]
#: Called with the message and the exception when a stage's function fails.
ErrorHook: TypeAlias = Callable[[Message[Any], BaseException], object]


@dataclass(frozen=True, slots=True)
class Failure(Generic[T]):
    """A message whose processing failed, with the error; ``settle()`` requeues it."""

    message: Message[T]
    error: BaseException


class SupportsSettle(Protocol):
    """An item that knows how to settle what it carries (a Writer's ``PublishResult``)."""

    def settle(self) -> object: ...


class Batch(Sequence[Message[T]]):
    """Messages handled together; settle them with ``fin_all`` or ``req_all``. ``key`` is
    the key of a keyed batch (``batch(..., key=fn)``), None otherwise."""

    __slots__ = ("_messages", "key")

    def __init__(self, messages: list[Message[T]], key: Hashable | None = None) -> None:
        self._messages = messages
        self.key = key

    @overload
    def __getitem__(self, index: int) -> Message[T]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Message[T]]: ...
    def __getitem__(self, index: int | slice) -> Message[T] | Sequence[Message[T]]:
        return self._messages[index]

    def __len__(self) -> int:
        return len(self._messages)

    def __iter__(self) -> Iterator[Message[T]]:
        return iter(self._messages)

    def __repr__(self) -> str:
        keyed = "" if self.key is None else f" key={self.key!r}"
        return f"<Batch of {len(self._messages)}{keyed}>"

    @property
    def values(self) -> list[T]:
        """The messages' values, in order."""
        return [m.value for m in self._messages]

    @property
    def size(self) -> int:
        """Body bytes in the batch."""
        return sum(len(m.body) for m in self._messages)

    def fin_all(self) -> int:
        """Finish every message; returns how many this call settled."""
        return sum(m.fin() for m in self._messages)

    def req_all(self, delay: float | None = None, backoff: bool = True) -> int:
        """Requeue every message, counting as one failure for backoff (not one per message)."""
        settled = 0
        for message in self._messages:
            settled += message.req(delay, backoff=backoff and settled == 0)
        return settled

    def touch_all(self) -> int:
        """TOUCH every unsettled message; returns how many were touched."""
        return sum(m.touch() for m in self._messages)


# --- shared pieces ---------------------------------------------------------------------------


def _report(stage: str, message: Message[Any], exc: BaseException, hook: ErrorHook | None) -> None:
    """A stage's function failed on ``message`` (and the stage settled it): tell ``hook``;
    without one, report it to the reader that delivered the message (``reader.errors`` and
    the log), or log it."""
    consumer = message.consumer
    if hook is not None:
        try:
            hook(message, exc)
        except Exception:
            logger.exception("%s: on_error hook failed", stage)
    elif consumer is not None:
        consumer.report_error(exc, stage, message)
    else:
        logger.warning(
            "%s failed for message %s (attempt %d): %r",
            stage,
            message.id.decode(errors="replace"),
            message.attempts,
            exc,
        )


def _caught(error: Exception, stage: str, messages: Sequence[Message[Any]]) -> None:
    """User code raised while a stage emitted ``messages``: requeue what is unsettled (one
    backoff step for all) and report the error once to the reader that delivered them."""
    unsettled = [m for m in messages if m.outcome is None]
    if unsettled:
        Batch(unsettled).req_all(backoff=True)
    first = messages[0] if messages else None
    consumer = first.consumer if first is not None else None
    if consumer is not None:
        consumer.report_error(error, stage, first)
    else:
        logger.error("%s: a subscriber raised: %r", stage, error, exc_info=error)


def _emit(
    observer: abc.ObserverBase[B], item: B, stage: str, messages: Sequence[Message[Any]]
) -> None:
    """``observer.on_next(item)`` inside the boundary (for emissions from timers and tasks,
    where no reader is below on the stack to catch what the subscriber raises)."""
    try:
        observer.on_next(item)
    except Exception as exc:
        _caught(exc, stage, messages)


def _touch_interval(message: Message[Any], override: float | None) -> float:
    """How often to TOUCH a held message: ``override``, else half the negotiated timeout."""
    if override is not None:
        return override
    return message.connection.msg_timeout / 2


def _after(
    scheduler: abc.SchedulerBase, seconds: float, action: Callable[[], None]
) -> abc.DisposableBase:
    """Run ``action`` once after ``seconds`` on ``scheduler``; dispose the result to cancel."""

    def run(_scheduler: abc.SchedulerBase, _state: object = None) -> None:
        action()

    return scheduler.schedule_relative(seconds, run)


def _keep_alive(
    scheduler: abc.SchedulerBase, message: Message[Any], override: float | None
) -> abc.DisposableBase:
    """TOUCH ``message`` every interval until the returned disposable is disposed (or the
    message is settled)."""
    interval = _touch_interval(message, override)
    timer = reactivex.disposable.SerialDisposable()

    def touch() -> None:
        if message.touch():
            timer.disposable = _after(scheduler, interval, touch)

    timer.disposable = _after(scheduler, interval, touch)
    return timer


def _check_seconds(option: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ConfigError(option, value, "a number of seconds > 0" + (", or None" * allow_none))


def _check_count(option: str, value: object, low: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(option, value, f"an int >= {low}")


def _stage(on_next: Callable[[abc.ObserverBase[B], A], None]) -> Operator[A, B]:
    """A stateless stage: ``on_next(observer, item)``; completion and errors pass through."""

    def apply(source: reactivex.Observable[A]) -> reactivex.Observable[B]:
        def subscribe(
            observer: abc.ObserverBase[B], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            def forward(item: A) -> None:
                on_next(observer, item)

            return source.subscribe(
                forward, observer.on_error, observer.on_completed, scheduler=scheduler
            )

        return reactivex.create(subscribe)

    return apply


# --- per-message stages ----------------------------------------------------------------------


def decode(
    fn: Callable[[T], U], *, on_error: ErrorHook | None = None
) -> Operator[Message[T], Message[U]]:
    """``Message[T] -> Message[U]`` with ``fn``; a message that cannot be decoded is finished
    (retrying cannot fix bad input) and reported to ``on_error`` (or logged), without backoff."""
    if not callable(fn):
        raise ConfigError("fn", fn, "a function of the message value")

    def on_next(observer: abc.ObserverBase[Message[U]], message: Message[T]) -> None:
        try:
            value = fn(message.value)
        except Exception as exc:
            message.fin()
            _report("decode", message, exc, on_error)
            return
        observer.on_next(message.with_value(value))

    return _stage(on_next)


def where(predicate: Callable[[T], bool]) -> Operator[Message[T], Message[T]]:
    """Keep messages whose value satisfies ``predicate``; finish the others (never leak)."""
    if not callable(predicate):
        raise ConfigError("predicate", predicate, "a function of the message value")

    def on_next(observer: abc.ObserverBase[Message[T]], message: Message[T]) -> None:
        if predicate(message.value):
            observer.on_next(message)
        else:
            message.fin()

    return _stage(on_next)


@overload
def process(
    fn: Callable[[T], U],
    *,
    backoff: bool = ...,
    delay: float | None = ...,
    on_error: ErrorHook | None = ...,
    emit_failures: Literal[False] = ...,
) -> Operator[Message[T], Message[U]]: ...
@overload
def process(
    fn: Callable[[T], U],
    *,
    backoff: bool = ...,
    delay: float | None = ...,
    on_error: ErrorHook | None = ...,
    emit_failures: Literal[True],
) -> Operator[Message[T], Message[U] | Failure[T]]: ...
def process(
    fn: Callable[[T], U],
    *,
    backoff: bool = True,
    delay: float | None = None,
    on_error: ErrorHook | None = None,
    emit_failures: bool = False,
) -> Operator[Message[T], Any]:
    """Run ``fn(value)``; on return FIN and emit ``Message[result]`` (already settled).

    On an exception REQ (after ``delay`` seconds, by default the reader's delay for the
    attempt count) with one backoff step unless ``backoff=False``; the failure is reported,
    and emitted as a :class:`Failure` if ``emit_failures``.
    """
    if not callable(fn):
        raise ConfigError("fn", fn, "a function of the message value")

    def on_next(observer: abc.ObserverBase[Any], message: Message[T]) -> None:
        try:
            result = fn(message.value)
        except Exception as exc:
            message.req(delay, backoff=backoff)
            _report("process", message, exc, on_error)
            if emit_failures:
                observer.on_next(Failure(message, exc))
            return
        message.fin()
        observer.on_next(message.with_value(result))

    return _stage(on_next)


@overload
def process_async(
    fn: Callable[[T], Awaitable[U]],
    *,
    concurrency: int = ...,
    backoff: bool = ...,
    delay: float | None = ...,
    on_error: ErrorHook | None = ...,
    emit_failures: Literal[False] = ...,
    touch: bool = ...,
    touch_interval: float | None = ...,
) -> Operator[Message[T], Message[U]]: ...
@overload
def process_async(
    fn: Callable[[T], Awaitable[U]],
    *,
    concurrency: int = ...,
    backoff: bool = ...,
    delay: float | None = ...,
    on_error: ErrorHook | None = ...,
    emit_failures: Literal[True],
    touch: bool = ...,
    touch_interval: float | None = ...,
) -> Operator[Message[T], Message[U] | Failure[T]]: ...
def process_async(
    fn: Callable[[T], Awaitable[U]],
    *,
    concurrency: int = 64,
    backoff: bool = True,
    delay: float | None = None,
    on_error: ErrorHook | None = None,
    emit_failures: bool = False,
    touch: bool = True,
    touch_interval: float | None = None,
) -> Operator[Message[T], Any]:
    """Like :func:`process` for a coroutine function, with at most ``concurrency`` running.

    Messages waiting for a slot stay in flight (they count against max_in_flight, which is
    what bounds this stage's queue). Results are emitted in completion order. While a call
    runs its message is TOUCHed every ``touch_interval`` (default half the negotiated
    msg_timeout), so slow work does not make nsqd redeliver it; ``touch=False`` turns that off.
    """
    if not callable(fn):
        raise ConfigError("fn", fn, "a coroutine function of the message value")
    _check_count("concurrency", concurrency)
    _check_seconds("touch_interval", touch_interval, allow_none=True)

    def apply(source: reactivex.Observable[Message[T]]) -> reactivex.Observable[Any]:
        def subscribe(
            observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            return _AsyncStage(
                fn, observer, scheduler or loop_scheduler(), concurrency,
                backoff, delay, on_error, emit_failures, touch_interval if touch else None,
                touch,
            ).run(source, scheduler)  # fmt: skip

        return reactivex.create(subscribe)

    return apply


class _AsyncStage(Generic[T, U]):
    """One subscription of :func:`process_async`: its running calls and waiting messages."""

    def __init__(
        self,
        fn: Callable[[T], Awaitable[U]],
        observer: abc.ObserverBase[Any],
        timers: abc.SchedulerBase,
        concurrency: int,
        backoff: bool,
        delay: float | None,
        on_error: ErrorHook | None,
        emit_failures: bool,
        touch_interval: float | None,
        touch: bool,
    ) -> None:
        self.fn = fn
        self.observer = observer
        self.timers = timers
        self.concurrency = concurrency
        self.backoff = backoff
        self.delay = delay
        self.on_error = on_error
        self.emit_failures = emit_failures
        self.touch_interval = touch_interval
        self.touch = touch
        self.loop = asyncio.get_running_loop()
        self.waiting: list[Message[T]] = []
        self.running: set[asyncio.Future[U]] = set()
        self.completed = False
        self.disposed = False

    def run(
        self, source: reactivex.Observable[Message[T]], scheduler: abc.SchedulerBase | None
    ) -> abc.DisposableBase:
        upstream = source.subscribe(
            self.on_next, self.observer.on_error, self.on_completed, scheduler=scheduler
        )
        return CompositeDisposable(upstream, Disposable(self.dispose))

    def on_next(self, message: Message[T]) -> None:
        if len(self.running) < self.concurrency:
            self.start(message)
        else:
            self.waiting.append(message)

    def start(self, message: Message[T]) -> None:
        task = asyncio.ensure_future(self.fn(message.value), loop=self.loop)
        self.running.add(task)
        keep_alive = _keep_alive(self.timers, message, self.touch_interval) if self.touch else None
        task.add_done_callback(lambda done: self.done(done, message, keep_alive))

    def done(
        self,
        task: asyncio.Future[U],
        message: Message[T],
        keep_alive: abc.DisposableBase | None,
    ) -> None:
        self.running.discard(task)
        if keep_alive is not None:
            keep_alive.dispose()
        if task.cancelled():
            message.req(0, backoff=False)
        elif (exc := task.exception()) is not None:
            message.req(self.delay, backoff=self.backoff)
            _report("process_async", message, exc, self.on_error)
            if self.emit_failures and not self.disposed:
                _emit(self.observer, Failure(message, exc), "process_async", [message])
        else:
            message.fin()
            if not self.disposed:
                _emit(self.observer, message.with_value(task.result()), "process_async", [message])
        if self.waiting and not self.disposed:
            self.start(self.waiting.pop(0))
        elif not self.running and self.completed and not self.disposed:
            self.observer.on_completed()

    def on_completed(self) -> None:
        self.completed = True
        if not self.running and not self.waiting:
            self.observer.on_completed()

    def dispose(self) -> None:
        self.disposed = True
        for task in list(self.running):
            task.cancel()
        for message in self.waiting:
            message.req(0, backoff=False)
        self.waiting.clear()


# --- holding stages ------------------------------------------------------------------------


class _Open:
    """One open batch of :func:`batch`: its messages, bytes and timers."""

    __slots__ = ("flush_timer", "messages", "size", "touch_timer")

    def __init__(self) -> None:
        self.messages: list[Message[Any]] = []
        self.size = 0
        self.flush_timer: abc.DisposableBase | None = None
        self.touch_timer: abc.DisposableBase | None = None

    def cancel_timers(self) -> None:
        for timer in (self.flush_timer, self.touch_timer):
            if timer is not None:
                timer.dispose()
        self.flush_timer = self.touch_timer = None


def batch(
    count: int,
    timespan: float,
    max_bytes: int | None = None,
    *,
    key: Callable[[T], Hashable] | None = None,
    touch_interval: float | None = None,
) -> Operator[Message[T], Batch[T]]:
    """Group messages into :class:`Batch` es of at most ``count`` messages and ``max_bytes``
    body bytes, emitted when full or ``timespan`` seconds after the batch's first message.

    With ``key``, one batch is open per ``key(value)`` (emitted with ``batch.key``), and
    the same rules hold for each. Never emits an empty batch. ``count`` must not exceed the
    reader's max_in_flight (a batch that can never fill only closes on time). Every open batch
    is emitted early when the reader is starved (nsqd sends no more until messages are
    settled) or starts closing, so keys x count can never stall the window. While a batch is
    open its messages are TOUCHed every ``touch_interval`` seconds (default: half the
    negotiated msg_timeout) so they do not time out. On completion the open batches are
    emitted; on dispose they are requeued.
    """
    _check_count("count", count)
    _check_seconds("timespan", timespan)
    if max_bytes is not None:
        _check_count("max_bytes", max_bytes)
    if key is not None and not callable(key):
        raise ConfigError("key", key, "a function of the message value, or None")
    _check_seconds("touch_interval", touch_interval, allow_none=True)

    def apply(source: reactivex.Observable[Message[T]]) -> reactivex.Observable[Batch[T]]:
        def subscribe(
            observer: abc.ObserverBase[Batch[T]], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            timers = scheduler or loop_scheduler()
            open_batches: dict[Hashable, _Open] = {}
            consumer: ConsumerContext | None = None
            closing_subscription: abc.DisposableBase | None = None
            checked = False

            def flush(group: Hashable) -> None:
                current = open_batches.pop(group, None)
                if current is None:
                    return
                current.cancel_timers()
                if current.messages:
                    out: Batch[T] = Batch(current.messages, group if key is not None else None)
                    _emit(observer, out, "batch", current.messages)

            def flush_all() -> None:
                for group in list(open_batches):
                    flush(group)

            def schedule_touch(group: Hashable, current: _Open) -> None:
                interval = _touch_interval(current.messages[0], touch_interval)

                def touch() -> None:
                    if open_batches.get(group) is current:
                        for message in current.messages:
                            message.touch()
                        schedule_touch(group, current)

                current.touch_timer = _after(timers, interval, touch)

            def check(message: Message[T]) -> bool:
                nonlocal consumer, closing_subscription
                consumer = message.consumer
                if consumer is None:
                    return True
                closing_subscription = consumer.closing.subscribe(on_next=lambda _: flush_all())
                limit = consumer.max_in_flight
                if limit and count > limit:
                    observer.on_error(
                        ConfigError("count", count, f"at most the reader's max_in_flight ({limit})")
                    )
                    message.req(0, backoff=False)
                    return False
                return True

            def on_next(message: Message[T]) -> None:
                nonlocal checked
                if not checked:
                    if not check(message):
                        return
                    checked = True
                group = key(message.value) if key is not None else None
                current = open_batches.get(group)
                body = len(message.body)
                if (
                    current is not None
                    and max_bytes is not None
                    and current.size + body > max_bytes
                ):
                    flush(group)
                    current = None
                if current is None:
                    current = open_batches[group] = _Open()
                    current.messages.append(message)
                    current.size = body
                    current.flush_timer = _after(timers, timespan, lambda: flush(group))
                    schedule_touch(group, current)
                else:
                    current.messages.append(message)
                    current.size += body
                if len(current.messages) >= count or (
                    max_bytes is not None and current.size >= max_bytes
                ):
                    flush(group)
                elif consumer is not None and consumer.is_starved():
                    flush_all()  # nsqd will send no more until some are settled: do not wait

            def on_completed() -> None:
                flush_all()
                observer.on_completed()

            def dispose() -> None:
                if closing_subscription is not None:
                    closing_subscription.dispose()
                for current in open_batches.values():
                    current.cancel_timers()
                    for message in current.messages:
                        message.req(0, backoff=False)
                open_batches.clear()

            subscription = source.subscribe(
                on_next, observer.on_error, on_completed, scheduler=scheduler
            )
            return CompositeDisposable(subscription, Disposable(dispose))

        return reactivex.create(subscribe)

    return apply


@overload
def process_batch(
    fn: Callable[[list[T]], object],
    *,
    backoff: bool = ...,
    delay: float | None = ...,
    on_error: Callable[[Batch[T], BaseException], object] | None = ...,
    emit_failures: Literal[False] = ...,
) -> Operator[Batch[T], Batch[T]]: ...
@overload
def process_batch(
    fn: Callable[[list[T]], object],
    *,
    backoff: bool = ...,
    delay: float | None = ...,
    on_error: Callable[[Batch[T], BaseException], object] | None = ...,
    emit_failures: Literal[True],
) -> Operator[Batch[T], Batch[T] | Failure[T]]: ...
def process_batch(
    fn: Callable[[list[T]], object],
    *,
    backoff: bool = True,
    delay: float | None = None,
    on_error: Callable[[Batch[T], BaseException], object] | None = None,
    emit_failures: bool = False,
) -> Operator[Batch[T], Any]:
    """Run ``fn(batch.values)``; FIN all and emit the batch on return. On an exception REQ
    all, as one backoff step (not one per message), and report it (to ``on_error``, or the
    log); with ``emit_failures`` emit a :class:`Failure` for the batch's first message."""
    if not callable(fn):
        raise ConfigError("fn", fn, "a function of the batch's values")

    def on_next(observer: abc.ObserverBase[Any], items: Batch[T]) -> None:
        try:
            fn(items.values)
        except Exception as exc:
            items.req_all(delay, backoff=backoff)
            consumer = items[0].consumer if items else None
            if on_error is not None:
                try:
                    on_error(items, exc)
                except Exception:
                    logger.exception("process_batch: on_error hook failed")
            elif consumer is not None:
                consumer.report_error(exc, "process_batch", items[0])
            else:
                logger.warning("process_batch failed for %d messages: %r", len(items), exc)
            if emit_failures:
                observer.on_next(Failure(items[0], exc))
            return
        items.fin_all()
        observer.on_next(items)

    return _stage(on_next)


#: What :func:`settle` takes: a Message, a Batch, a Failure, or an item with ``settle()``.
S = TypeVar("S", bound="Message[Any] | Batch[Any] | Failure[Any] | SupportsSettle")


def settle() -> Operator[S, S]:
    """Finish every Message (and every message of a Batch); requeue every Failure; call
    ``settle()`` on anything else that has it (a Writer's ``PublishResult``)."""

    def on_next(observer: abc.ObserverBase[S], item: S) -> None:
        if isinstance(item, Message):
            item.fin()
        elif isinstance(item, Batch):
            item.fin_all()
        elif isinstance(item, Failure):
            item.message.req()
        else:
            item.settle()
        observer.on_next(item)

    return _stage(on_next)


DroppedPolicy = Literal["fin", "req"] | Callable[[Message[Any]], Any]


def guard(
    operator: Operator[Message[T], Message[T]],
    *,
    dropped: DroppedPolicy = "fin",
    holds: bool = False,
) -> Operator[Message[T], Message[T]]:
    """Run a standard RxPY ``operator`` that passes some messages through and drops others
    (``filter``, ``distinct``, ``skip``, ``take_while``, ``debounce``, ``sample``...), and
    settle what it drops: ``"fin"`` (default), ``"req"`` (at once, no backoff) or a function
    of the message.

    ``holds=False`` (filter, distinct, skip...): a message the operator did not emit while it
    received it was dropped. ``holds=True`` (debounce, sample, throttle...: it may emit later):
    when the operator emits a message, every message that entered before it and did not come
    out was dropped. On completion whatever did not come out was dropped; on dispose it is
    requeued. The operator must emit the messages it received (``Message`` objects), not
    new values: map after the guard.
    """
    if dropped not in ("fin", "req") and not callable(dropped):
        raise ConfigError("dropped", dropped, '"fin", "req" or a function of the message')
    if not callable(operator):
        raise ConfigError("operator", operator, "an RxPY operator (a function of an Observable)")

    def settle_dropped(message: Message[T]) -> None:
        if message.outcome is not None:
            return
        if dropped == "fin":
            message.fin()
        elif dropped == "req":
            message.req(0, backoff=False)
        else:
            try:
                dropped(message)
            except Exception as exc:
                _caught(exc, "guard's dropped function", [message])

    def apply(source: reactivex.Observable[Message[T]]) -> reactivex.Observable[Message[T]]:
        def subscribe(
            observer: abc.ObserverBase[Message[T]], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            inside: dict[Delivery, Message[T]] = {}  # entered, not (yet) out, in order
            feed: list[abc.ObserverBase[Message[T]]] = []
            finished = False

            def inlet(
                inner: abc.ObserverBase[Message[T]],
                _scheduler: abc.SchedulerBase | None = None,
            ) -> abc.DisposableBase:
                feed.append(inner)

                def leave() -> None:
                    if inner in feed:
                        feed.remove(inner)

                return Disposable(leave)

            def out_next(item: Message[T]) -> None:
                if isinstance(item, Message):
                    delivery = item.delivery
                    if holds and delivery in inside:
                        for earlier in list(inside):
                            if earlier is delivery:
                                break
                            settle_dropped(inside.pop(earlier))
                    inside.pop(delivery, None)
                observer.on_next(item)

            def out_completed() -> None:
                nonlocal finished
                finished = True
                for message in list(inside.values()):
                    settle_dropped(message)
                inside.clear()
                observer.on_completed()

            output = operator(reactivex.create(inlet)).subscribe(
                out_next, observer.on_error, out_completed, scheduler=scheduler
            )

            def on_next(message: Message[T]) -> None:
                if finished:
                    message.req(0, backoff=False)  # the operator is done: give it back
                    return
                delivery = message.delivery
                inside[delivery] = message
                for inner in list(feed):
                    inner.on_next(message)
                if not holds and inside.get(delivery) is message:
                    del inside[delivery]
                    settle_dropped(message)

            def on_error(error: Exception) -> None:
                for inner in list(feed):
                    inner.on_error(error)

            def on_completed() -> None:
                for inner in list(feed):
                    inner.on_completed()

            def dispose() -> None:
                for message in inside.values():
                    if message.outcome is None:
                        message.req(0, backoff=False)
                inside.clear()

            upstream = source.subscribe(on_next, on_error, on_completed, scheduler=scheduler)
            return CompositeDisposable(upstream, output, Disposable(dispose))

        return reactivex.create(subscribe)

    return apply


def _take(n: int, requeue_taken: bool) -> Operator[Message[T], Message[T]]:
    _check_count("n", n, low=0)

    def apply(source: reactivex.Observable[Message[T]]) -> reactivex.Observable[Message[T]]:
        def subscribe(
            observer: abc.ObserverBase[Message[T]], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            if n == 0:
                observer.on_completed()
                return Disposable()
            timers = scheduler or loop_scheduler()
            remaining = n
            upstream = reactivex.disposable.SingleAssignmentDisposable()

            def on_next(message: Message[T]) -> None:
                nonlocal remaining
                if remaining <= 0:
                    message.req(0, backoff=False)  # arrived after we had enough
                    return
                remaining -= 1
                observer.on_next(message)
                if requeue_taken:
                    message.req(0, backoff=False)
                if remaining == 0:
                    observer.on_completed()
                    # leave the source on the next turn, never inside its emission
                    _after(timers, 0.0, upstream.dispose)

            upstream.disposable = source.subscribe(
                on_next, observer.on_error, observer.on_completed, scheduler=scheduler
            )
            return upstream

        return reactivex.create(subscribe)

    return apply


def take(n: int) -> Operator[Message[T], Message[T]]:
    """The first ``n`` messages, then complete; any that arrive after are requeued at once.

    Unlike ``reactivex.operators.take``, nothing delivered is left to time out.
    """
    return _take(n, requeue_taken=False)


def peek(n: int) -> Operator[Message[T], Message[T]]:
    """The first ``n`` messages, each requeued at once after it is emitted: a look at a
    topic that consumes nothing (each look raises the message's attempts by one; see
    ``Reader.peek`` for a peek that asks nsqd for no more than ``n``)."""
    return _take(n, requeue_taken=True)
