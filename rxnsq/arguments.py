"""Text into typed values, for everything that takes its settings as text (the command-line
tools' flags and the worker's flags and environment): argparse types for durations, counts,
topic and channel names, and ``key,value`` pairs into checked Reader and Writer keywords.

Durations take a number of seconds or a Go duration (``250ms``, ``1m30s``). The option keys are
the Reader's and Writer's keyword names plus go-nsq's spellings of the same settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import re
import ssl
from collections.abc import Callable, Iterable
from typing import Any

from . import protocol
from .config import ConnectionOptions
from .flow import ExponentialBackoff
from .reader import Reader
from .writer import Writer

__all__ = [
    "OptionError",
    "channel_name",
    "consumer_options",
    "duration",
    "nonneg_int",
    "opt_pair",
    "parse_duration",
    "positive_int",
    "producer_options",
    "topic_name",
]

# --- argument types ---------------------------------------------------------------------------

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds from ``"2"``, ``"2.5"`` or a Go duration (``"250ms"``, ``"1m30s"``, ``"1h"``)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    seconds, pos = 0.0, 0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(f"{text!r} is not a duration (seconds, or e.g. 250ms, 1m30s, 1h)")
        seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text:
        raise ValueError("an empty duration")
    return seconds


def duration(text: str) -> float:
    """argparse type: a duration >= 0, in seconds."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be >= 0")
    return seconds


def _int(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= {low}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    return _int(text, 1)


def nonneg_int(text: str) -> int:
    """argparse type: an int >= 0."""
    return _int(text, 0)


def topic_name(text: str) -> str:
    """argparse type: a topic name nsqd accepts."""
    try:
        return protocol.check_topic_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def channel_name(text: str) -> str:
    """argparse type: a channel name nsqd accepts."""
    try:
        return protocol.check_channel_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def opt_pair(text: str) -> tuple[str, str]:
    """argparse type: ``key,value`` (the value may itself hold commas)."""
    key, sep, value = text.partition(",")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected key,value (e.g. max_tries,10)")
    return key.strip(), value


# --- --consumer-opt / --producer-opt ------------------------------------------------------------


class OptionError(ValueError):
    """A ``--consumer-opt``/``--producer-opt`` that names no option or has a bad value."""


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "t", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "f", "false", "no", "n", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def _coercer(annotation: object) -> Callable[[str], Any] | None:
    """How to turn text into a value for a parameter annotated ``annotation`` (a string, as
    the modules use ``from __future__ import annotations``); None if not settable as text."""
    kinds = {part.strip() for part in str(annotation).split("|")} - {"None"}
    if "bool" in kinds:
        return _parse_bool
    if "int" in kinds and "float" not in kinds:
        return int
    if "float" in kinds:
        return parse_duration
    if "str" in kinds:
        return str
    return None


# Parameters the tools set from their own flags, never from --*-opt.
_CONSUMER_OWN = {"topic", "channel", "nsqd_tcp_addresses", "lookupd_http_addresses", "giving_up"}
_PRODUCER_OWN = {"nsqd_tcp_addresses"}
# go-nsq's option names (the Go apps' --consumer-opt keys) that rxnsq spells differently.
_RENAMED = {"max_attempts": "max_tries", "dial_timeout": "connect_timeout"}
_TLS_KEYS = {
    "tls_root_ca_file": "ca_certs",
    "tls_cert": "certfile",
    "tls_key": "keyfile",
    "tls_insecure_skip_verify": "cert_reqs",
}


def _settable(target: Callable[..., Any], own: set[str]) -> dict[str, Callable[[str], Any]]:
    found: dict[str, Callable[[str], Any]] = {}
    for name, param in inspect.signature(target).parameters.items():
        if param.kind is inspect.Parameter.KEYWORD_ONLY and name not in own:
            coerce = _coercer(param.annotation)
            if coerce is not None:
                found[name] = coerce
    for field in dataclasses.fields(ConnectionOptions):
        coerce = _coercer(field.type)
        if coerce is not None:
            found[field.name] = coerce
    return found


def _options(
    pairs: Iterable[tuple[str, str]], flag: str, settable: dict[str, Callable[[str], Any]]
) -> dict[str, Any]:
    options: dict[str, Any] = {}
    tls: dict[str, Any] = {}
    extra = {*_RENAMED, *_TLS_KEYS} | (
        {"backoff_multiplier"} if flag == "--consumer-opt" else set()
    )
    for key, text in pairs:
        name = _RENAMED.get(key, key)
        try:
            if key in _TLS_KEYS:
                if key == "tls_insecure_skip_verify":
                    if _parse_bool(text):
                        tls["cert_reqs"] = ssl.CERT_NONE
                        tls["check_hostname"] = False
                else:
                    tls[_TLS_KEYS[key]] = text
                options["tls_v1"] = True
            elif key == "backoff_multiplier" and flag == "--consumer-opt":
                options["backoff"] = ExponentialBackoff(parse_duration(text))
            elif name in settable:
                options[name] = settable[name](text)
            else:
                known = sorted({*settable, *extra})
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise OptionError(
                    f"{flag}: unknown option {key!r}{hint}; known options: {', '.join(known)}"
                )
        except ValueError as exc:
            if isinstance(exc, OptionError):
                raise
            raise OptionError(f"{flag} {key}: bad value {text!r}: {exc}") from None
    if tls:
        options["tls_options"] = tls
    return options


def consumer_options(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Reader keyword options from ``--consumer-opt key,value`` pairs, typed and checked.

    Keys are :class:`~rxnsq.reader.Reader` keywords and connection options, plus go-nsq's
    names for the same things (``max_attempts``, ``dial_timeout``, ``backoff_multiplier``,
    ``tls_root_ca_file``, ``tls_cert``, ``tls_key``, ``tls_insecure_skip_verify``).
    Raises :class:`OptionError` for an unknown key or a value of the wrong type.
    """
    return _options(pairs, "--consumer-opt", _settable(Reader, _CONSUMER_OWN))


def producer_options(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Writer keyword options from ``--producer-opt key,value`` pairs (see
    :func:`consumer_options`)."""
    return _options(pairs, "--producer-opt", _settable(Writer, _PRODUCER_OWN))
