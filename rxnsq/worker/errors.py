"""Typed failures of the worker command, each with the exit code the command uses for it.

==================  ====  ==============================================================
error               exit  meaning
==================  ====  ==============================================================
``AppImportError``  2     MODULE:FACTORY cannot be imported, has no such attribute, or
                          is not callable (a usage error, like a bad flag)
``FactoryError``    3     the factory raised, or returned something that is neither a
                          disposable, an awaitable nor None
``PipelineError``   1     what the factory built failed while running (its coroutine
                          raised, or a Reader failed for good): the process is restarted
==================  ====  ==============================================================
"""

from __future__ import annotations

__all__ = ["AppImportError", "FactoryError", "PipelineError", "WorkerError"]


class WorkerError(Exception):
    """Root of the worker command's errors; ``exit_code`` is the process' exit status."""

    exit_code = 1


class AppImportError(WorkerError):
    """``MODULE:FACTORY`` could not be resolved to a callable."""

    exit_code = 2


class FactoryError(WorkerError):
    """The factory raised, or returned something the worker cannot run."""

    exit_code = 3


class PipelineError(WorkerError):
    """The running pipeline failed (its coroutine raised, or a Reader failed for good)."""

    exit_code = 1
