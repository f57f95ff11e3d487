"""The state store interface of the large-window mode, and what travels through it.

A :class:`Store` keeps, per aggregation ``name``: one row per open window (its encoded value
and count; a claim while its result is out), one clock row per key (watermark base, when the
key was last seen, the end of its latest emitted window), and one row per folded message id
(``topic/channel/`` + the id, the key, the end of its last window, and once that window is
retired, when the id may be forgotten).

Every method is one transaction. :meth:`Store.fold` locks the batch's keys, loads what the
batch touches into a :class:`~rxnsq.windows.plan.Snapshot`, runs the pure planner, writes its
changes and commits; only then are the messages finished. :meth:`Store.claim` hands out the
windows that are final, each to one consumer, for ``lease`` seconds (renewed while the result
is out); :meth:`Store.retire` deletes a processed window and starts the retention clock of its
ids; :meth:`Store.sweep` deletes the ids whose retention has passed. Implementations:
:class:`~rxnsq.windows.sqlite.SQLiteStore`, :class:`~rxnsq.windows.postgres.PostgresStore`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .aggregate import Codec
from .assign import Window
from .plan import Plan, Snapshot

__all__ = ["Claimed", "FoldRequest", "Store", "StoreSize", "decode_key", "encode_key", "lock_id"]


@dataclass(frozen=True, slots=True)
class FoldRequest:
    """What a batch touches: its encoded ``keys`` (sorted), the dedupe ``ids``, the event-time
    range ``[low, high)`` its windows lie in, and the ``codec`` of window values."""

    keys: Sequence[str]
    ids: Sequence[bytes]
    low: float
    high: float
    codec: Codec[Any]


@dataclass(frozen=True, slots=True)
class Claimed:
    """A final window handed to this consumer: encoded key, window, encoded value, count."""

    key: str
    window: Window
    value: bytes
    count: int


@dataclass(frozen=True, slots=True)
class StoreSize:
    """Rows an aggregation holds: ``windows`` (open or claimed), ``keys`` (clock rows), ``ids``
    (all folded ids) of which ``retiring`` wait out their retention; ``bytes`` on disk (the
    whole store, when the store can tell)."""

    windows: int
    keys: int
    ids: int
    retiring: int
    bytes: int | None = None


class Store(Protocol):
    """A state store for windowed aggregations (see the module doc). All times are system
    time in seconds since the epoch (``time.time()``), comparable across processes."""

    async def fold(
        self, name: str, request: FoldRequest, planner: Callable[[Snapshot], Plan]
    ) -> Plan:
        """In one transaction: lock ``request.keys``, load their clocks, their windows in
        ``[low, high)`` and which of ``request.ids`` are known; run ``planner``; write the
        plan; commit. Raises (having rolled back) if anything fails."""
        ...

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
        """Claim up to ``limit`` final windows (and windows whose claim expired) for ``owner``
        until ``now + lease``; mark each key's latest emitted window end."""
        ...

    async def renew(
        self, name: str, owner: str, windows: Sequence[tuple[str, Window]], until: float
    ) -> None:
        """Extend ``owner``'s claims on ``windows`` until ``until``."""
        ...

    async def release(
        self, name: str, owner: str, windows: Sequence[tuple[str, Window]], at: float
    ) -> None:
        """Give up claims: the windows may be claimed again from ``at`` on."""
        ...

    async def retire(
        self, name: str, windows: Sequence[tuple[str, Window]], forget_at: float
    ) -> None:
        """Delete processed windows; their ids are forgotten from ``forget_at`` on."""
        ...

    async def sweep(self, name: str, now: float) -> int:
        """Delete ids whose retention has passed; returns how many."""
        ...

    async def size(self, name: str) -> StoreSize:
        """What the aggregation holds now."""
        ...

    async def close(self) -> None:
        """Close connections (the store may be used again: it reconnects)."""
        ...


_SCALARS = (str, int, float, bool, type(None))


def _check_key(key: object) -> None:
    if isinstance(key, tuple):
        for part in key:
            _check_key(part)
    elif not isinstance(key, _SCALARS):
        raise TypeError(
            f"a window key must be a str, int, float, bool, None or a tuple of them, not {key!r}"
        )


def encode_key(key: Hashable) -> str:
    """A key as compact JSON text (tuples as arrays): the same text in every process."""
    _check_key(key)
    return json.dumps(key, separators=(",", ":"), sort_keys=True)


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def decode_key(text: str) -> Hashable:
    """The key back from :func:`encode_key` (arrays become tuples again)."""
    key: Hashable = _tuples(json.loads(text))
    return key


def lock_id(name: str, key: str) -> int:
    """A signed 64-bit number for (aggregation, key): PostgreSQL advisory locks take these."""
    digest = hashlib.blake2b(f"{name}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
