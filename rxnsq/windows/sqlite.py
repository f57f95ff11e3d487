"""The embedded store: one SQLite file, in WAL mode, written from a thread of its own.

Each transaction starts with ``BEGIN IMMEDIATE``: it takes the write lock first, so a fold
never reads, then finds another writer got in between (a deferred transaction that read and
then writes fails at once with "database is locked", ignoring the busy timeout). Commits use
``synchronous=FULL`` by default: messages are finished right after the commit, so a commit an
OS crash could undo (``NORMAL`` in WAL mode) would lose them; ``synchronous="NORMAL"`` trades
that for speed (still safe when only the process dies). Calls run on one worker thread so a
commit's fsync never stalls the event loop. WAL works for processes on one host only: for
consumers on several machines use :class:`~rxnsq.windows.postgres.PostgresStore`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, Self, TypeVar

from ..errors import ConfigError
from .assign import Window
from .clock import ClockState
from .plan import Plan, Slot, Snapshot
from .store import Claimed, FoldRequest, StoreSize

__all__ = ["SQLiteStore"]

logger = logging.getLogger(__name__)

R = TypeVar("R")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rxnsq_windows (
    name TEXT NOT NULL, key TEXT NOT NULL, w_start REAL NOT NULL, w_end REAL NOT NULL,
    value BLOB NOT NULL, count INTEGER NOT NULL, owner TEXT, due REAL,
    PRIMARY KEY (name, key, w_start, w_end)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rxnsq_clocks (
    name TEXT NOT NULL, key TEXT NOT NULL, base REAL NOT NULL, since REAL NOT NULL, closed REAL,
    PRIMARY KEY (name, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rxnsq_seen (
    name TEXT NOT NULL, id BLOB NOT NULL, key TEXT NOT NULL, last_end REAL NOT NULL,
    forget_at REAL,
    PRIMARY KEY (name, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rxnsq_seen_by_key ON rxnsq_seen (name, key, last_end)
    WHERE forget_at IS NULL;
CREATE INDEX IF NOT EXISTS rxnsq_seen_retiring ON rxnsq_seen (name, forget_at)
    WHERE forget_at IS NOT NULL;
"""

#: Host parameters per statement kept well under SQLite's limit (32766 since 3.32).
_CHUNK = 900


def _chunks(values: Sequence[R], size: int = _CHUNK) -> list[Sequence[R]]:
    return [values[i : i + size] for i in range(0, len(values), size)] or [values[:0]]


def _closed(value: float | None) -> float:
    return -math.inf if value is None else value


def _nullable(value: float) -> float | None:
    return None if value == -math.inf else value


class _Worker:
    """The store's thread and the one connection only that thread uses."""

    __slots__ = ("db", "executor")

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="rxnsq-sqlite")
        self.db: sqlite3.Connection | None = None


class SQLiteStore:
    """A :class:`~rxnsq.windows.store.Store` in the SQLite file at ``path`` (created if
    missing). ``synchronous``: ``"FULL"`` (default, durable across power loss) or
    ``"NORMAL"`` (durable across process crashes only). ``timeout``: seconds to wait for
    another process's write lock."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        timeout: float = 30.0,
    ) -> None:
        if not isinstance(path, str | os.PathLike):
            raise ConfigError("path", path, "a file path (str or os.PathLike)")
        if synchronous not in ("FULL", "NORMAL"):
            raise ConfigError("synchronous", synchronous, '"FULL" or "NORMAL"')
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise ConfigError("timeout", timeout, "a number of seconds > 0")
        self.path = Path(path)
        self.synchronous = synchronous
        self.timeout = float(timeout)
        self._worker: _Worker | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<SQLiteStore {str(self.path)!r} synchronous={self.synchronous}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- plumbing --------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.executescript(_SCHEMA)
        return db

    async def _run(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        """Run ``fn(connection)`` on the store's thread, inside ``BEGIN IMMEDIATE``/``COMMIT``."""
        with self._lock:
            if self._worker is None:
                self._worker = _Worker()
            worker = self._worker

        def transaction() -> R:
            if worker.db is None:
                worker.db = self._open()
            db = worker.db
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return await asyncio.get_running_loop().run_in_executor(worker.executor, transaction)

    async def close(self) -> None:
        """Close the connection and the thread, after the calls already queued (a later call
        opens a new thread with a new connection: never two threads on one connection)."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is None:
            return

        def shut() -> None:
            if worker.db is not None:
                worker.db.close()
                worker.db = None

        await asyncio.get_running_loop().run_in_executor(worker.executor, shut)
        worker.executor.shutdown(wait=True)

    # --- the Store interface -------------------------------------------------------------

    async def fold(
        self, name: str, request: FoldRequest, planner: Callable[[Snapshot], Plan]
    ) -> Plan:
        def run(db: sqlite3.Connection) -> Plan:
            snapshot = Snapshot()
            keys = list(request.keys)
            for part in _chunks(keys):
                marks = ",".join("?" * len(part))
                for key, base, since, closed in db.execute(
                    f"SELECT key, base, since, closed FROM rxnsq_clocks "
                    f"WHERE name = ? AND key IN ({marks})",
                    (name, *part),
                ):
                    snapshot.clocks[key] = ClockState(base, since, _closed(closed))
                for key, start, end, value, count, owner in db.execute(
                    f"SELECT key, w_start, w_end, value, count, owner FROM rxnsq_windows "
                    f"WHERE name = ? AND key IN ({marks}) AND w_start < ? AND w_end > ?",
                    (name, *part, request.high, request.low),
                ):
                    slot = Slot(value, count, open=owner is None, raw=True)
                    snapshot.windows.setdefault(key, {})[Window(start, end)] = slot
            ids = list(request.ids)
            for some in _chunks(ids):
                marks = ",".join("?" * len(some))
                snapshot.seen.update(
                    row[0]
                    for row in db.execute(
                        f"SELECT id FROM rxnsq_seen WHERE name = ? AND id IN ({marks})",
                        (name, *some),
                    )
                )
            plan = planner(snapshot)
            codec = request.codec
            db.executemany(
                "INSERT INTO rxnsq_clocks (name, key, base, since, closed) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (name, key) DO UPDATE SET base = excluded.base, "
                "since = excluded.since, closed = excluded.closed",
                [(name, k, c.base, c.since, _nullable(c.closed)) for k, c in plan.clocks.items()],
            )
            db.executemany(
                "INSERT INTO rxnsq_windows (name, key, w_start, w_end, value, count) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name, key, w_start, w_end) "
                "DO UPDATE SET value = excluded.value, count = excluded.count",
                [
                    (name, k, w.start, w.end, codec.encode(s.acc) if not s.raw else s.acc, s.count)
                    for (k, w), s in plan.upserts.items()
                ],
            )
            db.executemany(
                "DELETE FROM rxnsq_windows "
                "WHERE name = ? AND key = ? AND w_start = ? AND w_end = ?",
                [(name, k, w.start, w.end) for k, w in plan.deletes],
            )
            db.executemany(
                "INSERT INTO rxnsq_seen (name, id, key, last_end) VALUES (?, ?, ?, ?)",
                [(name, i, k, end) for i, k, end in plan.ids],
            )
            return plan

        return await self._run(run)

    async def claim(
        self,
        name: str,
        *,
        now: float,
        lateness: float,
        idle: float,
        lease: float,
        owner: str,
        limit: int,
    ) -> list[Claimed]:
        def run(db: sqlite3.Connection) -> list[Claimed]:
            rows = db.execute(
                "SELECT w.key, w.w_start, w.w_end, w.value, w.count FROM rxnsq_windows AS w "
                "JOIN rxnsq_clocks AS c ON c.name = w.name AND c.key = w.key "
                "WHERE w.name = ? AND ((w.owner IS NULL "
                "  AND w.w_end + ? <= c.base + max(0.0, ? - c.since - ?)) "
                "  OR (w.owner IS NOT NULL AND w.due <= ?)) "
                "ORDER BY w.w_end, w.key LIMIT ?",
                (name, lateness, now, idle, now, limit),
            ).fetchall()
            db.executemany(
                "UPDATE rxnsq_windows SET owner = ?, due = ? "
                "WHERE name = ? AND key = ? AND w_start = ? AND w_end = ?",
                [(owner, now + lease, name, k, s, e) for k, s, e, _v, _c in rows],
            )
            db.executemany(
                "UPDATE rxnsq_clocks SET closed = max(coalesce(closed, ?), ?) "
                "WHERE name = ? AND key = ?",
                [(e, e, name, k) for k, _s, e, _v, _c in rows],
            )
            return [Claimed(k, Window(s, e), v, c) for k, s, e, v, c in rows]

        return await self._run(run)

    async def renew(
        self, name: str, owner: str, windows: Sequence[tuple[str, Window]], until: float
    ) -> None:
        await self._set_due(name, owner, windows, until)

    async def release(
        self, name: str, owner: str, windows: Sequence[tuple[str, Window]], at: float
    ) -> None:
        await self._set_due(name, owner, windows, at)

    async def _set_due(
        self, name: str, owner: str, windows: Sequence[tuple[str, Window]], due: float
    ) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE rxnsq_windows SET due = ? WHERE name = ? AND key = ? AND w_start = ? "
                "AND w_end = ? AND owner = ?",
                [(due, name, k, w.start, w.end, owner) for k, w in windows],
            )

        await self._run(run)

    async def retire(
        self, name: str, windows: Sequence[tuple[str, Window]], forget_at: float
    ) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.executemany(
                "DELETE FROM rxnsq_windows WHERE name = ? AND key = ? AND w_start = ? "
                "AND w_end = ?",
                [(name, k, w.start, w.end) for k, w in windows],
            )
            db.executemany(
                "UPDATE rxnsq_seen SET forget_at = ? WHERE name = ? AND key = ? "
                "AND last_end <= ? AND forget_at IS NULL",
                [(forget_at, name, k, w.end) for k, w in windows],
            )

        await self._run(run)

    async def sweep(self, name: str, now: float) -> int:
        def run(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "DELETE FROM rxnsq_seen WHERE name = ? AND forget_at IS NOT NULL "
                "AND forget_at <= ?",
                (name, now),
            )
            return cursor.rowcount

        return await self._run(run)

    async def size(self, name: str) -> StoreSize:
        def run(db: sqlite3.Connection) -> StoreSize:
            def one(sql: str) -> int:
                value: int = db.execute(sql, (name,)).fetchone()[0]
                return value

            pages = db.execute("PRAGMA page_count").fetchone()[0]
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
            wal = Path(f"{self.path}-wal")
            return StoreSize(
                windows=one("SELECT count(*) FROM rxnsq_windows WHERE name = ?"),
                keys=one("SELECT count(*) FROM rxnsq_clocks WHERE name = ?"),
                ids=one("SELECT count(*) FROM rxnsq_seen WHERE name = ?"),
                retiring=one(
                    "SELECT count(*) FROM rxnsq_seen WHERE name = ? AND forget_at IS NOT NULL"
                ),
                bytes=pages * page_size + (wal.stat().st_size if wal.exists() else 0),
            )

        return await self._run(run)
