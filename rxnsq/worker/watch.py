"""What a worker process knows about its Readers and Writers: event lines and counters.

A :class:`ReaderWatch` listens to a Reader's ``events`` and ``errors`` streams (its public
API): it logs one line per event that matters, with its fields, and counts what the Reader
does not count itself (reconnects, disconnects, failed connects). A :class:`WriterWatch`
counts a Writer's confirmed and failed messages from its ``acks``. Both give a JSON-able
``snapshot()``, which the worker process sends to the supervisor for the metrics.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..errors import FATAL_CONNECT_ERRORS
from ..reader import CaughtError, Reader, ReaderEvent
from ..writer import PublishAck, Writer

__all__ = ["ReaderWatch", "WriterWatch"]

logger = logging.getLogger("rxnsq.worker")

#: Seconds between two "publishes failed" lines of one writer.
_PUBLISH_FAILURE_LINE_INTERVAL = 10.0


class ReaderWatch:
    """Logs and counts what happens to one Reader; ``on_change`` is called when readiness
    may have changed (a connection came or went, the reader began closing or closed)."""

    def __init__(self, reader: Reader, on_change: Callable[[], None]) -> None:
        self.reader = reader
        self.on_change = on_change
        self.reconnects = 0
        self.disconnects = 0
        self.connect_failures = 0
        self.closed = False
        #: The error that made the Reader give up for good (AUTH refused, wrong port...).
        self.fatal: Exception | None = None
        self._seen: set[str] = set()
        self._failing: set[str] = set()
        self._fields = {"topic": reader.topic, "channel": reader.channel}
        self._subscriptions = [
            reader.events.subscribe(self._on_event),
            reader.errors.subscribe(self._on_error),
        ]

    def _log(self, level: int, text: str, event: str, **fields: Any) -> None:
        logger.log(level, text, extra={"event": event, **self._fields, **fields})

    def _on_event(self, event: ReaderEvent) -> None:
        kind, address = event.kind, event.address
        if kind == "connected":
            if address in self._seen:
                self.reconnects += 1
            self._seen.add(address)
            self._failing.discard(address)
            self._log(logging.INFO, "connected", kind, nsqd_address=address)
            self.on_change()
        elif kind == "disconnected":
            self.disconnects += 1
            self._log(logging.WARNING, "disconnected", kind, nsqd_address=address,
                      error=_describe(event.detail))  # fmt: skip
            self.on_change()
        elif kind == "connect_failed":
            self.connect_failures += 1
            fatal = isinstance(event.detail, FATAL_CONNECT_ERRORS)
            if fatal:
                self.fatal = event.detail
            first = address not in self._failing
            self._failing.add(address)
            level = logging.ERROR if fatal or first else logging.WARNING
            self._log(level, "cannot connect", kind, nsqd_address=address,
                      error=_describe(event.detail))  # fmt: skip
        elif kind == "vanished":
            self._log(logging.INFO, "no longer listed by nsqlookupd", kind, nsqd_address=address)
        elif kind in ("giving_up", "abandoned") and event.message is not None:
            message = event.message
            text = "giving up" if kind == "giving_up" else "abandoned: nsqd took it back"
            self._log(logging.WARNING, text, kind, nsqd_address=address,
                      message_id=message.id.decode(errors="replace"),
                      attempts=message.attempts)  # fmt: skip
        elif kind == "closing":
            self._log(logging.INFO, "draining", "drain",
                      in_flight=self.reader.stats()["in_flight"])  # fmt: skip
            self.on_change()
        elif kind == "closed":
            self.closed = True
            self._log(logging.INFO, "closed", kind)
            self.on_change()

    def _on_error(self, caught: CaughtError) -> None:
        fields: dict[str, Any] = {"stage": caught.stage, "error": _describe(caught.error)}
        if caught.message is not None:
            fields["message_id"] = caught.message.id.decode(errors="replace")
            fields["attempts"] = caught.message.attempts
        if caught.address:
            fields["nsqd_address"] = caught.address
        logger.error(
            "%s raised", caught.stage, exc_info=caught.error,
            extra={"event": "caught_error", **self._fields, **fields},
        )  # fmt: skip

    @property
    def connected(self) -> bool:
        return bool(self.reader.connections)

    def snapshot(self) -> dict[str, Any]:
        stats = self.reader.stats()
        hold = self.reader.hold_times
        return {
            "topic": stats["topic"],
            "channel": stats["channel"],
            "max_in_flight": stats["max_in_flight"],
            "backoff_level": stats["backoff_level"],
            "received": stats["received"],
            "finished": stats["finished"],
            "requeued": stats["requeued"],
            "given_up": stats["given_up"],
            "abandoned": stats["abandoned"],
            "errors": stats["errors"],
            "connects": stats["connects"],
            "reconnects": self.reconnects,
            "disconnects": self.disconnects,
            "connect_failures": self.connect_failures,
            "connections": {
                address: {"rdy": conn["rdy"], "in_flight": conn["in_flight"]}
                for address, conn in stats["connections"].items()
            },
            "hold_times": None
            if hold is None
            else {"buckets": hold.cumulative()[:-1], "sum": hold.sum, "count": hold.count},
        }

    def dispose(self) -> None:
        for subscription in self._subscriptions:
            subscription.dispose()


class WriterWatch:
    """Counts one Writer's messages confirmed and failed (by topic and error type)."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.published: Counter[str] = Counter()
        self.failed: Counter[tuple[str, str]] = Counter()
        self._line_at: float | None = None
        self._unreported = 0
        self._subscription = writer.acks.subscribe(self._on_ack)

    def _on_ack(self, ack: PublishAck) -> None:
        if ack.ok:
            self.published[ack.topic] += ack.count
            return
        error = type(ack.error).__name__ if ack.error is not None else "Error"
        self.failed[ack.topic, error] += ack.count
        self._unreported += ack.count
        now = time.monotonic()
        if self._line_at is None or now - self._line_at >= _PUBLISH_FAILURE_LINE_INTERVAL:
            logger.warning(
                "publishes failed", extra={
                    "event": "publish_failed", "topic": ack.topic, "count": self._unreported,
                    "nsqd_address": ack.address, "error": _describe(ack.error),
                },
            )  # fmt: skip
            self._line_at, self._unreported = now, 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "connections": len(self.writer.connections),
            "published": dict(self.published),
            "failed": [[topic, error, count] for (topic, error), count in self.failed.items()],
        }

    def dispose(self) -> None:
        self._subscription.dispose()


def _describe(error: object) -> str:
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return "" if error is None else str(error)
