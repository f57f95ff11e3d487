"""rxnsq-stat: poll nsqd /stats and print a channel's rates and depths (Go's nsq_stat).

Every --interval it reads /stats of the nsqds given with --nsqd-http-address, or of those
nsqlookupd lists for --topic (found again at every poll), adds them up for --topic and
--channel and prints one row, --count times (0 = until Ctrl-C):

  ingress  messages/s published to the topic      egress   messages/s that left the channel
  total    messages in the channel (mem + disk)    mem, disk  in memory / on disk
  inflt    in flight                               def      deferred
  req      requeued (since nsqd started)           t-o      timed out (since nsqd started)
  msgs     messages the channel has received       clients  consumers connected

Rates need two polls, so the first row shows "-". The header is printed again every 25 rows.
When `rich` is installed and stdout is a terminal, a live table is shown instead (--plain to
keep plain text).

examples:
  rxnsq-stat --topic clicks --channel archive --nsqd-http-address 127.0.0.1:4151
  rxnsq-stat --topic clicks --channel archive --lookupd-http-address 127.0.0.1:4161 \\
      --interval 5s --count 12
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from ..errors import NSQError
from ..http import LookupdHTTPClient, NsqdHTTPClient
from ._common import (
    base_parser,
    channel_name,
    duration,
    nonneg_int,
    run_tool,
    setup_logging,
    topic_name,
)

PROG = "rxnsq-stat"
#: (name, width) of each column, in the Go tool's order: rate | depth | metadata.
COLUMNS = (
    ("ingress", 7),
    ("egress", 7),
    ("total", 7),
    ("mem", 7),
    ("disk", 7),
    ("inflt", 5),
    ("def", 5),
    ("req", 7),
    ("t-o", 7),
    ("msgs", 12),
    ("clients", 7),
)
GROUPS = (("rate", 2), ("depth", 5), ("metadata", 4))
HEADER_EVERY = 25


def build_parser() -> argparse.ArgumentParser:
    parser = base_parser(PROG, __doc__)
    parser.add_argument("--topic", required=True, type=topic_name, help="NSQ topic")
    parser.add_argument("--channel", required=True, type=channel_name, help="NSQ channel")
    parser.add_argument(
        "--nsqd-http-address",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="nsqd HTTP address (may be given multiple times)",
    )
    parser.add_argument(
        "--lookupd-http-address",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="nsqlookupd HTTP address (may be given multiple times)",
    )
    parser.add_argument(
        "--interval",
        type=duration,
        default=2.0,
        metavar="DURATION",
        help="time between reports (default: %(default)ss)",
    )
    parser.add_argument(
        "--count", type=nonneg_int, default=0, help="number of reports (0 = until stopped)"
    )
    parser.add_argument(
        "--http-client-connect-timeout",
        type=duration,
        default=2.0,
        metavar="DURATION",
        help="timeout for connecting to nsqd / nsqlookupd (default: %(default)ss)",
    )
    parser.add_argument(
        "--http-client-request-timeout",
        type=duration,
        default=5.0,
        metavar="DURATION",
        help="timeout of one HTTP request (default: %(default)ss)",
    )
    parser.add_argument(
        "--plain", action="store_true", help="plain text even on a terminal with rich installed"
    )
    return parser


@dataclass
class Snapshot:
    """One topic/channel summed over the nsqds that answered."""

    nsqds: int = 0
    topic_messages: int = 0
    messages: int = 0
    depth: int = 0
    backend_depth: int = 0
    in_flight: int = 0
    deferred: int = 0
    requeued: int = 0
    timed_out: int = 0
    clients: int = 0

    def add(self, stats: dict[str, Any], topic: str, channel: str) -> None:
        self.nsqds += 1
        for t in stats.get("topics") or []:
            if t.get("topic_name") != topic:
                continue
            self.topic_messages += t.get("message_count", 0)
            for c in t.get("channels") or []:
                if c.get("channel_name") != channel:
                    continue
                self.messages += c.get("message_count", 0)
                self.depth += c.get("depth", 0)
                self.backend_depth += c.get("backend_depth", 0)
                self.in_flight += c.get("in_flight_count", 0)
                self.deferred += c.get("deferred_count", 0)
                self.requeued += c.get("requeue_count", 0)
                self.timed_out += c.get("timeout_count", 0)
                self.clients += c.get("client_count", 0)

    @property
    def held(self) -> int:
        """Messages the channel holds: queued, in flight or deferred."""
        return self.depth + self.in_flight + self.deferred


def row(previous: Snapshot | None, current: Snapshot, seconds: float) -> list[str]:
    """The cells of one report; rates are "-" without a previous poll."""
    if previous is None or seconds <= 0:
        ingress = egress = "-"
    else:
        # what entered the channel and is no longer held in it has left (been finished)
        left = (current.messages - previous.messages) - (current.held - previous.held)
        ingress = str(max(0, round((current.topic_messages - previous.topic_messages) / seconds)))
        egress = str(max(0, round(left / seconds)))
    values = (
        current.depth,
        current.depth - current.backend_depth,
        current.backend_depth,
        current.in_flight,
        current.deferred,
        current.requeued,
        current.timed_out,
        current.messages,
        current.clients,
    )
    return [ingress, egress, *map(str, values)]


def _cells(values: Sequence[str]) -> str:
    parts = [f"{v:>{w}}" for v, (_, w) in zip(values, COLUMNS, strict=True)]
    out, start = [], 0
    for _, size in GROUPS:
        out.append(" ".join(parts[start : start + size]))
        start += size
    return " | ".join(out)


def header() -> str:
    widths, start = [], 0
    for _, size in GROUPS:
        widths.append(sum(w for _, w in COLUMNS[start : start + size]) + size - 1)
        start += size
    top = "-+-".join(f"{name:-^{width}}" for (name, _), width in zip(GROUPS, widths, strict=True))
    return top + "\n" + _cells([name for name, _ in COLUMNS])


class PlainView:
    """Rows of fixed-width columns, the header again every 25 rows."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.rows = 0

    def show(self, cells: list[str], snapshot: Snapshot) -> None:
        if self.rows % HEADER_EVERY == 0:
            print(header(), file=self.out)
        print(_cells(cells), file=self.out, flush=True)
        self.rows += 1

    def close(self) -> None:
        pass


class RichView:
    """A ``rich`` live table of the latest rows."""

    def __init__(self, title: str) -> None:
        from rich.console import Console
        from rich.live import Live

        self.title = title
        self.rows: deque[list[str]] = deque(maxlen=HEADER_EVERY)
        self.nsqds = 0
        self.live = Live(self._table(), console=Console(), auto_refresh=False)
        self.live.start()

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(
            title=f"{self.title} on {self.nsqds} nsqd",
            title_justify="left",
            caption="ingress/egress in messages/s; depth columns are message counts",
            caption_justify="left",
        )
        start = 0
        for group, size in GROUPS:
            for index, (name, _) in enumerate(COLUMNS[start : start + size]):
                style = "bold" if group == "depth" and index == 0 else None
                table.add_column(name, justify="right", style=style)
            start += size
        for cells in self.rows:
            table.add_row(*cells)
        return table

    def show(self, cells: list[str], snapshot: Snapshot) -> None:
        self.rows.append(cells)
        self.nsqds = snapshot.nsqds
        self.live.update(self._table(), refresh=True)

    def close(self) -> None:
        self.live.stop()


def make_view(args: argparse.Namespace) -> PlainView | RichView:
    if not args.plain and sys.stdout.isatty():
        try:
            return RichView(f"{args.topic}/{args.channel}")
        except ImportError:
            pass  # rich is an optional extra: pip install 'rxnsq[cli]'
    return PlainView(sys.stdout)


class Poller:
    """Finds the nsqds and sums their /stats for the topic and channel."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.connect_timeout: float = args.http_client_connect_timeout or 0.001
        self.request_timeout: float = args.http_client_request_timeout or 0.001
        self.nsqd_clients: dict[str, NsqdHTTPClient] = {}
        self.lookupd_clients = [
            LookupdHTTPClient(
                address,
                connect_timeout=self.connect_timeout,
                request_timeout=self.request_timeout,
            )
            for address in args.lookupd_http_address
        ]

    def _warn(self, text: str) -> None:
        print(f"{PROG}: {text}", file=sys.stderr, flush=True)

    async def nsqds(self) -> list[str]:
        if not self.lookupd_clients:
            return list(self.args.nsqd_http_address)
        results = await asyncio.gather(
            *(client.lookup(self.args.topic) for client in self.lookupd_clients),
            return_exceptions=True,
        )
        found: set[str] = set()
        for client, result in zip(self.lookupd_clients, results, strict=True):
            if isinstance(result, BaseException):
                self._warn(f"{client.url}: {result}")
            else:
                found.update(producer.http_address for producer in result)
        if not found and all(isinstance(r, BaseException) for r in results):
            raise NSQError("no nsqlookupd answered")
        return sorted(found)

    async def poll(self) -> Snapshot:
        addresses = await self.nsqds()
        if not addresses:
            self._warn(f"no nsqd has topic {self.args.topic!r} (yet)")
        clients = []
        for address in addresses:
            if address not in self.nsqd_clients:
                self.nsqd_clients[address] = NsqdHTTPClient(
                    address,
                    connect_timeout=self.connect_timeout,
                    request_timeout=self.request_timeout,
                )
            clients.append(self.nsqd_clients[address])
        args = self.args
        results = await asyncio.gather(
            *(c.stats(args.topic, args.channel, include_clients=False) for c in clients),
            return_exceptions=True,
        )
        snapshot = Snapshot()
        for client, result in zip(clients, results, strict=True):
            if isinstance(result, BaseException):
                self._warn(f"{client.url}: {result}")
            else:
                snapshot.add(result, args.topic, args.channel)
        if addresses and not snapshot.nsqds:
            raise NSQError("no nsqd answered")
        return snapshot

    async def close(self) -> None:
        clients = [*self.nsqd_clients.values(), *self.lookupd_clients]
        await asyncio.gather(*(client.close() for client in clients))


async def watch(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    poller = Poller(args)
    view = make_view(args)
    previous: tuple[Snapshot, float] | None = None
    failed = reports = 0
    start = loop.time()
    try:
        while not args.count or reports < args.count:
            if reports:
                await asyncio.sleep(max(0.0, start + reports * args.interval - loop.time()))
            reports += 1
            try:
                snapshot = await poller.poll()
            except (NSQError, OSError) as exc:
                failed += 1
                print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
                continue
            now = loop.time()
            if previous is None:
                cells = row(None, snapshot, 0.0)
            else:
                cells = row(previous[0], snapshot, now - previous[1])
            view.show(cells, snapshot)
            previous = (snapshot, now)
    finally:
        view.close()
        await poller.close()
    return 1 if failed == reports else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.nsqd_http_address) == bool(args.lookupd_http_address):
        parser.error("give --nsqd-http-address or --lookupd-http-address (one of them)")
    if args.interval <= 0:
        parser.error("--interval must be more than 0")
    setup_logging(PROG, args.log_level)
    for address in [*args.nsqd_http_address, *args.lookupd_http_address]:
        try:
            NsqdHTTPClient(address)
        except (NSQError, ValueError) as exc:
            parser.error(str(exc))
    return run_tool(PROG, watch(args))


if __name__ == "__main__":
    raise SystemExit(main())
