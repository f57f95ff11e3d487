"""Windowed aggregation speed: a keyed tumbling count over N events (1,000,000 by default).

One nsqd, one topic published once, one channel per row, so every row reads the same N
messages in the same run:

- ``windows_sqlite_full`` / ``windows_sqlite_normal``: ``rxnsq.windows.count`` in the store
  mode on a SQLite file (``synchronous=FULL``, the default; ``NORMAL``);
- ``windows_postgres``: the same on a private PostgreSQL server (its CPU is not the client's);
- ``batch_by_hand``: the same count written by hand with ``rxnsq.ops.batch`` +
  ``process_batch`` (a dict in memory, processing time of the batch, no watermark, no late
  stream, no dedupe: what people write today, and what a crash loses).

Each row reports messages/s (first message to the last one settled), client CPU per message
(this process, threads included), and for the stores their size after the run (``StoreSize``
with ``id_retention=10`` s: right after the run, and once the retention has passed).

``python -m benchmarks.windows [--events N] [--out benchmarks/results/windows.md]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rxnsq import Reader, windows
from rxnsq import ops as nsq
from rxnsq.testing import NsqdProcess, eventually, publish
from rxnsq.testing.postgres import PostgresProcess, find_postgres

TOPIC = "bench_windows"
KEYS = 50
ROWS = ["windows_sqlite_full", "windows_sqlite_normal", "windows_postgres", "batch_by_hand"]


def events(count: int) -> list[bytes]:
    """In event-time order but 10 % up to 30 s behind; 50 keys; 1,000 events per minute."""
    rng = random.Random(1)
    t0 = 1_700_000_040.0
    out = []
    for n in range(count):
        t = t0 + n * 0.06
        if rng.random() < 0.1:
            t -= rng.uniform(0, 30)
        out.append(json.dumps({"k": f"k{rng.randrange(KEYS)}", "t": round(t, 3)}).encode())
    return out


def reader(nsqd: NsqdProcess, channel: str) -> Reader:
    return Reader(TOPIC, channel, nsqd_tcp_addresses=[nsqd.tcp_address], max_in_flight=2500)


async def windows_row(
    nsqd: NsqdProcess, channel: str, count: int, store: Any, retention: float = 10.0
) -> dict[str, Any]:
    counts = windows.count(
        key=lambda e: e["k"], window=windows.tumbling(60),
        clock=windows.event_time(lambda e: e["t"], delay=60), lateness=60,
        store=store, name=channel, id_retention=retention, tick=0.5,
    )  # fmt: skip
    results = Counter[str]()

    def take(result: windows.WindowResult[str, int]) -> None:
        results["windows"] += 1
        results["events"] += result.value
        result.settle()

    source = reader(nsqd, channel)
    first: list[float] = []
    source.messages.subscribe(lambda _m: first or first.append(time.perf_counter()))
    source.messages.pipe(nsq.decode(json.loads), counts).subscribe(take)
    cpu = time.process_time()
    await eventually(
        lambda: sum(counts.stats().get(k, 0) for k in ("folded", "duplicates", "late")) >= count,
        timeout=3600, interval=0.01,
    )  # fmt: skip
    await counts.drain()
    wall = time.perf_counter() - first[0]
    cpu = time.process_time() - cpu
    await source.close()
    after = await store.size(channel)
    await asyncio.sleep(retention + 1)  # past id_retention: a sweep forgets retired ids
    swept = await retired(store, channel)
    await store.close()
    return {
        "row": channel, "messages": count, "seconds": round(wall, 2),
        "msg_per_s": round(count / wall), "cpu_us_per_msg": round(cpu / count * 1e6, 1),
        "results": results["windows"], "late": counts.stats().get("late", 0),
        "store_after": after, "store_swept": swept,
    }  # fmt: skip


async def retired(store: Any, name: str) -> windows.StoreSize:
    """The store once ids past their retention are swept (what a live consumer does)."""
    await store.sweep(name, time.time())
    size: windows.StoreSize = await store.size(name)
    return size


async def batch_row(nsqd: NsqdProcess, channel: str, count: int) -> dict[str, Any]:
    totals: Counter[tuple[str, float]] = Counter()
    seen = 0

    def fold(rows: list[dict[str, Any]]) -> None:
        nonlocal seen
        for row in rows:
            totals[(row["k"], row["t"] // 60 * 60)] += 1
        seen += len(rows)

    source = reader(nsqd, channel)
    first: list[float] = []
    source.messages.subscribe(lambda _m: first or first.append(time.perf_counter()))
    source.messages.pipe(
        nsq.decode(json.loads), nsq.batch(500, timespan=0.5, key=lambda e: e["k"]),
        nsq.process_batch(fold),
    ).subscribe()  # fmt: skip
    cpu = time.process_time()
    await eventually(lambda: seen >= count, timeout=3600, interval=0.01)
    wall = time.perf_counter() - first[0]
    cpu = time.process_time() - cpu
    await source.close()
    return {
        "row": channel, "messages": count, "seconds": round(wall, 2),
        "msg_per_s": round(count / wall), "cpu_us_per_msg": round(cpu / count * 1e6, 1),
        "results": len(totals), "late": None, "store_after": None, "store_swept": None,
    }  # fmt: skip


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pg = subprocess.run(
        [str(find_postgres() / "postgres"), "--version"], capture_output=True, text=True,
        check=False,
    ).stdout.strip()  # fmt: skip
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, {pg}, nsqd v1.3.0 (one, local)"
    )


def size_text(size: windows.StoreSize | None) -> str:
    if size is None:
        return "-"
    megabytes = f"{size.bytes / 1e6:.1f} MB" if size.bytes is not None else "?"
    return f"{size.windows} windows, {size.ids} ids, {megabytes}"


def write_report(
    rows: list[dict[str, Any]], path: Path, count: int, command: str, retention: float
) -> None:
    lines = [
        "# Windowed aggregation: keyed tumbling count",
        "",
        f"`{command}` on {time.strftime('%Y-%m-%d')}; {machine()}.",
        "",
        f"{count:,} events (50 keys, 1-minute tumbling windows on event time, delay 60 s, "
        "lateness 60 s, 10 % out of order) read by each row from its own channel of one "
        "topic, published once. messages/s: first message to the last one settled; CPU: "
        "this process (the store's thread included, PostgreSQL's server not). Store size: "
        f"right after the run, then after the sweep once `id_retention` ({retention:g} s) "
        f"passed. Load average when the run ended: {os.getloadavg()[0]:.1f}.",
        "",
        "| row | messages/s | client CPU µs/msg | results | late | store after | after sweep |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['row']} | {r['msg_per_s']:,} | {r['cpu_us_per_msg']} | {r['results']:,} | "
            f"{'-' if r['late'] is None else r['late']} | {size_text(r['store_after'])} | "
            f"{size_text(r['store_swept'])} |"
        )
    lines += [
        "",
        "`batch_by_hand` adds each batch of 500 (per key) to a dict of (key, minute) counts "
        "in memory and finishes the batch: no watermark (no window is ever known to be "
        "complete), no late stream, and a crash loses every count while nsqd has already "
        "forgotten the messages. The store rows commit each message with its id before "
        "finishing it, emit each window once it is final, and are exact across crashes and "
        "redeliveries. Store files do not shrink after the sweep (SQLite and PostgreSQL "
        "reuse the freed pages).",
        "",
    ]
    path.write_text("\n".join(lines))


async def run(
    count: int, rows: list[str], folder: Path, retention: float = 10.0
) -> list[dict[str, Any]]:
    with NsqdProcess(extra_args=[f"--mem-queue-size={count + 1000}"]) as nsqd:
        for row in rows:
            nsqd.create_channel(TOPIC, row)
        await publish(nsqd.tcp_address, TOPIC, events(count), chunk=2000)
        print(f"published {count:,} events", flush=True)
        results = []
        for row in rows:
            if row == "batch_by_hand":
                result = await batch_row(nsqd, row, count)
            elif row == "windows_postgres":
                with PostgresProcess() as server:
                    store = windows.PostgresStore(server.dsn)
                    result = await windows_row(nsqd, row, count, store, retention)
            else:
                sync = "FULL" if row.endswith("full") else "NORMAL"
                store = windows.SQLiteStore(folder / f"{row}.db", synchronous=sync)
                result = await windows_row(nsqd, row, count, store, retention)
            print(json.dumps({k: str(v) for k, v in result.items()}), flush=True)
            results.append(result)
        return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.windows", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names")
    parser.add_argument("--out", default=None, help="write the markdown report here")
    parser.add_argument("--id-retention", type=float, default=10.0, help="seconds")
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; known: {ROWS}")
    # SIGTERM ends the run through the context managers: no nsqd or PostgreSQL left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory() as folder:
        results = asyncio.run(run(args.events, rows, Path(folder), args.id_retention))
    if args.out:
        command = "python -m benchmarks.windows " + " ".join(argv or sys.argv[1:])
        write_report(results, Path(args.out), args.events, command.strip(), args.id_retention)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
