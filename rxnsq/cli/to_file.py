"""rxnsq-to-file: archive NSQ topics into rolling, optionally gzipped, files (Go's nsq_to_file).

Each --topic is consumed on --channel and written, one body per line, to files in
--output-dir named by --filename-format. Messages are taken in batches (ops.batch): a batch is
written, flushed and fsynced, and only then are its messages finished, so a crash or Ctrl-C
never loses a message (at worst one comes back and is written again). A batch closes when it
holds half of --max-in-flight messages or --sync-interval after its first message, and at once
when the tool is stopped. With --gzip every batch is a complete gzip member: the file is a
valid gzip file after every sync. Files rotate when the DATETIME part of their name changes,
after --rotate-size bytes or --rotate-interval (checked when a batch is written).

filename format: <TOPIC>, <HOST> (--host-identifier, default: the short hostname), <PID>,
<DATETIME> (--datetime-format, strftime) and <REV> (empty, then -1, -2... the first name not
taken yet) are replaced; ".gz" is appended with --gzip.

examples:
  rxnsq-to-file --topic clicks --nsqd-tcp-address 127.0.0.1:4150 --output-dir /data/nsq
  rxnsq-to-file --topic clicks --lookupd-http-address 127.0.0.1:4161 --output-dir /data/nsq \\
      --gzip --rotate-size 104857600 --datetime-format %Y-%m-%d
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import logging
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import reactivex.operators as rx

from .. import ops as nsq
from .. import runner
from ..message import Message
from ..reader import Reader
from ._common import (
    Progress,
    add_consumer_opt,
    add_source_args,
    add_status_args,
    base_parser,
    check_sources,
    duration,
    make_readers,
    nonneg_int,
    positive_int,
    resolver,
    run_tool,
    setup_logging,
)

PROG = "rxnsq-to-file"


def _carrying_itself(message: Message[bytes]) -> Message[Message[bytes]]:
    """A message whose value is the message itself (the file writer needs the bodies)."""
    return message.with_value(message)


DEFAULT_FORMAT = "<TOPIC>.<HOST><REV>.<DATETIME>.log"

logger = logging.getLogger(__name__)


def gzip_level(text: str) -> int:
    level = positive_int(text)
    if level > 9:
        raise argparse.ArgumentTypeError(f"{text!r}: from 1 (fastest) to 9 (smallest)")
    return level


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(PROG, __doc__)
    add_source_args(parser, channel_default="nsq_to_file", channel_help="NSQ channel (%(default)s)")
    parser.add_argument(
        "--output-dir", default="/tmp", help="directory to write files to (default: %(default)s)"
    )
    parser.add_argument(
        "--filename-format",
        default=DEFAULT_FORMAT,
        help="file name with <TOPIC>, <HOST>, <PID>, <DATETIME>, <REV> (default: %(default)s)",
    )
    parser.add_argument(
        "--datetime-format",
        default="%Y-%m-%d_%H",
        help="strftime format of <DATETIME> (default: %(default)s)",
    )
    parser.add_argument("--host-identifier", default=None, help="value of <HOST>")
    parser.add_argument("--gzip", action="store_true", help="gzip the files")
    parser.add_argument(
        "--gzip-level", type=gzip_level, default=6, help="1 to 9 (default: %(default)s)"
    )
    parser.add_argument(
        "--rotate-size",
        type=nonneg_int,
        default=0,
        metavar="BYTES",
        help="start a new file once one reaches this size (0 = no limit)",
    )
    parser.add_argument(
        "--rotate-interval",
        type=duration,
        default=0.0,
        metavar="DURATION",
        help="start a new file after this long (0 = never)",
    )
    parser.add_argument(
        "--sync-interval",
        type=duration,
        default=30.0,
        metavar="DURATION",
        help="longest time a message waits in a batch before it is written, fsynced and "
        "finished (default: %(default)ss)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=positive_int,
        default=200,
        help="max number of messages to allow in flight (default: %(default)s)",
    )
    add_consumer_opt(parser)
    add_status_args(parser, every=0, interval=30.0)
    return parser


class FileLogger:
    """The files of one topic: writes batches, syncs them, rotates."""

    def __init__(self, topic: str, args: argparse.Namespace, host: str) -> None:
        self.topic = topic
        self.output_dir = Path(args.output_dir)
        fmt = args.filename_format
        if args.gzip and not fmt.endswith(".gz"):
            fmt += ".gz"
        self.template: str = (
            fmt.replace("<TOPIC>", topic).replace("<HOST>", host).replace("<PID>", str(os.getpid()))
        )
        self.datetime_format: str = args.datetime_format
        self.gzip_level = args.gzip_level if args.gzip else 0
        self.rotate_size = args.rotate_size
        self.rotate_interval = args.rotate_interval
        self.file: BinaryIO | None = None
        self.path: Path | None = None
        self.name = ""
        self.opened_at = 0.0
        self.written = 0
        self.files: list[Path] = []

    def _name(self) -> str:
        return self.template.replace("<DATETIME>", time.strftime(self.datetime_format))

    def _open(self, name: str) -> BinaryIO:
        if "<REV>" in name:
            rev = 0
            while True:
                path = self.output_dir / name.replace("<REV>", f"-{rev}" if rev else "")
                if not path.exists():
                    break
                rev += 1
        else:
            path = self.output_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)  # the format may name folders
        self.path, self.name, self.opened_at = path, name, time.monotonic()
        self.files.append(path)
        logger.info("%s: writing %s", self.topic, path)
        self.file = open(path, "ab")  # noqa: SIM115 - kept open across batches
        return self.file

    def _due(self) -> bool:
        """Whether the open file should be closed before the next write."""
        if self.file is None:
            return False
        if self._name() != self.name:
            return True
        return bool(self.rotate_interval) and (
            time.monotonic() - self.opened_at >= self.rotate_interval
        )

    def write_batch(self, messages: list[Message[bytes]]) -> None:
        """Write the bodies of the messages still in flight, then flush and fsync (the
        caller finishes them afterwards). On an error the file is closed: the batch is
        requeued and goes to a new file."""
        live = [m for m in messages if not m.has_responded()]  # requeued while waiting
        if not live:
            return
        if self._due():
            self.close()
        out = self.file or self._open(self._name())
        data = b"".join(m.body + b"\n" for m in live)
        try:
            if self.gzip_level:
                # one gzip member per batch: every sync leaves a valid gzip file
                with gzip.GzipFile(
                    fileobj=out, mode="wb", compresslevel=self.gzip_level, mtime=0
                ) as member:
                    member.write(data)
            else:
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        except OSError:
            logger.exception("%s: cannot write %s", self.topic, self.path)
            self.close()
            raise
        self.written += len(live)
        if self.rotate_size and out.tell() >= self.rotate_size:
            self.close()

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            finally:
                self.file = None


def batch_size(max_in_flight: int) -> int:
    """Half of max_in_flight: always reachable, whatever the number of nsqd (each gets
    max_in_flight // n of the RDY budget, and n * (m // n) >= m / 2), while the other half
    keeps messages flowing as a batch is written."""
    return max(1, max_in_flight // 2)


async def archive(
    readers: Sequence[Reader], loggers: Sequence[FileLogger], args: argparse.Namespace
) -> int:
    loop = asyncio.get_running_loop()
    progress = Progress(
        PROG,
        "messages written",
        every=args.status_every,
        interval=args.status_interval,
        describe=lambda: f"{sum(len(f.files) for f in loggers)} files",
    )
    finished: list[asyncio.Future[None]] = []
    for reader, file_logger in zip(readers, loggers, strict=True):
        done: asyncio.Future[None] = loop.create_future()
        on_error, on_completed = resolver(done)
        batches: nsq.Operator[Message[Message[bytes]], nsq.Batch[Message[bytes]]] = nsq.batch(
            batch_size(reader.max_in_flight), timespan=args.sync_interval or 0.001
        )
        write: nsq.Operator[nsq.Batch[Message[bytes]], nsq.Batch[Message[bytes]]] = (
            nsq.process_batch(file_logger.write_batch)
        )
        reader.messages.pipe(
            rx.take_until(reader.closing),  # stopping: flush the open batch now
            rx.map(_carrying_itself),  # the writer needs the messages themselves
            batches,
            write,
        ).subscribe(
            on_next=lambda batch: progress.add(len(batch)),
            on_error=on_error,
            on_completed=on_completed,
        )
        finished.append(done)
    progress.start()
    try:
        await asyncio.gather(*finished)
    finally:
        progress.stop()
        for file_logger in loggers:
            file_logger.close()
        progress.report(final=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_sources(parser, args)
    fmt = args.filename_format
    if len(args.topic) > 1 and "<TOPIC>" not in fmt:
        parser.error("--filename-format must contain <TOPIC> when there are several topics")
    if (args.rotate_size or args.rotate_interval) and "<REV>" not in fmt:
        parser.error("--rotate-size and --rotate-interval need <REV> in --filename-format")
    if len(set(args.topic)) != len(args.topic):
        parser.error("a --topic is given twice")
    try:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--output-dir: {exc}")
    if not os.access(args.output_dir, os.W_OK | os.X_OK):
        parser.error(f"--output-dir: cannot write to {args.output_dir}")
    setup_logging(PROG, args.log_level)
    host = args.host_identifier or socket.gethostname().split(".")[0]
    readers = make_readers(parser, args, args.channel, max_in_flight=args.max_in_flight)
    loggers = [FileLogger(topic, args, host) for topic in args.topic]
    # a drain outlasting the batch timer would requeue messages about to be written
    return run_tool(
        PROG,
        archive(readers, loggers, args),
        drain_timeout=runner.DEFAULT_DRAIN_TIMEOUT + args.sync_interval,
    )


if __name__ == "__main__":
    raise SystemExit(main())
