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
``batch(...)``     lists by count, time and bytes; never empty; TOUCHes what it holds
``process_batch``  ``fn(values)``; FIN all on success, REQ all (one backoff step) on raise
``settle()``       FIN every Message, REQ every :class:`Failure`
``take(n)``        the first ``n`` messages; later ones are requeued at once
``peek(n)``        the first ``n`` messages, requeued at once (look without consuming)
=================  ====================================================================

All timers run on the running asyncio loop; nothing is emitted synchronously from inside a
``fin()``/``req()`` call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

import reactivex
from reactivex import abc
from reactivex.disposable import CompositeDisposable, Disposable

from .errors import ConfigError
from .message import Message

__all__ = [
    "Batch",
    "Failure",
    "batch",
    "decode",
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
    """Messages handled together; settle them with ``fin_all`` or ``req_all``."""

    __slots__ = ("_messages",)

    def __init__(self, messages: list[Message[T]]) -> None:
        self._messages = messages

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
        return f"<Batch of {len(self._messages)}>"

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


def _touch_interval(message: Message[Any], override: float | None) -> float:
    """How often to TOUCH a held message: ``override``, else half the negotiated timeout."""
    if override is not None:
        return override
    granted = getattr(message.connection, "identify_response", None)
    timeout_ms = getattr(granted, "msg_timeout", 0) or 60000
    return float(timeout_ms) / 2000


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
                        observer.on_next(Failure(message, exc))
                else:
                    message.fin()
                    if not state["disposed"]:
                        observer.on_next(message.with_value(task.result()))
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


def batch(
    count: int,
    timespan: float,
    max_bytes: int | None = None,
    *,
    touch_interval: float | None = None,
) -> Operator:
    """Group messages into :class:`Batch` es of at most ``count`` messages and ``max_bytes``
    body bytes, emitted when full or ``timespan`` seconds after the batch's first message.

    Never emits an empty batch. ``count`` must not exceed the reader's max_in_flight (a batch
    that can never fill only closes on time); the batch is also emitted early when the reader
    is starved (nsqd sends no more until messages are settled) or starts closing. While a
    batch is open its messages are TOUCHed
    every ``touch_interval`` seconds (default: half the negotiated msg_timeout) so they do not
    time out. On completion the open batch is emitted; on dispose it is requeued.
    """
    if count < 1:
        raise ConfigError("count", count, "an int >= 1")
    if timespan <= 0:
        raise ConfigError("timespan", timespan, "a number of seconds > 0")
    if max_bytes is not None and max_bytes < 1:
        raise ConfigError("max_bytes", max_bytes, "an int >= 1, or None")

    def apply(source: reactivex.Observable[Any]) -> reactivex.Observable[Any]:
        def subscribe(
            observer: abc.ObserverBase[Any], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            loop = asyncio.get_running_loop()
            current: list[Message[Any]] = []
            size = 0
            timers: dict[str, asyncio.TimerHandle | None] = {"flush": None, "touch": None}
            checked = False

            def cancel_timers() -> None:
                for name, handle in timers.items():
                    if handle is not None:
                        handle.cancel()
                    timers[name] = None

            def flush() -> None:
                nonlocal current, size
                cancel_timers()
                if not current:
                    return
                out, current, size = Batch(current), [], 0
                observer.on_next(out)

            def touch() -> None:
                for message in current:
                    message.touch()
                timers["touch"] = loop.call_later(interval_for(current[0]), touch)

            def interval_for(message: Message[Any]) -> float:
                return _touch_interval(message, touch_interval)

            consumer: Any = None
            closing_subscription: abc.DisposableBase | None = None

            def check(message: Message[Any]) -> bool:
                nonlocal consumer, closing_subscription
                consumer = getattr(message.connection, "consumer", None)
                closing = getattr(consumer, "closing", None)
                if closing is not None:
                    closing_subscription = closing.subscribe(on_next=lambda _: flush())
                limit = getattr(consumer, "max_in_flight", None)
                if limit and count > limit:
                    observer.on_error(
                        ConfigError("count", count, f"at most the reader's max_in_flight ({limit})")
                    )
                    message.req(0, backoff=False)
                    return False
                return True

            def on_next(message: Message[Any]) -> None:
                nonlocal size, checked
                if not checked:
                    if not check(message):
                        return
                    checked = True
                body = len(message.body)
                if max_bytes is not None and current and size + body > max_bytes:
                    flush()
                current.append(message)
                size += body
                if len(current) == 1:
                    timers["flush"] = loop.call_later(timespan, flush)
                    timers["touch"] = loop.call_later(interval_for(message), touch)
                if len(current) >= count or (max_bytes is not None and size >= max_bytes):
                    flush()
                elif consumer is not None and consumer.is_starved():
                    flush()  # nsqd will send no more until some are settled: do not wait

            def on_completed() -> None:
                flush()
                observer.on_completed()

            def dispose() -> None:
                cancel_timers()
                if closing_subscription is not None:
                    closing_subscription.dispose()
                for message in current:
                    message.req(0, backoff=False)
                current.clear()

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
