"""The worker command's options: flags, ``RXNSQ_*`` environment variables, defaults.

A flag wins over its environment variable, which wins over the default. Environment values
go through the same checks as flags, and a bad one is reported under its variable's name.
Lists in the environment are comma-separated (``RXNSQ_LOOKUPD_HTTP_ADDRESSES=a:4161,b:4161``).
The parsed :class:`WorkerOptions` travel to each worker process over its control socket,
never on its command line, so ``ps`` never shows a secret.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import arguments
from ..address import http_address_list, tcp_address_list
from ..arguments import (
    channel_name,
    consumer_options,
    duration,
    nonneg_int,
    positive_int,
    producer_options,
    topic_name,
)
from ..errors import ConfigError
from ..runner import DEFAULT_DRAIN_TIMEOUT

__all__ = ["ENV_PREFIX", "WorkerOptions", "add_arguments", "app_spec", "from_args"]

ENV_PREFIX = "RXNSQ_"

_APP = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def app_spec(text: str) -> str:
    """argparse type: ``package.module:factory`` (the factory may be a dotted attribute)."""
    if not _APP.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not MODULE:FACTORY (e.g. myapp.pipelines:build)"
        )
    return text


def _port(text: str) -> int:
    value = nonneg_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is at most 65535")
    return value


def _tcp(text: str) -> str:
    try:
        return tcp_address_list("address", text)[0]
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _http(text: str) -> str:
    try:
        return http_address_list("address", text, "127.0.0.1:4161")[0]
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    value = duration(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be > 0")
    return value


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """What ``rxnsq worker`` was told. ``auth_secret`` never shows in ``repr``."""

    app: str
    app_dir: str = "."
    processes: int = 1
    topic: str | None = None
    channel: str | None = None
    nsqd_tcp_addresses: tuple[str, ...] = ()
    lookupd_http_addresses: tuple[str, ...] = ()
    destination_nsqd_tcp_addresses: tuple[str, ...] = ()
    max_in_flight: int = 200
    max_tries: int = 5
    consumer_opts: tuple[tuple[str, str], ...] = ()
    producer_opts: tuple[tuple[str, str], ...] = ()
    auth_secret: str | None = field(default=None, repr=False)
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    heartbeat_timeout: float = 30.0
    max_restarts: int = 5
    log_format: str = "text"
    log_level: str = "info"

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (for the control socket; secrets included: never log it)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkerOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for name in ("nsqd_tcp_addresses", "lookupd_http_addresses",
                     "destination_nsqd_tcp_addresses"):  # fmt: skip
            values[name] = tuple(values.get(name, ()))
        for name in ("consumer_opts", "producer_opts"):
            values[name] = tuple(tuple(pair) for pair in values.get(name, ()))
        return cls(**values)

    def reader_options(self) -> dict[str, Any]:
        """Reader keywords from these options (``--consumer-opt`` applied last)."""
        options: dict[str, Any] = {
            "nsqd_tcp_addresses": self.nsqd_tcp_addresses,
            "lookupd_http_addresses": self.lookupd_http_addresses,
            "max_in_flight": self.max_in_flight,
            "max_tries": self.max_tries,
        }
        if self.auth_secret:
            options["auth_secret"] = self.auth_secret
        options.update(consumer_options(self.consumer_opts))
        return options

    def writer_options(self) -> dict[str, Any]:
        """Writer keywords (without addresses) from these options."""
        options: dict[str, Any] = {}
        if self.auth_secret:
            options["auth_secret"] = self.auth_secret
        options.update(producer_options(self.producer_opts))
        return options


@dataclass(frozen=True, slots=True)
class _Option:
    dest: str
    flags: tuple[str, ...]
    convert: Callable[[str], Any]
    help: str
    many: bool = False
    metavar: str | None = None
    choices: Sequence[str] | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


_OPTIONS = (
    _Option("processes", ("-p", "--processes"), positive_int,
            "worker processes to run (default: 1); each has its own Readers and Writers on "
            "the same channels, so NSQ spreads the messages over them", metavar="N"),
    _Option("topic", ("--topic",), topic_name,
            "the topic ctx.reader() consumes when the factory names none"),
    _Option("channel", ("--channel",), channel_name,
            "the channel ctx.reader() consumes when the factory names none"),
    _Option("nsqd_tcp_addresses", ("--nsqd-tcp-address",), _tcp,
            "nsqd TCP address to consume from (may be given multiple times)", True,
            "HOST:PORT"),
    _Option("lookupd_http_addresses", ("--lookupd-http-address",), _http,
            "nsqlookupd HTTP address that finds the nsqd to consume from (may be given "
            "multiple times)", True, "HOST:PORT"),
    _Option("destination_nsqd_tcp_addresses", ("--destination-nsqd-tcp-address",), _tcp,
            "nsqd TCP address ctx.writer() publishes to (may be given multiple times; "
            "default: the --nsqd-tcp-address ones)", True, "HOST:PORT"),
    _Option("max_in_flight", ("--max-in-flight",), positive_int,
            "max messages in flight per Reader in each process (default: 200)", metavar="N"),
    _Option("max_tries", ("--max-tries",), nonneg_int,
            "deliveries of a message before it is given up (0 = never; default: 5)",
            metavar="N"),
    _Option("consumer_opts", ("--consumer-opt",), str,
            "a Reader option as key,value (e.g. msg_timeout,2m; may be given multiple "
            "times)", True, "KEY,VALUE"),
    _Option("producer_opts", ("--producer-opt",), str,
            "a Writer option as key,value (e.g. snappy,true; may be given multiple times)",
            True, "KEY,VALUE"),
    _Option("auth_secret", ("--auth-secret",), str,
            "secret for nsqd's AUTH (prefer the environment variable: a flag shows in ps)",
            metavar="SECRET"),
    _Option("drain_timeout", ("--drain-timeout",), duration,
            f"on SIGTERM, how long in-flight messages may take to settle before the rest is "
            f"requeued, writers included (default: {DEFAULT_DRAIN_TIMEOUT:g}s)",
            metavar="DURATION"),
    _Option("metrics_port", ("--metrics-port",), _port,
            "serve /metrics (Prometheus), /healthz and /readyz on this port (0 = any free "
            "port; default: none)", metavar="PORT"),
    _Option("metrics_host", ("--metrics-host",), str,
            "address the metrics port listens on (default: 127.0.0.1; 0.0.0.0 in a "
            "container, for the probes)", metavar="HOST"),
    _Option("heartbeat_timeout", ("--heartbeat-timeout",), _seconds,
            "/healthz fails when a worker process has not reported for this long: its loop "
            "is stuck (default: 30s)", metavar="DURATION"),
    _Option("max_restarts", ("--max-restarts",), nonneg_int,
            "crashes in a row (each within a minute of its start) after which the worker "
            "gives up and exits 1 (default: 5)", metavar="N"),
    _Option("log_format", ("--log-format",), str, "text or json lines (default: text)",
            choices=("text", "json")),
    _Option("log_level", ("--log-level",), str, "debug, info, warning, error (default: info)",
            choices=("debug", "info", "warning", "error")),
    _Option("app_dir", ("--app-dir",), str,
            "directory put first on sys.path to import MODULE from (default: .)",
            metavar="DIR"),
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The worker's flags, each with its environment variable named in its help."""
    parser.add_argument("app", type=app_spec, metavar="MODULE:FACTORY",
                        help="the factory that builds the pipeline in each process")  # fmt: skip
    for option in _OPTIONS:
        kwargs: dict[str, Any] = {
            "dest": option.dest,
            "default": None,
            "help": f"{option.help} [env {option.env}]",
        }
        if option.choices:
            kwargs["choices"] = option.choices
        else:
            kwargs["type"] = _pair if option.dest.endswith("_opts") else option.convert
        if option.metavar:
            kwargs["metavar"] = option.metavar
        if option.many:
            kwargs["action"] = "append"
        parser.add_argument(*option.flags, **kwargs)


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition(",")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected key,value (e.g. max_tries,10)")
    return key.strip(), value


def _from_env(option: _Option, text: str) -> Any:
    convert = _pair if option.dest.endswith("_opts") else option.convert
    if option.choices and text not in option.choices:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(option.choices)}")
    if not option.many:
        return convert(text)
    # comma-separated; KEY,VALUE pairs are separated by ';' instead
    separator = ";" if option.dest.endswith("_opts") else ","
    return [convert(part.strip()) for part in text.split(separator) if part.strip()]


def from_args(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
) -> WorkerOptions:
    """Options from parsed flags, then ``RXNSQ_*`` variables; a bad value exits 2 (usage)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {"app": args.app}
    for option in _OPTIONS:
        value = getattr(args, option.dest)
        if value is None and environ.get(option.env, "").strip():
            text = environ[option.env].strip()
            try:
                value = _from_env(option, text)
            except argparse.ArgumentTypeError as exc:
                parser.error(f"{option.env}={text!r}: {exc}")
        if value is not None:
            values[option.dest] = tuple(value) if option.many else value
    options = WorkerOptions(**values)
    try:
        options.reader_options()
        options.writer_options()
    except arguments.OptionError as exc:
        parser.error(str(exc))
    return options
