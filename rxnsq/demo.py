"""The README's demo: a windowed pipeline over a local NSQ, with a failure and its recovery.

``python -m rxnsq.demo`` starts nsqd and nsqlookupd (through :mod:`rxnsq.testing`) unless
``--nsqd-tcp-address`` is given, publishes a synthetic click stream through a Writer sink,
consumes it with a Reader discovered through nsqlookupd, aggregates windows of events, makes
one window fail (it is requeued, the reader backs off, then it succeeds), prints progress and
a summary, and stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import time
from collections import Counter
from contextlib import ExitStack
from typing import Any

import reactivex

from . import ops as nsq
from .flow import BackoffState
from .reader import Reader
from .testing import NsqdProcess, NsqlookupdProcess
from .writer import Writer

TOPIC = "rxnsq_demo_clicks"
CHANNEL = "windows"
PAGES = ["/", "/pricing", "/docs", "/blog", "/signup"]


def make_events(count: int, seed: int = 7) -> list[bytes]:
    """A reproducible synthetic click stream as JSON bodies."""
    rng = random.Random(seed)
    now = time.time()
    return [
        json.dumps(
            {"n": i, "page": rng.choice(PAGES), "ms": rng.randint(5, 500), "at": now}
        ).encode()
        for i in range(count)
    ]


async def run_demo(
    *, nsqd: str, lookupd: str | None, count: int, window: int, fail_window: int
) -> dict[str, Any]:
    """Publish ``count`` events, aggregate them in windows of ``window``; window number
    ``fail_window`` fails once. Returns the summary."""
    writer = Writer(nsqd, name="demo-producer")
    sink = writer.sink(TOPIC, max_batch=500)
    reactivex.from_iterable(make_events(count)).subscribe(sink)
    await asyncio.wait_for(sink.done, 60)
    print(f"published {sink.confirmed} events in {sink.commands} MPUB commands")

    discovery: dict[str, Any] = (
        {"lookupd_http_addresses": [lookupd], "lookupd_poll_interval": 1.0}
        if lookupd
        else {"nsqd_tcp_addresses": [nsqd]}
    )
    reader = Reader(
        TOPIC,
        CHANNEL,
        max_in_flight=window * 2,
        default_requeue_delay=0.5,
        max_backoff_duration=2.0,
        **discovery,
    )
    pages: Counter[str] = Counter()
    seen: set[int] = set()
    windows = {"ok": 0, "failed": 0}
    done = asyncio.get_running_loop().create_future()
    started = time.perf_counter()

    def aggregate(events: list[dict[str, Any]]) -> None:
        number = windows["ok"] + windows["failed"] + 1
        if number == fail_window and windows["failed"] == 0:
            windows["failed"] += 1
            print(f"  window {number}: simulated failure -> requeued, backing off")
            raise RuntimeError("simulated sink outage")
        windows["ok"] += 1
        pages.update(e["page"] for e in events)
        seen.update(e["n"] for e in events)
        slowest = max(e["ms"] for e in events)
        print(
            f"  window {number}: {len(events)} events, slowest {slowest} ms, "
            f"progress {len(seen)}/{count}"
        )
        if len(seen) == count and not done.done():
            done.set_result(None)

    def show_backoff(state: BackoffState) -> None:
        if state.level:
            print(f"  backoff level {state.level} ({state.phase}, {state.interval:.1f}s)")

    reader.backoff.subscribe(show_backoff)
    reader.messages.pipe(
        nsq.decode(json.loads),
        nsq.batch(window, timespan=0.5),
        nsq.process_batch(aggregate),
    ).subscribe()
    await asyncio.wait_for(done, 120)
    elapsed = time.perf_counter() - started
    stats = reader.stats()
    await reader.close()
    await writer.close()
    summary = {
        "events": count,
        "processed": len(seen),
        "windows_ok": windows["ok"],
        "windows_failed": windows["failed"],
        "seconds": round(elapsed, 2),
        "top_pages": pages.most_common(3),
        "finished": sum(c["finished"] for c in stats["connections"].values()),
        "requeued": sum(c["requeued"] for c in stats["connections"].values()),
    }
    print("summary:", json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rxnsq.demo", description=__doc__)
    parser.add_argument("--nsqd-tcp-address", help="use this nsqd instead of starting one")
    parser.add_argument("--count", type=int, default=5000, help="events to publish")
    parser.add_argument("--window", type=int, default=250, help="events per window")
    parser.add_argument("--fail-window", type=int, default=3, help="the window that fails once")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    with ExitStack() as stack:
        nsqd_address = args.nsqd_tcp_address
        lookupd_url = None
        if nsqd_address is None:
            lookupd = stack.enter_context(NsqlookupdProcess())
            nsqd = stack.enter_context(NsqdProcess(lookupd_tcp_addresses=[lookupd.tcp_address]))
            nsqd_address, lookupd_url = nsqd.tcp_address, lookupd.http_url
            print(f"started nsqlookupd (pid {lookupd.pid}) and nsqd (pid {nsqd.pid})")
        summary = asyncio.run(
            run_demo(
                nsqd=nsqd_address,
                lookupd=lookupd_url,
                count=args.count,
                window=args.window,
                fail_window=args.fail_window,
            )
        )
    if args.nsqd_tcp_address is None:
        print("stopped nsqd and nsqlookupd")
    return 0 if summary["processed"] == summary["events"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
