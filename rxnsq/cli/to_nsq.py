"""rxnsq-to-nsq: relay NSQ topics to other nsqd (Go's nsq_to_nsq).

Consumes each --topic on --channel from the source (--nsqd-tcp-address or
--lookupd-http-address) and republishes every message to --destination-topic (by default
the same name) on the --destination-nsqd-tcp-address nsqds, round-robin. The pipeline is
``reader.messages | writer.publish(topic) | ops.settle()``: a message is finished only once
nsqd confirmed its republish, and requeued if the publish failed, so nothing is lost
(at least once). Ctrl-C or SIGTERM stops consuming, waits for the publishes in flight and
finishes their messages, then exits.

examples:
  rxnsq-to-nsq --topic clicks --nsqd-tcp-address 10.0.0.1:4150 \\
      --destination-nsqd-tcp-address 10.0.1.1:4150
  rxnsq-to-nsq --topic clicks --lookupd-http-address 10.0.0.5:4161 \\
      --destination-nsqd-tcp-address 10.0.1.1:4150 --destination-topic clicks_copy
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from .. import ops as nsq
from ..reader import Reader
from ..writer import PublishResult, Writer
from ._common import (
    Progress,
    ToolError,
    add_consumer_opt,
    add_producer_opt,
    add_source_args,
    add_status_args,
    base_parser,
    check_sources,
    make_readers,
    make_writer,
    positive_int,
    resolver,
    run_tool,
    setup_logging,
    topic_name,
)

PROG = "rxnsq-to-nsq"


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(PROG, __doc__)
    add_source_args(
        parser,
        channel_default="nsq_to_nsq",
        channel_help="NSQ channel (%(default)s)",
        topic_help="source NSQ topic",
    )
    parser.add_argument(
        "--destination-nsqd-tcp-address",
        action="append",
        required=True,
        metavar="HOST:PORT",
        help="destination nsqd TCP address (may be given multiple times)",
    )
    parser.add_argument(
        "--destination-topic",
        type=topic_name,
        help="topic to publish to (default: the source topic's name)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=positive_int,
        default=200,
        help="max number of messages to allow in flight (default: %(default)s)",
    )
    add_consumer_opt(parser)
    add_producer_opt(parser)
    add_status_args(parser, every=250, interval=0.0)
    return parser


async def relay(readers: Sequence[Reader], writer: Writer, args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    await writer.start()
    if not writer.connections:
        raise ToolError(
            f"cannot connect to any destination nsqd "
            f"({', '.join(args.destination_nsqd_tcp_address)})"
            + (f": {writer.last_error}" if writer.last_error else "")
        )
    progress = Progress(
        PROG,
        "relayed",
        every=args.status_every,
        interval=args.status_interval,
        describe=lambda: ", ".join(
            f"{r.topic}: {sum(c['in_flight'] for c in r.stats()['connections'].values())} in flight"
            for r in readers
        ),
    )

    def count(result: PublishResult[object]) -> None:
        progress.add(1 if result.ok else 0, 0 if result.ok else 1)

    finished: list[asyncio.Future[None]] = []
    for reader in readers:
        done: asyncio.Future[None] = loop.create_future()
        on_error, on_completed = resolver(done)
        settle: nsq.Operator[PublishResult[object], PublishResult[object]] = nsq.settle()
        reader.messages.pipe(
            writer.publish(args.destination_topic or reader.topic),
            settle,  # FIN what was confirmed, REQ what failed
        ).subscribe(
            on_next=count,
            on_error=on_error,
            on_completed=on_completed,
        )
        finished.append(done)
    progress.start()
    try:
        await asyncio.gather(*finished)
    finally:
        progress.stop()
        progress.report(final=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_sources(parser, args)
    setup_logging(PROG, args.log_level)
    readers = make_readers(parser, args, args.channel, max_in_flight=args.max_in_flight)
    writer = make_writer(parser, args.destination_nsqd_tcp_address, args.producer_opt)
    return run_tool(PROG, relay(readers, writer, args))


if __name__ == "__main__":
    raise SystemExit(main())
