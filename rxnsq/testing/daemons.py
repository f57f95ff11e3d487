"""Real nsqd / nsqlookupd processes for tests, on free loopback ports with temporary data dirs.

A daemon object does no IO until :meth:`DaemonProcess.start`. Every started daemon is tracked
in a module registry until it is closed, and an ``atexit`` hook kills and removes whatever a
test forgot, so a test run never leaves daemons or temp dirs behind (unless the interpreter
itself is killed with SIGKILL).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import http.client
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, ClassVar, Protocol, Self, TypeVar

logger = logging.getLogger(__name__)

__all__ = [
    "BIN_ENV_VAR",
    "DaemonError",
    "DaemonHTTPError",
    "DaemonProcess",
    "NsqdFactory",
    "NsqdProcess",
    "NsqlookupdProcess",
    "find_binary",
    "wait_until",
]

#: Environment variable naming the folder that holds ``nsqd`` and ``nsqlookupd``.
BIN_ENV_VAR = "RXNSQ_NSQ_BIN"

HOST = "127.0.0.1"

_INSTALL_HINT = (
    "Run `bash scripts/install-nsq` in the rxnsq source tree (it builds nsqd and nsqlookupd "
    "v1.3.0 from the Go module registry into ./bin), or put the official NSQ release binaries "
    f"(https://nsq.io/deployment/installing.html) on PATH, or point ${BIN_ENV_VAR} "
    "(or pytest --nsq-bin) at the folder that holds them."
)

T = TypeVar("T")


# -- finding the binaries -------------------------------------------------------------------


def _executable(path: Path) -> str | None:
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


def find_binary(name: str) -> str:
    """Return the path of the NSQ executable ``name`` (``"nsqd"`` or ``"nsqlookupd"``).

    ``$RXNSQ_NSQ_BIN``, when set, is authoritative: a missing binary there is an error rather
    than a silent fallback to some other version. Otherwise the first ``bin/<name>`` found
    walking up from the working directory, then from this file (the project-local build of
    ``scripts/install-nsq``), and finally ``PATH``.
    """
    env_dir = os.environ.get(BIN_ENV_VAR)
    if env_dir:
        found = _executable(Path(env_dir) / name)
        if found:
            return found
        raise FileNotFoundError(
            f"{name} executable not found in ${BIN_ENV_VAR}={env_dir!r}. {_INSTALL_HINT}"
        )
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            found = _executable(folder / "bin" / name)
            if found:
                return found
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(
        f"{name} executable not found in a project bin/ folder or on PATH. {_INSTALL_HINT}"
    )


# -- small helpers ----------------------------------------------------------------------------


class DaemonError(RuntimeError):
    """A test daemon failed to start, or answered an HTTP request with an error."""


class DaemonHTTPError(DaemonError):
    """An nsqd / nsqlookupd HTTP endpoint answered with a status >= 400."""

    def __init__(self, method: str, url: str, status: int, body: bytes) -> None:
        super().__init__(f"{method} {url} -> {status}: {body.decode(errors='replace')}")
        self.status = status
        self.body = body


# Proxies configured in the environment must never see loopback test traffic.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _fetch(
    method: str, url: str, body: bytes | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """Do one blocking HTTP request; return (status, body) for error statuses too."""
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, exc.read()
        finally:
            exc.close()


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float = 5.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns a truthy value and return that value.

    For asynchronous effects such as lookupd registration. Raises :class:`TimeoutError` (with
    the last value seen) when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {message}; last: {value!r}")
        time.sleep(interval)


async def eventually(
    predicate: Callable[[], T],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """:func:`wait_until` for async code: polls without blocking the running loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {message}; last: {value!r}")
        await asyncio.sleep(interval)


def _free_ports(count: int) -> list[int]:
    """Return ``count`` distinct loopback ports that were free a moment ago (racy by nature)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in socks]


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _excerpt(text: str, head: int = 5, tail: int = 30) -> str:
    """First and last lines of a log: Go prints a bad flag first, then a long usage text."""
    lines = text.splitlines()
    if len(lines) <= head + tail + 1:
        return text.rstrip("\n")
    skipped = len(lines) - head - tail
    return "\n".join([*lines[:head], f"[... {skipped} lines ...]", *lines[-tail:]])


# -- registry ---------------------------------------------------------------------------------

_registry_lock = threading.Lock()
_open_daemons: set[DaemonProcess] = set()
_start_observers: list[Callable[[DaemonProcess], None]] = []


@contextlib.contextmanager
def _collect_started() -> Iterator[list[DaemonProcess]]:
    """Collect every daemon that starts successfully (in any thread) inside the block."""
    started: list[DaemonProcess] = []
    observer = started.append
    with _registry_lock:
        _start_observers.append(observer)
    try:
        yield started
    finally:
        with _registry_lock:
            _start_observers.remove(observer)


@atexit.register
def _close_leftovers() -> None:
    """Kill and remove every daemon a test started but never closed."""
    with _registry_lock:
        leftovers = list(_open_daemons)
    for daemon in leftovers:
        logger.warning("closing leftover %r at exit", daemon)
        try:
            daemon.kill()
            daemon.close()
        except Exception:
            logger.exception("failed to close leftover %r", daemon)


def _close_leftovers_and_die(signum: int, frame: FrameType | None) -> None:
    """Signal handler: ``atexit`` does not run when SIGTERM kills Python, so clean up first,
    then die of the same signal as before."""
    _close_leftovers()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


# -- processes --------------------------------------------------------------------------------


class _PortInUseError(Exception):
    """The daemon exited at startup because one of its ports was taken."""

    def __init__(self, log: str) -> None:
        super().__init__(log)
        self.log = log


class DaemonProcess:
    """One nsqd or nsqlookupd process: start, stop, kill, restart on the same ports, logs.

    Owns a temp dir holding the daemon log (and nsqd's default data dir), removed by
    :meth:`close`. Ports are chosen on the first successful start and kept for the object's
    life, so :meth:`restart` comes back where clients expect it.
    """

    name: ClassVar[str]
    _port_names: ClassVar[tuple[str, ...]] = ("tcp", "http")
    _PORT_ATTEMPTS: ClassVar[int] = 5

    def __init__(self, *, extra_args: Sequence[str] = (), binary: str | None = None) -> None:
        if isinstance(extra_args, str):
            raise TypeError("extra_args must be a sequence of flags, not a str")
        self._extra_args = tuple(extra_args)
        self._binary = binary
        self._workdir: Path | None = None
        self._ports: dict[str, int] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        self._final_log: str | None = None

    # subclass hooks

    def _daemon_args(self, ports: Mapping[str, int]) -> list[str]:
        """Command-line flags for one launch on ``ports`` (extra_args are appended after)."""
        raise NotImplementedError

    def _prepare(self, workdir: Path) -> None:
        """Create what the daemon needs before its first launch."""

    # lifecycle

    def start(self, timeout: float = 10.0) -> Self:
        """Spawn the daemon and wait until ``GET /ping`` answers ``OK``; no-op when running.

        Fresh ports are retried a few times if the daemon exits because one was taken; on a
        restart the ports are fixed and a taken port is an error. Raises :class:`DaemonError`
        quoting the daemon log when the daemon exits or ``timeout`` passes.
        """
        if self._closed:
            raise DaemonError(f"{self!r} is closed")
        if self.running:
            return self
        binary = self._binary or find_binary(self.name)
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"rxnsq-{self.name}-"))
            with _registry_lock:
                _open_daemons.add(self)
            self._prepare(self._workdir)
        deadline = time.monotonic() + timeout
        fixed_ports = self._ports
        for attempt in itertools.count(1):
            ports = fixed_ports or dict(
                zip(self._port_names, _free_ports(len(self._port_names)), strict=True)
            )
            try:
                self._launch(binary, ports, deadline)
            except _PortInUseError as exc:
                if fixed_ports is not None or attempt >= self._PORT_ATTEMPTS:
                    raise DaemonError(
                        f"{self.name} could not bind its ports {ports} (address already in use)"
                        f"; log:\n{_excerpt(exc.log)}"
                    ) from None
                logger.debug("%s ports %s were taken, retrying with new ones", self.name, ports)
                continue
            break
        self._ports = ports
        logger.info("started %r", self)
        with _registry_lock:
            observers = list(_start_observers)
        for observer in observers:
            observer(self)
        return self

    def _launch(self, binary: str, ports: Mapping[str, int], deadline: float) -> None:
        """Run the daemon once and wait for it to serve ``/ping`` on its own HTTP port."""
        log_path = self.log_path
        offset = log_path.stat().st_size if log_path.exists() else 0
        argv = [binary, *self._daemon_args(ports), *self._extra_args]
        logger.debug("launching %s", argv)
        with open(log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self._workdir,
            )
        # The log line proves that *this* process bound the port, so a ping answered by some
        # other daemon that won the port race is never mistaken for ours.
        listening = f"listening on {HOST}:{ports['http']}"
        try:
            while True:
                code = self._proc.poll()
                new_log = self._read_log(offset)
                if code is not None:
                    if "address already in use" in new_log:
                        raise _PortInUseError(new_log)
                    raise DaemonError(
                        f"{self.name} exited with code {code} during startup; log:\n"
                        f"{_excerpt(new_log)}"
                    )
                if listening in new_log and self._ping(ports["http"]):
                    return
                if time.monotonic() >= deadline:
                    raise DaemonError(
                        f"{self.name} did not answer GET /ping on {HOST}:{ports['http']} in "
                        f"time; log:\n{_excerpt(new_log)}"
                    )
                time.sleep(0.02)
        except BaseException:
            self.kill()
            raise

    def _ping(self, http_port: int) -> bool:
        """True when ``GET /ping`` answers ``OK``, or ``TLS_REQUIRED`` (``--tls-required=true``
        refuses plain HTTP, yet proves the server is up)."""
        try:
            status, body = _fetch("GET", f"http://{HOST}:{http_port}/ping", timeout=1.0)
        except (OSError, http.client.HTTPException):
            return False
        return (status, body.strip()) == (200, b"OK") or (status == 403 and b"TLS_REQUIRED" in body)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop gracefully (SIGTERM), SIGKILL after ``timeout`` seconds; keeps data and ports."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%r ignored SIGTERM for %ss, killing it", self, timeout)
            proc.kill()
            proc.wait()
        logger.info("stopped %s pid %s (exit code %s)", self.name, proc.pid, proc.returncode)

    def kill(self) -> None:
        """SIGKILL the daemon at once (for fault tests): no flush, no goodbye to lookupd."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()
        logger.info("killed %s pid %s", self.name, proc.pid)

    def restart(self, timeout: float = 10.0) -> Self:
        """Stop if running, then start again with the same ports, data and options."""
        self.stop()
        return self.start(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the daemon and remove the temp dir it owns; idempotent.

        The log text is kept in memory so :meth:`log_text` still works afterwards.
        """
        if self._closed:
            return
        try:
            self.stop(timeout)
        finally:
            self._closed = True
            if self._workdir is not None:
                self._final_log = self.log_text()
                shutil.rmtree(self._workdir, ignore_errors=True)
            with _registry_lock:
                _open_daemons.discard(self)

    cleanup = close

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # state

    @property
    def running(self) -> bool:
        """True while the daemon process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id of the current (or last) daemon process; None before the first start."""
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit code of the last process (negative: killed by that signal); None if running."""
        return None if self._proc is None else self._proc.poll()

    def _port(self, kind: str) -> int:
        if self._ports is None:
            raise DaemonError(f"{self.name} has not been started, so it has no ports yet")
        return self._ports[kind]

    @property
    def tcp_port(self) -> int:
        return self._port("tcp")

    @property
    def http_port(self) -> int:
        return self._port("http")

    @property
    def tcp_address(self) -> str:
        """``"127.0.0.1:port"`` of the TCP protocol listener."""
        return f"{HOST}:{self.tcp_port}"

    @property
    def http_address(self) -> str:
        """``"127.0.0.1:port"`` of the HTTP API."""
        return f"{HOST}:{self.http_port}"

    @property
    def http_url(self) -> str:
        """``"http://127.0.0.1:port"`` of the HTTP API."""
        return f"http://{self.http_address}"

    @property
    def workdir(self) -> Path:
        """The temp dir this object owns (log, default data dir)."""
        if self._workdir is None:
            raise DaemonError(f"{self.name} has not been started, so it has no temp dir yet")
        return self._workdir

    @property
    def log_path(self) -> Path:
        """The daemon's combined stdout/stderr; restarts append to it."""
        return self.workdir / f"{self.name}.log"

    def _read_log(self, offset: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as log_file:
                log_file.seek(offset)
                return log_file.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_text(self) -> str:
        """The whole daemon log so far (kept after :meth:`close`); empty before a start."""
        if self._final_log is not None:
            return self._final_log
        if self._workdir is None:
            return ""
        return self._read_log()

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the daemon log."""
        return _tail(self.log_text(), lines)

    def __repr__(self) -> str:
        where = f" tcp={self.tcp_address} http={self.http_address}" if self._ports else ""
        state = "running" if self.running else ("closed" if self._closed else "stopped")
        return f"<{type(self).__name__}{where} pid={self.pid} {state}>"

    # HTTP

    def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> bytes:
        """Call the daemon's HTTP API; raise :class:`DaemonHTTPError` on an error status."""
        url = self.http_url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, data = _fetch(method, url, body)
        if status >= 400:
            raise DaemonHTTPError(method, url, status, data)
        return data

    def _get_json(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return json.loads(self._request("GET", path, params))


_node_ids = itertools.count(os.getpid())


class NsqdProcess(DaemonProcess):
    """A real nsqd on free loopback TCP, HTTP and HTTPS ports.

    ``extra_args`` are appended last, so they win over the harness defaults (but do not move
    the listen addresses). The HTTPS port is always set to a loopback port; nsqd only opens it
    when TLS flags are given. Each instance gets its own ``--node-id`` so message ids differ
    between the nsqds of a cluster.
    """

    name = "nsqd"
    _port_names = ("tcp", "http", "https")

    def __init__(
        self,
        *,
        extra_args: Sequence[str] = (),
        lookupd_tcp_addresses: Sequence[str] = (),
        data_path: str | os.PathLike[str] | None = None,
        binary: str | None = None,
    ) -> None:
        super().__init__(extra_args=extra_args, binary=binary)
        if isinstance(lookupd_tcp_addresses, str):
            raise TypeError("lookupd_tcp_addresses must be a sequence of addresses, not a str")
        self._lookupd_tcp_addresses = tuple(lookupd_tcp_addresses)
        self._user_data_path = None if data_path is None else Path(data_path)
        self._node_id = next(_node_ids) % 1024

    def _prepare(self, workdir: Path) -> None:
        self.data_path.mkdir(parents=True, exist_ok=True)

    def _daemon_args(self, ports: Mapping[str, int]) -> list[str]:
        return [
            f"--tcp-address={HOST}:{ports['tcp']}",
            f"--http-address={HOST}:{ports['http']}",
            f"--https-address={HOST}:{ports['https']}",
            f"--broadcast-address={HOST}",
            f"--data-path={self.data_path}",
            f"--node-id={self._node_id}",
            *(f"--lookupd-tcp-address={address}" for address in self._lookupd_tcp_addresses),
        ]

    @property
    def data_path(self) -> Path:
        """nsqd's ``--data-path``: the given one (kept on close) or one inside the temp dir."""
        return self._user_data_path or self.workdir / "data"

    @property
    def https_port(self) -> int:
        return self._port("https")

    @property
    def https_address(self) -> str:
        """``"127.0.0.1:port"`` of the HTTPS API (served only when nsqd has TLS flags)."""
        return f"{HOST}:{self.https_port}"

    @property
    def lookupd_tcp_addresses(self) -> tuple[str, ...]:
        return self._lookupd_tcp_addresses

    def stats(self, topic: str | None = None, channel: str | None = None) -> dict[str, Any]:
        """``GET /stats?format=json``, optionally filtered to one topic (and channel)."""
        params = {"format": "json"}
        if topic is not None:
            params["topic"] = topic
        if channel is not None:
            params["channel"] = channel
        result: dict[str, Any] = self._get_json("/stats", params)
        return result

    def channel_stats(self, topic: str, channel: str) -> dict[str, Any]:
        """One channel's entry in ``/stats`` (``depth``, ``in_flight_count``, ``clients``...),
        or ``{}`` while the topic or channel does not exist."""
        for entry in self.stats(topic=topic)["topics"] or []:
            for found in entry.get("channels") or []:
                if found["channel_name"] == channel:
                    return found  # type: ignore[no-any-return]
        return {}

    def config(self, option: str) -> Any:
        """``GET /config/<option>``: the value nsqd runs with, e.g. ``"max_rdy_count"``."""
        return self._get_json(f"/config/{option}")

    def create_topic(self, topic: str) -> None:
        """Create ``topic`` (idempotent)."""
        self._request("POST", "/topic/create", {"topic": topic})

    def create_channel(self, topic: str, channel: str) -> None:
        """Create ``topic`` and its ``channel`` (nsqd refuses a channel of a missing topic)."""
        self.create_topic(topic)
        self._request("POST", "/channel/create", {"topic": topic, "channel": channel})

    def http_pub(self, topic: str, body: bytes) -> None:
        """Publish one message through ``POST /pub`` (creates the topic if needed)."""
        self._request("POST", "/pub", {"topic": topic}, body)


class NsqlookupdProcess(DaemonProcess):
    """A real nsqlookupd on free loopback TCP and HTTP ports."""

    name = "nsqlookupd"

    def _daemon_args(self, ports: Mapping[str, int]) -> list[str]:
        return [
            f"--tcp-address={HOST}:{ports['tcp']}",
            f"--http-address={HOST}:{ports['http']}",
            f"--broadcast-address={HOST}",
        ]

    def nodes(self) -> list[dict[str, Any]]:
        """``GET /nodes``: every nsqd registered with this lookupd."""
        producers: list[dict[str, Any]] = self._get_json("/nodes")["producers"]
        return producers

    def producers(self, topic: str) -> list[dict[str, Any]]:
        """``GET /lookup?topic=``: the nsqds that have ``topic``; empty for an unknown topic."""
        try:
            result = self._get_json("/lookup", {"topic": topic})
        except DaemonHTTPError as exc:
            if exc.status == 404:
                return []
            raise
        producers: list[dict[str, Any]] = result["producers"]
        return producers


class NsqdFactory(Protocol):
    """Type of the ``nsqd_factory`` fixture: starts an :class:`NsqdProcess` with options."""

    def __call__(
        self,
        *,
        extra_args: Sequence[str] = (),
        lookupd_tcp_addresses: Sequence[str] = (),
        data_path: str | os.PathLike[str] | None = None,
        binary: str | None = None,
    ) -> NsqdProcess: ...
