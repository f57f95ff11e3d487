"""One worker process: build the pipeline with the factory, run it under
:func:`rxnsq.runner.serve`, report to the supervisor, drain when told to.

Started by the supervisor as ``python -m rxnsq.worker.child FD`` (a fresh interpreter: no
loop, thread or socket of the supervisor is inherited), where FD is its end of the control
socketpair. It reads its options from there, so no option (no secret) is on its command line.

Stopping: a ``stop`` from the supervisor, or SIGTERM/SIGINT sent to this process directly (a
terminal's Ctrl-C reaches the whole process group; systemd signals the whole cgroup), begins
the same drain: :func:`rxnsq.runner.stop` is idempotent, so a stop that arrives both ways
still drains once, and only a second *distinct* request (``hurry``, or a second signal)
requeues at once. When the supervisor dies (even from SIGKILL) the socket reaches end of file
and the process drains and exits on its own: no orphan keeps consuming. On Linux the kernel
also sends SIGHUP when the supervisor dies (``PR_SET_PDEATHSIG``), whose handler arms an alarm
for the drain timeout plus 3 s: a process whose loop is stuck (and so never reads the end of
file) is ended by it all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import json
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable
from typing import Any

from .. import runner
from ..errors import AppImportError, FactoryError, PipelineError
from . import logs
from .app import load_factory, start_factory
from .context import WorkerContext
from .control import Channel
from .options import WorkerOptions

__all__ = ["main"]

logger = logging.getLogger("rxnsq.worker")

#: Seconds between two state reports (the supervisor's view of counters and liveness).
STATE_INTERVAL = 1.0


def _read_line(sock: socket.socket) -> bytes:
    """The first line on the socket, read byte by byte so nothing after it is consumed."""
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise EOFError("the supervisor closed the control socket before sending options")
        data += chunk
    return bytes(data)


class WorkerProcess:
    """The runtime of one worker process (see the module docstring)."""

    def __init__(self, sock: socket.socket, options: WorkerOptions, process: int) -> None:
        self.sock = sock
        self.options = options
        self.process = process
        self.ctx = WorkerContext(options, process, on_change=self._changed)
        self.channel: Channel | None = None
        self.booted = False
        self.stop_requested = False
        self._push_scheduled = False
        self._parent = os.getppid()  # checked every second too (no PDEATHSIG off Linux)
        self._readers_closed: asyncio.Event | None = None
        #: Told to the supervisor before exiting: ``finished`` (the pipeline ended on its
        #: own: not restarted), ``stopped`` (drained on request) or ``failed``.
        self.exit_reason = "stopped"

    # --- reports to the supervisor -----------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self.stop_requested or self.ctx.closing

    def state(self) -> dict[str, Any]:
        return {
            "op": "state",
            "time": time.time(),
            "pid": os.getpid(),
            "booted": self.booted,
            "draining": self.draining,
            "ready": self.booted and not self.draining and self.ctx.connected,
            **self.ctx.snapshot(),
        }

    def push(self) -> None:
        self._push_scheduled = False
        if self.channel is not None:
            self.channel.send(self.state())

    def _changed(self) -> None:
        if self._readers_closed is not None and self.ctx.all_readers_closed:
            self._readers_closed.set()
        if not self._push_scheduled:
            self._push_scheduled = True
            asyncio.get_running_loop().call_soon(self.push)

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(STATE_INTERVAL)
            if os.getppid() != self._parent:
                self._supervisor_gone("the supervisor's pid changed")
            self.push()

    # --- requests from the supervisor --------------------------------------------------------

    async def _listen(self) -> None:
        assert self.channel is not None
        while True:
            message = await self.channel.receive()
            if message is None:
                self._supervisor_gone("the control socket closed")
                return
            if message.get("op") == "stop":
                name = message.get("signal", "SIGTERM")
                signum = signal.Signals[name] if name in signal.Signals.__members__ else None
                self.stop_requested = True
                runner.stop(signum or signal.SIGTERM, hurry=bool(message.get("hurry")))
                self.push()

    def _supervisor_gone(self, why: str) -> None:
        if not self.stop_requested:
            logger.warning("the supervisor is gone (%s): draining and exiting", why,
                           extra={"event": "orphaned"})  # fmt: skip
            self.stop_requested = True
            runner.stop(signal.SIGTERM)

    # --- the pipeline ------------------------------------------------------------------------

    async def run(self, factory: Any) -> int:
        """The process' main coroutine under ``serve``: its return value is the exit code."""
        self.channel = await Channel.open(self.sock)
        self._readers_closed = asyncio.Event()
        helpers = [
            asyncio.ensure_future(self._listen()),
            asyncio.ensure_future(self._report()),
        ]
        started: Any = None
        task: asyncio.Future[Any] | None = None
        try:
            try:
                started = start_factory(factory, self.ctx, self.options.app)
            except FactoryError as exc:
                return await self._boot_error(exc)
            self.booted = True
            self.channel.send({"op": "booted"})
            self.push()
            logger.info("started", extra={"event": "started"})
            waiters: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(self._readers_closed.wait())
            ]
            if inspect.isawaitable(started):
                task = asyncio.ensure_future(_awaited(started))
                waiters.append(task)
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiters[0].cancel()
            return self._ended(task)
        finally:
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait([task])
            if started is not None and callable(getattr(started, "dispose", None)):
                try:
                    started.dispose()
                except Exception as exc:
                    logger.error("disposing the pipeline raised %r", exc, exc_info=exc,
                                 extra={"event": "caught_error", "error": repr(exc)})  # fmt: skip
            self.push()
            if self.channel is not None:
                self.channel.send({"op": "exit", "reason": self.exit_reason})
                await self.channel.drain()
            for helper in helpers:
                helper.cancel()
            self.ctx.dispose()

    def _ended(self, task: asyncio.Future[Any] | None) -> int:
        """The pipeline stopped: on its own, or because the drain closed its Readers."""
        if self.draining and (task is None or not task.done() or task.cancelled()):
            return 0
        if task is not None and task.done() and not task.cancelled():
            error = task.exception()
            if error is not None:
                self.exit_reason = "failed"
                failure = PipelineError(f"the pipeline of {self.options.app} raised {error!r}")
                logger.error("%s", failure, exc_info=error,
                             extra={"event": "pipeline_failed", "error": repr(error)})  # fmt: skip
                return failure.exit_code
            logger.info("the pipeline returned: stopping", extra={"event": "finished"})
            self.exit_reason = "finished"
            return 0
        fatal = self.ctx.fatal_error()
        if fatal is not None:
            self.exit_reason = "failed"
            failure = PipelineError(f"a Reader failed for good: {fatal}")
            logger.error("%s", failure, extra={"event": "pipeline_failed", "error": repr(fatal)})
            return failure.exit_code
        logger.info("every Reader closed: stopping", extra={"event": "finished"})
        self.exit_reason = "finished"
        return 0

    async def _boot_error(self, exc: FactoryError) -> int:
        logger.error("%s", exc, exc_info=exc.__cause__ or exc,
                     extra={"event": "boot_error", "error": str(exc)})  # fmt: skip
        assert self.channel is not None
        self.channel.send({"op": "boot_error", "code": exc.exit_code, "error": str(exc)})
        await self.channel.drain()
        return exc.exit_code


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _die_with_the_supervisor(supervisor: int, drain_timeout: float) -> None:
    """SIGHUP when the supervisor dies (Linux), and an alarm from it: a healthy loop drains
    on the socket's end of file well before the alarm; a stuck one is ended by it."""

    def on_hangup(signum: int, frame: object) -> None:
        signal.alarm(math.ceil(drain_timeout) + 3)  # SIGALRM's default action ends us

    signal.signal(signal.SIGHUP, on_hangup)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGHUP, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != supervisor:  # it died before the line above
        on_hangup(signal.SIGHUP, None)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(args[0]))
    sock.set_inheritable(False)  # a process the pipeline forks must not keep it open
    config = json.loads(_read_line(sock))
    options = WorkerOptions.from_json(config["options"])
    process = int(config["process"])
    logs.setup(process, options.log_format, options.log_level)
    _die_with_the_supervisor(int(config["supervisor"]), options.drain_timeout)
    try:
        factory = load_factory(options.app, options.app_dir)
    except AppImportError as exc:
        logger.error("%s", exc, extra={"event": "boot_error", "error": str(exc)})
        message = {"op": "boot_error", "code": exc.exit_code, "error": str(exc)}
        sock.sendall(json.dumps(message).encode() + b"\n")
        return exc.exit_code
    worker = WorkerProcess(sock, options, process)
    outcome = runner.serve(worker.run(factory), drain_timeout=options.drain_timeout)
    code = outcome.value if outcome.value is not None else 0
    logger.info("exiting", extra={"event": "exit", "exit_code": code})
    return code


if __name__ == "__main__":
    sys.exit(main())
