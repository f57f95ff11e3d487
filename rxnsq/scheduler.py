"""An Rx scheduler that runs everything on one asyncio loop, whichever thread schedules it.

RxPY's timed operators (``window_with_time``, ``debounce``, ``sample``...) default to thread
timers, which call subscribers on other threads. Give them a :class:`LoopScheduler` instead
(``subscribe(..., scheduler=reader.scheduler)``) and every timer fires on the loop that owns
the messages. The scheduler may exist before its loop does: it binds to the running loop the
first time it is used, or when a Reader starts on it.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from reactivex import abc, typing
from reactivex.disposable import CompositeDisposable, Disposable, SingleAssignmentDisposable
from reactivex.scheduler.periodicscheduler import PeriodicScheduler

from .errors import StateError

__all__ = ["LoopScheduler", "loop_scheduler"]

_TState = TypeVar("_TState")

_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopScheduler] = (
    weakref.WeakKeyDictionary()
)


class LoopScheduler(PeriodicScheduler):
    """Schedules Rx work on one asyncio loop; safe to use from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__()
        self._loop = loop
        self._thread_id: int | None = None

    def __repr__(self) -> str:
        state = "unbound" if self._loop is None else f"on {self._loop!r}"
        return f"<LoopScheduler {state}>"

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Tie the scheduler to ``loop`` (from that loop's thread). Binding to another loop
        later is an error: timers of one pipeline must not fire on two loops."""
        if self._loop is not None and self._loop is not loop:
            raise StateError(f"{self!r} is already bound to another loop")
        self._loop = loop
        self._thread_id = threading.get_ident()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop, bound to the running one on first use."""
        if self._loop is None or self._thread_id is None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                if self._loop is not None:
                    return self._loop
                raise StateError(
                    "LoopScheduler is not bound to a loop yet: use it from the loop's thread "
                    "first, or start the Reader it belongs to"
                ) from None
            self.bind(running)
        assert self._loop is not None
        return self._loop

    def _on_loop_thread(self) -> bool:
        return self._thread_id == threading.get_ident()

    @property
    def now(self) -> datetime:
        return self.to_datetime(self.loop.time())

    def _call(self, delay: float, run: Callable[[], None]) -> Callable[[], None]:
        """Run ``run`` after ``delay`` seconds on the loop; returns a cancel function."""
        loop = self.loop
        if self._on_loop_thread():
            handle: asyncio.Handle = (
                loop.call_later(delay, run) if delay > 0 else loop.call_soon(run)
            )
            return handle.cancel
        holder: dict[str, asyncio.Handle] = {}
        cancelled = threading.Event()

        def arm() -> None:
            if not cancelled.is_set():
                holder["handle"] = loop.call_later(delay, run) if delay > 0 else loop.call_soon(run)

        loop.call_soon_threadsafe(arm)

        def cancel() -> None:
            cancelled.set()
            handle = holder.get("handle")
            if handle is not None:
                loop.call_soon_threadsafe(handle.cancel)

        return cancel

    def schedule(
        self, action: typing.ScheduledAction[_TState], state: _TState | None = None
    ) -> abc.DisposableBase:
        return self.schedule_relative(0.0, action, state)

    def schedule_relative(
        self,
        duetime: typing.RelativeTime,
        action: typing.ScheduledAction[_TState],
        state: _TState | None = None,
    ) -> abc.DisposableBase:
        assignment = SingleAssignmentDisposable()

        def run() -> None:
            assignment.disposable = self.invoke_action(action, state=state)

        cancel = self._call(max(0.0, self.to_seconds(duetime)), run)
        return CompositeDisposable(assignment, Disposable(cancel))

    def schedule_absolute(
        self,
        duetime: typing.AbsoluteTime,
        action: typing.ScheduledAction[_TState],
        state: _TState | None = None,
    ) -> abc.DisposableBase:
        return self.schedule_relative(self.to_datetime(duetime) - self.now, action, state)


def loop_scheduler(loop: Any = None) -> LoopScheduler:
    """The :class:`LoopScheduler` of ``loop`` (default: the running loop), one per loop."""
    target: asyncio.AbstractEventLoop = loop or asyncio.get_running_loop()
    scheduler = _by_loop.get(target)
    if scheduler is None:
        scheduler = _by_loop[target] = LoopScheduler(target)
        if loop is None:
            scheduler.bind(target)
    return scheduler
