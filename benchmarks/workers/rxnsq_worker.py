"""The rxnsq benchmark worker: one scenario, one process (see common.py for the protocol).

Modes:
  consume  ``reader.messages.pipe(nsq.process(handler))``: a per-message pipeline; the first
           ``count`` messages are measured, then the rest of the backlog (``total``) is
           consumed too and the reader closed, so nsqd ends with nothing queued or in flight
  batch    ``reader.messages.pipe(nsq.batch(B, 1.0), nsq.process_batch(handler))``
  keyed_batch  the same with ``key=`` five keys in turn (one open batch per key)
  latency  like consume; the handler records now - the publish time in the body
  pub      ``writer.pub_nowait`` pipelined: at most ``window`` unconfirmed (single PUBs)
  mpub     ``await writer.mpub(topic, bodies)`` with B bodies, ``window / B`` awaits in flight
  sink     ``writer.sink(topic, max_batch=B, max_pending=window)`` fed item by item from an
           RxPY Subject; the feeding loop keeps at most ``window`` items unconfirmed
  sink_direct  the same, calling ``sink.on_next`` directly (the sink's own cost, no RxPY)
  sink_send    a plain loop ``await sink.send(item)`` with the sink's default bounds

``--profile FILE`` runs pyinstrument over the measured interval and writes its text report.
"""

from __future__ import annotations

import asyncio
import itertools
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
    total = max(args.total, n)
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
        if seen == total:
            done.set_result(None)

    def handle_batch(values: list[bytes]) -> None:
        nonlocal seen
        if seen == 0:
            meter.start()
            profile.start()
        before, seen = seen, seen + len(values)
        if before < n <= seen:
            meter.stop()
            profile.stop()
        if seen >= total and not done.done():
            done.set_result(None)

    options = {"output_buffer_size": args.obuf} if args.obuf else {}
    reader = Reader(
        args.topic, args.channel, nsqd_tcp_addresses=[args.addr], max_in_flight=args.mif, **options
    )
    if args.mode == "batch":
        stage = [nsq.batch(args.batch, timespan=1.0), nsq.process_batch(handle_batch)]
    elif args.mode == "keyed_batch":
        # the preloaded bodies are all alike: five keys in turn, as five users would be
        turns = itertools.cycle(range(5))
        stage = [
            nsq.batch(args.batch, timespan=1.0, key=lambda _body: next(turns)),
            nsq.process_batch(handle_batch),
        ]
    else:
        stage = [nsq.process(handle)]
    reader.messages.pipe(*stage).subscribe(on_error=lambda e: common.fail(f"stream failed: {e!r}"))
    if latency:
        await wait_ready(reader)
        common.ready()
    try:
        await asyncio.wait_for(done, args.timeout)
    except TimeoutError:
        common.fail(f"{args.mode}: timed out after {seen} of {total} messages")
    await reader.close()  # the last FINs reach nsqd (the runner checks its /stats)
    extra = common.percentiles(samples) if latency else {}
    common.emit(meter.result(CLIENT, args.mode, n, version=rxnsq.__version__, **extra))


async def sink(args: Any, profile: Profile) -> None:
    from reactivex.subject import Subject

    writer = Writer([args.addr])
    await writer.pub(args.topic, b"connect")  # opens the connection; not measured
    n, window, chunk = args.count, args.window, 500
    body = b"x" * args.size
    out = writer.sink(args.topic, max_batch=args.batch, max_pending=window)
    wake = asyncio.Event()
    resume = max(0, window - args.batch)  # feed again as soon as one batch was confirmed
    writer.acks.subscribe(lambda _ack: wake.set() if out.pending <= resume else None)
    source: Any = out
    if args.mode == "sink":
        source = Subject()
        source.subscribe(out)
    meter = common.Meter()
    meter.start()
    profile.start()
    fed = 0
    on_next = source.on_next
    while fed < n:
        while out.pending >= window:
            wake.clear()
            await wake.wait()
        k = min(chunk, n - fed, window - out.pending)
        for _ in range(k):
            on_next(body)
        fed += k
        await asyncio.sleep(0)
    source.on_completed()
    await asyncio.wait_for(out.done, args.timeout)
    meter.stop()
    profile.stop()
    finish_sink(args, out, meter)


async def sink_send(args: Any, profile: Profile) -> None:
    """A plain loop of ``await sink.send(item)``: the sink's own bounds hold it back."""
    writer = Writer([args.addr])
    await writer.pub(args.topic, b"connect")  # opens the connection; not measured
    body = b"x" * args.size
    out = writer.sink(args.topic, max_batch=args.batch)
    meter = common.Meter()
    meter.start()
    profile.start()
    send = out.send
    for _ in range(args.count):
        await send(body)
    out.on_completed()
    await asyncio.wait_for(out.done, args.timeout)
    meter.stop()
    profile.stop()
    finish_sink(args, out, meter)


def finish_sink(args: Any, out: Any, meter: common.Meter) -> None:
    if out.failed or out.confirmed != args.count or out.fed != args.count:
        common.fail(
            f"sink: fed {out.fed}, {out.confirmed} confirmed, {out.failed} failed: {out.errors[:3]}"
        )
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


async def pub(args: Any, profile: Profile) -> None:
    """``pub_nowait`` pipelined, at most ``window`` unconfirmed, counted in its callback."""
    loop = asyncio.get_running_loop()
    writer = Writer([args.addr])
    await writer.pub(args.topic, b"connect")  # opens the connection; not measured
    n, window, chunk = args.count, args.window, 500
    body = b"x" * args.size
    confirmed = failed = issued = 0
    done = loop.create_future()
    wake = asyncio.Event()

    def callback(_conn: Any, data: Any) -> None:
        nonlocal confirmed, failed
        confirmed += 1
        if isinstance(data, Exception):
            failed += 1
        if issued - confirmed <= window // 2:
            wake.set()
        if confirmed == n and not done.done():
            done.set_result(None)

    meter = common.Meter()
    meter.start()
    profile.start()
    publish = writer.pub_nowait
    topic = args.topic
    while issued < n:
        while issued - confirmed >= window:
            wake.clear()
            await wake.wait()
        for _ in range(min(chunk, n - issued, window - (issued - confirmed))):
            issued += 1
            publish(topic, body, callback)
        await asyncio.sleep(0)
    await asyncio.wait_for(done, args.timeout)
    meter.stop()
    profile.stop()
    if failed:
        common.fail(f"pub: {failed} publishes failed")
    common.emit(meter.result(CLIENT, "pub", n, commands=n, version=rxnsq.__version__))


def main() -> None:
    p = common.parser(__doc__ or "")
    p.add_argument("--profile", help="write a pyinstrument text report of the measured part")
    args = p.parse_args()
    profile = Profile(args.profile)
    modes = {
        "consume": consume,
        "batch": consume,
        "latency": consume,
        "keyed_batch": consume,
        "sink": sink,
        "sink_direct": sink,
        "sink_send": sink_send,
        "pub": pub,
        "mpub": mpub,
    }
    if args.mode not in modes:
        common.fail(f"rxnsq worker has no mode {args.mode!r}")
    asyncio.run(modes[args.mode](args, profile))


if __name__ == "__main__":
    main()
