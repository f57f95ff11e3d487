"""What a window computes: :func:`counter`, :func:`folder`, :func:`reducer`, :func:`collector`.

An :class:`Aggregation` starts a window's value from its first event (``start``), adds each
later event (``add``), and combines two values when session windows merge (``merge``). In the
store mode values are written to the store with a :class:`Codec` (JSON by default, or
:class:`PickleCodec` for any picklable value).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from ..errors import ConfigError

__all__ = [
    "Aggregation",
    "Codec",
    "JsonCodec",
    "PickleCodec",
    "collector",
    "counter",
    "folder",
    "reducer",
]

V = TypeVar("V")
A = TypeVar("A")


class Codec(Protocol[A]):
    """Turns a window's value into bytes for a store, and back."""

    def encode(self, value: A) -> bytes: ...

    def decode(self, data: bytes) -> A: ...


class JsonCodec:
    """JSON (numbers, strings, lists, dicts): readable in the store with any SQL client."""

    def encode(self, value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    def decode(self, data: bytes) -> Any:
        return json.loads(data)


class PickleCodec:
    """pickle: any picklable value (a store is trusted: only your consumers write to it)."""

    def encode(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, data: bytes) -> Any:
        return pickle.loads(data)


class Aggregation(Generic[V, A]):
    """How a window's value is built from its events' values (``V``) into an ``A``."""

    __slots__ = ("_add", "_merge", "_start", "codec", "holds_messages", "kind")

    def __init__(
        self,
        kind: str,
        start: Callable[[V], A],
        add: Callable[[A, V], A],
        merge: Callable[[A, A], A] | None,
        codec: Codec[A] | None,
        *,
        holds_messages: bool = False,
    ) -> None:
        self.kind = kind
        self._start = start
        self._add = add
        self._merge = merge
        self.codec: Codec[A] = codec if codec is not None else JsonCodec()
        self.holds_messages = holds_messages

    def __repr__(self) -> str:
        return f"<Aggregation {self.kind}>"

    @property
    def can_merge(self) -> bool:
        """Whether values can be merged (needed by session windows)."""
        return self._merge is not None

    def start(self, value: V) -> A:
        """The value of a window holding just ``value`` (user code: may raise)."""
        return self._start(value)

    def add(self, acc: A, value: V) -> A:
        """``acc`` with one more event (user code: may raise)."""
        return self._add(acc, value)

    def merge(self, first: A, second: A) -> A:
        """Two windows' values as one (``first`` is the earlier window)."""
        if self._merge is None:
            raise ConfigError("merge", None, f"{self.kind} needs a merge function here")
        return self._merge(first, second)


def _callable(option: str, fn: object, what: str) -> None:
    if not callable(fn):
        raise ConfigError(option, fn, what)


def counter() -> Aggregation[Any, int]:
    """How many events each window holds."""
    return Aggregation("count", lambda _v: 1, lambda acc, _v: acc + 1, lambda a, b: a + b, None)


def folder(
    initial: Callable[[], A],
    fn: Callable[[A, V], A],
    *,
    merge: Callable[[A, A], A] | None = None,
    codec: Codec[A] | None = None,
) -> Aggregation[V, A]:
    """``fn(acc, value)`` over a window's events, from ``initial()`` (a function, so no two
    windows share a mutable start value). ``merge(a, b)`` is needed for session windows.
    Return a new value from ``fn`` (or mutate only where it cannot fail): when ``fn`` raises,
    the event is requeued and the window keeps its value from before."""
    _callable("initial", initial, "a function returning a window's first value")
    _callable("fn", fn, "a function (acc, value) -> acc")
    if merge is not None:
        _callable("merge", merge, "a function (acc, acc) -> acc, or None")
    return Aggregation("fold", lambda v: fn(initial(), v), fn, merge, codec)


def reducer(fn: Callable[[V, V], V], *, codec: Codec[V] | None = None) -> Aggregation[V, V]:
    """``fn(a, b)`` over a window's values (the first value starts it); also merges."""
    _callable("fn", fn, "a function (value, value) -> value")
    return Aggregation("reduce", lambda v: v, fn, fn, codec)


def collector() -> Aggregation[V, list[V]]:
    """The values themselves, in arrival order (small windows only: no store; the result's
    ``messages`` are the messages)."""

    def add(acc: list[V], value: V) -> list[V]:
        acc.append(value)
        return acc

    return Aggregation("collect", lambda v: [v], add, lambda a, b: a + b, None, holds_messages=True)
