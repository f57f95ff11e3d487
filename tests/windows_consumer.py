"""A consumer process for the windows tests against nsqd: a keyed tumbling count of
``{"n", "k", "t"}`` events in the store mode, results and late events appended to files.

Run as ``python -m tests.windows_consumer --nsqd ADDR --store sqlite:PATH|postgres:DSN ...``.
The sink writes a result (one line, with the result's stable id) *before* settling it, as an
idempotent sink must: a consumer killed between the two emits the result again after a restart,
with the same id and value. Late events are written by their ``n`` and then finished.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from typing import Any

from rxnsq import Reader, windows
from rxnsq import ops as nsq

TOPIC = "clicks"
CHANNEL = "counts"
WINDOW = 60.0
DELAY = 120.0
LATENESS = 5400.0


def make_store(spec: str) -> Any:
    kind, _, where = spec.partition(":")
    if kind == "sqlite":
        return windows.SQLiteStore(where)
    if kind == "postgres":
        return windows.PostgresStore(where)
    raise SystemExit(f"unknown store {spec!r}")


class CrashingStore:
    """A store that SIGKILLs this process right after a commit once ``crash_file`` exists
    (the test creates it): the worst moment, messages stored and not yet finished."""

    def __init__(self, store: Any, crash_file: str) -> None:
        self.store = store
        self.crash_file = crash_file

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def fold(self, *args: Any) -> Any:
        plan = await self.store.fold(*args)
        if os.path.exists(self.crash_file):
            os.unlink(self.crash_file)
            os.kill(os.getpid(), signal.SIGKILL)
        return plan


def appender(path: str) -> Any:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(record: dict[str, Any]) -> None:
        os.write(fd, (json.dumps(record) + "\n").encode())

    return write


async def main(args: argparse.Namespace) -> None:
    store = make_store(args.store)
    if args.crash_file:
        store = CrashingStore(store, args.crash_file)
    counts = windows.count(
        key=lambda e: e["k"],
        window=windows.tumbling(WINDOW),
        clock=windows.event_time(lambda e: e["t"], delay=DELAY),
        lateness=LATENESS,
        store=store,
        name="clicks-per-minute",
        tick=0.2,
        lease=args.lease,
    )
    reader = Reader(
        TOPIC, CHANNEL, nsqd_tcp_addresses=[args.nsqd], max_in_flight=args.max_in_flight,
        msg_timeout=args.msg_timeout, default_requeue_delay=0.1, max_backoff_duration=0.5,
    )  # fmt: skip
    write_result, write_late = appender(args.results), appender(args.late)

    def sink(result: windows.WindowResult[str, int]) -> None:
        write_result(
            {"id": result.id, "key": result.key, "start": result.window.start,
             "value": result.value}
        )  # fmt: skip
        result.settle()

    def late(event: windows.Late[dict[str, Any]]) -> None:
        write_late({"n": event.message.value["n"]})
        event.settle()

    counts.late.subscribe(late)
    reader.messages.pipe(nsq.decode(json.loads), counts).subscribe(sink)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("consuming", flush=True)
    await stop.wait()
    await reader.close()
    await counts.drain()
    await store.close()
    print("stats:", json.dumps(counts.stats()), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--nsqd", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--late", required=True)
    parser.add_argument("--max-in-flight", type=int, default=1000)
    parser.add_argument("--msg-timeout", type=float, default=3.0)
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--crash-file", default="", help="SIGKILL after a commit once it exists")
    asyncio.run(main(parser.parse_args()))
