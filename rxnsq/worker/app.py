"""Finding the user's factory (``MODULE:FACTORY``) and calling it.

The factory contract: ``factory(ctx)`` is called once in each worker process, on that
process' running loop, with a :class:`~rxnsq.worker.context.WorkerContext`. It returns one of

* a disposable (what ``observable.subscribe(...)`` returns): the pipeline runs until the
  worker stops; it is disposed after the drain;
* an awaitable (an ``async def`` factory, or a coroutine it returns): run as the process'
  main task; returning ends the process cleanly (it is not restarted), raising is a crash;
* None: the factory subscribed what it built itself; the process runs until stopped.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from reactivex import abc

from ..errors import AppImportError, FactoryError

__all__ = ["Started", "load_factory", "start_factory"]

#: What a factory may return, checked: a disposable, an awaitable, or None.
Started = abc.DisposableBase | Awaitable[Any] | None


def load_factory(spec: str, app_dir: str = ".") -> Callable[..., Any]:
    """Import ``module`` and return ``module.attr`` (dotted attributes allowed), with
    ``app_dir`` first on ``sys.path``. Raises :class:`AppImportError` saying what failed."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise AppImportError(f"{spec!r} is not MODULE:FACTORY (e.g. myapp.pipelines:build)")
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise AppImportError(
                f"cannot import {module_name!r}: no module named {exc.name!r} "
                f"(looked in {path} and sys.path; --app-dir sets where to look)"
            ) from exc
        raise AppImportError(f"importing {module_name!r} failed: {exc!r}") from exc
    except Exception as exc:
        raise AppImportError(f"importing {module_name!r} failed: {exc!r}") from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AppImportError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(target):
        raise AppImportError(f"{spec} is a {type(target).__name__}, not a callable factory(ctx)")
    return target  # type: ignore[no-any-return]


def start_factory(factory: Callable[..., Any], ctx: object, spec: str) -> Started:
    """Call ``factory(ctx)`` and check what it returned. Raises :class:`FactoryError`."""
    try:
        result = factory(ctx)
    except Exception as exc:
        raise FactoryError(f"the factory {spec} raised {exc!r}") from exc
    if result is None or isinstance(result, abc.DisposableBase) or inspect.isawaitable(result):
        return result
    if callable(getattr(result, "dispose", None)):
        return result  # type: ignore[no-any-return]  # a disposable of another kind
    raise FactoryError(
        f"the factory {spec} returned {result!r}: expected a disposable (what subscribe() "
        "returns), an awaitable (async def) or None"
    )
