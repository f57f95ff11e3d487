"""rxnsq: a reactive-streams NSQ client on RxPY and tornado.

Layers, bottom up: :mod:`rxnsq.protocol` (wire format, no IO), :mod:`rxnsq.errors` (one
error tree), then connections, the Reader and the Writer built on them.
"""

from ._version import __version__
from .config import ConnectionOptions
from .connection import Connection, ConnectionEvent, ConnectionState, NegotiationError
from .errors import (
    AuthError,
    ConfigError,
    ConnectionClosedError,
    FrameError,
    InvalidBodyError,
    InvalidNameError,
    NSQConnectionError,
    NSQError,
    ProtocolError,
    WrongPortError,
)
from .message import Message
from .sync import SyncConnection

__all__ = [
    "AuthError",
    "ConfigError",
    "Connection",
    "ConnectionClosedError",
    "ConnectionEvent",
    "ConnectionOptions",
    "ConnectionState",
    "FrameError",
    "InvalidBodyError",
    "InvalidNameError",
    "Message",
    "NSQConnectionError",
    "NSQError",
    "NegotiationError",
    "ProtocolError",
    "SyncConnection",
    "WrongPortError",
    "__version__",
]
