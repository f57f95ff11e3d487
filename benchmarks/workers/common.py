"""What every Python benchmark worker shares (standard library only).

A worker is one client in one process, started by ``benchmarks/run.py``. It reads its
scenario from the command line, prints ``READY`` once subscribed (latency mode) and ends with
one line ``RESULT {json}``: the count, the wall and CPU seconds of the measured interval, the
peak RSS of the process, plus scenario figures (latency percentiles). The pynsq worker runs
in its own virtualenv, so nothing here may import rxnsq or a third-party package.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from typing import Any

BODY_SIZE = 200
#: Latency bodies start with the publish time: 19 decimal digits of Unix nanoseconds.
STAMP_DIGITS = 19


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def max_rss_kib() -> int:
    """Peak resident set of this process so far, in KiB.

    From ``VmHWM`` in /proc/self/status: ``getrusage``'s ``ru_maxrss`` survives ``execve`` on
    Linux, so a worker would report at least the RSS of the runner that forked it.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class Meter:
    """Wall and CPU time of the measured interval (between ``start`` and ``stop``)."""

    def __init__(self) -> None:
        self.t0 = self.t1 = 0.0
        self.cpu0 = self.cpu1 = 0.0
        self.started = False

    def start(self) -> None:
        self.started = True
        self.t0 = time.perf_counter()
        self.cpu0 = cpu_seconds()

    def stop(self) -> None:
        self.t1 = time.perf_counter()
        self.cpu1 = cpu_seconds()

    def result(self, client: str, mode: str, count: int, **extra: Any) -> dict[str, Any]:
        return {
            "client": client,
            "mode": mode,
            "count": count,
            "elapsed": self.t1 - self.t0,
            "cpu": self.cpu1 - self.cpu0,
            "max_rss_kib": max_rss_kib(),
            **extra,
        }


def emit(result: dict[str, Any]) -> None:
    """Print the result line and leave at once (no graceful close: it is not measured)."""
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def ready() -> None:
    sys.stdout.write("READY\n")
    sys.stdout.flush()


def fail(message: str) -> None:
    sys.stderr.write(f"worker: {message}\n")
    sys.stderr.flush()
    os._exit(1)


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    """p50/p99/max in milliseconds (nearest rank below, as the Go worker computes them)."""
    if not samples_ns:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0, "samples": 0}
    ordered = sorted(samples_ns)
    last = len(ordered) - 1

    def at(p: float) -> float:
        return ordered[int(p * last)] / 1e6

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": at(1.0), "samples": len(ordered)}


def stamp_of(body: bytes) -> int:
    return int(body[:STAMP_DIGITS])


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--mode",
        required=True,
        choices=[
            "consume",
            "batch",
            "keyed_batch",
            "latency",
            "pub",
            "sink",
            "sink_direct",
            "sink_send",
            "mpub",
        ],
    )
    p.add_argument("--addr", required=True, help="nsqd TCP address")
    p.add_argument("--topic", required=True)
    p.add_argument("--channel", default="bench")
    p.add_argument("--count", type=int, required=True, help="messages measured")
    p.add_argument(
        "--total",
        type=int,
        default=0,
        help="consume: messages consumed in all, the whole backlog (default --count), so the "
        "run ends with nothing left in nsqd",
    )
    p.add_argument("--mif", type=int, default=2500, help="max_in_flight")
    p.add_argument("--batch", type=int, default=100, help="MPUB size / batch() count")
    p.add_argument("--size", type=int, default=BODY_SIZE, help="body bytes (publish)")
    p.add_argument(
        "--window", type=int, default=10_000, help="publish: at most this many messages unconfirmed"
    )
    p.add_argument("--warmup", type=int, default=0, help="latency samples to skip")
    p.add_argument(
        "--obuf",
        type=int,
        default=0,
        help="IDENTIFY output_buffer_size for the reader (0: the client's default)",
    )
    p.add_argument("--timeout", type=float, default=600.0)
    return p
