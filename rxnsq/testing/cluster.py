"""Several real nsqds registered with real nsqlookupds, for discovery and failover tests."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self

from .daemons import NsqdProcess, NsqlookupdProcess, wait_until

logger = logging.getLogger(__name__)

__all__ = ["NsqCluster", "NsqClusterFactory"]


class NsqCluster:
    """``nsqd_count`` nsqds, each registered with every one of ``lookupd_count`` nsqlookupds.

    :meth:`start` (or ``with``) starts the lookupds first, then the nsqds, and returns once
    every lookupd lists every nsqd in ``/nodes``. Topic registration stays asynchronous: poll
    ``lookupd.producers(topic)`` (e.g. with :func:`~rxnsq.testing.wait_until`) after publishing.
    """

    def __init__(
        self,
        nsqd_count: int = 3,
        lookupd_count: int = 1,
        *,
        extra_args: Sequence[str] = (),
        lookupd_extra_args: Sequence[str] = (),
    ) -> None:
        if nsqd_count < 0 or lookupd_count < 0:
            raise ValueError("nsqd_count and lookupd_count must be >= 0")
        self._nsqd_count = nsqd_count
        self._lookupd_count = lookupd_count
        self._extra_args = tuple(extra_args)
        self._lookupd_extra_args = tuple(lookupd_extra_args)
        self.nsqds: list[NsqdProcess] = []
        self.lookupds: list[NsqlookupdProcess] = []

    def start(self, timeout: float = 10.0) -> Self:
        """Start every daemon (no-op once started); on failure close what did start."""
        if self.lookupds or self.nsqds:
            return self
        try:
            for _ in range(self._lookupd_count):
                lookupd = NsqlookupdProcess(extra_args=self._lookupd_extra_args)
                self.lookupds.append(lookupd)
                lookupd.start(timeout)
            for _ in range(self._nsqd_count):
                self.add_nsqd(timeout=timeout)
        except BaseException:
            self.close()
            raise
        logger.info("started %r", self)
        return self

    def add_nsqd(
        self, *, extra_args: Sequence[str] | None = None, timeout: float = 10.0
    ) -> NsqdProcess:
        """Start one more nsqd (default: the cluster's ``extra_args``) and wait until every
        lookupd has registered it."""
        nsqd = NsqdProcess(
            extra_args=self._extra_args if extra_args is None else extra_args,
            lookupd_tcp_addresses=self.lookupd_tcp_addresses,
        )
        self.nsqds.append(nsqd)
        nsqd.start(timeout)

        def registered() -> bool:
            return all(
                any(node["tcp_port"] == nsqd.tcp_port for node in lookupd.nodes())
                for lookupd in self.lookupds
            )

        wait_until(registered, timeout=timeout, message=f"every lookupd to register {nsqd!r}")
        return nsqd

    def close(self) -> None:
        """Close every nsqd, then every lookupd (so nsqds never log a lost lookupd)."""
        with contextlib.ExitStack() as stack:
            for daemon in [*self.lookupds, *self.nsqds]:  # ExitStack closes in reverse
                stack.callback(daemon.close)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def nsqd_tcp_addresses(self) -> list[str]:
        return [nsqd.tcp_address for nsqd in self.nsqds]

    @property
    def nsqd_http_urls(self) -> list[str]:
        return [nsqd.http_url for nsqd in self.nsqds]

    @property
    def lookupd_tcp_addresses(self) -> list[str]:
        return [lookupd.tcp_address for lookupd in self.lookupds]

    @property
    def lookupd_http_addresses(self) -> list[str]:
        return [lookupd.http_address for lookupd in self.lookupds]

    @property
    def lookupd_http_urls(self) -> list[str]:
        return [lookupd.http_url for lookupd in self.lookupds]

    def __repr__(self) -> str:
        return f"<NsqCluster nsqds={self.nsqds!r} lookupds={self.lookupds!r}>"


class NsqClusterFactory(Protocol):
    """Type of the ``nsq_cluster_factory`` fixture: starts an :class:`NsqCluster`."""

    def __call__(
        self,
        nsqd_count: int = 3,
        lookupd_count: int = 1,
        *,
        extra_args: Sequence[str] = (),
        lookupd_extra_args: Sequence[str] = (),
    ) -> NsqCluster: ...
