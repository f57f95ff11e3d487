"""rxnsq-pub: publish stdin to an NSQ topic, one message per delimited chunk (Go's to_nsq).

Reads stdin to its end and publishes every chunk between --delimiter bytes (a newline by
default; empty chunks are skipped) through a Writer sink, which batches them into MPUBs.
--rate caps the messages per second. A summary goes to stderr; the exit status is 0 only when
nsqd confirmed every chunk. Ctrl-C or SIGTERM stops reading, waits for the confirmations of
what was sent, and exits with status 1.

examples:
  seq 1000 | rxnsq-pub --topic numbers --nsqd-tcp-address 127.0.0.1:4150
  rxnsq-pub --topic events --nsqd-tcp-address 127.0.0.1:4150 --rate 100 < events.jsonl
  printf 'a\\0b\\0' | rxnsq-pub --topic t --nsqd-tcp-address 127.0.0.1:4150 --delimiter '\\0'
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import functools
import os
import sys
import threading
from collections.abc import AsyncGenerator
from typing import BinaryIO

from ..writer import Writer
from ._common import (
    Progress,
    ToolError,
    add_producer_opt,
    add_status_args,
    base_parser,
    make_writer,
    nonneg_int,
    run_tool,
    setup_logging,
    topic_name,
)

PROG = "rxnsq-pub"

#: Chunks read but not yet confirmed: reading pauses above this (the sink's own bound is
#: far higher; this keeps memory small when stdin is faster than nsqd).
HIGH_WATER = 20_000


def delimiter(text: str) -> bytes:
    """argparse type: the delimiter as bytes; backslash escapes (``\\n``, ``\\t``, ``\\0``,
    ``\\x1e``) are understood, since shells pass them literally."""
    try:
        value = codecs.decode(text, "unicode_escape").encode("latin-1") if "\\" in text else None
    except (UnicodeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"bad escape in {text!r}: {exc}") from None
    if value is None:
        value = text.encode()
    if not value:
        raise argparse.ArgumentTypeError("the delimiter cannot be empty")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(PROG, __doc__)
    parser.add_argument("--topic", required=True, type=topic_name, help="NSQ topic to publish to")
    parser.add_argument(
        "--nsqd-tcp-address",
        action="append",
        required=True,
        metavar="HOST:PORT",
        help="destination nsqd TCP address (may be given multiple times)",
    )
    parser.add_argument(
        "--delimiter",
        type=delimiter,
        default=b"\n",
        help="what separates messages on stdin (default: a newline; escapes like \\0 work)",
    )
    parser.add_argument(
        "--rate",
        type=nonneg_int,
        default=0,
        help="publish at most this many messages per second (0 = unthrottled)",
    )
    add_producer_opt(parser)
    add_status_args(parser, every=0, interval=10.0)
    return parser


async def read_chunks(stream: BinaryIO, sep: bytes) -> AsyncGenerator[bytes, None]:
    """The non-empty chunks of ``stream`` between ``sep``, read in a daemon thread (a pipe,
    a terminal and a regular file alike) with a small hand-off queue as backpressure."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | BaseException] = asyncio.Queue(maxsize=4)
    try:
        fd = stream.fileno()
    except (AttributeError, OSError):
        read = getattr(stream, "read1", stream.read)
    else:
        # os.read, not the buffered object: a thread blocked in BufferedReader.read holds
        # its lock, and the interpreter aborts at exit when it cannot take it
        read = functools.partial(os.read, fd)

    def pump() -> None:
        while True:
            try:
                data: bytes | BaseException = read(1 << 16)
            except BaseException as exc:  # handed to the loop, which raises it
                data = exc
            try:
                asyncio.run_coroutine_threadsafe(queue.put(data), loop).result()
            except (RuntimeError, asyncio.CancelledError):
                return  # the loop is gone: we are exiting
            if not isinstance(data, bytes) or not data:
                return

    threading.Thread(target=pump, name="rxnsq-pub-stdin", daemon=True).start()
    rest = b""
    while True:
        data = await queue.get()
        if isinstance(data, BaseException):
            raise data
        if not data:
            break
        *chunks, rest = (rest + data).split(sep)
        for chunk in chunks:
            if chunk:
                yield chunk
    if rest:
        yield rest


async def publish(writer: Writer, args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    await writer.start()
    if not writer.connections:
        raise ToolError(
            f"cannot connect to any nsqd ({', '.join(args.nsqd_tcp_address)})"
            + (f": {writer.last_error}" if writer.last_error else "")
        )
    sink = writer.sink(args.topic)
    progress = Progress(
        PROG,
        "read",
        every=args.status_every,
        interval=args.status_interval,
        describe=lambda: f"{sink.confirmed} confirmed, {sink.failed} failed",
    )
    answered = asyncio.Event()  # nsqd answered a publish: the sink has fewer pending
    writer.acks.subscribe(lambda _ack: answered.set())
    progress.start()
    started = loop.time()
    read = 0
    finished = False
    try:
        async with contextlib.aclosing(read_chunks(sys.stdin.buffer, args.delimiter)) as chunks:
            async for chunk in chunks:
                if args.rate:
                    wait = started + read / args.rate - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                while sink.pending >= HIGH_WATER:
                    answered.clear()
                    await answered.wait()
                if writer.is_closing:  # a signal: the writer is draining, add nothing
                    break
                sink.on_next(chunk)
                read += 1
                progress.add()
            else:
                finished = True
        sink.on_completed()
        await sink.done
    finally:
        progress.stop()
        elapsed = loop.time() - started
        state = "" if finished else " (interrupted: stdin was not read to its end)"
        print(
            f"{PROG}: {read} messages read, {sink.confirmed} confirmed, {sink.failed} failed "
            f"to topic {args.topic!r} in {elapsed:.1f}s{state}",
            file=sys.stderr,
            flush=True,
        )
        for error in sink.errors[:3]:
            print(f"{PROG}: error: {error}", file=sys.stderr, flush=True)
    return 0 if finished and sink.failed == 0 and sink.confirmed == read else 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(PROG, args.log_level)
    writer = make_writer(parser, args.nsqd_tcp_address, args.producer_opt)
    return run_tool(PROG, publish(writer, args), interrupted=1)


if __name__ == "__main__":
    raise SystemExit(main())
