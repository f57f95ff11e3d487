"""rxnsq-tail: print the messages of NSQ topics to stdout, one body per line.

Consumes --topic (one or more) on a channel (by default a new ephemeral one, so nothing is
taken from other consumers) and writes each body, as raw bytes, to stdout. A message is
finished only after its line was written and flushed. With -n N it stops after N messages
(those that arrive after are requeued at once); Ctrl-C or SIGTERM stops it cleanly.

examples:
  rxnsq-tail --topic clicks --nsqd-tcp-address 127.0.0.1:4150
  rxnsq-tail --topic clicks --topic orders --print-topic --lookupd-http-address 127.0.0.1:4161
  rxnsq-tail --topic clicks --nsqd-tcp-address 127.0.0.1:4150 -n 10 | jq .
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import random
import sys
from typing import BinaryIO

from ..message import Message
from ..reader import Reader
from ._common import (
    Progress,
    add_consumer_opt,
    add_source_args,
    add_status_args,
    base_parser,
    check_sources,
    make_readers,
    nonneg_int,
    positive_int,
    run_tool,
    setup_logging,
)

PROG = "rxnsq-tail"


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(PROG, __doc__)
    add_source_args(
        parser,
        channel_default=None,
        channel_help="NSQ channel (default: a random tailNNNNNN#ephemeral)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=positive_int,
        default=200,
        help="max number of messages to allow in flight (default: %(default)s)",
    )
    parser.add_argument(
        "-n",
        "--n",
        dest="total_messages",
        type=nonneg_int,
        default=0,
        help="total messages to show, then exit (0 = forever; lowers --max-in-flight to it)",
    )
    parser.add_argument(
        "--print-topic",
        action="store_true",
        help="prefix each line with the topic: 'topic | body'",
    )
    add_consumer_opt(parser)
    add_status_args(parser, every=0, interval=0.0)
    return parser


class Printer:
    """Writes bodies to ``out``; once per loop turn it flushes what was written, then FINs
    those messages (never before their bytes left the process)."""

    def __init__(self, out: BinaryIO, limit: int, progress: Progress) -> None:
        self.out = out
        self.limit = limit
        self.progress = progress
        self.shown = 0
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._unflushed: list[Message[bytes]] = []

    def show(self, prefix: bytes, message: Message[bytes]) -> None:
        if self.done.done() or (self.limit and self.shown >= self.limit):
            message.req(0, backoff=False)  # past -n, or stdout is gone: give it back
            return
        self.shown += 1
        self._buffer += prefix + message.body + b"\n"
        self._unflushed.append(message)
        if len(self._unflushed) == 1:
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        messages, self._unflushed = self._unflushed, []
        data, self._buffer = bytes(self._buffer), bytearray()
        try:
            self.out.write(data)
            self.out.flush()
        except BrokenPipeError:
            # the reader of our stdout left (`| head`): what it did not get goes back
            for message in messages:
                message.req(0, backoff=False)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.out.fileno())
            if not self.done.done():
                self.done.set_result(0)
            return
        for message in messages:
            message.fin()
        self.progress.add(len(messages))
        if self.limit and self.shown >= self.limit and not self.done.done():
            self.done.set_result(0)

    def fail(self, error: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(error)


async def tail(readers: list[Reader], args: argparse.Namespace) -> int:
    progress = Progress(PROG, "messages", every=args.status_every, interval=args.status_interval)
    printer = Printer(sys.stdout.buffer, args.total_messages, progress)
    subscriptions = []
    for reader in readers:
        prefix = f"{reader.topic} | ".encode() if args.print_topic else b""
        subscriptions.append(
            reader.messages.subscribe(
                on_next=functools.partial(printer.show, prefix),
                on_error=printer.fail,
            )
        )
    progress.start()
    try:
        return await printer.done
    finally:
        progress.stop()
        for subscription in subscriptions:
            subscription.dispose()
        await asyncio.gather(*(reader.close() for reader in readers))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_sources(parser, args)
    setup_logging(PROG, args.log_level)
    channel = args.channel or f"tail{random.randrange(1_000_000):06d}#ephemeral"
    readers = make_readers(
        parser, args, channel, max_in_flight=args.max_in_flight, cap=args.total_messages
    )
    return run_tool(PROG, tail(readers, args))


if __name__ == "__main__":
    raise SystemExit(main())
