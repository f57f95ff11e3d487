"""What the command-line tools share: flags, ``--consumer-opt``/``--producer-opt``, progress
lines, logging and the run/exit-code plumbing.

Flags keep the Go apps' spellings. Multi-value flags use ``action="append"`` ("may be given
multiple times"). The argument types and the option parsing live in :mod:`rxnsq.arguments`
(the worker uses them too); the names the tools import are re-exported here.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, TextIO

from .. import runner
from .._version import __version__
from ..arguments import (
    OptionError,
    channel_name,
    consumer_options,
    duration,
    nonneg_int,
    opt_pair,
    parse_duration,
    positive_int,
    producer_options,
    topic_name,
)
from ..errors import NSQError
from ..reader import Reader
from ..writer import Writer

__all__ = [
    "OptionError",
    "Progress",
    "add_consumer_opt",
    "add_source_args",
    "add_status_args",
    "base_parser",
    "channel_name",
    "consumer_options",
    "duration",
    "nonneg_int",
    "parse_duration",
    "positive_int",
    "producer_options",
    "resolver",
    "run_tool",
    "setup_logging",
    "topic_name",
]

logger = logging.getLogger(__name__)

# --- parsers --------------------------------------------------------------------------------


def base_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A parser with the module docstring as its description, ``--version``, ``--log-level``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(doc or "").strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log level of rxnsq's messages on stderr (default: %(default)s)",
    )
    return parser


def add_source_args(
    parser: argparse.ArgumentParser,
    *,
    channel_default: str | None,
    channel_help: str,
    topic_help: str = "NSQ topic",
) -> None:
    """What a consuming tool reads: ``--topic`` (multi, required), ``--channel``,
    ``--nsqd-tcp-address`` (multi) and ``--lookupd-http-address`` (multi)."""
    parser.add_argument(
        "--topic",
        action="append",
        required=True,
        type=topic_name,
        help=f"{topic_help} (may be given multiple times)",
    )
    parser.add_argument("--channel", type=channel_name, default=channel_default, help=channel_help)
    parser.add_argument(
        "--nsqd-tcp-address",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="nsqd TCP address (may be given multiple times)",
    )
    parser.add_argument(
        "--lookupd-http-address",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="nsqlookupd HTTP address (may be given multiple times)",
    )


def check_sources(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exactly one of the two discovery flags, as the Go apps require."""
    if args.nsqd_tcp_address and args.lookupd_http_address:
        parser.error("use --nsqd-tcp-address or --lookupd-http-address, not both")
    if not args.nsqd_tcp_address and not args.lookupd_http_address:
        parser.error("--nsqd-tcp-address or --lookupd-http-address is required")


def add_consumer_opt(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--consumer-opt",
        action="append",
        default=[],
        type=opt_pair,
        metavar="KEY,VALUE",
        help="a Reader option, e.g. max_tries,10 or msg_timeout,2m (may be given multiple "
        "times; go-nsq names such as max_attempts are understood)",
    )


def add_producer_opt(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--producer-opt",
        action="append",
        default=[],
        type=opt_pair,
        metavar="KEY,VALUE",
        help="a Writer option, e.g. snappy,true or connect_timeout,2s (may be given multiple "
        "times)",
    )


def add_status_args(parser: argparse.ArgumentParser, *, every: int, interval: float) -> None:
    parser.add_argument(
        "--status-every",
        type=nonneg_int,
        default=every,
        metavar="N",
        help="print a progress line to stderr every N messages (0 = never; default: %(default)s)",
    )
    parser.add_argument(
        "--status-interval",
        type=duration,
        default=interval,
        metavar="DURATION",
        help="print a progress line to stderr every DURATION (0 = never; default: %(default)ss)",
    )


# --- readers ----------------------------------------------------------------------------------


def make_readers(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    channel: str,
    *,
    max_in_flight: int,
    cap: int | None = None,
    cls: type[Reader] = Reader,
) -> list[Reader]:
    """One Reader per ``--topic`` with the discovery flags and ``--consumer-opt`` applied.

    ``cap`` lowers max_in_flight (``rxnsq-tail -n``). The tools never give up on a message
    (``max_tries`` 0) unless told to with ``--consumer-opt max_tries,N``: a tool that
    archives or relays must not drop data.
    """
    try:
        options = consumer_options(args.consumer_opt)
    except OptionError as exc:
        parser.error(str(exc))
    options.setdefault("max_tries", 0)
    options.setdefault("max_in_flight", max_in_flight)
    if cap:
        options["max_in_flight"] = min(options["max_in_flight"], cap)
    readers = []
    for topic in args.topic:
        try:
            readers.append(
                cls(
                    topic,
                    channel,
                    nsqd_tcp_addresses=args.nsqd_tcp_address,
                    lookupd_http_addresses=args.lookupd_http_address,
                    **options,
                )
            )
        except (NSQError, ValueError) as exc:
            parser.error(str(exc))
    return readers


def make_writer(
    parser: argparse.ArgumentParser, addresses: Sequence[str], pairs: Iterable[tuple[str, str]]
) -> Writer:
    """A Writer for ``addresses`` with ``--producer-opt`` applied (usage errors exit 2)."""
    try:
        options = {"name": parser.prog, **producer_options(pairs)}
        return Writer(list(addresses), **options)
    except (NSQError, ValueError) as exc:
        parser.error(str(exc))


# --- progress ---------------------------------------------------------------------------------


class Progress:
    """Progress lines on stderr (stdout carries data): every ``every`` messages and/or every
    ``interval`` seconds, with the rate since the previous line. ``describe()`` adds details."""

    def __init__(
        self,
        prog: str,
        noun: str,
        *,
        every: int = 0,
        interval: float = 0.0,
        describe: Callable[[], str] | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.prog = prog
        self.noun = noun
        self.every = every
        self.interval = interval
        self.describe = describe
        self.stream = stream
        self.count = 0
        self.failed = 0
        self.started = time.monotonic()
        self._last_time = self.started
        self._last_count = 0
        self._timer: asyncio.TimerHandle | None = None

    def add(self, count: int = 1, failed: int = 0) -> None:
        before = self.count + self.failed
        self.count += count
        self.failed += failed
        after = self.count + self.failed
        if self.every and after // self.every > before // self.every:
            self.report()

    def start(self) -> None:
        """Start the timed lines (on the running loop)."""
        if self.interval > 0:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self.report()
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def line(self, *, final: bool = False) -> str:
        now = time.monotonic()
        if final:
            elapsed = now - self.started
            rate = self.count / elapsed if elapsed > 0 else 0.0
            when = f" in {elapsed:.1f}s ({rate:.0f}/s)"
        else:
            elapsed = now - self._last_time
            rate = (self.count - self._last_count) / elapsed if elapsed > 0 else 0.0
            when = f" ({rate:.0f}/s)"
            self._last_time, self._last_count = now, self.count
        text = f"{self.prog}: {self.count} {self.noun}"
        if self.failed:
            text += f", {self.failed} failed"
        text += when
        if self.describe is not None:
            details = self.describe()
            if details:
                text += f", {details}"
        return text

    def report(self, *, final: bool = False) -> None:
        print(self.line(final=final), file=self.stream or sys.stderr, flush=True)


# --- running ----------------------------------------------------------------------------------


def setup_logging(prog: str, level: str) -> None:
    """Log to stderr, prefixed with the tool's name. The runner's "received SIGINT: draining"
    line shows unless ``--log-level error``."""
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper()),
        format=f"{prog}: %(levelname)s %(name)s: %(message)s",
    )
    if level != "error":
        logging.getLogger(runner.__name__).setLevel(min(logging.INFO, logging.root.level))


class ToolError(Exception):
    """A failure the tool explains in one line (``prog: error: ...``, exit 1)."""


def run_tool(
    prog: str,
    main: Coroutine[Any, Any, int],
    *,
    drain_timeout: float = runner.DEFAULT_DRAIN_TIMEOUT,
    interrupted: int = 0,
) -> int:
    """Run ``main`` with :func:`rxnsq.runner.serve` (SIGINT/SIGTERM drain every Reader and
    Writer, then stop) and turn the outcome into an exit code, as shells expect: main's
    return value; after SIGINT (Ctrl-C) 130; after SIGTERM ``interrupted`` (a clean drain;
    143 if a second signal cut it short); 1 with a one-line message for an rxnsq error."""
    try:
        outcome = runner.serve(main, drain_timeout=drain_timeout)
    except (NSQError, ToolError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        return 1
    if outcome.signal is signal.SIGINT:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    if outcome.signal is signal.SIGTERM:
        return 143 if outcome.hurried else interrupted
    return interrupted if outcome.value is None else outcome.value


def resolver(done: asyncio.Future[None]) -> tuple[Callable[[Exception], None], Callable[[], None]]:
    """``on_error`` and ``on_completed`` for a subscription that resolve ``done`` once."""

    def on_error(error: Exception) -> None:
        if not done.done():
            done.set_exception(error)

    def on_completed() -> None:
        if not done.done():
            done.set_result(None)

    return on_error, on_completed
