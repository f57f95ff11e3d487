"""pytest plugin: real nsqd / nsqlookupd fixtures, their logs on failure, ``--nsq-bin``.

Registered through the ``pytest11`` entry point, so it is active wherever rxnsq is installed.
Fixtures: ``nsqd``, ``nsqd_factory``, ``nsqlookupd``, ``nsq_cluster``, ``nsq_cluster_factory``
(all function-scoped); ``postgres_server`` (one private PostgreSQL per session) and
``postgres_dsn`` (a fresh database on it per test). Tests using the nsqd ones get the
``nsqd`` marker (select with ``-m nsqd``).
When a test fails, the log tail of every daemon it started or received is added to the report.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import threading
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path

import pytest

from .cluster import NsqCluster, NsqClusterFactory
from .daemons import (
    BIN_ENV_VAR,
    DaemonProcess,
    NsqdFactory,
    NsqdProcess,
    NsqlookupdProcess,
    _close_leftovers_and_die,
    _collect_started,
)
from .postgres import PostgresProcess

#: Fixtures that start daemons; tests using any of them get the ``nsqd`` marker.
DAEMON_FIXTURES = frozenset(
    {"nsqd", "nsqd_factory", "nsqlookupd", "nsq_cluster", "nsq_cluster_factory"}
)
#: How many log lines of each daemon a failing test's report shows.
LOG_TAIL_LINES = 200

_MARKER_DOC = "nsqd: needs the real nsqd/nsqlookupd binaries (built by scripts/install-nsq)"
_saved_bin_env = pytest.StashKey[str | None]()
_sigterm_installed = pytest.StashKey[bool]()
_started_daemons = pytest.StashKey[list[DaemonProcess]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rxnsq", "rxnsq test daemons")
    group.addoption(
        "--nsq-bin",
        metavar="DIR",
        default=None,
        help=f"folder holding nsqd and nsqlookupd (overrides ${BIN_ENV_VAR})",
    )


def pytest_configure(config: pytest.Config) -> None:
    # A CI cancel or `timeout` sends SIGTERM, which skips atexit: close the daemons first.
    # Only where nobody else handles SIGTERM, and only from the main thread (a Python rule).
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _close_leftovers_and_die)
        config.stash[_sigterm_installed] = True
    if not any(line.split(":", 1)[0].strip() == "nsqd" for line in config.getini("markers")):
        config.addinivalue_line("markers", _MARKER_DOC)
    bin_dir = config.getoption("nsq_bin")
    if bin_dir:
        # Through the environment, so daemons built directly in users' fixtures see it too.
        config.stash[_saved_bin_env] = os.environ.get(BIN_ENV_VAR)
        path = config.invocation_params.dir / Path(bin_dir).expanduser()
        os.environ[BIN_ENV_VAR] = str(path)


def pytest_unconfigure(config: pytest.Config) -> None:
    ours = signal.getsignal(signal.SIGTERM) is _close_leftovers_and_die
    if ours and config.stash.get(_sigterm_installed, False):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if _saved_bin_env in config.stash:
        saved = config.stash[_saved_bin_env]
        if saved is None:
            os.environ.pop(BIN_ENV_VAR, None)
        else:
            os.environ[BIN_ENV_VAR] = saved


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixturenames = getattr(item, "fixturenames", ())
        if DAEMON_FIXTURES.intersection(fixturenames) and item.get_closest_marker("nsqd") is None:
            item.add_marker(pytest.mark.nsqd)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    with _collect_started() as started:
        item.stash[_started_daemons] = started
        try:
            return (yield)
        finally:
            del item.stash[_started_daemons]


def _daemons_of(item: pytest.Item) -> list[DaemonProcess]:
    """Daemons the test started, then those handed to it by (possibly wider-scoped) fixtures."""
    found = list(item.stash.get(_started_daemons, None) or ())
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, DaemonProcess):
            found.append(value)
        elif isinstance(value, NsqCluster):
            found.extend([*value.lookupds, *value.nsqds])
    unique = {id(daemon): daemon for daemon in found}
    return [daemon for daemon in unique.values() if daemon.pid is not None]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and report.when in ("setup", "call"):
        for daemon in _daemons_of(item):
            report.sections.append(
                (f"{daemon.name} {daemon.tcp_address} log", daemon.log_tail(LOG_TAIL_LINES))
            )
    return report


@pytest.fixture
def nsqd_factory() -> Iterator[NsqdFactory]:
    """Start nsqds with options: ``nsqd_factory(extra_args=["--msg-timeout=2s"])``."""
    with contextlib.ExitStack() as stack:

        def start(
            *,
            extra_args: Sequence[str] = (),
            lookupd_tcp_addresses: Sequence[str] = (),
            data_path: str | os.PathLike[str] | None = None,
            binary: str | None = None,
        ) -> NsqdProcess:
            nsqd = NsqdProcess(
                extra_args=extra_args,
                lookupd_tcp_addresses=lookupd_tcp_addresses,
                data_path=data_path,
                binary=binary,
            )
            return stack.enter_context(nsqd)

        yield start


@pytest.fixture
def nsqd(nsqd_factory: NsqdFactory) -> NsqdProcess:
    """A started nsqd with default options, closed after the test."""
    return nsqd_factory()


@pytest.fixture
def nsqlookupd() -> Iterator[NsqlookupdProcess]:
    """A started nsqlookupd, closed after the test."""
    with NsqlookupdProcess() as lookupd:
        yield lookupd


@pytest.fixture
def nsq_cluster_factory() -> Iterator[NsqClusterFactory]:
    """Start clusters: ``nsq_cluster_factory(nsqd_count=2, lookupd_count=2)``."""
    with contextlib.ExitStack() as stack:

        def start(
            nsqd_count: int = 3,
            lookupd_count: int = 1,
            *,
            extra_args: Sequence[str] = (),
            lookupd_extra_args: Sequence[str] = (),
        ) -> NsqCluster:
            cluster = NsqCluster(
                nsqd_count,
                lookupd_count,
                extra_args=extra_args,
                lookupd_extra_args=lookupd_extra_args,
            )
            return stack.enter_context(cluster)

        yield start


@pytest.fixture
def nsq_cluster(nsq_cluster_factory: NsqClusterFactory) -> NsqCluster:
    """Three nsqds registered with one nsqlookupd, closed after the test."""
    return nsq_cluster_factory()


_databases = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresProcess]:
    """A private PostgreSQL server (initdb in a temp dir, a free loopback port) for the
    session; stopped and removed at the end."""
    with PostgresProcess() as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresProcess) -> str:
    """The DSN of a new, empty database on :func:`postgres_server`, for one test."""
    import asyncio

    import asyncpg

    name = f"test_{os.getpid()}_{next(_databases)}"

    async def create() -> None:
        conn = await asyncpg.connect(postgres_server.dsn)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()

    # in a thread of its own: an async test may already be running a loop in this one
    worker = threading.Thread(target=asyncio.run, args=(create(),))
    worker.start()
    worker.join()
    return postgres_server.dsn.rsplit("/", 1)[0] + "/" + name
