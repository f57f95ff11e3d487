"""Prometheus metrics of the worker, rendered by the supervisor with ``prometheus_client``.

Why this shape: every worker process already counts what it does (the Reader's totals and
hold-time histogram, the Writer's acks), and sends a snapshot to the supervisor every second
over its control socket. The supervisor turns the latest snapshots into metric families at
scrape time (a custom collector on a private registry). So there is no shared directory to
set up before Python starts, no per-pid files piling up, no per-message cost of calling a
metrics library, and per-connection gauges work: prometheus_client's multiprocess mode allows
none of these. OpenTelemetry's Prometheus exporter has no multiprocess support at all (and
depends on prometheus_client itself); its maintainers advise a push per process instead.

Every series has a ``process`` label (the worker process' index, kept across restarts, so
its cardinality is ``--processes``); Reader series add ``topic`` and ``channel``, and
per-connection gauges ``nsqd_address``. A restarted process starts its counters at zero,
which ``rate()`` and ``increase()`` treat as a counter reset.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .._version import __version__

if TYPE_CHECKING:
    from .supervisor import Supervisor

__all__ = ["METRICS", "available", "render"]

#: name (without ``_total``) -> (type, help, snapshot key); Reader-level, labels
#: ``topic``, ``channel``, ``process``.
METRICS: dict[str, tuple[str, str, str]] = {
    "rxnsq_messages_received": ("counter", "Messages nsqd delivered.", "received"),
    "rxnsq_messages_finished": ("counter", "Messages finished (FIN).", "finished"),
    "rxnsq_messages_requeued": ("counter", "Messages requeued (REQ).", "requeued"),
    "rxnsq_messages_given_up": (
        "counter", "Messages given up after max_tries deliveries (and finished).", "given_up"),
    "rxnsq_messages_abandoned": (
        "counter", "Messages nsqd took back after msg_timeout, unsettled.", "abandoned"),
    "rxnsq_pipeline_errors": (
        "counter", "Exceptions user code raised that the Reader caught.", "errors"),
    "rxnsq_connects": ("counter", "nsqd connections made (first ones included).", "connects"),
    "rxnsq_reconnects": ("counter", "Connections made again to an nsqd once lost.", "reconnects"),
    "rxnsq_disconnects": ("counter", "nsqd connections lost.", "disconnects"),
    "rxnsq_connect_failures": ("counter", "Failed connection attempts.", "connect_failures"),
    "rxnsq_max_in_flight": ("gauge", "The Reader's max_in_flight.", "max_in_flight"),
    "rxnsq_backoff_level": ("gauge", "Backoff level (0: not backing off).", "backoff_level"),
}  # fmt: skip


def available() -> bool:
    """Whether prometheus_client is installed (the ``rxnsq[metrics]`` extra)."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class _Collector:
    """Metric families from the supervisor's latest snapshots, built at each scrape."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        sup = self.supervisor
        reader_labels = ["topic", "channel", "process"]
        conn_labels = ["topic", "channel", "nsqd_address", "process"]
        families: dict[str, Any] = {}
        for name, (kind, doc, _key) in METRICS.items():
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            families[name] = cls(name, doc, labels=reader_labels)
        connections = GaugeMetricFamily(
            "rxnsq_connections", "Open nsqd connections of the Reader.", labels=reader_labels
        )
        in_flight = GaugeMetricFamily(
            "rxnsq_messages_in_flight", "Messages delivered and not yet settled.",
            labels=conn_labels,
        )  # fmt: skip
        ready = GaugeMetricFamily("rxnsq_ready", "RDY sent to the nsqd.", labels=conn_labels)
        hold = HistogramMetricFamily(
            "rxnsq_message_processing_seconds",
            "Time from delivery to FIN or REQ: how long the pipeline held a message.",
            labels=reader_labels,
        )
        published = CounterMetricFamily(
            "rxnsq_messages_published", "Messages nsqd confirmed (PUB/MPUB/DPUB).",
            labels=["topic", "process"],
        )  # fmt: skip
        failed = CounterMetricFamily(
            "rxnsq_publish_failures", "Messages whose publish failed, by error type.",
            labels=["topic", "error", "process"],
        )  # fmt: skip
        writer_conns = GaugeMetricFamily(
            "rxnsq_writer_connections", "Open nsqd connections of the Writers.",
            labels=["process"],
        )  # fmt: skip
        up = GaugeMetricFamily("rxnsq_worker_up", "1 while the process runs.", labels=["process"])
        is_ready = GaugeMetricFamily(
            "rxnsq_worker_ready", "1 while the process is ready (see /readyz).", labels=["process"]
        )
        restarts = CounterMetricFamily(
            "rxnsq_worker_restarts", "Times the process was restarted after a crash.",
            labels=["process"],
        )  # fmt: skip
        seen = GaugeMetricFamily(
            "rxnsq_worker_last_report_timestamp_seconds",
            "When the process last reported (its loop was alive then).", labels=["process"],
        )  # fmt: skip
        for slot in sup.slots:
            process = str(slot.index)
            up.add_metric([process], 1 if slot.running else 0)
            is_ready.add_metric([process], 1 if slot.ready else 0)
            restarts.add_metric([process], slot.restarts)
            if slot.last_seen:
                seen.add_metric([process], slot.last_seen)
            state = slot.state if slot.running else None
            if not state:
                continue
            for reader in state.get("readers", []):
                labels = [reader["topic"], reader["channel"], process]
                for name, (_kind, _doc, key) in METRICS.items():
                    families[name].add_metric(labels, reader[key])
                connections.add_metric(labels, len(reader["connections"]))
                for address, conn in sorted(reader["connections"].items()):
                    conn_values = [reader["topic"], reader["channel"], address, process]
                    in_flight.add_metric(conn_values, conn["in_flight"])
                    ready.add_metric(conn_values, conn["rdy"])
                histogram = reader.get("hold_times")
                if histogram is not None:
                    buckets = [(_le(bound), count) for bound, count in histogram["buckets"]]
                    buckets.append(("+Inf", histogram["count"]))
                    hold.add_metric(labels, buckets, histogram["sum"])
            totals: dict[str, int] = {}
            failures: dict[tuple[str, str], int] = {}
            open_writer_conns = 0
            for writer in state.get("writers", []):
                open_writer_conns += writer["connections"]
                for topic, count in writer["published"].items():
                    totals[topic] = totals.get(topic, 0) + count
                for topic, error, count in writer["failed"]:
                    failures[topic, error] = failures.get((topic, error), 0) + count
            for topic, count in sorted(totals.items()):
                published.add_metric([topic, process], count)
            for (topic, error), count in sorted(failures.items()):
                failed.add_metric([topic, error, process], count)
            if state.get("writers"):
                writer_conns.add_metric([process], open_writer_conns)
        processes = GaugeMetricFamily("rxnsq_worker_processes", "Worker processes configured.")
        processes.add_metric([], len(sup.slots))
        info = InfoMetricFamily("rxnsq_worker", "The worker's version and application.")
        info.add_metric([], {"version": __version__, "app": sup.options.app})
        yield from families.values()
        yield from (connections, in_flight, ready, hold, published, failed, writer_conns)
        yield from (up, is_ready, restarts, seen, processes, info)


def _le(bound: float) -> str:
    return repr(float(bound))


def render(supervisor: Supervisor) -> tuple[bytes, str]:
    """The text exposition of every metric, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(supervisor))
    return generate_latest(registry), CONTENT_TYPE_LATEST
