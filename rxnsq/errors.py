"""Every error rxnsq raises, under one root.

The tree::

    NSQError                          root of everything rxnsq raises
    ├── ConfigError (ValueError)      an option out of range; names the option and its range
    │   └── IdentifyRefusedError      nsqd refused an IDENTIFY option (above its maximum...)
    ├── StateError (RuntimeError)     the call does not fit the object's state (peek on a
    │                                 reader that is consuming)
    ├── NegotiationError              nsqd did not grant a feature that must not be done
    │                                 without (TLS asked for, or TLS required by nsqd)
    ├── InvalidNameError (ValueError) a topic or channel name nsqd would refuse
    ├── InvalidBodyError (ValueError) a body that is not bytes/bytearray/memoryview/str, empty or
    │                                 oversized; an empty MPUB; a DPUB delay out of range; a
    │                                 ``publish()`` body function that raised (as ``__cause__``)
    ├── FrameError                    the peer's bytes are not NSQ frames (corrupt, oversized,
    │   │                             unknown frame type, truncated message)
    │   └── WrongPortError            the peer answered with HTTP: the HTTP port was given
    ├── NSQConnectionError            connecting failed or the connection dropped (retriable);
    │   │                             also an HTTP API request that got no HTTP reply
    │   ├── ConnectTimeoutError       no TCP connection within the connect timeout
    │   ├── ConnectionClosedError     the connection (or the Writer) closed with this operation
    │   │                             pending
    │   └── PublishTimeoutError       nsqd did not answer a publish within its timeout
    ├── SinkOverflowError             a Writer sink was full (``max_pending`` items or
    │                                 ``max_pending_bytes`` unconfirmed): the item was not sent
    ├── LookupdError                  an nsqlookupd query failed (retriable); ``url``, ``status``
    │                                 (None without an HTTP reply), ``reason``
    ├── HTTPAPIError                  nsqd / nsqlookupd HTTP API answered non-2xx; ``method``,
    │   │                             ``url``, ``status``, ``message`` (e.g. ``TOPIC_NOT_FOUND``)
    │   ├── HTTPInvalidBodyError      also an InvalidBodyError: MSG_EMPTY, MSG_TOO_BIG,
    │   │                             BODY_TOO_BIG, BAD_MESSAGE, BAD_BODY
    │   └── HTTPInvalidNameError      also an InvalidNameError: INVALID_TOPIC, INVALID_ARG_TOPIC,
    │                                 INVALID_ARG_CHANNEL
    ├── ProtocolError                 an ``E_*`` error frame from nsqd; ``code``, ``text``
    │   ├── InvalidError              E_INVALID, E_BAD_PROTOCOL
    │   ├── BadBodyError              E_BAD_BODY
    │   ├── BadMessageError           E_BAD_MESSAGE
    │   ├── BadTopicError             E_BAD_TOPIC
    │   ├── BadChannelError           E_BAD_CHANNEL
    │   ├── IdentifyError             E_IDENTIFY_FAILED
    │   ├── AuthError                 E_AUTH_FIRST, E_AUTH_FAILED, E_UNAUTHORIZED,
    │   │                             E_AUTH_DISABLED, E_AUTH_ERROR
    │   ├── PublishError              E_PUB_FAILED, E_MPUB_FAILED, E_DPUB_FAILED
    │   ├── SubscribeError            E_SUB_FAILED
    │   └── MessageResponseError      E_FIN_FAILED, E_REQ_FAILED, E_TOUCH_FAILED (non-fatal)
    └── WorkerError                   ``rxnsq worker``: user code it runs failed; ``exit_code``
        ├── AppImportError            MODULE:FACTORY cannot be imported, has no such attribute
        │                             or is not callable (exit 2, like a usage error)
        ├── FactoryError              the factory raised, or returned neither a disposable, an
        │                             awaitable nor None (exit 3; not restarted)
        └── PipelineError             what the factory built failed while running (exit 1;
                                      the process is restarted)

``fatal`` tells whether nsqd closes the connection after the error: every ``E_*`` code is fatal
except the three message-response failures, which usually mean a message timed out and was
redelivered elsewhere. ``retriable`` tells whether doing the same thing again may succeed.

A body or name that nsqd refuses over HTTP raises a class that is both an :class:`HTTPAPIError`
(with the status and nsqd's reason) and the :class:`InvalidBodyError` / :class:`InvalidNameError`
that the local check before sending raises, so one ``except`` handles both.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "FATAL_CONNECT_ERRORS",
    "AppImportError",
    "AuthError",
    "BadBodyError",
    "BadChannelError",
    "BadMessageError",
    "BadTopicError",
    "ConfigError",
    "ConnectTimeoutError",
    "ConnectionClosedError",
    "FactoryError",
    "FrameError",
    "HTTPAPIError",
    "HTTPInvalidBodyError",
    "HTTPInvalidNameError",
    "IdentifyError",
    "IdentifyRefusedError",
    "InvalidBodyError",
    "InvalidError",
    "InvalidNameError",
    "LookupdError",
    "MessageResponseError",
    "NSQConnectionError",
    "NSQError",
    "NegotiationError",
    "PipelineError",
    "ProtocolError",
    "PublishError",
    "PublishTimeoutError",
    "SinkOverflowError",
    "StateError",
    "SubscribeError",
    "WorkerError",
    "WrongPortError",
    "error_from_frame",
    "error_from_http",
]


class NSQError(Exception):
    """Root of every error rxnsq raises."""

    fatal: ClassVar[bool] = True
    retriable: ClassVar[bool] = False


class ConfigError(NSQError, ValueError):
    """An option has a value outside its allowed range or type."""

    def __init__(self, option: str, value: object, allowed: str) -> None:
        self.option = option
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid {option}={value!r}: {allowed}")


class IdentifyRefusedError(ConfigError):
    """nsqd refused an IDENTIFY option: ``option``, the ``value`` sent, nsqd's ``answer``."""

    def __init__(self, option: str, value: object, answer: str) -> None:
        super().__init__(option, value, f"nsqd refused it ({answer})")
        self.answer = answer


class StateError(NSQError, RuntimeError):
    """The call does not fit the object's state, e.g. ``peek()`` on a consuming reader."""


class NegotiationError(NSQError):
    """nsqd did not grant a feature that must not be done without: TLS asked for and not
    granted, or TLS required by nsqd and not asked for. Fatal: retrying cannot help."""


class InvalidNameError(NSQError, ValueError):
    """A topic or channel name that nsqd would refuse (checked before sending)."""


class InvalidBodyError(NSQError, ValueError):
    """A message body nsqd would refuse: empty, too large, or an MPUB without messages."""


class FrameError(NSQError):
    """The bytes from the peer are not a valid NSQ frame stream; the connection is unusable."""


class WrongPortError(FrameError):
    """The peer answered with HTTP, so the address is nsqd's HTTP port, not its TCP port."""


class NSQConnectionError(NSQError):
    """Connecting to nsqd failed, or the connection dropped. Trying again may work."""

    retriable: ClassVar[bool] = True


class ConnectTimeoutError(NSQConnectionError):
    """No TCP connection could be made within the connect timeout."""


class ConnectionClosedError(NSQConnectionError):
    """The connection closed while this operation was pending: it did not complete.

    For a publish this means nsqd never confirmed it; it may or may not have been published
    (unless an earlier command on the same connection failed, in which case it was not).
    """


class PublishTimeoutError(NSQConnectionError):
    """nsqd did not answer a publish within its timeout. Trying again may work.

    The command may or may not have been published (nsqd may be stalled rather than gone); an
    answer arriving later is ignored, so the publish is never reported confirmed afterwards.
    """


class SinkOverflowError(NSQError):
    """A Writer sink already held its bound of unconfirmed items or bytes: the item was not
    published. Feed with ``await sink.send(item)`` (or ``sink.feed(...)``) to wait for room."""

    retriable: ClassVar[bool] = True


class ProtocolError(NSQError):
    """An error frame sent by nsqd, such as ``E_BAD_TOPIC PUB topic name "a b" is not valid``.

    ``code`` is the ``E_*`` word and ``text`` the whole frame text. Build one from a frame with
    :func:`error_from_frame` (or ``ProtocolError.from_frame``), which picks the subclass.
    """

    codes: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, code: str, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(text)

    @classmethod
    def from_frame(cls, data: bytes) -> ProtocolError:
        """The error for the data of an error frame, as the subclass for its code."""
        return error_from_frame(data)


class InvalidError(ProtocolError):
    """nsqd refused a command as invalid: wrong state, bad parameters, RDY out of range."""

    codes = frozenset({"E_INVALID", "E_BAD_PROTOCOL"})


class BadBodyError(ProtocolError):
    """nsqd refused a command body: IDENTIFY/AUTH JSON or size, MPUB size or count."""

    codes = frozenset({"E_BAD_BODY"})


class BadMessageError(ProtocolError):
    """nsqd refused a message: empty, or larger than its --max-msg-size."""

    codes = frozenset({"E_BAD_MESSAGE"})


class BadTopicError(ProtocolError):
    """nsqd refused the topic name."""

    codes = frozenset({"E_BAD_TOPIC"})


class BadChannelError(ProtocolError):
    """nsqd refused the channel name."""

    codes = frozenset({"E_BAD_CHANNEL"})


class IdentifyError(ProtocolError):
    """IDENTIFY or a negotiated upgrade (TLS, snappy, deflate) failed."""

    codes = frozenset({"E_IDENTIFY_FAILED"})


class AuthError(ProtocolError):
    """Authorization failed or is missing for this command; the text holds nsqd's reason."""

    codes = frozenset(
        {"E_AUTH_FIRST", "E_AUTH_FAILED", "E_UNAUTHORIZED", "E_AUTH_DISABLED", "E_AUTH_ERROR"}
    )


class PublishError(ProtocolError):
    """nsqd could not publish (for example the topic is being deleted)."""

    codes = frozenset({"E_PUB_FAILED", "E_MPUB_FAILED", "E_DPUB_FAILED"})
    retriable: ClassVar[bool] = True


class SubscribeError(ProtocolError):
    """nsqd could not subscribe (too many consumers, or an ephemeral channel going away)."""

    codes = frozenset({"E_SUB_FAILED"})
    retriable: ClassVar[bool] = True


class MessageResponseError(ProtocolError):
    """FIN, REQ or TOUCH named a message this connection no longer holds. Not fatal.

    It usually means the message timed out and was redelivered; the connection goes on.
    """

    codes = frozenset({"E_FIN_FAILED", "E_REQ_FAILED", "E_TOUCH_FAILED"})
    fatal: ClassVar[bool] = False


_CLASS_BY_CODE: dict[str, type[ProtocolError]] = {
    code: cls
    for cls in (
        InvalidError,
        BadBodyError,
        BadMessageError,
        BadTopicError,
        BadChannelError,
        IdentifyError,
        AuthError,
        PublishError,
        SubscribeError,
        MessageResponseError,
    )
    for code in cls.codes
}


def error_from_frame(data: bytes) -> ProtocolError:
    """The typed error for the data of an nsqd error frame.

    The code is the text before the first space; an unknown code gives a fatal
    :class:`ProtocolError`, since nsqd closes the connection after every error but three.
    """
    text = data.decode("utf-8", errors="replace").strip()
    code = text.split(" ", 1)[0]
    return _CLASS_BY_CODE.get(code, ProtocolError)(code, text)


class LookupdError(NSQError):
    """Querying an nsqlookupd failed: no HTTP reply, an error status, or an unreadable body.

    ``url`` is the lookup URL, ``status`` the HTTP status (None when no reply came) and
    ``reason`` what went wrong. Discovery goes on with the next lookupd or the next poll.
    """

    retriable: ClassVar[bool] = True

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        self.url = url
        self.reason = reason
        self.status = status
        got = "no reply" if status is None else f"HTTP {status}"
        super().__init__(f"nsqlookupd query {url} failed ({got}): {reason}")


class HTTPAPIError(NSQError):
    """nsqd's or nsqlookupd's HTTP API answered with a non-2xx status.

    ``message`` is the server's reason, the ``{"message": ...}`` of a 1.x error body (such as
    ``TOPIC_NOT_FOUND``), else the body text. Build one with :func:`error_from_http`, which picks
    the subclass for the message.
    """

    messages: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, method: str, url: str, status: int, message: str) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.message = message
        super().__init__(f"{method} {url} -> HTTP {status}: {message}")


class HTTPInvalidBodyError(HTTPAPIError, InvalidBodyError):
    """nsqd refused a message body over HTTP: empty, over ``--max-msg-size``, a bad binary MPUB."""

    messages = frozenset({"MSG_EMPTY", "MSG_TOO_BIG", "BODY_TOO_BIG", "BAD_MESSAGE", "BAD_BODY"})


class HTTPInvalidNameError(HTTPAPIError, InvalidNameError):
    """nsqd or nsqlookupd refused a topic or channel name over HTTP."""

    messages = frozenset({"INVALID_TOPIC", "INVALID_ARG_TOPIC", "INVALID_ARG_CHANNEL"})


_HTTP_CLASS_BY_MESSAGE: dict[str, type[HTTPAPIError]] = {
    message: cls for cls in (HTTPInvalidBodyError, HTTPInvalidNameError) for message in cls.messages
}


def error_from_http(method: str, url: str, status: int, message: str) -> HTTPAPIError:
    """The typed error for a non-2xx HTTP API reply whose reason is ``message``."""
    return _HTTP_CLASS_BY_MESSAGE.get(message, HTTPAPIError)(method, url, status, message)


class WorkerError(NSQError):
    """``rxnsq worker``: user code it runs failed; ``exit_code`` is the process' status."""

    exit_code: ClassVar[int] = 1


class AppImportError(WorkerError):
    """``MODULE:FACTORY`` could not be resolved to a callable (a usage error: exit 2)."""

    exit_code: ClassVar[int] = 2


class FactoryError(WorkerError):
    """The factory raised, or returned something the worker cannot run (exit 3)."""

    exit_code: ClassVar[int] = 3


class PipelineError(WorkerError):
    """The running pipeline failed: its coroutine raised, or a Reader failed for good
    (exit 1; the process is restarted)."""

    exit_code: ClassVar[int] = 1


#: Connection failures no reconnect can cure (a wrong port, a refused AUTH, TLS not granted,
#: an option nsqd refuses): a Reader fails its stream, a Writer stops waiting for them.
FATAL_CONNECT_ERRORS: tuple[type[NSQError], ...] = (
    AuthError,
    NegotiationError,
    WrongPortError,
    ConfigError,
    IdentifyError,
)
