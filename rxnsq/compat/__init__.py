"""pynsq's API on rxnsq: ``import rxnsq.compat as nsq`` and a pynsq program runs.

Built on the reactive core (each compat Reader is an :class:`rxnsq.Reader` with a handler
subscribed; each Writer an :class:`rxnsq.Writer`), so a program can adopt ``reader.reader``'s
observables step by step. ``docs/migrating-from-pynsq.md`` lists every difference.
"""

from __future__ import annotations

from .. import runner
from .._version import __version__
from ..errors import NSQError
from . import event, protocol
from .backoff_timer import BackoffTimer
from .conn import AsyncConn
from .legacy import LegacyReader
from .message import Message
from .protocol import (
    FRAME_TYPE_ERROR,
    FRAME_TYPE_MESSAGE,
    FRAME_TYPE_RESPONSE,
    ConnectionClosedError,
    Error,
    IntegrityError,
    SendError,
    auth,
    decode_message,
    dpub,
    finish,
    identify,
    mpub,
    nop,
    pub,
    ready,
    requeue,
    subscribe,
    touch,
    unpack_response,
    valid_channel_name,
    valid_topic_name,
)
from .reader import Reader
from .sync import SyncConn
from .writer import Writer

__all__ = [
    "FRAME_TYPE_ERROR",
    "FRAME_TYPE_MESSAGE",
    "FRAME_TYPE_RESPONSE",
    "AsyncConn",
    "BackoffTimer",
    "ConnectionClosedError",
    "Error",
    "IntegrityError",
    "LegacyReader",
    "Message",
    "NSQError",
    "Reader",
    "SendError",
    "SyncConn",
    "Writer",
    "__version__",
    "auth",
    "decode_message",
    "dpub",
    "event",
    "finish",
    "identify",
    "mpub",
    "nop",
    "protocol",
    "pub",
    "ready",
    "requeue",
    "run",
    "subscribe",
    "touch",
    "unpack_response",
    "valid_channel_name",
    "valid_topic_name",
]


def run(drain_timeout: float = runner.DEFAULT_DRAIN_TIMEOUT) -> None:
    """Run the IOLoop until SIGTERM or SIGINT, then stop fetching at once (RDY 0, CLS), give
    unsettled messages up to ``drain_timeout`` seconds (8 by default, inside a container's
    grace period), requeue the rest, and return; a second signal returns at once. (pynsq
    stopped the loop at once, leaving in-flight messages to time out.)"""
    runner.run(drain_timeout=drain_timeout)
