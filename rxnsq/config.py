"""Typed, validated connection options (go-nsq's names and ranges, durations in seconds).

Options are checked when they are built, before any connection is made, and a bad value
raises :class:`~rxnsq.errors.ConfigError` naming the option and its allowed range.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import protocol
from ._version import __version__
from .errors import ConfigError

__all__ = ["ConnectionOptions", "address_list", "check_range", "make_ssl_context"]

TLSOptions = ssl.SSLContext | Mapping[str, Any]


def check_range(
    name: str,
    value: object,
    low: float,
    high: float,
    *,
    integer: bool = False,
    disable: bool = False,
) -> None:
    """Raise ConfigError unless low <= value <= high (or value == -1 when ``disable``)."""
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    if ok and disable and value == -1:
        return
    if not ok or not low <= value <= high:  # type: ignore[operator]
        kind = "an int" if integer else "a number"
        allowed = f"{kind} from {low} to {high}" + (", or -1 to disable" if disable else "")
        raise ConfigError(name, value, allowed)


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectionOptions:
    """How one connection to nsqd identifies itself and what it negotiates.

    Durations are seconds (floats allowed); they go on the wire as integer milliseconds.
    """

    client_id: str | None = None
    hostname: str | None = None
    user_agent: str = f"rxnsq/{__version__}"
    heartbeat_interval: float = 30.0
    output_buffer_size: int = 16384
    output_buffer_timeout: float = 0.25
    tls_v1: bool = False
    tls_options: TLSOptions | None = None
    snappy: bool = False
    deflate: bool = False
    deflate_level: int = 6
    sample_rate: int = 0
    msg_timeout: float | None = None
    auth_secret: str | bytes | None = field(default=None, repr=False)
    connect_timeout: float = 5.0
    max_frame_size: int = protocol.DEFAULT_MAX_FRAME_SIZE

    def __post_init__(self) -> None:
        check_range("heartbeat_interval", self.heartbeat_interval, 1.0, 3600.0, disable=True)
        check_range(
            "output_buffer_size", self.output_buffer_size, 64, 1 << 30, integer=True, disable=True
        )
        check_range(
            "output_buffer_timeout", self.output_buffer_timeout, 0.025, 3600.0, disable=True
        )
        check_range("deflate_level", self.deflate_level, 1, 9, integer=True)
        check_range("sample_rate", self.sample_rate, 0, 99, integer=True)
        if self.msg_timeout is not None:
            check_range("msg_timeout", self.msg_timeout, 1.0, 3600.0)
        check_range("connect_timeout", self.connect_timeout, 0.001, 3600.0)
        check_range("max_frame_size", self.max_frame_size, 1024, 1 << 31, integer=True)
        if self.snappy and self.deflate:
            raise ConfigError("snappy", True, "snappy and deflate cannot both be enabled")
        if self.tls_options is not None and not isinstance(
            self.tls_options, ssl.SSLContext | Mapping
        ):
            raise ConfigError("tls_options", self.tls_options, "an ssl.SSLContext or a dict")
        if self.auth_secret is not None and not self.auth_secret:
            raise ConfigError("auth_secret", "<empty>", "a non-empty secret, or None")

    @property
    def wants_tls(self) -> bool:
        """TLS is asked for by ``tls_v1`` or by giving ``tls_options``."""
        return self.tls_v1 or self.tls_options is not None

    def identify_fields(self) -> dict[str, Any]:
        """The IDENTIFY body: every field as nsqd wants it (ints in ms, real booleans)."""
        host = self.hostname if self.hostname is not None else socket.gethostname()
        fields: dict[str, Any] = {
            # the short host name, as pynsq and go-nsq derive it (from the given hostname too)
            "client_id": self.client_id if self.client_id is not None else host.split(".")[0],
            "hostname": host,
            "user_agent": self.user_agent,
            "feature_negotiation": True,
            "heartbeat_interval": _ms(self.heartbeat_interval),
            "output_buffer_size": self.output_buffer_size,
            "output_buffer_timeout": _ms(self.output_buffer_timeout),
            "tls_v1": self.wants_tls,
            "snappy": self.snappy,
            "deflate": self.deflate,
            "deflate_level": self.deflate_level,
            "sample_rate": self.sample_rate,
        }
        if self.msg_timeout is not None:
            fields["msg_timeout"] = _ms(self.msg_timeout)
        return fields

    def ssl_context(
        self,
    ) -> ssl.SSLContext:
        """The TLS context: the one given, one built from pynsq's options dict, or the default
        (certificate and hostname verification on)."""
        return make_ssl_context(self.tls_options)


def _ms(seconds: float) -> int:
    return -1 if seconds == -1 else round(seconds * 1000)


def make_ssl_context(options: TLSOptions | None) -> ssl.SSLContext:
    """An SSLContext from an SSLContext (as is), pynsq's ``tls_options`` dict, or None.

    The dict takes the ``ssl.wrap_socket`` keys pynsq users pass: ``ca_certs``, ``certfile``,
    ``keyfile``, ``cert_reqs`` and ``check_hostname``. Verification stays on unless
    ``cert_reqs`` is ``ssl.CERT_NONE``.
    """
    if isinstance(options, ssl.SSLContext):
        return options
    opts = dict(options or {})
    context = ssl.create_default_context(cafile=opts.pop("ca_certs", None))
    certfile = opts.pop("certfile", None)
    keyfile = opts.pop("keyfile", None)
    if certfile:
        context.load_cert_chain(certfile, keyfile)
    cert_reqs = opts.pop("cert_reqs", ssl.CERT_REQUIRED)
    check_hostname = opts.pop("check_hostname", cert_reqs != ssl.CERT_NONE)
    context.check_hostname = bool(check_hostname)
    context.verify_mode = cert_reqs
    opts.pop("ssl_version", None)  # pynsq's fixed protocol constant: the default negotiates
    if opts:
        raise ConfigError(
            "tls_options",
            sorted(opts),
            "known keys: ca_certs, certfile, keyfile, cert_reqs, check_hostname, ssl_version",
        )
    return context


def address_list(name: str, value: str | Sequence[str]) -> tuple[str, ...]:
    """One address or any sequence of them (pynsq crashed on tuples) as a tuple."""
    items = (value,) if isinstance(value, str) else tuple(value)
    for item in items:
        if not isinstance(item, str) or not item:
            raise ConfigError(name, value, "an address string or a sequence of them")
    return items
