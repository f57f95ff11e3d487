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
from typing import Any, Generic, Literal, TypeVar, overload

import reactivex
from reactivex import abc
from reactivex.disposable import CompositeDisposable, Disposable

from .errors import ConfigError
from .message import Delivery, Message
from .scheduler import loop_scheduler

__all__ = [
    "Batch",
    "Failure",
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

Operator = Callable[[reactivex.Observable[Any]], reactivex.Observable[Any]]
ErrorHook = Callable[[Message[Any], BaseException], Any]


@dataclass(frozen=True, slots=True)
class Failure(Generic[T]):
    """A message whose processing failed, with the error; ``settle()`` requeues it."""

    message: Message[T]
    error: BaseException


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


def _report(stage: str, message: Message[Any], exc: BaseException, hook: ErrorHook | None) -> None:
    if hook is not None:
        try:
            hook(message, exc)
        except Exception:
            logger.exception("%s: on_error hook failed", stage)
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
    observer: abc.ObserverBase[Any], item: Any, stage: str, messages: Sequence[Message[Any]]
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


def _keep_alive(
    loop: asyncio.AbstractEventLoop, message: Message[Any], override: float | None
) -> Callable[[], None]:
    """TOUCH ``message`` every interval until the returned function is called."""
    handle: asyncio.TimerHandle | None = None
    interval = _touch_interval(message, override)

    def touch() -> None:
        nonlocal handle
        if message.touch():
            handle = loop.call_later(interval, touch)

    handle = loop.call_later(interval, touch)

    def stop() -> None:
        if handle is not None:
            handle.cancel()

    return stop


def _operator(
    on_next: Callable[[abc.ObserverBase[Any], Any], None],
) -> Operator:
    """A stateless stage: ``on_next(observer, item)``; completion and errors pass through."""

    def apply(source: reactivex.Observable[Any]) -> reactivex.Observable[Any]:
        def subscribe(
            observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            return source.subscribe(
                lambda item: on_next(observer, item),
                observer.on_error,
                observer.on_completed,
                scheduler=scheduler,
            )

        return reactivex.create(subscribe)

    return apply


def decode(fn: Callable[[Any], Any], *, on_error: ErrorHook | None = None) -> Operator:
    """``Message[T] -> Message[U]`` with ``fn``; a message that cannot be decoded is finished
    (retrying cannot fix bad input) and reported to ``on_error`` (or logged), without backoff."""

    def on_next(observer: abc.ObserverBase[Any], message: Message[Any]) -> None:
        try:
            value = fn(message.value)
        except Exception as exc:
            message.fin()
            _report("decode", message, exc, on_error)
            return
        observer.on_next(message.with_value(value))

    return _operator(on_next)


def where(predicate: Callable[[Any], bool]) -> Operator:
    """Keep messages whose value satisfies ``predicate``; finish the others (never leak)."""

    def on_next(observer: abc.ObserverBase[Any], message: Message[Any]) -> None:
        if predicate(message.value):
            observer.on_next(message)
        else:
            message.fin()

    return _operator(on_next)


def process(
    fn: Callable[[Any], Any],
    *,
    backoff: bool = True,
    delay: float | None = None,
    on_error: ErrorHook | None = None,
    emit_failures: bool = False,
) -> Operator:
    """Run ``fn(value)``; on return FIN and emit ``Message[result]`` (already settled).

    On an exception REQ (after ``delay`` seconds, by default the reader's delay for the
    attempt count) with one backoff step unless ``backoff=False``; the failure is reported,
    and emitted as a :class:`Failure` if ``emit_failures``.
    """

    def on_next(observer: abc.ObserverBase[Any], message: Message[Any]) -> None:
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

    return _operator(on_next)


def process_async(
    fn: Callable[[Any], Awaitable[Any]],
    *,
    concurrency: int = 64,
    backoff: bool = True,
    delay: float | None = None,
    on_error: ErrorHook | None = None,
    emit_failures: bool = False,
    touch: bool = True,
    touch_interval: float | None = None,
) -> Operator:
    """Like :func:`process` for a coroutine function, with at most ``concurrency`` running.

    Messages waiting for a slot stay in flight (they count against max_in_flight, which is
    what bounds this stage's queue). Results are emitted in completion order. While a call
    runs its message is TOUCHed every ``touch_interval`` (default half the negotiated
    msg_timeout), so slow work does not make nsqd redeliver it; ``touch=False`` turns that off.
    """
    if concurrency < 1:
        raise ConfigError("concurrency", concurrency, "an int >= 1")

    def apply(source: reactivex.Observable[Any]) -> reactivex.Observable[Any]:
        def subscribe(
            observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            loop = asyncio.get_running_loop()
            waiting: list[Message[Any]] = []
            running: set[asyncio.Task[Any]] = set()
            state = {"completed": False, "disposed": False}

            def start(message: Message[Any]) -> None:
                task = loop.create_task(fn(message.value))  # type: ignore[arg-type]
                running.add(task)
                stop_touching = _keep_alive(loop, message, touch_interval) if touch else None
                task.add_done_callback(lambda t: done(t, message, stop_touching))

            def done(
                task: asyncio.Task[Any],
                message: Message[Any],
                stop_touching: Callable[[], None] | None,
            ) -> None:
                running.discard(task)
                if stop_touching is not None:
                    stop_touching()
                if task.cancelled():
                    message.req(0, backoff=False)
                elif (exc := task.exception()) is not None:
                    message.req(delay, backoff=backoff)
                    _report("process_async", message, exc, on_error)
                    if emit_failures and not state["disposed"]:
                        _emit(observer, Failure(message, exc), "process_async", [message])
                else:
                    message.fin()
                    if not state["disposed"]:
                        result = message.with_value(task.result())
                        _emit(observer, result, "process_async", [message])
                if waiting and not state["disposed"]:
                    start(waiting.pop(0))
                elif not running and state["completed"] and not state["disposed"]:
                    observer.on_completed()

            def on_next(message: Message[Any]) -> None:
                if len(running) < concurrency:
                    start(message)
                else:
                    waiting.append(message)

            def on_completed() -> None:
                state["completed"] = True
                if not running and not waiting:
                    observer.on_completed()

            def dispose() -> None:
                state["disposed"] = True
                for task in list(running):
                    task.cancel()
                for message in waiting:
                    message.req(0, backoff=False)
                waiting.clear()

            subscription = source.subscribe(
                on_next, observer.on_error, on_completed, scheduler=scheduler
            )
            return CompositeDisposable(subscription, Disposable(dispose))

        return reactivex.create(subscribe)

    return apply


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
    key: Callable[[Any], Hashable] | None = None,
    touch_interval: float | None = None,
) -> Operator:
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
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ConfigError("count", count, "an int >= 1")
    if not isinstance(timespan, int | float) or not timespan > 0:
        raise ConfigError("timespan", timespan, "a number of seconds > 0")
    if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 1):
        raise ConfigError("max_bytes", max_bytes, "an int >= 1, or None")
    if key is not None and not callable(key):
        raise ConfigError("key", key, "a function of the message value, or None")
    if touch_interval is not None and (
        not isinstance(touch_interval, int | float) or not touch_interval > 0
    ):
        raise ConfigError("touch_interval", touch_interval, "a number of seconds > 0, or None")

    def apply(source: reactivex.Observable[Any]) -> reactivex.Observable[Any]:
        def subscribe(
            observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            timers = scheduler or loop_scheduler()
            open_batches: dict[Hashable, _Open] = {}
            consumer: Any = None
            closing_subscription: abc.DisposableBase | None = None
            checked = False

            def flush(group: Hashable) -> None:
                current = open_batches.pop(group, None)
                if current is None:
                    return
                current.cancel_timers()
                if current.messages:
                    out = Batch(current.messages, group if key is not None else None)
                    _emit(observer, out, "batch", current.messages)

            def flush_all() -> None:
                for group in list(open_batches):
                    flush(group)

            def schedule_touch(group: Hashable, current: _Open) -> None:
                interval = _touch_interval(current.messages[0], touch_interval)

                def touch(_scheduler: Any = None, _state: Any = None) -> None:
                    if open_batches.get(group) is current:
                        for message in current.messages:
                            message.touch()
                        schedule_touch(group, current)

                current.touch_timer = timers.schedule_relative(interval, touch)

            def check(message: Message[Any]) -> bool:
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

            def on_next(message: Message[Any]) -> None:
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
                    current.flush_timer = timers.schedule_relative(
                        timespan, lambda *_: flush(group)
                    )
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


def process_batch(
    fn: Callable[[list[Any]], Any],
    *,
    backoff: bool = True,
    delay: float | None = None,
    on_error: Callable[[Batch[Any], BaseException], Any] | None = None,
    emit_failures: bool = False,
) -> Operator:
    """Run ``fn(batch.values)``; FIN all and emit the batch on return. On an exception REQ
    all, as one backoff step (not one per message), and report it."""

    def on_next(observer: abc.ObserverBase[Any], items: Batch[Any]) -> None:
        try:
            fn(items.values)
        except Exception as exc:
            items.req_all(delay, backoff=backoff)
            if on_error is not None:
                on_error(items, exc)
            else:
                logger.warning("process_batch failed for %d messages: %r", len(items), exc)
            if emit_failures:
                observer.on_next(Failure(items[0], exc))
            return
        items.fin_all()
        observer.on_next(items)

    return _operator(on_next)


def settle() -> Operator:
    """Finish every Message (and every message of a Batch); requeue every Failure."""

    def on_next(observer: abc.ObserverBase[Any], item: Any) -> None:
        if isinstance(item, Failure):
            item.message.req()
        elif isinstance(item, Batch):
            item.fin_all()
        else:
            settle_item = getattr(item, "settle", None)
            if settle_item is not None:
                settle_item()
            else:
                item.fin()
        observer.on_next(item)

    return _operator(on_next)


DroppedPolicy = Literal["fin", "req"] | Callable[[Message[Any]], Any]


def guard(
    operator: Callable[[reactivex.Observable[Any]], reactivex.Observable[Any]],
    *,
    dropped: DroppedPolicy = "fin",
    holds: bool = False,
) -> Operator:
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

    def settle_dropped(message: Message[Any]) -> None:
        if message.outcome is not None:
            return
        if dropped == "fin":
            message.fin()
        elif dropped == "req":
            message.req(0, backoff=False)
        else:
            try:
                dropped(message)  # type: ignore[operator]
            except Exception as exc:
                _caught(exc, "guard's dropped function", [message])

    def apply(source: reactivex.Observable[Any]) -> reactivex.Observable[Any]:
        def subscribe(
            observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            inside: dict[Delivery, Message[Any]] = {}  # entered, not (yet) out, in order
            feed: list[abc.ObserverBase[Any]] = []
            finished = False

            def inlet(
                inner: abc.ObserverBase[Any], _scheduler: abc.SchedulerBase | None = None
            ) -> abc.DisposableBase:
                feed.append(inner)
                return Disposable(lambda: inner in feed and feed.remove(inner))

            def out_next(item: Any) -> None:
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

            def on_next(message: Message[Any]) -> None:
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


def _take(n: int, requeue_taken: bool) -> Operator:
    if n < 0:
        raise ConfigError("n", n, "an int >= 0")

    def apply(source: reactivex.Observable[Any]) -> reactivex.Observable[Any]:
        def subscribe(
            observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            remaining = n
            loop = asyncio.get_running_loop()
            subscription: abc.DisposableBase | None = None

            def on_next(message: Message[Any]) -> None:
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
                    # leave the source on the next loop turn, never inside its emission
                    loop.call_soon(lambda: subscription and subscription.dispose())

            if n == 0:
                observer.on_completed()
                return Disposable()
            subscription = source.subscribe(
                on_next, observer.on_error, observer.on_completed, scheduler=scheduler
            )
            return subscription

        return reactivex.create(subscribe)

    return apply


def take(n: int) -> Operator:
    """The first ``n`` messages, then complete; any that arrive after are requeued at once.

    Unlike ``reactivex.operators.take``, nothing delivered is left to time out.
    """
    return _take(n, requeue_taken=False)


def peek(n: int) -> Operator:
    """The first ``n`` messages, each requeued at once after it is emitted: a look at a
    topic that consumes nothing."""
    return _take(n, requeue_taken=True)
