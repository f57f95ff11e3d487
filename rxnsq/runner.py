"""``rxnsq.run()``: run a script's readers and writers until done or signalled, then drain.

Readers and Writers register here when they are built. On SIGTERM or SIGINT, ``run`` closes
every one of them gracefully, readers first (RDY 0 and CLS at once, so nothing more is
fetched; in-flight messages get up to ``drain_timeout`` seconds to settle; the rest is
requeued), then writers (flush, wait for confirmations), and only then stops the loop. The
whole drain shares one budget: writers get what the readers left of ``drain_timeout`` (at least
half a second to flush), so the default (8 s) fits the usual 10 s grace period of a container. A
second signal during the drain stops waiting: everything still in flight is requeued at once and
``run`` returns. :func:`stop` does from code what a signal does (a supervisor that tells its
worker processes to stop over a pipe uses it).
Inside an already running loop (Jupyter, a tornado app) nothing here is needed: use ``await``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from tornado.ioloop import IOLoop

__all__ = ["DEFAULT_DRAIN_TIMEOUT", "Outcome", "close_all", "run", "serve", "stop"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a signal-triggered shutdown waits for in-flight work (under a 10 s grace period).
DEFAULT_DRAIN_TIMEOUT = 8.0

#: The least time writers get to flush after the readers' drain used up the budget.
_WRITER_FLOOR = 0.5


class Closable(Protocol):
    async def close(self, timeout: float = ...) -> None: ...


_clients: weakref.WeakSet[Any] = weakref.WeakSet()


def register(client: Closable) -> None:
    """Remember a Reader or Writer so ``run()`` closes it on shutdown (every Reader and
    Writer registers itself when it is built, whether used with ``async with`` or not)."""
    _clients.add(client)


class Outcome(NamedTuple, Generic[T]):
    """How :func:`serve` ended: ``value`` (what ``main`` returned, None if it did not finish),
    the ``signal`` that stopped it (None if ``main`` finished first), and whether a second
    signal cut the drain short (``hurried``)."""

    value: T | None
    signal: signal.Signals | None = None
    hurried: bool = False


async def close_all(timeout: float = 30.0) -> None:
    """Close every registered client gracefully within ``timeout`` seconds in all: readers
    first (a reader may still be republishing through a writer while it drains), then writers
    with the time left (at least half a second, or ``timeout`` if smaller)."""
    clients = list(_clients)
    readers = [c for c in clients if hasattr(c, "set_max_in_flight")]
    writers = [c for c in clients if c not in readers]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for group in (readers, writers):
        budget = timeout if group is readers else max(deadline - loop.time(), _WRITER_FLOOR)
        budget = min(budget, timeout)
        results = await asyncio.gather(*(c.close(budget) for c in group), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                logger.error("error while closing: %r", result)


def serve(
    main: Coroutine[Any, Any, T] | None = None, *, drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
) -> Outcome[T]:
    """Run the loop until ``main`` finishes (forever without one) or a signal arrives, drain,
    and say how it ended. Must be called from the main thread, outside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "rxnsq.run() cannot be used inside a running loop (Jupyter, tornado apps): "
            "build the Reader/Writer there and use await instead"
        )
    ioloop = IOLoop.current()
    loop: asyncio.AbstractEventLoop = ioloop.asyncio_loop  # type: ignore[attr-defined]
    stopping: asyncio.Future[signal.Signals] = loop.create_future()
    hurry: asyncio.Future[signal.Signals] = loop.create_future()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum)
        if not stopping.done():
            logger.info(
                "received %s: draining (up to %.1fs; again to stop at once)", name.name,
                drain_timeout,
            )  # fmt: skip
            stopping.set_result(name)
        elif not hurry.done():
            logger.warning(
                "received %s again: requeueing what is in flight and stopping", name.name
            )
            hurry.set_result(name)

    def request(signum: signal.Signals, at_once: bool) -> None:
        if not stopping.done():
            on_signal(signum)
        if at_once and not hurry.done():
            on_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    global _stop_request
    _stop_request = request

    async def supervise() -> Outcome[T]:
        task = loop.create_task(main) if main is not None else None
        waiters: list[asyncio.Future[Any]] = [stopping] + ([task] if task is not None else [])
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        draining = loop.create_task(close_all(drain_timeout))
        race: list[asyncio.Future[Any]] = [draining, hurry]
        await asyncio.wait(race, return_when=asyncio.FIRST_COMPLETED)
        hurried = not draining.done()
        if hurried:
            await close_all(0)  # a close already draining gives back what it waits for now
            await asyncio.wait([draining])
        value: T | None = None
        if task is not None:
            if not task.done():
                task.cancel()
            await asyncio.wait([task])
            if not task.cancelled():
                value = task.result()
        return Outcome(value, stopping.result() if stopping.done() else None, hurried)

    try:
        return loop.run_until_complete(supervise())
    finally:
        _stop_request = None
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


_stop_request: Callable[[signal.Signals, bool], None] | None = None


def stop(signum: signal.Signals = signal.SIGTERM, *, hurry: bool = False) -> bool:
    """Do to the running :func:`serve` what receiving ``signum`` does, from code on its loop:
    begin the drain (a no-op once it has begun, so a stop asked for twice, by a signal and by
    a supervisor, still drains), or with ``hurry=True`` also requeue what is in flight at once,
    as a second signal would. Returns False when no :func:`serve` is running."""
    if _stop_request is None:
        return False
    _stop_request(signum, hurry)
    return True


def run(
    main: Coroutine[Any, Any, T] | None = None, *, drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
) -> T | None:
    """Run the loop: until ``main`` finishes, or forever when no coroutine is given, and
    return what ``main`` returned (None when a signal stopped it first).

    SIGTERM and SIGINT close every Reader and Writer gracefully (waiting up to
    ``drain_timeout`` seconds for in-flight messages and pending publishes); a second signal
    stops at once. :func:`serve` also tells which signal stopped the run.
    """
    return serve(main, drain_timeout=drain_timeout).value
