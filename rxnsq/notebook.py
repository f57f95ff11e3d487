"""Helpers that keep notebooks short: HTML views of state, progress bars, DataFrames, plots.

Optional dependencies (``pip install rxnsq[notebook]``: pandas, matplotlib, tqdm) are
imported inside the helper that needs them, so importing this module costs nothing.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import reactivex
from reactivex import operators as rx_ops

__all__ = ["plot_windows", "progress", "reader_html", "windows_frame", "writer_html"]


def _table(title: str, header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<b>{html.escape(title)}</b><table><tr>{head}</tr>{body}</table>"


def reader_html(stats: Mapping[str, Any]) -> str:
    """An HTML table of ``reader.stats()``: one row per nsqd, plus the backoff state."""
    title = (
        f"Reader {stats['topic']}/{stats['channel']}: max_in_flight {stats['max_in_flight']}, "
        f"backoff level {stats['backoff_level']} ({stats['backoff_phase']}), "
        f"given up {stats['given_up']}"
    )
    header = ["nsqd", "state", "rdy", "in flight", "finished", "requeued"]
    rows = [
        [address, c["state"], c["rdy"], c["in_flight"], c["finished"], c["requeued"]]
        for address, c in stats["connections"].items()
    ]
    return _table(title, header, rows)


def writer_html(name: str, connections: Mapping[str, Any], sinks: Iterable[Any]) -> str:
    """An HTML table of a Writer's connections and sinks."""
    rows: list[list[Any]] = [[address, "connected", "", "", ""] for address in connections]
    rows += [[f"sink {s.topic}", "", s.confirmed, s.failed, s.pending] for s in sinks]
    return _table(f"Writer {name}", ["", "state", "confirmed", "failed", "pending"], rows)


def progress(
    total: int | None = None, description: str = "messages", **tqdm_options: Any
) -> Callable[[reactivex.Observable[Any]], reactivex.Observable[Any]]:
    """A pass-through operator that ticks a ``tqdm.auto`` bar (a widget in Jupyter, text in a
    terminal) per item and closes it when the stream ends."""
    from tqdm.auto import tqdm

    def apply(source: reactivex.Observable[Any]) -> reactivex.Observable[Any]:
        def subscribe(observer: Any, scheduler: Any = None) -> Any:
            bar = tqdm(total=total, desc=description, **tqdm_options)
            return source.pipe(
                rx_ops.do_action(
                    on_next=lambda _item: bar.update(),
                    on_error=lambda _exc: bar.close(),
                    on_completed=bar.close,
                ),
                rx_ops.finally_action(bar.close),
            ).subscribe(observer, scheduler=scheduler)

        return reactivex.create(subscribe)

    return apply


def windows_frame(rows: Iterable[Mapping[str, Any]]) -> Any:
    """Per-window records (dicts) as a pandas DataFrame indexed by window number."""
    import pandas as pd

    frame = pd.DataFrame(list(rows))
    if "window" in frame.columns:
        frame = frame.set_index("window")
    return frame


def plot_windows(frame: Any, throughput: str = "throughput", latency: str = "latency_ms") -> Any:
    """Throughput and latency per window, on two stacked axes; returns the Figure."""
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 5))
    frame[throughput].plot(ax=top, marker="o")
    top.set_ylabel("messages / s")
    top.set_title("throughput per window")
    frame[latency].plot(ax=bottom, marker="o", color="tab:orange")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("window")
    figure.tight_layout()
    return figure
