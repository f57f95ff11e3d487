"""``rxnsq worker``: run a pipeline in several processes, with metrics, probes and a drain.

One idea per module: :mod:`.options` (flags and ``RXNSQ_*`` variables), :mod:`.app` (finding
and calling ``MODULE:FACTORY``), :mod:`.context` (what the factory gets), :mod:`.watch`
(event lines and counters per Reader/Writer), :mod:`.child` (one worker process),
:mod:`.control` (the socket between a process and its supervisor), :mod:`.supervisor`
(starting, restarting and stopping processes), :mod:`.metrics` (Prometheus), :mod:`.http`
(``/metrics``, ``/healthz``, ``/readyz``), :mod:`.logs` (text and JSON lines),
typed failures and their exit codes are in :mod:`rxnsq.errors` (``WorkerError``). The command is
:mod:`rxnsq.cli.worker`; see ``docs/worker.md``.
"""

from ..errors import AppImportError, FactoryError, PipelineError, WorkerError
from .context import WorkerContext
from .options import WorkerOptions

__all__ = [
    "AppImportError",
    "FactoryError",
    "PipelineError",
    "WorkerContext",
    "WorkerError",
    "WorkerOptions",
]
