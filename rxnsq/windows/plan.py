"""The windowing rules in one place, as plain computation on state: no IO, no timers.

:func:`plan` takes a batch of events and the state they touch (a :class:`Snapshot`: the keys'
clocks, their windows, the ids already folded) and decides, event by event, whether it is a
duplicate, late, folded into its windows (merging sessions), or failed (user code raised). It
updates the snapshot and records the changes (a :class:`Plan`) that a store then writes in the
same transaction. The small-window mode keeps one snapshot in memory for good; a store loads a
fresh one per transaction under its lock, so several consumers can share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from .aggregate import Aggregation, Codec
from .assign import Window, Windower, merge_sessions
from .clock import NEVER, ClockState, observe, watermark

__all__ = ["Item", "Outcome", "Plan", "Slot", "Snapshot", "Spec", "closable", "due_windows", "plan"]

V = TypeVar("V")


@dataclass(slots=True)
class Item(Generic[V]):
    """One event to place: its encoded ``key``, event time ``ts``, ``value``, the windows the
    windower assigned, and its dedupe id (``topic/channel/`` + message id; None: no dedupe)."""

    key: str
    ts: float
    value: V
    windows: list[Window]
    dedupe: bytes | None = None


@dataclass(slots=True)
class Slot:
    """One window's state: its value (still encoded while ``raw``), how many events it holds,
    and whether it is open (a claimed window, whose result is out, is not)."""

    acc: Any
    count: int
    open: bool = True
    raw: bool = False


@dataclass(slots=True)
class Snapshot:
    """The state a batch may touch: clocks and windows by encoded key, ids already seen."""

    clocks: dict[str, ClockState] = field(default_factory=dict)
    windows: dict[str, dict[Window, Slot]] = field(default_factory=dict)
    seen: set[bytes] = field(default_factory=set)


@dataclass(slots=True)
class Outcome:
    """What became of one event. ``folded``: into ``windows``; ``duplicate``: its id was
    already folded; ``late``: ``windows`` are its windows, ``missed`` those already closed;
    ``failed``: user code raised ``error``."""

    kind: Literal["folded", "duplicate", "late", "failed"]
    windows: list[Window]
    watermark: float
    missed: list[Window] = field(default_factory=list)
    error: BaseException | None = None


@dataclass(slots=True)
class Plan:
    """A batch's outcomes (in input order) and the changes to write."""

    outcomes: list[Outcome] = field(default_factory=list)
    clocks: dict[str, ClockState] = field(default_factory=dict)
    upserts: dict[tuple[str, Window], Slot] = field(default_factory=dict)
    deletes: set[tuple[str, Window]] = field(default_factory=set)
    ids: list[tuple[bytes, str, float]] = field(default_factory=list)
    merged: list[tuple[str, Window, Window]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Spec:
    """The windowing configuration :func:`plan` applies."""

    windower: Windower
    aggregation: Aggregation[Any, Any]
    lateness: float
    delay: float
    idle: float


def closable(window: Window, state: ClockState | None, now: float, spec: Spec) -> bool:
    """Whether ``window`` is final: the key's watermark has passed its end plus the lateness."""
    return window.end + spec.lateness <= watermark(state, now, spec.idle)


def _value(slot: Slot, codec: Codec[Any] | None) -> Any:
    if slot.raw:
        if codec is None:
            raise TypeError("an encoded window value needs a codec")
        slot.acc, slot.raw = codec.decode(slot.acc), False
    return slot.acc


def plan(
    items: Sequence[Item[Any]],
    snapshot: Snapshot,
    spec: Spec,
    now: float,
    codec: Codec[Any] | None = None,
) -> Plan:
    """Place ``items`` (in order) into ``snapshot`` at system time ``now``; see the module doc.

    An event is late when any window it would join is final (its end plus the lateness is at
    or below the key's watermark), already emitted (at or before the key's ``closed`` mark), or
    claimed: it then joins none of them, so every event is either wholly in its windows or on
    the late stream.
    """
    result = Plan()
    aggregation = spec.aggregation
    merging = spec.windower.merging
    for item in items:
        key = item.key
        state = snapshot.clocks.get(key)
        mark = watermark(state, now, spec.idle)
        if item.dedupe is not None and item.dedupe in snapshot.seen:
            result.outcomes.append(Outcome("duplicate", item.windows, mark))
            continue
        closed = state.closed if state is not None else NEVER
        slots = snapshot.windows.setdefault(key, {})

        def final(window: Window, mark: float = mark, closed: float = closed) -> bool:
            return window.end + spec.lateness <= mark or window.end <= closed

        absorbed: list[Window] = []
        if merging:
            proto = item.windows[0]
            touching = [w for w in slots if w.overlaps(proto)]
            missed = [w for w in touching if not slots[w].open]
            target, absorbed = merge_sessions(touching, proto)
            if not missed and final(target):
                missed = [target]
            targets = [target]
        else:
            targets = item.windows
            missed = [w for w in targets if final(w) or (w in slots and not slots[w].open)]
        if missed:
            result.outcomes.append(Outcome("late", item.windows, mark, missed))
            continue
        try:
            if merging:
                acc: Any = None
                count = 0
                for window in absorbed:
                    slot = slots[window]
                    value = _value(slot, codec)
                    acc = value if count == 0 else aggregation.merge(acc, value)
                    count += slot.count
                acc = (
                    aggregation.start(item.value)
                    if count == 0
                    else aggregation.add(acc, item.value)
                )
                updates = {targets[0]: Slot(acc, count + 1)}
            else:
                updates = {}
                for window in targets:
                    current = slots.get(window)
                    if current is None:
                        updates[window] = Slot(aggregation.start(item.value), 1)
                    else:
                        updates[window] = Slot(
                            aggregation.add(_value(current, codec), item.value), current.count + 1
                        )
        except Exception as exc:
            result.outcomes.append(Outcome("failed", item.windows, mark, error=exc))
            continue
        for window in absorbed:
            if window not in updates:
                del slots[window]
                result.upserts.pop((key, window), None)
                result.deletes.add((key, window))
                result.merged.append((key, window, targets[0]))
        for window, slot in updates.items():
            slots[window] = slot
            result.upserts[(key, window)] = slot
            result.deletes.discard((key, window))
        clock = observe(state, item.ts, now, spec.delay, spec.idle)
        snapshot.clocks[key] = result.clocks[key] = clock
        if item.dedupe is not None:
            snapshot.seen.add(item.dedupe)
            last_end = max(w.end for w in targets)
            result.ids.append((item.dedupe, key, last_end))
        result.outcomes.append(Outcome("folded", targets, mark))
    return result


def due_windows(snapshot: Snapshot, now: float, spec: Spec) -> list[tuple[str, Window]]:
    """The open windows of ``snapshot`` that are final at ``now``, oldest end first."""
    due = []
    for key in snapshot.windows:
        state = snapshot.clocks.get(key)
        for window, slot in snapshot.windows.get(key, {}).items():
            if slot.open and closable(window, state, now, spec):
                due.append((key, window))
    due.sort(key=lambda kw: (kw[1].end, kw[1].start, kw[0]))
    return due
