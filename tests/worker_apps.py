"""Factories for ``rxnsq worker`` in tests/test_worker.py, imported by the worker processes.

What a handler saw is appended to ``$WORKER_TEST_OUT/<process>-<pid>.txt`` (one body per
line, written before the message is finished), so a test can check that nothing was lost.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from rxnsq import ops as nsq
from rxnsq.worker import WorkerContext


def _out(ctx: WorkerContext) -> Any:
    folder = Path(os.environ["WORKER_TEST_OUT"])
    return open(folder / f"{ctx.process}-{os.getpid()}.txt", "ab", buffering=0)


def fast(ctx: WorkerContext) -> Any:
    """Finish every message at once (a throughput pipeline)."""
    return ctx.reader().messages.pipe(nsq.process(len)).subscribe()


def slow(ctx: WorkerContext) -> Any:
    """Hold each message ``$WORKER_TEST_DELAY`` seconds, record it, then finish it."""
    out = _out(ctx)
    delay = float(os.environ.get("WORKER_TEST_DELAY", "0.2"))

    async def handle(body: bytes) -> None:
        await asyncio.sleep(delay)
        out.write(body + b"\n")

    reader = ctx.reader()
    return reader.messages.pipe(nsq.process_async(handle, concurrency=1000)).subscribe()


async def iterate(ctx: WorkerContext) -> None:
    """The async form: pull messages with ``async for``, record and finish each."""
    out = _out(ctx)
    async for message in ctx.reader().iter():
        out.write(message.body + b"\n")
        message.fin()


def relay(ctx: WorkerContext) -> Any:
    """Republish to ``<topic>-out``; finish each message once nsqd confirmed the copy."""
    reader = ctx.reader()
    writer = ctx.writer()
    return reader.messages.pipe(
        writer.publish(f"{reader.topic}-out", body=lambda m: m.body), nsq.settle()
    ).subscribe()


def raises(ctx: WorkerContext) -> Any:
    raise RuntimeError("no database at db.invalid")


def returns_a_number(ctx: WorkerContext) -> Any:
    return 42


async def fails_later(ctx: WorkerContext) -> None:
    ctx.reader()
    await asyncio.sleep(0.3)
    raise ValueError("the pipeline broke")


def stuck(ctx: WorkerContext) -> Any:
    """Block the loop for good once the first message arrives (a CPU-bound handler)."""
    import time

    def block(body: bytes) -> None:
        time.sleep(3600)

    return ctx.reader().messages.pipe(nsq.process(block)).subscribe()


NOT_CALLABLE = 42


def strict(ctx: WorkerContext) -> Any:
    """A subscriber that raises on a body of ``bad``: the Reader's boundary catches it."""

    def handle(message: Any) -> None:
        if message.body == b"bad":
            raise ValueError("cannot handle 'bad'")
        message.fin()

    return ctx.reader().messages.subscribe(on_next=handle)
