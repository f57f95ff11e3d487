"""pynsq's event system (``on``/``off``/``trigger``) and its event names."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "AUTH",
    "AUTH_RESPONSE",
    "BACKOFF",
    "CLOSE",
    "CONNECT",
    "CONTINUE",
    "DATA",
    "ERROR",
    "FINISH",
    "HEARTBEAT",
    "IDENTIFY",
    "IDENTIFY_RESPONSE",
    "MESSAGE",
    "READY",
    "REQUEUE",
    "RESPONSE",
    "RESUME",
    "TOUCH",
    "DuplicateListenerError",
    "EventedMixin",
    "InvalidListenerError",
]

CONNECT = "connect"
CLOSE = "close"
ERROR = "error"
IDENTIFY = "identify"
IDENTIFY_RESPONSE = "identify_response"
AUTH = "auth"
AUTH_RESPONSE = "auth_response"
DATA = "data"
MESSAGE = "message"
HEARTBEAT = "heartbeat"
RESPONSE = "response"
READY = "ready"
BACKOFF = "backoff"
RESUME = "resume"
CONTINUE = "continue"
FINISH = "finish"
REQUEUE = "requeue"
TOUCH = "touch"


class DuplicateListenerError(Exception):
    """The same callback was registered twice for one event."""


class InvalidListenerError(Exception):
    """``off`` was called for a callback that is not registered."""


class EventedMixin:
    """Listeners by event name, called in order with keyword arguments."""

    def __init__(self) -> None:
        self.__listeners: dict[str, list[Callable[..., Any]]] = {}

    def on(self, name: str, callback: Callable[..., Any]) -> None:
        """Call ``callback(**kwargs)`` whenever ``name`` is triggered."""
        listeners = self.__listeners.setdefault(name, [])
        if callback in listeners:
            raise DuplicateListenerError(f"{callback!r} already listens to {name!r}")
        listeners.append(callback)

    def off(self, name: str, callback: Callable[..., Any]) -> None:
        """Stop calling ``callback`` for ``name``."""
        listeners = self.__listeners.get(name, [])
        if callback not in listeners:
            raise InvalidListenerError(f"{callback!r} does not listen to {name!r}")
        listeners.remove(callback)

    def trigger(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Call every listener of ``name``, in order. A listener that raises is logged and the
        others are still called: an event listener never takes a connection down."""
        for callback in list(self.__listeners.get(name, ())):
            try:
                callback(*args, **kwargs)
            except Exception:
                logger.exception("a listener of the %r event raised: %r", name, callback)
