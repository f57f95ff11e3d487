"""rxnsq: a reactive-streams NSQ client on RxPY and tornado.

Layers, bottom up: :mod:`rxnsq.protocol` (wire format, no IO) and :mod:`rxnsq.errors`;
:mod:`rxnsq.connection` (one nsqd); :mod:`rxnsq.flow` (RDY and backoff as plain logic);
:class:`Reader` (an ``Observable[Message]``), :mod:`rxnsq.ops` (ack-aware operators) and
:class:`Writer` (awaitable publishes, an Observer sink, a publish operator);
:mod:`rxnsq.windows` (keyed event-time windows, exact across crashes with a store).
"""

from . import ops, windows
from ._version import __version__
from .config import ConnectionOptions
from .connection import Connection, ConnectionEvent, ConnectionState
from .errors import (
    AppImportError,
    AuthError,
    BadBodyError,
    BadChannelError,
    BadMessageError,
    BadTopicError,
    ConfigError,
    ConnectionClosedError,
    ConnectTimeoutError,
    FactoryError,
    FrameError,
    HTTPAPIError,
    HTTPInvalidBodyError,
    HTTPInvalidNameError,
    IdentifyError,
    IdentifyRefusedError,
    InvalidBodyError,
    InvalidError,
    InvalidNameError,
    LookupdError,
    MessageResponseError,
    NegotiationError,
    NSQConnectionError,
    NSQError,
    PipelineError,
    ProtocolError,
    PublishError,
    PublishTimeoutError,
    SinkOverflowError,
    StateError,
    SubscribeError,
    WorkerError,
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
    "AppImportError",
    "AuthError",
    "BackoffState",
    "BadBodyError",
    "BadChannelError",
    "BadMessageError",
    "BadTopicError",
    "Batch",
    "CaughtError",
    "ConfigError",
    "ConnectTimeoutError",
    "Connection",
    "ConnectionClosedError",
    "ConnectionEvent",
    "ConnectionOptions",
    "ConnectionState",
    "Deferred",
    "ExponentialBackoff",
    "FactoryError",
    "Failure",
    "FrameError",
    "FullJitterBackoff",
    "HTTPAPIError",
    "HTTPInvalidBodyError",
    "HTTPInvalidNameError",
    "Heartbeat",
    "IdentifyError",
    "IdentifyRefusedError",
    "InvalidBodyError",
    "InvalidError",
    "InvalidNameError",
    "LookupdError",
    "LookupdHTTPClient",
    "LoopScheduler",
    "Message",
    "MessageResponseError",
    "NSQConnectionError",
    "NSQError",
    "NegotiationError",
    "NsqdHTTPClient",
    "PipelineError",
    "ProtocolError",
    "PublishAck",
    "PublishError",
    "PublishResult",
    "PublishTimeoutError",
    "Reader",
    "ReaderEvent",
    "SinkOverflowError",
    "StateError",
    "SubscribeError",
    "SyncConnection",
    "WorkerError",
    "Writer",
    "WrongPortError",
    "__version__",
    "loop_scheduler",
    "ops",
    "run",
    "windows",
]
