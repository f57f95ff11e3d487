"""rxnsq: a reactive-streams NSQ client on RxPY and tornado.

Layers, bottom up: :mod:`rxnsq.protocol` (wire format, no IO), :mod:`rxnsq.errors` (one
error tree), then connections, the Reader and the Writer built on them.
"""

from ._version import __version__
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

__all__ = [
    "AuthError",
    "ConfigError",
    "ConnectionClosedError",
    "FrameError",
    "InvalidBodyError",
    "InvalidNameError",
    "NSQConnectionError",
    "NSQError",
    "ProtocolError",
    "WrongPortError",
    "__version__",
]
