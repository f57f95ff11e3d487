"""The pynsq benchmark worker: one scenario, one process (see common.py for the protocol).

It uses only pynsq's public API, imported as ``--nsq-module`` (default ``nsq``). That is the
hook for rxnsq's pynsq-compatible layer: ``--nsq-module rxnsq.compat`` runs these same
scenarios through it, unchanged, once that module provides ``Reader`` and ``Writer``.

Modes:
  consume  ``Reader(message_handler=handler)``, the handler returns True (FIN); the first
           ``count`` messages are measured, then the rest of the backlog (``total``) is
           consumed too, so nsqd ends with nothing queued or in flight
  latency  the same; the handler records now - the publish time in the body
  pub      ``Writer.pub`` pipelined: called without waiting, at most ``window`` unconfirmed,
           confirmations counted in the callback
  mpub     ``Writer.mpub`` of B bodies, pipelined the same way
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

nsq: Any = None
CLIENT = "pynsq"


async def wait_ready(reader: Any, timeout: float = 10.0) -> None:
    """Until the reader has a connection, plus a moment for its RDY (the first samples are
    skipped anyway); only ``reader.conns`` is used, which pynsq-shaped readers all have."""
    deadline = time.monotonic() + timeout
    while not reader.conns:
        if time.monotonic() > deadline:
            common.fail("the reader did not connect")
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.1)


async def consume(args: Any) -> None:
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

    def handler(message: Any) -> bool:
        nonlocal seen
        if latency:
            sent = int(message.body[:digits])
            if seen >= warmup:
                samples.append(now_ns() - sent)
        seen += 1
        if seen == 1:
            meter.start()
        if seen == n:
            meter.stop()
        if seen == total:
            loop.call_soon(done.set_result, None)  # after this message's FIN
        return True

    options = {"output_buffer_size": args.obuf} if args.obuf else {}
    reader = nsq.Reader(
        topic=args.topic,
        channel=args.channel,
        message_handler=handler,
        nsqd_tcp_addresses=[args.addr],
        max_in_flight=args.mif,
        **options,
    )
    if latency:
        await wait_ready(reader)
        common.ready()
    try:
        await asyncio.wait_for(done, args.timeout)
    except TimeoutError:
        common.fail(f"{args.mode}: timed out after {seen} of {total} messages")
    await asyncio.sleep(0.1)  # the last FINs reach nsqd (the runner checks its /stats)
    extra = common.percentiles(samples) if latency else {}
    common.emit(meter.result(CLIENT, args.mode, n, version=nsq_version(), **extra))


async def connected_writer(addr: str, topic: str, timeout: float = 10.0) -> Any:
    """A Writer whose first PUB was confirmed (public API only: pub with a callback, retried
    while it answers 'no open connections')."""
    loop = asyncio.get_running_loop()
    writer = nsq.Writer([addr])
    deadline = time.monotonic() + timeout
    while True:
        answer = loop.create_future()

        def reply(_conn: Any, data: Any, answer: asyncio.Future[Any] = answer) -> None:
            if not answer.done():
                answer.set_result(data)

        writer.pub(topic, b"connect", callback=reply)
        data = await answer
        if not isinstance(data, Exception):
            return writer
        if time.monotonic() > deadline:
            common.fail(f"the writer did not connect: {data!r}")
        await asyncio.sleep(0.01)


async def publish(args: Any) -> None:
    loop = asyncio.get_running_loop()
    writer = await connected_writer(args.addr, args.topic)
    per = 1 if args.mode == "pub" else args.batch
    body = b"x" * args.size
    payload: Any = body if per == 1 else [body] * per
    commands = args.count // per
    slots = max(1, args.window // per)
    chunk = max(1, 500 // per)
    send = writer.pub if per == 1 else writer.mpub
    confirmed = failed = 0
    done = loop.create_future()
    wake = asyncio.Event()

    def callback(conn: Any, data: Any) -> None:
        nonlocal confirmed, failed
        confirmed += 1
        if isinstance(data, Exception):
            failed += 1
        if issued - confirmed <= slots // 2:
            wake.set()
        if confirmed == commands and not done.done():
            done.set_result(None)

    meter = common.Meter()
    meter.start()
    issued = 0
    while issued < commands:
        while issued - confirmed >= slots:
            wake.clear()
            await wake.wait()
        for _ in range(min(chunk, commands - issued, slots - (issued - confirmed))):
            issued += 1
            send(args.topic, payload, callback=callback)
        await asyncio.sleep(0)
    await asyncio.wait_for(done, args.timeout)
    meter.stop()
    if failed:
        common.fail(f"{failed} publishes failed")
    common.emit(
        meter.result(CLIENT, args.mode, commands * per, commands=commands, version=nsq_version())
    )


def nsq_version() -> str:
    return str(getattr(nsq, "__version__", "?"))


def main() -> None:
    global nsq, CLIENT
    p = common.parser(__doc__ or "")
    p.add_argument(
        "--nsq-module",
        default="nsq",
        help="module with pynsq's Reader/Writer API (e.g. rxnsq.compat)",
    )
    p.add_argument("--client-name", default=None, help="name reported in the result")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    nsq = importlib.import_module(args.nsq_module)
    CLIENT = args.client_name or ("pynsq" if args.nsq_module == "nsq" else args.nsq_module)
    modes = {"consume": consume, "latency": consume, "pub": publish, "mpub": publish}
    if args.mode not in modes:
        common.fail(f"pynsq worker has no mode {args.mode!r}")
    asyncio.run(modes[args.mode](args))


if __name__ == "__main__":
    main()
