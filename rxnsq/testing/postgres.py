"""A private PostgreSQL server for tests: initdb in a temp dir, a free loopback port, gone after.

Like :class:`~rxnsq.testing.NsqdProcess`, a :class:`PostgresProcess` does no IO until
``start()``, and is tracked so an ``atexit`` hook stops whatever a test forgot. PostgreSQL
refuses to run as root: as root, the server runs as the ``postgres`` system user (created by
Debian's package, which ``scripts/install-postgres`` installs); the data dir is handed to it.
The server is tuned for tests (no fsync): it is the consumers' crashes that the tests are
about, not the machine's.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["PostgresError", "PostgresProcess", "find_postgres"]

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
USER = "rxnsq"

_open: set[PostgresProcess] = set()
_lock = threading.Lock()


class PostgresError(RuntimeError):
    """The test PostgreSQL server could not be set up or started."""


def find_postgres() -> Path:
    """The folder holding ``initdb`` and ``postgres``: Debian's newest version, else PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise PostgresError(
        "PostgreSQL not found: run `bash scripts/install-postgres` (Debian's postgresql package)"
    )


def _version(path: str) -> int:
    try:
        return int(Path(path).parent.parent.name)
    except ValueError:
        return 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@atexit.register
def _stop_leftovers() -> None:
    with _lock:
        leftovers = list(_open)
    for server in leftovers:
        server.close()


class PostgresProcess:
    """One PostgreSQL server: ``dsn`` (user ``rxnsq``, trust auth on loopback), ``stop()``."""

    def __init__(self, *, bin_dir: str | os.PathLike[str] | None = None) -> None:
        self._bin = Path(bin_dir) if bin_dir is not None else None
        self._workdir: Path | None = None
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._account: str | None = None

    def __repr__(self) -> str:
        return f"<PostgresProcess port={self._port} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def port(self) -> int:
        if self._port is None:
            raise PostgresError("the server has not been started")
        return self._port

    @property
    def dsn(self) -> str:
        """``postgresql://rxnsq@127.0.0.1:<port>/postgres``."""
        return f"postgresql://{USER}@{HOST}:{self.port}/postgres"

    def _as_account(self) -> dict[str, object]:
        """Popen arguments that run the server as an unprivileged user when we are root."""
        if os.geteuid() != 0:
            return {}
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresError(
                "running as root and there is no 'postgres' user to run the server as: "
                "install Debian's postgresql package (scripts/install-postgres)"
            ) from None
        self._account = entry.pw_name
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def start(self, timeout: float = 30.0) -> Self:
        """initdb (first time) and start the server; returns once it accepts connections."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        bin_dir = self._bin or find_postgres()
        account = self._as_account()
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="rxnsq-postgres-"))
            with _lock:
                _open.add(self)
            if account:
                os.chown(self._workdir, account["user"], account["group"])  # type: ignore[arg-type]
            subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", USER, "--auth=trust",
                 "--encoding=UTF8", "--no-sync"],
                check=True, capture_output=True, cwd=self._workdir, **account,  # type: ignore[call-overload]
            )  # fmt: skip
        self._port = self._port or _free_port()
        log = open(self._workdir / "postgres.log", "ab")  # noqa: SIM115
        with log:
            self._proc = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self._port),
                 "-c", f"listen_addresses={HOST}", "-c", f"unix_socket_directories={self._workdir}",
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=50"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self._workdir, **account,  # type: ignore[call-overload]
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise PostgresError(f"postgres exited during startup:\n{self.log_tail()}")
            ready = subprocess.run(
                [str(bin_dir / "pg_isready"), "-h", HOST, "-p", str(self._port), "-U", USER],
                capture_output=True, check=False,
            )  # fmt: skip
            if ready.returncode == 0:
                break
            if time.monotonic() > deadline:
                self.stop()
                raise PostgresError(f"postgres did not accept connections:\n{self.log_tail()}")
            time.sleep(0.1)
        logger.info("started %r", self)
        return self

    @property
    def data_dir(self) -> Path:
        if self._workdir is None:
            raise PostgresError("the server has not been started")
        return self._workdir / "data"

    def log_tail(self, lines: int = 30) -> str:
        if self._workdir is None:
            return ""
        with contextlib.suppress(OSError):
            text = (self._workdir / "postgres.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGINT), SIGKILL after ``timeout``; keeps the data dir."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop the server and remove its temp dir."""
        self.stop()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        with _lock:
            _open.discard(self)

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
