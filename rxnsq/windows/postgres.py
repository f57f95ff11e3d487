"""The shared store: PostgreSQL, for consumers in several processes or on several machines.

NSQ spreads a channel's messages over all its consumers, so one key's events reach several
processes; their windows meet here. Each transaction first takes a transaction-scoped advisory
lock per key of the batch (``pg_advisory_xact_lock``, in sorted order, so two consumers never
deadlock, and it works for keys that have no row yet), then reads and writes under it: a fold
and a claim of the same key never interleave, and one redelivered id cannot be folded twice
(the same message always has the same key). Read Committed is enough under those locks.

Driver: asyncpg (the ``postgres`` extra: ``pip install rxnsq[postgres]``). It speaks the
protocol natively on asyncio (no libpq, no thread), is the faster of the two asyncio drivers,
and is Apache-2.0 licensed; a batch travels as arrays (``unnest``) in a few round trips.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from typing import Any, Self

from ..errors import ConfigError
from .assign import Window
from .clock import ClockState
from .plan import Plan, Slot, Snapshot
from .store import Claimed, FoldRequest, StoreSize, lock_id

__all__ = ["PostgresStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rxnsq_windows (
    name text NOT NULL, key text NOT NULL, w_start float8 NOT NULL, w_end float8 NOT NULL,
    value bytea NOT NULL, count bigint NOT NULL, owner text, due float8,
    PRIMARY KEY (name, key, w_start, w_end)
);
CREATE TABLE IF NOT EXISTS rxnsq_clocks (
    name text NOT NULL, key text NOT NULL, base float8 NOT NULL, since float8 NOT NULL,
    closed float8, PRIMARY KEY (name, key)
);
CREATE TABLE IF NOT EXISTS rxnsq_seen (
    name text NOT NULL, id bytea NOT NULL, key text NOT NULL, last_end float8 NOT NULL,
    forget_at float8, PRIMARY KEY (name, id)
);
CREATE INDEX IF NOT EXISTS rxnsq_seen_by_key ON rxnsq_seen (name, key, last_end)
    WHERE forget_at IS NULL;
CREATE INDEX IF NOT EXISTS rxnsq_seen_retiring ON rxnsq_seen (name, forget_at)
    WHERE forget_at IS NOT NULL;
"""

_LOCK = "SELECT count(pg_advisory_xact_lock(x)) FROM unnest($1::bigint[]) AS x"


def _closed(value: float | None) -> float:
    return -math.inf if value is None else value


def _nullable(value: float) -> float | None:
    return None if value == -math.inf else value


def _locks(name: str, keys: Sequence[str]) -> list[int]:
    return sorted({lock_id(name, key) for key in keys})


class PostgresStore:
    """A :class:`~rxnsq.windows.store.Store` in PostgreSQL at ``dsn``
    (``postgresql://user@host:port/db``); ``pool_size``: connections at most (each
    subscription uses one at a time). Tables are created on first use."""

    def __init__(self, dsn: str, *, pool_size: int = 4) -> None:
        if not isinstance(dsn, str) or not dsn:
            raise ConfigError("dsn", dsn, "a PostgreSQL connection string")
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 1:
            raise ConfigError("pool_size", pool_size, "an int >= 1")
        try:
            import asyncpg
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigError(
                "store", "PostgresStore", "needs asyncpg: pip install 'rxnsq[postgres]'"
            ) from exc
        self._asyncpg: Any = asyncpg
        self.dsn = dsn
        self.pool_size = pool_size
        self._pool: Any = None
        # one opening at a time: concurrent first uses share one pool, and a close waits for
        # an opening under way (else the pool it makes would never be closed)
        self._opening = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<PostgresStore pool_size={self.pool_size}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _connection_pool(self) -> Any:
        pool = self._pool
        if pool is not None:
            return pool
        async with self._opening:
            if self._pool is None:
                self._pool = await self._open_pool()
            return self._pool

    async def _open_pool(self) -> Any:
        pool = await self._asyncpg.create_pool(
            self.dsn, min_size=1, max_size=self.pool_size, command_timeout=60
        )
        try:
            async with pool.acquire() as conn:
                await conn.execute("SELECT pg_advisory_lock(7346239)")  # one schema creator
                try:
                    await conn.execute(_SCHEMA)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock(7346239)")
        except BaseException:
            await pool.close()
            raise
        return pool

    async def close(self) -> None:
        """Close the pool (a later call opens it again)."""
        async with self._opening:
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # --- the Store interface -------------------------------------------------------------

    async def fold(
        self, name: str, request: FoldRequest, planner: Callable[[Snapshot], Plan]
    ) -> Plan:
        pool = await self._connection_pool()
        keys = list(request.keys)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(_LOCK, _locks(name, keys))
            snapshot = Snapshot()
            for row in await conn.fetch(
                "SELECT key, base, since, closed FROM rxnsq_clocks "
                "WHERE name = $1 AND key = ANY($2::text[])",
                name, keys,
            ):  # fmt: skip
                snapshot.clocks[row[0]] = ClockState(row[1], row[2], _closed(row[3]))
            for row in await conn.fetch(
                "SELECT key, w_start, w_end, value, count, owner FROM rxnsq_windows "
                "WHERE name = $1 AND key = ANY($2::text[]) AND w_start < $3 AND w_end > $4",
                name, keys, request.high, request.low,
            ):  # fmt: skip
                slot = Slot(bytes(row[3]), row[4], open=row[5] is None, raw=True)
                snapshot.windows.setdefault(row[0], {})[Window(row[1], row[2])] = slot
            if request.ids:
                found = await conn.fetch(
                    "SELECT id FROM rxnsq_seen WHERE name = $1 AND id = ANY($2::bytea[])",
                    name, list(request.ids),
                )  # fmt: skip
                snapshot.seen.update(bytes(row[0]) for row in found)
            plan = planner(snapshot)
            codec = request.codec
            if plan.clocks:
                clocks = list(plan.clocks.items())
                await conn.execute(
                    "INSERT INTO rxnsq_clocks (name, key, base, since, closed) "
                    "SELECT $1, * FROM unnest($2::text[], $3::float8[], $4::float8[], "
                    "$5::float8[]) ON CONFLICT (name, key) DO UPDATE SET base = EXCLUDED.base, "
                    "since = EXCLUDED.since, closed = EXCLUDED.closed",
                    name, [k for k, _ in clocks], [c.base for _, c in clocks],
                    [c.since for _, c in clocks], [_nullable(c.closed) for _, c in clocks],
                )  # fmt: skip
            if plan.deletes:
                deletes = list(plan.deletes)
                await conn.execute(
                    "DELETE FROM rxnsq_windows AS w USING unnest($2::text[], $3::float8[], "
                    "$4::float8[]) AS d(key, w_start, w_end) WHERE w.name = $1 "
                    "AND w.key = d.key AND w.w_start = d.w_start AND w.w_end = d.w_end",
                    name, [k for k, _ in deletes], [w.start for _, w in deletes],
                    [w.end for _, w in deletes],
                )  # fmt: skip
            if plan.upserts:
                upserts = list(plan.upserts.items())
                await conn.execute(
                    "INSERT INTO rxnsq_windows (name, key, w_start, w_end, value, count) "
                    "SELECT $1, * FROM unnest($2::text[], $3::float8[], $4::float8[], "
                    "$5::bytea[], $6::bigint[]) ON CONFLICT (name, key, w_start, w_end) "
                    "DO UPDATE SET value = EXCLUDED.value, count = EXCLUDED.count",
                    name, [k for (k, _w), _s in upserts], [w.start for (_k, w), _s in upserts],
                    [w.end for (_k, w), _s in upserts],
                    [s.acc if s.raw else codec.encode(s.acc) for _kw, s in upserts],
                    [s.count for _kw, s in upserts],
                )  # fmt: skip
            if plan.ids:
                await conn.execute(
                    "INSERT INTO rxnsq_seen (name, id, key, last_end) "
                    "SELECT $1, * FROM unnest($2::bytea[], $3::text[], $4::float8[])",
                    name, [i for i, _k, _e in plan.ids], [k for _i, k, _e in plan.ids],
                    [e for _i, _k, e in plan.ids],
                )  # fmt: skip
        return plan

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
        pool = await self._connection_pool()
        due = (
            "FROM rxnsq_windows AS w JOIN rxnsq_clocks AS c ON c.name = w.name AND c.key = w.key "
            "WHERE w.name = $1 AND ((w.owner IS NULL "
            "  AND w.w_end + $2 <= c.base + greatest(0, $3 - c.since - $4)) "
            "  OR (w.owner IS NOT NULL AND w.due <= $3))"
        )
        async with pool.acquire() as conn:
            candidates = await conn.fetch(f"SELECT DISTINCT w.key {due}", name, lateness, now, idle)
            if not candidates:
                return []
            keys = [row[0] for row in candidates]
            async with conn.transaction():
                await conn.execute(_LOCK, _locks(name, keys))
                rows = await conn.fetch(
                    f"SELECT w.key, w.w_start, w.w_end, w.value, w.count {due} "
                    "AND w.key = ANY($6::text[]) ORDER BY w.w_end, w.key LIMIT $5",
                    name, lateness, now, idle, limit, keys,
                )  # fmt: skip
                if rows:
                    await conn.execute(
                        "UPDATE rxnsq_windows AS w SET owner = $2, due = $3 FROM unnest("
                        "$4::text[], $5::float8[], $6::float8[]) AS d(key, w_start, w_end) "
                        "WHERE w.name = $1 AND w.key = d.key AND w.w_start = d.w_start "
                        "AND w.w_end = d.w_end",
                        name, owner, now + lease, [r[0] for r in rows], [r[1] for r in rows],
                        [r[2] for r in rows],
                    )  # fmt: skip
                    await conn.execute(
                        "UPDATE rxnsq_clocks AS c SET closed = greatest(c.closed, d.w_end) "
                        "FROM (SELECT key, max(w_end) AS w_end FROM unnest($2::text[], "
                        "$3::float8[]) AS u(key, w_end) GROUP BY key) AS d "
                        "WHERE c.name = $1 AND c.key = d.key",
                        name, [r[0] for r in rows], [r[2] for r in rows],
                    )  # fmt: skip
        return [Claimed(r[0], Window(r[1], r[2]), bytes(r[3]), r[4]) for r in rows]

    async def _set_due(
        self, name: str, owner: str, windows: Sequence[tuple[str, Window]], due: float
    ) -> None:
        if not windows:
            return
        pool = await self._connection_pool()
        async with pool.acquire() as conn:
            await conn.execute(
                "UPDATE rxnsq_windows AS w SET due = $3 FROM unnest($4::text[], $5::float8[], "
                "$6::float8[]) AS d(key, w_start, w_end) WHERE w.name = $1 AND w.owner = $2 "
                "AND w.key = d.key AND w.w_start = d.w_start AND w.w_end = d.w_end",
                name, owner, due, [k for k, _ in windows], [w.start for _, w in windows],
                [w.end for _, w in windows],
            )  # fmt: skip

    async def renew(
        self, name: str, owner: str, windows: Sequence[tuple[str, Window]], until: float
    ) -> None:
        await self._set_due(name, owner, windows, until)

    async def release(
        self, name: str, owner: str, windows: Sequence[tuple[str, Window]], at: float
    ) -> None:
        await self._set_due(name, owner, windows, at)

    async def retire(
        self, name: str, windows: Sequence[tuple[str, Window]], forget_at: float
    ) -> None:
        if not windows:
            return
        pool = await self._connection_pool()
        keys = [k for k, _ in windows]
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM rxnsq_windows AS w USING unnest($2::text[], $3::float8[], "
                "$4::float8[]) AS d(key, w_start, w_end) WHERE w.name = $1 AND w.key = d.key "
                "AND w.w_start = d.w_start AND w.w_end = d.w_end",
                name, keys, [w.start for _, w in windows], [w.end for _, w in windows],
            )  # fmt: skip
            await conn.execute(
                "UPDATE rxnsq_seen AS s SET forget_at = $2 FROM (SELECT key, max(w_end) AS "
                "w_end FROM unnest($3::text[], $4::float8[]) AS u(key, w_end) GROUP BY key) "
                "AS d WHERE s.name = $1 AND s.key = d.key AND s.last_end <= d.w_end "
                "AND s.forget_at IS NULL",
                name, forget_at, keys, [w.end for _, w in windows],
            )  # fmt: skip

    async def sweep(self, name: str, now: float) -> int:
        pool = await self._connection_pool()
        async with pool.acquire() as conn:
            status: str = await conn.execute(
                "DELETE FROM rxnsq_seen WHERE name = $1 AND forget_at IS NOT NULL "
                "AND forget_at <= $2",
                name, now,
            )  # fmt: skip
        return int(status.rsplit(" ", 1)[-1])

    async def size(self, name: str) -> StoreSize:
        pool = await self._connection_pool()
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM rxnsq_windows WHERE name = $1), "
                "(SELECT count(*) FROM rxnsq_clocks WHERE name = $1), "
                "(SELECT count(*) FROM rxnsq_seen WHERE name = $1), "
                "(SELECT count(*) FROM rxnsq_seen WHERE name = $1 AND forget_at IS NOT NULL), "
                "pg_total_relation_size('rxnsq_windows') + pg_total_relation_size('rxnsq_clocks')"
                " + pg_total_relation_size('rxnsq_seen')",
                name,
            )
        return StoreSize(row[0], row[1], row[2], row[3], row[4])
