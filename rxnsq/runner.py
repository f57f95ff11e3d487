"""``rxnsq.run()``: run scripts' readers and writers until done or signalled, then drain.

Readers and Writers register here when they are built. On SIGTERM or SIGINT, ``run`` closes
every one of them gracefully (readers: RDY 0, CLS, let in-flight messages settle, requeue the
rest; writers: flush and wait for confirmations) and only then stops the loop. Inside an
already running loop (Jupyter, a tornado app) nothing here is needed: use ``await``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import weakref
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from tornado.ioloop import IOLoop

__all__ = ["close_all", "run"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Closable(Protocol):
    async def close(self, timeout: float = ...) -> None: ...


_clients: weakref.WeakSet[Any] = weakref.WeakSet()


def register(client: Closable) -> None:
    """Remember a Reader or Writer so ``run()`` closes it on shutdown (every Reader and
    Writer registers itself when it is built, whether used with ``async with`` or not)."""
    _clients.add(client)


async def close_all(timeout: float = 30.0) -> None:
    """Close every registered client gracefully, readers before writers (a reader may still
    be republishing through a writer while it drains)."""
    clients = list(_clients)
    readers = [c for c in clients if hasattr(c, "set_max_in_flight")]
    writers = [c for c in clients if c not in readers]
    for group in (readers, writers):
        results = await asyncio.gather(*(c.close(timeout) for c in group), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                logger.error("error while closing: %r", result)


def run(main: Coroutine[Any, Any, T] | None = None, *, drain_timeout: float = 30.0) -> T | None:
    """Run the loop: until ``main`` finishes, or forever when no coroutine is given.

    SIGTERM and SIGINT close every Reader and Writer gracefully (waiting up to
    ``drain_timeout`` seconds for in-flight messages and pending publishes), then return.
    Must be called from the main thread, outside a running loop.
    """
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
    loop = ioloop.asyncio_loop  # type: ignore[attr-defined]
    stopping: asyncio.Future[None] = loop.create_future()
    result: dict[str, Any] = {}

    def on_signal(signum: int) -> None:
        logger.info("received %s: draining and stopping", signal.Signals(signum).name)
        if not stopping.done():
            stopping.set_result(None)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    async def supervise() -> None:
        waiters: list[asyncio.Future[Any]] = [stopping]
        task = loop.create_task(main) if main is not None else None
        if task is not None:
            waiters.append(task)
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        await close_all(drain_timeout)
        if task is not None:
            if not task.done():
                task.cancel()
            await asyncio.wait([task])
            if not task.cancelled():
                result["value"] = task.result()

    try:
        loop.run_until_complete(supervise())
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return result.get("value")
