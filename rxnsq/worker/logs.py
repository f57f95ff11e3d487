"""Log lines of the worker command: text for people, JSON lines for log shippers.

Every process of ``rxnsq worker`` (the supervisor and each worker process) writes its own
lines to stderr, each written whole (one ``write`` per line), so lines of several processes do
not interleave mid-line. Each line carries who wrote it (``process``: the worker's index, or
``supervisor``; ``pid``) and the structured fields of the event (``event``, ``topic``,
``channel``, ``nsqd_address``, ``message_id``, ``attempts``, ``error``...), given as
``extra=`` to the logging call. Nothing here ever formats an option value, so a secret given
to the worker (``auth_secret``) cannot reach a log line through it.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, TextIO

__all__ = ["FIELDS", "JsonFormatter", "SupersededFilter", "TextFormatter", "setup"]

#: Structured fields a record may carry (``extra=``), in the order they are printed.
FIELDS = (
    "event",
    "topic",
    "channel",
    "nsqd_address",
    "message_id",
    "attempts",
    "stage",
    "error",
    "exit_code",
    "signal",
    "restarts",
    "delay",
    "in_flight",
    "count",
)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS if hasattr(record, name)}


class TextFormatter(logging.Formatter):
    """``2026-01-02 03:04:05,678 INFO [worker 0 pid 42] rxnsq.worker: text key=value...``"""

    def __init__(self, who: str) -> None:
        super().__init__("%(asctime)s %(levelname)s [" + who + "] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        if not fields:
            return text
        head, newline, tail = text.partition("\n")  # keep a traceback below the fields
        pairs = " ".join(f"{key}={_text(value)}" for key, value in fields.items())
        return f"{head} {pairs}{newline}{tail}"


def _text(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c.isspace() or c == '"' for c in text)) else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, ``process``, ``pid``, the record's structured fields and ``traceback``."""

    def __init__(self, process: int | str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "process": self.process,
            "pid": record.process,
        }
        line.update(_fields(record))
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class SupersededFilter(logging.Filter):
    """Drops the Reader's own lines for the events the worker logs itself, with fields
    (caught errors, giving up, failed connects), so each event is one line, not two.

    Records are recognised by the Reader's function that logged them, and a failed connect
    by its error argument, never by their text (the Reader's other warnings in the same
    function, such as max_in_flight above nsqd's max_rdy_count, still show).
    """

    SUPERSEDED = frozenset({"report_error", "_give_up"})

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "rxnsq.reader":
            return True
        if record.funcName in self.SUPERSEDED:
            return False
        args = record.args if isinstance(record.args, tuple) else ()
        failed_connect = bool(args) and isinstance(args[-1], BaseException)
        return not (record.funcName == "_connect" and failed_connect)


class _LineHandler(logging.StreamHandler[TextIO]):
    """Writes each formatted record (newline included) with one ``write`` and flushes."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
            self.flush()
        except RecursionError:  # pragma: no cover - as logging.StreamHandler does
            raise
        except Exception:
            self.handleError(record)


def setup(process: int | str, log_format: str, level: str, stream: TextIO | None = None) -> None:
    """Configure the root logger of this process (the command is the application here).

    ``level`` applies to the worker's own lines and to user code; rxnsq's connection-level
    chatter (``ready``, ``subscribed``, ``closed``...) shows from ``debug`` only, as the
    worker logs those events itself, once, with their fields.
    """
    who = "supervisor" if process == "supervisor" else f"worker {process}"
    handler = _LineHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter(process) if log_format == "json" else TextFormatter(f"{who} pid %(process)d")
    )
    handler.addFilter(SupersededFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    quiet = logging.DEBUG if level == "debug" else logging.WARNING
    for name in ("rxnsq.connection", "rxnsq.lookupd", "rxnsq.writer"):
        logging.getLogger(name).setLevel(max(quiet, root.level))
    logging.captureWarnings(True)
