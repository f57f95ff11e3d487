"""pynsq's deprecated ``LegacyReader``: one Reader per task on ``channel.task``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from .reader import Reader

__all__ = ["LegacyReader"]

#: pynsq's positional order (pynsq lost two commas here, so positional use was broken).
_POSITIONAL = (
    "all_tasks",
    "topic",
    "channel",
    "nsqd_tcp_addresses",
    "lookupd_http_addresses",
    "max_tries",
    "max_in_flight",
    "requeue_delay",
    "lookupd_poll_interval",
    "preprocess_method",
    "validate_method",
)


class LegacyReader:
    """Deprecated: ``LegacyReader(all_tasks={name: handler}, topic=..., channel=...)``.

    With several tasks each gets its own Reader on channel ``<channel>.<task>``; with one,
    the channel is used as is. ``preprocess_method``/``validate_method`` become the hooks.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warnings.warn(
            "LegacyReader is deprecated; use Reader with a message_handler",
            DeprecationWarning,
            stacklevel=2,
        )
        if len(args) > len(_POSITIONAL):
            raise TypeError(f"LegacyReader takes at most {len(_POSITIONAL)} positional arguments")
        for name, value in zip(_POSITIONAL, args, strict=False):
            if name in kwargs:
                raise TypeError(f"LegacyReader got two values for {name!r}")
            kwargs[name] = value
        all_tasks: dict[str, Callable[..., Any]] = kwargs.pop("all_tasks")
        topic: str = kwargs.pop("topic")
        channel: str = kwargs.pop("channel")
        preprocess = kwargs.pop("preprocess_method", None)
        validate = kwargs.pop("validate_method", None)
        if not all_tasks:
            raise ValueError("all_tasks must name at least one task")
        self.readers: list[Reader] = []
        for task, handler in all_tasks.items():
            task_channel = channel if len(all_tasks) == 1 else f"{channel}.{task}"
            reader = Reader(topic, task_channel, message_handler=handler, **kwargs)
            if preprocess is not None:
                reader.preprocess_message = preprocess  # type: ignore[method-assign]
            if validate is not None:
                reader.validate_message = validate  # type: ignore[method-assign]
            self.readers.append(reader)

    def close(self) -> None:
        for reader in self.readers:
            reader.close()
