"""pynsq's AsyncConn keyword arguments as rxnsq connection options."""

from __future__ import annotations

from typing import Any

__all__ = ["connection_options"]

_SAME = {
    "heartbeat_interval",
    "tls_v1",
    "tls_options",
    "snappy",
    "deflate",
    "deflate_level",
    "user_agent",
    "sample_rate",
    "auth_secret",
    "msg_timeout",
    "hostname",
    "client_id",
}


def connection_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """``(rxnsq connection options, requeue_delay)`` from pynsq's keyword arguments.

    Units follow pynsq: ``heartbeat_interval`` and ``msg_timeout`` in seconds,
    ``output_buffer_timeout`` in ms; 0 for the output buffer values means nsqd's default.
    ``timeout`` becomes the connect timeout (pynsq ignored it).
    """
    options: dict[str, Any] = {}
    requeue_delay = 90.0
    for name, value in kwargs.items():
        if name in _SAME:
            if value is not None:
                options[name] = value
        elif name == "requeue_delay":
            requeue_delay = float(value)
        elif name == "timeout":
            options["connect_timeout"] = float(value)
        elif name == "output_buffer_size":
            if value:
                options["output_buffer_size"] = value
        elif name == "output_buffer_timeout":
            if value:
                options["output_buffer_timeout"] = -1 if value == -1 else value / 1000
        else:
            raise TypeError(f"unexpected connection option {name!r}")
    return options, requeue_delay
