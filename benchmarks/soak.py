"""A bounded soak: publish, consume and republish for a while; report memory, leaks, losses.

    python benchmarks/soak.py --messages 1000000 --minutes 5     # the long run
    python benchmarks/soak.py --messages 20000 --minutes 0.5     # what CI runs

It starts its own nsqd (rxnsq.testing), publishes ``--messages`` through a Writer sink at a
steady rate to topic ``soak_in``, consumes them with a Reader whose pipeline republishes each to
``soak_out`` and finishes it only after nsqd confirmed (at-least-once), and counts what arrives
on ``soak_out`` with a second Reader. Every second it samples RSS, unsettled messages and the
number of asyncio tasks. It ends when everything arrived or the time is up, closes everything,
and prints (and writes with ``--json``) a report: RSS over time and its growth after warm-up,
messages sent/confirmed/consumed/duplicated/lost, in-flight messages leaked, tasks and timer
handles left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import zlib
from pathlib import Path
from typing import Any

import rxnsq
from rxnsq import ops as nsq
from rxnsq.testing import NsqdProcess


def rss_mib() -> float:
    """Current resident set size of this process, in MiB (from /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def soak(address: str, messages: int, seconds: float, rate: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    baseline_tasks = len(asyncio.all_tasks())
    producer = rxnsq.Writer(address, name="soak-producer")
    relay_writer = rxnsq.Writer(address, name="soak-relay")
    relay = rxnsq.Reader("soak_in", "relay", nsqd_tcp_addresses=address, max_in_flight=500)
    sink_reader = rxnsq.Reader("soak_out", "count", nsqd_tcp_addresses=address, max_in_flight=500)
    # one byte per message (not a dict of bodies) so the harness does not grow with the run
    seen = bytearray(messages)
    tally = {"unique": 0, "duplicates": 0}
    checksum = 0

    def count(body: bytes) -> None:
        nonlocal checksum
        index = int(body)
        if seen[index]:
            tally["duplicates"] += 1
            return
        seen[index] = 1
        tally["unique"] += 1
        checksum ^= zlib.crc32(body)

    relay.messages.pipe(relay_writer.publish("soak_out"), nsq.settle()).subscribe()
    sink_reader.messages.pipe(nsq.process(count)).subscribe()
    await relay.start()
    await sink_reader.start()

    sink = producer.sink("soak_in", max_batch=200)
    expected = 0
    samples: list[dict[str, float]] = []
    started = loop.time()
    deadline = started + seconds

    async def publish() -> None:
        nonlocal expected
        per_tick = max(1, int(rate / 20)) if rate else 1000
        for i in range(messages):
            body = b"%010d" % i
            expected ^= zlib.crc32(body)
            sink.on_next(body)
            if i % per_tick == per_tick - 1:
                await asyncio.sleep(0.05 if rate else 0)
                while sink.pending > 20_000:  # noqa: ASYNC110 (a producer honouring backpressure)
                    await asyncio.sleep(0.01)
        sink.on_completed()
        await sink.done

    publisher = loop.create_task(publish())
    while loop.time() < deadline and tally["unique"] < messages:
        await asyncio.sleep(1.0)
        samples.append(
            {
                "t": round(loop.time() - started, 1),
                "rss_mib": round(rss_mib(), 1),
                "arrived": tally["unique"],
                "unsettled": sum(c.in_flight for c in relay.connections.values()),
                "tasks": len(asyncio.all_tasks()),
            }
        )
        print(json.dumps(samples[-1]), file=sys.stderr, flush=True)
    if not publisher.done():
        publisher.cancel()
    await asyncio.wait([publisher])
    for reader in (relay, sink_reader):
        await reader.close()
    leaked = sum(c.in_flight for r in (relay, sink_reader) for c in r.connections.values())
    for writer in (producer, relay_writer):
        await writer.close()
    await asyncio.sleep(0.1)
    leftover_tasks = len(asyncio.all_tasks()) - baseline_tasks
    handles = len(getattr(loop, "_scheduled", []))
    steady = [s["rss_mib"] for s in samples[len(samples) // 4 :]] or [rss_mib()]
    return {
        "messages": messages,
        "seconds": round(loop.time() - started, 1),
        "confirmed": sink.confirmed,
        "failed": sink.failed,
        "consumed": tally["unique"],
        "duplicates": tally["duplicates"],
        "lost": sink.confirmed - tally["unique"],
        "checksum_ok": checksum == expected and tally["unique"] == messages,
        "rss_mib_first": samples[0]["rss_mib"] if samples else rss_mib(),
        "rss_mib_steady_min": min(steady),
        "rss_mib_steady_max": max(steady),
        "rss_growth_after_warmup": round(max(steady) / min(steady) - 1, 3),
        "leaked_in_flight": leaked,
        "leftover_tasks": leftover_tasks,
        "leftover_timer_handles": handles,
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument(
        "--rate", type=float, default=0, help="messages/s to publish (0: as fast as confirmed)"
    )
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    with NsqdProcess(extra_args=[f"--mem-queue-size={args.messages + 10000}"]) as nsqd:
        report = asyncio.run(soak(nsqd.tcp_address, args.messages, args.minutes * 60, args.rate))
    summary = {k: v for k, v in report.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    ok = report["lost"] == 0 and report["leaked_in_flight"] == 0 and report["leftover_tasks"] <= 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
