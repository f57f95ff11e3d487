"""rxnsq: a reactive-streams NSQ client on RxPY and tornado.

Layers, bottom up: :mod:`rxnsq.protocol` (wire format, no IO) and :mod:`rxnsq.errors`;
:mod:`rxnsq.connection` (one nsqd); :mod:`rxnsq.flow` (RDY and backoff as plain logic);
:class:`Reader` (an ``Observable[Message]``), :mod:`rxnsq.ops` (ack-aware operators) and
:class:`Writer` (awaitable publishes, an Observer sink, a publish operator).
"""

from . import ops
from ._version import __version__
from .config import ConnectionOptions
from .connection import Connection, ConnectionEvent, ConnectionState
from .errors import (
    AuthError,
    ConfigError,
    ConnectionClosedError,
    FrameError,
    HTTPAPIError,
    IdentifyRefusedError,
    InvalidBodyError,
    InvalidNameError,
    LookupdError,
    NegotiationError,
    NSQConnectionError,
    NSQError,
    ProtocolError,
    PublishTimeoutError,
    SinkOverflowError,
    StateError,
    WrongPortError,
)
from .flow import BackoffState, ExponentialBackoff, FullJitterBackoff
from .http import LookupdHTTPClient, NsqdHTTPClient
from .message import Message
from .ops import Batch, Failure
from .reader import CaughtError, Heartbeat, Reader, ReaderEvent
from .runner import run
from .scheduler import LoopScheduler, loop_scheduler
from .sync import SyncConnection
from .writer import Deferred, PublishAck, PublishResult, Writer

__all__ = [
    "AuthError",
    "BackoffState",
    "Batch",
    "CaughtError",
    "ConfigError",
    "Connection",
    "ConnectionClosedError",
    "ConnectionEvent",
    "ConnectionOptions",
    "ConnectionState",
    "Deferred",
    "ExponentialBackoff",
    "Failure",
    "FrameError",
    "FullJitterBackoff",
    "HTTPAPIError",
    "Heartbeat",
    "IdentifyRefusedError",
    "InvalidBodyError",
    "InvalidNameError",
    "LookupdError",
    "LookupdHTTPClient",
    "LoopScheduler",
    "Message",
    "NSQConnectionError",
    "NSQError",
    "NegotiationError",
    "NsqdHTTPClient",
    "ProtocolError",
    "PublishAck",
    "PublishResult",
    "PublishTimeoutError",
    "Reader",
    "ReaderEvent",
    "SinkOverflowError",
    "StateError",
    "SyncConnection",
    "Writer",
    "WrongPortError",
    "__version__",
    "loop_scheduler",
    "ops",
    "run",
]
