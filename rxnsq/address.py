"""Addresses: nsqd TCP ``host:port`` and nsqd/nsqlookupd HTTP addresses, parsed in one place.

Every address a user gives is checked when the object taking it is built, so a typo is a
:class:`~rxnsq.errors.ConfigError` naming the option at once, never a consumer that stays
silently idle. Resolving the host is left to connecting (a name may resolve later).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence

from .errors import ConfigError

__all__ = [
    "http_address_list",
    "join_host_port",
    "parse_http_address",
    "split_tcp_address",
    "tcp_address_list",
]

_TCP_ALLOWED = "host:port with a port from 1 to 65535, like 127.0.0.1:4150 or [::1]:4150"


def split_tcp_address(
    address: object, option: str = "address", default_port: int | None = None
) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:4150"`` for IPv6) to ``(host, port)``.

    Without a port, ``default_port`` is used when given; otherwise it is an error, as are a
    URL, an empty host and a port that is not a number from 1 to 65535.
    """
    if not isinstance(address, str) or not address.strip():
        raise ConfigError(option, address, _TCP_ALLOWED)
    text = address.strip()
    if "://" in text or "/" in text:
        raise ConfigError(option, address, f"{_TCP_ALLOWED} (a TCP address, not a URL)")
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(option, address, _TCP_ALLOWED)
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        raise ConfigError(option, address, f"{_TCP_ALLOWED} (write IPv6 hosts in brackets)")
    else:
        host, port_text = text, ""
    if not host:
        raise ConfigError(option, address, f"{_TCP_ALLOWED} (the host is missing)")
    if not port_text:
        if default_port is None:
            raise ConfigError(option, address, f"{_TCP_ALLOWED} (the port is missing)")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(option, address, f"{_TCP_ALLOWED} (bad port {port_text!r})")
    return host, int(port_text)


def join_host_port(host: str, port: int) -> str:
    """``"host:port"``, with the brackets an IPv6 host needs: ``"[::1]:4150"``."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def parse_http_address(address: object, option: str, example: str) -> urllib.parse.SplitResult:
    """Split an HTTP address (``"host:port"``, ``"[::1]:port"`` or a URL); a port is required.

    ``http://`` is assumed when no scheme is given. Anything else raises :class:`ConfigError`
    naming ``option``, since a missing port would silently mean port 80.
    """
    allowed = f"an HTTP address with a port, like {example} or http://{example}"
    if not isinstance(address, str) or not address.strip():
        raise ConfigError(option, address, allowed)
    text = address.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urllib.parse.urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port:
        raise ConfigError(option, address, allowed)
    return parts


def _as_tuple(option: str, value: object) -> tuple[object, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, bytes) or not isinstance(value, Sequence | set | frozenset):
        raise ConfigError(option, value, "an address string or a sequence of them")
    return tuple(value)


def tcp_address_list(option: str, value: object) -> tuple[str, ...]:
    """One nsqd TCP address or a sequence of them, each checked, as a tuple of strings."""
    items = _as_tuple(option, value)
    for item in items:
        split_tcp_address(item, option)
    return items  # type: ignore[return-value]


def http_address_list(option: str, value: object, example: str) -> tuple[str, ...]:
    """One HTTP address or a sequence of them, each checked, as a tuple of strings."""
    items = _as_tuple(option, value)
    for item in items:
        parse_http_address(item, option, example)
    return items  # type: ignore[return-value]
