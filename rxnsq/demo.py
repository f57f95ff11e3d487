"""The README's demo: per-page clicks per minute over a local NSQ, by event time, exact.

``python -m rxnsq.demo`` starts nsqd and nsqlookupd (through :mod:`rxnsq.testing`) unless
``--nsqd-tcp-address`` is given, publishes a synthetic click stream through a Writer sink
(some clicks out of order, a few far too late), and counts clicks per page per minute of event
time with :mod:`rxnsq.windows` in the store mode (a SQLite file): each batch is stored with its
message ids, then finished. One result fails in the sink and is handed out again by the store.
It prints each minute's counts, the late clicks and a summary (the totals are checked against
what was published), and stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import reactivex

from . import ops as nsq
from . import windows
from .reader import Reader
from .testing import NsqdProcess, NsqlookupdProcess
from .writer import Writer

TOPIC = "rxnsq_demo_clicks"
CHANNEL = "per_minute"
PAGES = ["/", "/pricing", "/docs", "/blog", "/signup"]
WINDOW = 60.0
DELAY = 20.0
LATENESS = 60.0


def make_events(count: int, seed: int = 7) -> tuple[list[bytes], Counter[tuple[str, float]], int]:
    """A reproducible click stream over ten minutes of event time ending now: 10 % of the
    clicks arrive up to 15 s out of order, 1 % over 3 minutes late. Returns the JSON bodies,
    the expected count per (page, minute) and how many are late."""
    rng = random.Random(seed)
    end = time.time() // 60 * 60
    start = end - 600
    bodies, expected, late = [], Counter[tuple[str, float]](), 0
    for n in range(count):
        at = start + 600 * n / count
        page = rng.choice(PAGES)
        draw = rng.random()
        if n > count // 2 and draw < 0.01:
            at -= rng.uniform(200, 280)  # behind the watermark by more than the lateness
            late += 1
        else:
            if draw < 0.11:
                at -= rng.uniform(0, 15)
            expected[(page, at // WINDOW * WINDOW)] += 1
        bodies.append(json.dumps({"n": n, "page": page, "ts": round(at, 3)}).encode())
    # each page's next event (as a live stream would send): it moves the watermarks on
    bodies += [json.dumps({"n": count, "page": p, "ts": end + 150}).encode() for p in PAGES]
    return bodies, expected, late


async def run_demo(
    *, nsqd: str, lookupd: str | None, count: int, state: Path, fail_result: int
) -> dict[str, Any]:
    """Publish ``count`` clicks and count them per page and minute; result number
    ``fail_result`` fails once in the sink. Returns the summary."""
    bodies, expected, late_expected = make_events(count)
    writer = Writer(nsqd, name="demo-producer")
    sink = writer.sink(TOPIC, max_batch=500)
    reactivex.from_iterable(bodies).subscribe(sink)
    await asyncio.wait_for(sink.done, 60)
    print(f"published {sink.confirmed} clicks in {sink.commands} MPUB commands")

    discovery: dict[str, Any] = (
        {"lookupd_http_addresses": [lookupd], "lookupd_poll_interval": 1.0}
        if lookupd
        else {"nsqd_tcp_addresses": [nsqd]}
    )
    reader = Reader(TOPIC, CHANNEL, max_in_flight=500, **discovery)
    store = windows.SQLiteStore(state / "demo.db")
    counts: windows.Windowed[dict[str, Any], str, int] = windows.count(
        key=lambda click: click["page"],
        window=windows.tumbling(WINDOW),
        clock=windows.event_time(lambda click: click["ts"], delay=DELAY),
        lateness=LATENESS,
        store=store,
        name="clicks-per-page-minute",
        tick=0.2,
    )
    totals: dict[tuple[str, float], int] = {}
    late: list[int] = []
    failures = 0
    done = asyncio.get_running_loop().create_future()
    started = time.perf_counter()

    def write(result: windows.WindowResult[str, int]) -> None:
        nonlocal failures
        if len(totals) + 1 == fail_result and failures == 0:
            failures += 1
            print(f"  {result.key} {result.window.start_time:%H:%M}: simulated sink outage "
                  "-> requeued, the store hands it out again in 1 s")  # fmt: skip
            result.requeue(1.0)
            return
        totals[(result.key, result.window.start)] = result.value  # an idempotent upsert
        print(f"  {result.window.start_time:%H:%M} {result.key:<9} {result.value:4d} clicks")
        result.settle()
        if len(totals) >= len(expected) and not done.done():
            done.set_result(None)

    def on_late(event: windows.Late[dict[str, Any]]) -> None:
        late.append(event.message.value["n"])
        event.settle()

    counts.late.subscribe(on_late)
    reader.messages.pipe(nsq.decode(json.loads), counts).subscribe(write)
    await asyncio.wait_for(done, 120)
    elapsed = time.perf_counter() - started
    stats = reader.stats()
    await reader.close()
    await counts.drain()
    size = await store.size("clicks-per-page-minute")
    await store.close()
    await writer.close()
    pages: Counter[str] = Counter()
    for (page, _minute), value in totals.items():
        pages[page] += value
    summary = {
        "events": count,
        "counted": sum(totals.values()),
        "late": len(late),
        "exact": totals == dict(expected) and len(late) == late_expected,
        "windows": len(totals),
        "results_failed": failures,
        "seconds": round(elapsed, 2),
        "top_pages": pages.most_common(3),
        "finished": sum(c["finished"] for c in stats["connections"].values()),
        "store_windows_open": size.windows,
    }
    print("summary:", json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rxnsq.demo", description=__doc__)
    parser.add_argument("--nsqd-tcp-address", help="use this nsqd instead of starting one")
    parser.add_argument("--count", type=int, default=5000, help="clicks to publish")
    parser.add_argument("--state", help="the SQLite file's folder (default: a temp dir)")
    parser.add_argument("--fail-result", type=int, default=3, help="the result that fails once")
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
        state = Path(args.state or stack.enter_context(tempfile.TemporaryDirectory()))
        summary = asyncio.run(
            run_demo(
                nsqd=nsqd_address,
                lookupd=lookupd_url,
                count=args.count,
                state=state,
                fail_result=args.fail_result,
            )
        )
    if args.nsqd_tcp_address is None:
        print("stopped nsqd and nsqlookupd")
    return 0 if summary["exact"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
