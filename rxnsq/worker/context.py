"""``WorkerContext``: what the factory gets in each worker process.

``ctx.reader()`` and ``ctx.writer()`` build Readers and Writers from the command's options
(flags and ``RXNSQ_*`` variables), with per-call overrides, and put them under the worker's
watch: their events are logged, their counters reach the metrics, and readiness follows their
connections. Readers and Writers built directly (``rxnsq.Reader(...)``) are still drained on
SIGTERM, but the worker neither logs nor measures them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError
from ..reader import Reader
from ..writer import Writer
from .options import WorkerOptions
from .watch import ReaderWatch, WriterWatch

__all__ = ["WorkerContext"]


class WorkerContext:
    """Given to ``factory(ctx)`` in each worker process.

    ``process`` is this process' index (0 to ``processes - 1``; a restarted process keeps
    its index); ``options`` are the command's :class:`~rxnsq.worker.options.WorkerOptions`.
    """

    def __init__(
        self,
        options: WorkerOptions,
        process: int = 0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.options = options
        self.process = process
        self.processes = options.processes
        self.readers: list[Reader] = []
        self.writers: list[Writer] = []
        self._on_change = on_change or (lambda: None)
        self._reader_watches: list[ReaderWatch] = []
        self._writer_watches: list[WriterWatch] = []

    def __repr__(self) -> str:
        return f"<WorkerContext process={self.process}/{self.processes} app={self.options.app}>"

    def reader(
        self, topic: str | None = None, channel: str | None = None, **overrides: Any
    ) -> Reader:
        """A Reader of ``topic``/``channel`` (default ``--topic``/``--channel``) with the
        command's addresses, ``--max-in-flight``, ``--max-tries`` and ``--consumer-opt``;
        ``overrides`` are Reader keywords that replace them."""
        topic = topic or self.options.topic
        channel = channel or self.options.channel
        if topic is None:
            raise ConfigError("topic", None, "give --topic (RXNSQ_TOPIC) or ctx.reader(topic=...)")
        if channel is None:
            raise ConfigError(
                "channel", None, "give --channel (RXNSQ_CHANNEL) or ctx.reader(channel=...)"
            )
        options = self.options.reader_options()
        options.update(overrides)
        options.setdefault("measure_hold_times", True)
        if not options.get("nsqd_tcp_addresses") and not options.get("lookupd_http_addresses"):
            raise ConfigError(
                "nsqd_tcp_addresses",
                (),
                "give --lookupd-http-address or --nsqd-tcp-address (RXNSQ_LOOKUPD_HTTP_ADDRESSES, "
                "RXNSQ_NSQD_TCP_ADDRESSES), or pass them to ctx.reader()",
            )
        reader = Reader(topic, channel, **options)
        self.readers.append(reader)
        self._reader_watches.append(ReaderWatch(reader, self._on_change))
        return reader

    def writer(
        self, nsqd_tcp_addresses: str | Sequence[str] | None = None, **overrides: Any
    ) -> Writer:
        """A Writer to ``nsqd_tcp_addresses`` (default ``--destination-nsqd-tcp-address``,
        else ``--nsqd-tcp-address``) with ``--producer-opt`` applied; ``overrides`` are
        Writer keywords that replace them."""
        addresses = (
            nsqd_tcp_addresses
            or self.options.destination_nsqd_tcp_addresses
            or self.options.nsqd_tcp_addresses
        )
        if not addresses:
            raise ConfigError(
                "nsqd_tcp_addresses",
                (),
                "give --destination-nsqd-tcp-address (RXNSQ_DESTINATION_NSQD_TCP_ADDRESSES) "
                "or pass the addresses to ctx.writer()",
            )
        options = {"name": f"worker-{self.process}", **self.options.writer_options(), **overrides}
        writer = Writer(addresses, **options)
        self.writers.append(writer)
        self._writer_watches.append(WriterWatch(writer))
        return writer

    # --- for the worker process --------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """At least one Reader has a connection (or there are no Readers at all)."""
        return not self._reader_watches or any(w.connected for w in self._reader_watches)

    @property
    def closing(self) -> bool:
        return any(reader.is_closing for reader in self.readers)

    def fatal_error(self) -> Exception | None:
        """The error that made a Reader give up for good, once every Reader has closed."""
        if not self._reader_watches or not all(w.closed for w in self._reader_watches):
            return None
        return next((w.fatal for w in self._reader_watches if w.fatal is not None), None)

    @property
    def all_readers_closed(self) -> bool:
        return bool(self._reader_watches) and all(w.closed for w in self._reader_watches)

    def snapshot(self) -> dict[str, Any]:
        return {
            "readers": [watch.snapshot() for watch in self._reader_watches],
            "writers": [watch.snapshot() for watch in self._writer_watches],
        }

    def dispose(self) -> None:
        for reader_watch in self._reader_watches:
            reader_watch.dispose()
        for writer_watch in self._writer_watches:
            writer_watch.dispose()
