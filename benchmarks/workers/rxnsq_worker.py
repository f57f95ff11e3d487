"""The rxnsq benchmark worker: one scenario, one process (see common.py for the protocol).

Modes:
  consume  ``reader.messages.pipe(nsq.process(handler))``: a per-message pipeline
  batch    ``reader.messages.pipe(nsq.batch(B, 1.0), nsq.process_batch(handler))``
  latency  like consume; the handler records now - the publish time in the body
  sink     ``writer.sink(topic)`` fed item by item from a Subject, at most ``window`` unconfirmed
  sink_direct  the same, calling ``sink.on_next`` directly (the sink's own cost, no RxPY)
  mpub     ``await writer.mpub(topic, bodies)`` with B bodies, ``window / B`` awaits in flight

``--profile FILE`` runs pyinstrument over the measured interval and writes its text report.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

import rxnsq
from rxnsq import ops as nsq
from rxnsq.reader import Reader
from rxnsq.writer import Writer

CLIENT = "rxnsq"


class Profile:
    """pyinstrument around the measured interval when asked for, else nothing."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.profiler: Any = None

    def start(self) -> None:
        if self.path:
            from pyinstrument import Profiler

            self.profiler = Profiler(interval=0.0005, async_mode="disabled")
            self.profiler.start()

    def stop(self) -> None:
        if self.profiler is not None:
            self.profiler.stop()
            Path(self.path).write_text(  # type: ignore[arg-type]
                self.profiler.output_text(unicode=True, color=False, show_all=False)
            )
            self.profiler = None


async def wait_ready(reader: Reader, timeout: float = 10.0) -> None:
    """Until some connection has sent its RDY (the reader is ready to receive)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not any(c.rdy_count > 0 for c in reader.connections.values()):
        if loop.time() > deadline:
            common.fail("the reader did not become ready")
        await asyncio.sleep(0.005)


async def consume(args: Any, profile: Profile) -> None:
    loop = asyncio.get_running_loop()
    meter = common.Meter()
    done = loop.create_future()
    n = args.count
    warmup = args.warmup
    latency = args.mode == "latency"
    samples: list[int] = []
    seen = 0
    now_ns = time.time_ns
    digits = common.STAMP_DIGITS

    def handle(value: bytes) -> None:
        nonlocal seen
        if latency:
            sent = int(value[:digits])
            if seen >= warmup:
                samples.append(now_ns() - sent)
        seen += 1
        if seen == 1:
            meter.start()
            profile.start()
        if seen == n:
            meter.stop()
            profile.stop()
            done.set_result(None)

    def handle_batch(values: list[bytes]) -> None:
        nonlocal seen
        if seen == 0:
            meter.start()
            profile.start()
        seen += len(values)
        if seen >= n and not done.done():
            meter.stop()
            profile.stop()
            done.set_result(None)

    options = {"output_buffer_size": args.obuf} if args.obuf else {}
    reader = Reader(
        args.topic, args.channel, nsqd_tcp_addresses=[args.addr], max_in_flight=args.mif, **options
    )
    if args.mode == "batch":
        stage = [nsq.batch(args.batch, timespan=1.0), nsq.process_batch(handle_batch)]
    else:
        stage = [nsq.process(handle)]
    reader.messages.pipe(*stage).subscribe(on_error=lambda e: common.fail(f"stream failed: {e!r}"))
    if latency:
        await wait_ready(reader)
        common.ready()
    try:
        await asyncio.wait_for(done, args.timeout)
    except TimeoutError:
        common.fail(f"{args.mode}: timed out after {seen} of {n} messages")
    await asyncio.sleep(0)  # the last FINs leave in the coalesced write of this turn
    extra = common.percentiles(samples) if latency else {}
    common.emit(meter.result(CLIENT, args.mode, seen, version=rxnsq.__version__, **extra))


async def sink(args: Any, profile: Profile) -> None:
    from reactivex.subject import Subject

    writer = Writer([args.addr])
    await writer.pub(args.topic, b"connect")  # opens the connection; not measured
    n, window, chunk = args.count, args.window, 500
    body = b"x" * args.size
    out = writer.sink(args.topic, max_pending=max(window * 2, 1000))
    wake = asyncio.Event()
    writer.acks.subscribe(lambda _ack: wake.set() if out.pending <= window // 2 else None)
    source: Any = out
    if args.mode == "sink":
        source = Subject()
        source.subscribe(out)
    meter = common.Meter()
    meter.start()
    profile.start()
    fed = 0
    while fed < n:
        while out.pending >= window:
            wake.clear()
            await wake.wait()
        k = min(chunk, n - fed, window - out.pending)
        on_next = source.on_next
        for _ in range(k):
            on_next(body)
        fed += k
        await asyncio.sleep(0)
    source.on_completed()
    await asyncio.wait_for(out.done, args.timeout)
    meter.stop()
    profile.stop()
    if out.failed:
        common.fail(f"sink: {out.failed} failed: {out.errors[:3]}")
    common.emit(
        meter.result(
            CLIENT, args.mode, out.confirmed, commands=out.commands, version=rxnsq.__version__
        )
    )


async def mpub(args: Any, profile: Profile) -> None:
    writer = Writer([args.addr])
    await writer.pub(args.topic, b"connect")  # opens the connection; not measured
    per = args.batch
    bodies = [b"x" * args.size] * per
    commands = args.count // per
    lanes = max(1, args.window // per)
    left = commands

    async def lane() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await writer.mpub(args.topic, bodies)

    meter = common.Meter()
    meter.start()
    profile.start()
    await asyncio.wait_for(asyncio.gather(*(lane() for _ in range(lanes))), args.timeout)
    meter.stop()
    profile.stop()
    common.emit(
        meter.result(CLIENT, "mpub", commands * per, commands=commands, version=rxnsq.__version__)
    )


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--profile", help="write a pyinstrument text report of the measured part")
    args = p.parse_args()
    profile = Profile(args.profile)
    modes = {
        "consume": consume,
        "batch": consume,
        "latency": consume,
        "sink": sink,
        "sink_direct": sink,
        "mpub": mpub,
    }
    if args.mode not in modes:
        common.fail(f"rxnsq worker has no mode {args.mode!r}")
    asyncio.run(modes[args.mode](args, profile))


if __name__ == "__main__":
    main()
