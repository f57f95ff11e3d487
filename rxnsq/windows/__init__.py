"""Keyed, event-time windowed aggregation over NSQ, with effectively-once results.

One idea per module: :mod:`~rxnsq.windows.assign` (tumbling, sliding, session windows),
:mod:`~rxnsq.windows.clock` (event time, watermarks, processing time),
:mod:`~rxnsq.windows.aggregate` (count, fold, reduce, collect), :mod:`~rxnsq.windows.plan`
(the rules: lateness, merging, dedupe, as plain computation), :mod:`~rxnsq.windows.store`
(the store interface) with :mod:`~rxnsq.windows.sqlite` and :mod:`~rxnsq.windows.postgres`,
:mod:`~rxnsq.windows.results` and :mod:`~rxnsq.windows.operator` (what you pipe messages into).

::

    counts = windows.count(
        key=lambda e: e["page"],
        window=windows.tumbling(60),
        clock=windows.event_time(lambda e: e["ts"], delay=5),
        lateness=120,
        store=windows.SQLiteStore("state.db"), name="page-counts",
    )
    reader.messages.pipe(nsq.decode(json.loads), counts, ops.map(write), nsq.settle())
    counts.late.subscribe(lambda late: late.settle())
"""

from .aggregate import (
    Aggregation,
    Codec,
    JsonCodec,
    PickleCodec,
    collector,
    counter,
    folder,
    reducer,
)
from .assign import Session, Sliding, Tumbling, Window, Windower, session, sliding, tumbling
from .clock import ClockState, EventClock, ProcessingClock, event_time, processing_time
from .operator import Windowed, aggregate, collect, count, fold, reduce
from .postgres import PostgresStore
from .results import Late, WindowResult
from .sqlite import SQLiteStore
from .store import Claimed, FoldRequest, Store, StoreSize

__all__ = [
    "Aggregation",
    "Claimed",
    "ClockState",
    "Codec",
    "EventClock",
    "FoldRequest",
    "JsonCodec",
    "Late",
    "PickleCodec",
    "PostgresStore",
    "ProcessingClock",
    "SQLiteStore",
    "Session",
    "Sliding",
    "Store",
    "StoreSize",
    "Tumbling",
    "Window",
    "WindowResult",
    "Windowed",
    "Windower",
    "aggregate",
    "collect",
    "collector",
    "count",
    "counter",
    "event_time",
    "fold",
    "folder",
    "processing_time",
    "reduce",
    "reducer",
    "session",
    "sliding",
    "tumbling",
]
