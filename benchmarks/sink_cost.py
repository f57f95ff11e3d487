"""Where a Subject-fed sink's time goes: RxPY's Subject hop against the sink's own work.

    python -m benchmarks.sink_cost                 # 3 s per measure, 3 repetitions
    python -m benchmarks.sink_cost --seconds 0.5 --reps 1 --output /tmp/s   # a smoke run

No nsqd and no socket: the sink runs on a link that confirms each MPUB on the next loop turn,
so what is timed is CPU per item in this process, the part the full benchmark
(``publish_sink`` in ``benchmarks/run.py``) cannot split. Three measures, alternated within
each repetition, medians reported:

- the Subject hop: ``Subject.on_next`` into a subscriber that does nothing;
- the sink alone: ``sink.on_next`` called directly (batching, bounds, MPUB encoding, the
  per-batch confirmation);
- the sink fed from a Subject, as the ``publish_sink`` row does.

Items are 200-byte bodies fed 500 at a time with at most 1,000 unconfirmed and batches of 100,
the shape of the ``publish_sink`` row. Results go to ``sink-cost.md`` in ``--output``
(default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # `python benchmarks/sink_cost.py`
    sys.path.insert(0, str(ROOT))

from reactivex.subject import Subject  # noqa: E402

import rxnsq  # noqa: E402
from rxnsq.sink import Sink, WriterLink  # noqa: E402

BODY = b"x" * 200
CHUNK, WINDOW, BATCH = 500, 1000, 100


class _Nothing:
    def on_next(self, value: Any) -> None:
        pass

    def on_error(self, error: Exception) -> None:
        pass

    def on_completed(self) -> None:
        pass


def _sink(loop: asyncio.AbstractEventLoop) -> Sink:
    """A sink whose every command is confirmed on the next loop turn (no socket)."""

    def submit(topic: str, commands: Any, timeout: float, done: Callable[..., None]) -> None:
        for _command in commands:
            loop.call_soon(done, None)

    link = WriterLink(
        name="sink-cost",
        max_msg_size=1 << 20,
        max_body_size=5 << 20,
        is_closing=lambda: False,
        bind=lambda: loop,
        thread=threading.get_ident,
        post=loop.call_soon_threadsafe,
        commands_for=lambda topic, item: [],
        ensure_started=lambda: None,
        submit=submit,
        ack_failed=lambda topic, count, error: None,
    )
    return Sink(
        link, "cost", max_batch=BATCH, max_delay=0.005, max_bytes=1 << 20,
        max_pending=WINDOW, max_pending_bytes=64 << 20, on_overflow="error", retries=0,
        timeout=10.0,
    )  # fmt: skip


async def _measure(mode: str, seconds: float) -> float:
    """CPU microseconds per item of ``mode``, fed for about ``seconds``."""
    loop = asyncio.get_running_loop()
    sink = _sink(loop) if mode != "subject hop" else None
    on_next: Callable[[bytes], None]
    if mode == "subject hop":
        subject: Subject[bytes] = Subject()
        subject.subscribe(_Nothing())
        on_next = subject.on_next
    elif mode == "sink via Subject":
        assert sink is not None
        subject = Subject()
        subject.subscribe(sink)
        on_next = subject.on_next
    else:
        assert sink is not None
        on_next = sink.on_next
    fed = 0
    start_cpu, start = time.process_time(), time.perf_counter()
    while time.perf_counter() - start < seconds:
        room = CHUNK if sink is None else min(CHUNK, WINDOW - sink.pending)
        for _ in range(room):
            on_next(BODY)
        fed += room
        await asyncio.sleep(0)
    cpu = time.process_time() - start_cpu
    if sink is not None:
        sink.on_completed()
        await asyncio.wait_for(sink.done, 10)
        if sink.failed or sink.confirmed != fed:
            raise SystemExit(f"{mode}: fed {fed}, confirmed {sink.confirmed}, {sink.errors[:2]}")
    return cpu / fed * 1e6


MODES = ("subject hop", "sink alone", "sink via Subject")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measure (default 3)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--output", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    runs: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.reps):
        for mode in MODES:
            runs[mode].append(asyncio.run(_measure(mode, args.seconds)))
    median = {mode: statistics.median(values) for mode, values in runs.items()}
    hop, alone, both = median["subject hop"], median["sink alone"], median["sink via Subject"]
    lines = [
        "# Where a Subject-fed sink's time goes",
        "",
        f"Generated {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')} by "
        f"`python -m benchmarks.sink_cost --seconds {args.seconds:g} --reps {args.reps}`: "
        f"CPU per item in one process, no socket (a link confirming each MPUB on the next loop "
        f"turn), 200-byte bodies, batches of {BATCH}, at most {WINDOW:,} unconfirmed; medians "
        f"of {args.reps}.",
        "",
        f"**Machine:** {platform.processor() or platform.machine()}, CPython "
        f"{platform.python_version()}, rxnsq {rxnsq.__version__}.",
        "",
        "| measure | CPU µs/item | runs |",
        "|---|--:|---|",
        *(
            f"| {mode} | {median[mode]:.3f} | {', '.join(f'{v:.3f}' for v in runs[mode])} |"
            for mode in MODES
        ),
        "",
        f"The Subject hop costs {hop / alone:.2f}x the sink's own work per item; the sink fed "
        f"from a Subject costs {both / alone:.2f}x the sink alone ({both - alone:.3f} µs more "
        f"per item).",
        "",
    ]
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "sink-cost.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
