"""The supervisor: the ``rxnsq worker`` process itself. It starts the worker processes,
restarts a crashed one with backoff, forwards stop requests, serves the metrics and probes,
and decides the exit code.

Start method: each worker process is a fresh interpreter (``python -m rxnsq.worker.child``,
like multiprocessing's ``spawn``), never a ``fork`` of this process. The supervisor runs an
event loop (the HTTP server, the control sockets), and a loop, its selector and any thread
do not survive a fork; a fresh interpreter also behaves the same on every Python (3.14 moved
Linux's default start method from ``fork`` to ``forkserver``) and imports the user's module
in the process that runs it. The cost is an interpreter start per process (well under a
second, once per start).

Restarts: a process that exits non-zero while the worker is not stopping is restarted after
0.5 s, doubling per crash in a row up to 30 s; a process that ran for a minute before
crashing starts the count again. After ``--max-restarts`` crashes in a row the supervisor
stops the others and exits 1 (an outer supervisor, systemd or Kubernetes, takes it from
there). A process that could not boot (bad MODULE:FACTORY, a factory that raised) is not
restarted: the worker stops with that process' exit code (2 or 3). A process that ended
with 0 on its own (its pipeline returned) is not restarted either.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from .control import Channel
from .options import WorkerOptions

__all__ = ["Slot", "Supervisor"]

logger = logging.getLogger("rxnsq.worker.supervisor")

#: First restart delay, its growth cap, and how long a run resets the crash count.
RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
RESET_AFTER = 60.0
#: Beyond the drain timeout, how long a stopping process may take before it is killed.
STOP_GRACE = 5.0
#: After a second signal, how long processes get to requeue and exit before being killed.
HURRY_GRACE = 3.0


class Slot:
    """One worker process position (``index``), across its restarts."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: Channel | None = None
        self.started_at = 0.0  # monotonic
        self.spawned_at = 0.0  # wall clock
        self.booted = False
        self.boot_error: tuple[int, str] | None = None
        self.state: dict[str, Any] | None = None
        self.last_seen = 0.0  # wall clock of the last state report
        self.restarts = 0
        self.crashes_in_a_row = 0
        self.finished = False
        self.restart_timer: asyncio.TimerHandle | None = None
        self.reaped: subprocess.Popen[bytes] | None = None
        self.closed: subprocess.Popen[bytes] | None = None  # its control socket reached EOF
        self.exited_at = 0.0  # monotonic, when the exit was first seen
        self.exit_reason = ""  # what the process said before exiting: finished or stopped

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def ready(self) -> bool:
        return self.running and bool(self.state and self.state.get("ready"))

    def stalled(self, now: float, timeout: float) -> bool:
        """Running, and silent for longer than ``timeout`` (its loop is stuck)."""
        return self.running and now - max(self.last_seen, self.spawned_at) > timeout

    def describe(self) -> dict[str, Any]:
        return {
            "process": self.index,
            "pid": self.pid if self.running else None,
            "running": self.running,
            "ready": self.ready,
            "draining": bool(self.state and self.state.get("draining")),
            "connections": sum(
                len(reader["connections"]) for reader in (self.state or {}).get("readers", [])
            ),
            "last_report": self.last_seen or None,
            "restarts": self.restarts,
        }


def _start_process() -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """A fresh interpreter running one worker process, and our end of its control socket
    (its end is handed over as an inherited file descriptor, closed here once passed)."""
    parent_end, child_end = socket.socketpair()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rxnsq.worker.child", str(child_end.fileno())],
            pass_fds=(child_end.fileno(),),
        )
    except BaseException:
        parent_end.close()
        raise
    finally:
        child_end.close()
    return parent_end, proc


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """Runs ``options.processes`` worker processes until stopped; ``run()`` returns the
    exit code of the command."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.slots = [Slot(i) for i in range(options.processes)]
        self.stopping: signal.Signals | None = None
        self.hurried = False
        self.failure: int | None = None
        self.started = time.time()
        self._done: asyncio.Future[None] | None = None
        self._kill_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop_codes: list[int] = []

    # --- life --------------------------------------------------------------------------------

    async def run(self) -> int:
        """Start every process and supervise until they are all gone; the exit code."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.on_signal, signum)
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        reaper = loop.create_task(self._reap_periodically())
        try:
            logger.info(
                "starting %d worker process%s for %s", len(self.slots),
                "" if len(self.slots) == 1 else "es", self.options.app,
                extra={"event": "starting", "count": len(self.slots)},
            )  # fmt: skip
            for slot in self.slots:
                await self.spawn(slot)
            await self._done
        finally:
            reaper.cancel()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                loop.remove_signal_handler(signum)
            for slot in self.slots:
                if slot.restart_timer is not None:
                    slot.restart_timer.cancel()
                if slot.running:  # pragma: no cover - only when run() itself is cancelled
                    assert slot.proc is not None
                    slot.proc.kill()
                    slot.proc.wait()
            if self._kill_timer is not None:
                self._kill_timer.cancel()
        return self.exit_code()

    def exit_code(self) -> int:
        if self.failure is not None:
            return self.failure
        if self.stopping is not None:
            if self.hurried:
                return 128 + self.stopping
            if any(code != 0 for code in self._stop_codes):
                return 1
            return 130 if self.stopping is signal.SIGINT else 0
        return 0

    async def spawn(self, slot: Slot) -> None:
        """Start the process of ``slot`` and hand it its options."""
        slot.restart_timer = None
        parent_end, slot.proc = _start_process()
        slot.started_at = time.monotonic()
        slot.spawned_at = time.time()
        slot.booted = False
        slot.boot_error = None
        slot.state = None
        slot.exit_reason = ""
        channel = await Channel.open(parent_end)
        slot.channel = channel
        channel.send(
            {"options": self.options.to_json(), "process": slot.index, "supervisor": os.getpid()}
        )
        if self.stopping is not None:  # a signal came while it was starting
            channel.send({"op": "stop", "signal": self.stopping.name, "hurry": self.hurried})
        task = asyncio.get_running_loop().create_task(self._listen(slot, channel))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _listen(self, slot: Slot, channel: Channel) -> None:
        proc = slot.proc
        while True:
            try:
                message = await channel.receive()
            except ValueError as exc:
                logger.error("process %d: bad control message: %s", slot.index, exc)
                continue
            if message is None or slot.proc is not proc:
                break
            op = message.get("op")
            if op == "state":
                slot.state = message
                slot.last_seen = time.time()
            elif op == "booted":
                slot.booted = True
                logger.info(
                    "process %d started (pid %d)", slot.index, proc.pid if proc else -1,
                    extra={"event": "process_started", "restarts": slot.restarts},
                )  # fmt: skip
            elif op == "boot_error":
                slot.boot_error = (int(message.get("code", 1)), str(message.get("error", "")))
            elif op == "exit":
                slot.exit_reason = str(message.get("reason", ""))
        channel.close()
        slot.closed = proc
        self.reap()  # the process closed its end: it is exiting (SIGCHLD tells when)

    async def _reap_periodically(self) -> None:
        while True:  # SIGCHLD can coalesce; this catches what it missed
            await asyncio.sleep(0.5)
            self.reap()

    def reap(self) -> None:
        """Notice every process that has exited (SIGCHLD, or the periodic check), once its
        last messages were read (what it said before exiting decides what happens next)."""
        now = time.monotonic()
        for slot in self.slots:
            proc = slot.proc
            if proc is None or proc is slot.reaped or proc.poll() is None:
                continue
            slot.exited_at = slot.exited_at or now
            if slot.closed is proc or now - slot.exited_at > 2.0:
                slot.reaped = proc
                slot.exited_at = 0.0
                self._exited(slot, proc.returncode)

    # --- exits and restarts ------------------------------------------------------------------

    def _exited(self, slot: Slot, code: int) -> None:
        slot.state = None
        ran = time.monotonic() - slot.started_at
        fields = {"exit_code": code, "restarts": slot.restarts}
        if self.stopping is not None or self.failure is not None:
            self._stop_codes.append(code)
            level = logging.INFO if code == 0 else logging.ERROR
            logger.log(level, "process %d (pid %d) stopped: %s", slot.index, slot.pid or -1,
                       _exit_text(code), extra={"event": "process_stopped", **fields})  # fmt: skip
        elif slot.boot_error is not None:
            boot_code, error = slot.boot_error
            logger.error("process %d could not start: %s", slot.index, error,
                         extra={"event": "boot_failed", **fields})  # fmt: skip
            self.fail(boot_code)
        elif code == 0 and slot.exit_reason == "finished":
            slot.finished = True
            logger.info("process %d finished (its pipeline ended)", slot.index,
                        extra={"event": "process_finished", **fields})  # fmt: skip
        elif code == 0:
            # drained after a signal sent to it alone (an operator's kill): it comes back
            logger.warning(
                "process %d (pid %d) stopped on its own signal; restarting in %.1fs",
                slot.index, slot.pid or -1, RESTART_DELAY,
                extra={"event": "process_stopped", "delay": RESTART_DELAY, **fields},
            )  # fmt: skip
            loop = asyncio.get_running_loop()
            slot.restart_timer = loop.call_later(RESTART_DELAY, self._restart, slot)
        else:
            slot.crashes_in_a_row = slot.crashes_in_a_row + 1 if ran < RESET_AFTER else 1
            if slot.crashes_in_a_row > self.options.max_restarts:
                logger.error(
                    "process %d crashed (%s), %d times in a row: giving up", slot.index,
                    _exit_text(code), slot.crashes_in_a_row,
                    extra={"event": "crash_loop", **fields},
                )  # fmt: skip
                self.fail(1)
            else:
                delay = min(RESTART_DELAY * 2 ** (slot.crashes_in_a_row - 1), MAX_RESTART_DELAY)
                logger.error(
                    "process %d (pid %d) crashed (%s); restarting in %.1fs", slot.index,
                    slot.pid or -1, _exit_text(code), delay,
                    extra={"event": "process_crashed", "delay": delay, **fields},
                )  # fmt: skip
                loop = asyncio.get_running_loop()
                slot.restart_timer = loop.call_later(delay, self._restart, slot)
        self._check_done()

    def _restart(self, slot: Slot) -> None:
        if self.stopping is not None or self.failure is not None:
            return
        slot.restarts += 1
        logger.warning("restarting process %d (restart %d)", slot.index, slot.restarts,
                       extra={"event": "process_restart", "restarts": slot.restarts})  # fmt: skip
        task = asyncio.get_running_loop().create_task(self.spawn(slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def fail(self, code: int) -> None:
        """Give up: stop every other process (draining) and exit with ``code``."""
        if self.failure is None:
            self.failure = code
            self._stop_all(signal.SIGTERM, hurry=False)

    def _check_done(self) -> None:
        if self._done is None or self._done.done():
            return
        if any(slot.running for slot in self.slots):
            return
        stopping = self.stopping is not None or self.failure is not None
        waiting = any(slot.restart_timer is not None for slot in self.slots)
        if stopping or (not waiting and all(slot.finished for slot in self.slots)):
            self._done.set_result(None)

    # --- stopping ----------------------------------------------------------------------------

    def on_signal(self, signum: int) -> None:
        name = signal.Signals(signum)
        if self.stopping is None:
            self.stopping = name
            logger.info(
                "received %s: stopping every process (drain up to %.1fs; again to stop at "
                "once)", name.name, self.options.drain_timeout,
                extra={"event": "drain", "signal": name.name},
            )  # fmt: skip
            self._stop_all(name, hurry=False)
        elif not self.hurried:
            self.hurried = True
            logger.warning("received %s again: requeueing what is in flight and stopping",
                           name.name, extra={"event": "hurry", "signal": name.name})  # fmt: skip
            self._stop_all(name, hurry=True)

    def _stop_all(self, signum: signal.Signals, hurry: bool) -> None:
        for slot in self.slots:
            if slot.restart_timer is not None:
                slot.restart_timer.cancel()
                slot.restart_timer = None
            if slot.running and slot.channel is not None:
                slot.channel.send({"op": "stop", "signal": signum.name, "hurry": hurry})
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        grace = HURRY_GRACE if hurry else self.options.drain_timeout + STOP_GRACE
        self._kill_timer = asyncio.get_running_loop().call_later(grace, self._kill_stragglers)
        self._check_done()

    def _kill_stragglers(self) -> None:
        for slot in self.slots:
            if slot.running and slot.proc is not None:
                logger.error("process %d (pid %d) did not stop in time: killing it", slot.index,
                             slot.proc.pid, extra={"event": "kill"})  # fmt: skip
                os.kill(slot.proc.pid, signal.SIGKILL)
                if self.failure is None:
                    self.failure = 1

    # --- views for the probes and metrics ----------------------------------------------------

    def alive(self) -> tuple[bool, list[dict[str, Any]]]:
        """Liveness: no running process has been silent for ``--heartbeat-timeout``."""
        now = time.time()
        stalled = [s for s in self.slots if s.stalled(now, self.options.heartbeat_timeout)]
        return not stalled, [slot.describe() for slot in self.slots]

    def ready(self) -> tuple[bool, list[dict[str, Any]]]:
        """Readiness: not stopping, and every process ready (connected, not draining)."""
        ok = self.stopping is None and self.failure is None
        ok = ok and all(slot.ready for slot in self.slots)
        return ok, [slot.describe() for slot in self.slots]
