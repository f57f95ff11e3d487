"""Real nsqd / nsqlookupd processes for tests: rxnsq's own suite and its users' suites.

Needs the NSQ binaries (``bash scripts/install-nsq``, the official release on ``PATH``, or
``$RXNSQ_NSQ_BIN``). With pytest, the fixtures of :mod:`rxnsq.testing.plugin` wrap these classes;
elsewhere use them directly::

    with NsqdProcess(extra_args=["--msg-timeout=2s"]) as nsqd:
        nsqd.http_pub("clicks", b"hello")
"""

from .cluster import NsqCluster, NsqClusterFactory
from .daemons import (
    BIN_ENV_VAR,
    DaemonError,
    DaemonHTTPError,
    DaemonProcess,
    NsqdFactory,
    NsqdProcess,
    NsqlookupdProcess,
    eventually,
    find_binary,
    wait_until,
)
from .postgres import PostgresError, PostgresProcess, find_postgres
from .publishing import publish

__all__ = [
    "BIN_ENV_VAR",
    "DaemonError",
    "DaemonHTTPError",
    "DaemonProcess",
    "NsqCluster",
    "NsqClusterFactory",
    "NsqdFactory",
    "NsqdProcess",
    "NsqlookupdProcess",
    "PostgresError",
    "PostgresProcess",
    "eventually",
    "find_binary",
    "find_postgres",
    "publish",
    "wait_until",
]
