"""nsqlookupd discovery: which nsqd hold a topic, once (:func:`lookup`) or polled.

:func:`lookup` asks one nsqlookupd over HTTP (tornado's ``AsyncHTTPClient``) and returns the
:class:`Producer` list; :class:`LookupdPoller` repeats that on the running loop with jitter and
hands each result to a callback. Both follow the client rules from nsq's docs and go-nsq:
connect to ``broadcast_address:tcp_port`` (never ``remote_address``), de-duplicate on it,
treat 404 ``TOPIC_NOT_FOUND`` as "no producers yet", ask for the 1.x format but read the
wrapped 0.x one too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random as _random
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from . import _httpapi
from .address import http_address_list, join_host_port, parse_http_address
from .config import check_range
from .errors import ConfigError, LookupdError, NSQConnectionError
from .protocol import check_topic_name

__all__ = ["LookupdPoller", "Producer", "lookup", "lookupd_url"]

logger = logging.getLogger(__name__)

_OPTION = "lookupd_http_addresses"


def lookupd_url(address: str, topic: str) -> str:
    """The ``/lookup`` URL for ``topic`` on the nsqlookupd at ``address``.

    ``address`` is ``"host:port"``, ``"[v6]:port"`` or a URL; ``http://`` is added when the
    scheme is missing, ``/lookup`` when the path is empty, and ``topic`` (url-encoded) to any
    query already there. The port is required (:class:`~rxnsq.errors.ConfigError` naming
    ``lookupd_http_addresses`` otherwise), as go-nsq requires it.
    """
    parts = parse_http_address(address, _OPTION, "127.0.0.1:4161")
    check_topic_name(topic)
    kept = [
        pair
        for pair in parts.query.split("&")
        if pair and urllib.parse.unquote_plus(pair.partition("=")[0]) != "topic"
    ]
    query = "&".join([*kept, urllib.parse.urlencode({"topic": topic})])
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path or "/lookup", query, ""))


def _port(value: object, name: str, *, required: bool = True) -> int:
    if value is None and not required:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        raise ValueError(f"{name} {value!r} is not a port number")
    return value


@dataclass(frozen=True, slots=True)
class Producer:
    """One nsqd that nsqlookupd lists for a topic: where to connect, and what it runs."""

    broadcast_address: str
    tcp_port: int
    http_port: int = 0
    hostname: str = ""
    version: str = ""

    @property
    def tcp_address(self) -> str:
        """Where to open the NSQ TCP connection: ``"host:port"`` (``"[v6]:port"``)."""
        return join_host_port(self.broadcast_address, self.tcp_port)

    @property
    def http_address(self) -> str:
        """nsqd's HTTP API: ``"host:port"`` (``"[v6]:port"``)."""
        return join_host_port(self.broadcast_address, self.http_port)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Producer:
        """A producer from a ``/lookup`` entry; a very old lookupd gives ``address`` instead of
        ``broadcast_address``. Raises ValueError for an entry without an address or TCP port."""
        host = data.get("broadcast_address") or data.get("address")
        if not isinstance(host, str) or not host:
            raise ValueError("producer has no broadcast_address (nor address)")
        return cls(
            broadcast_address=host,
            tcp_port=_port(data.get("tcp_port"), "tcp_port"),
            http_port=_port(data.get("http_port"), "http_port", required=False),
            hostname=str(data.get("hostname") or ""),
            version=str(data.get("version") or ""),
        )


async def lookup(
    address: str,
    topic: str,
    *,
    connect_timeout: float = 1.0,
    request_timeout: float = 2.0,
    auth_secret: str | bytes | None = None,
    client: AsyncHTTPClient | None = None,
) -> list[Producer]:
    """The nsqds that the nsqlookupd at ``address`` lists for ``topic``, de-duplicated.

    An unknown topic (404 ``TOPIC_NOT_FOUND``) gives ``[]``: nobody has published it yet.
    Every other failure, including any other 404 (nsqd's HTTP port answers ``NOT_FOUND``),
    raises :class:`~rxnsq.errors.LookupdError` naming the URL and the status or reason.
    ``auth_secret`` is sent as ``Authorization: Bearer <secret>`` (for a lookupd behind an
    authenticating proxy). ``client`` is reused and left open; without one, a client is made
    for this call and closed (after the request ends, even when the call is cancelled).
    """
    url = lookupd_url(address, topic)
    headers = {}
    if auth_secret is not None:
        secret = auth_secret.decode() if isinstance(auth_secret, bytes) else auth_secret
        headers["Authorization"] = f"Bearer {secret}"
    http = client if client is not None else AsyncHTTPClient(force_instance=True)
    try:
        response = await _httpapi.fetch(
            http,
            "GET",
            url,
            headers=headers,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
        )
    except NSQConnectionError as exc:
        raise LookupdError(url, str(exc)) from exc
    finally:
        if client is None:
            await _httpapi.close_client(http)
    return _parse_lookup(url, response)


def _parse_lookup(url: str, response: HTTPResponse) -> list[Producer]:
    """Producers from a ``/lookup`` reply, 1.x bare or 0.x wrapped in ``data``."""
    status = response.code
    if not 200 <= status < 300:
        reason = _httpapi.reply_reason(response)
        # 404 on 1.x; a 0.x lookupd without the Accept header said so with a 500
        if reason == "TOPIC_NOT_FOUND":
            logger.debug("%s: no producers yet", url)
            return []
        if status == 404:  # e.g. nsqd's HTTP port: {"message":"NOT_FOUND"}
            reason += " (is this the HTTP address of an nsqlookupd?)"
        raise LookupdError(url, reason, status)
    try:
        data = json.loads(response.body or b"")
    except ValueError:
        raise LookupdError(url, "the reply is not JSON", status) from None
    if isinstance(data, dict) and "producers" not in data and isinstance(data.get("data"), dict):
        if data.get("status_code", 200) != 200:  # 0.x put the real status in the wrapper
            reason = str(data.get("status_txt") or data.get("status_code"))
            if reason == "TOPIC_NOT_FOUND":
                return []
            raise LookupdError(url, reason, status)
        data = data["data"]
    entries = data.get("producers") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise LookupdError(url, "the reply has no producers list", status)
    producers: dict[str, Producer] = {}
    for entry in entries:
        try:
            producer = Producer.from_json(entry)
        except (ValueError, TypeError, AttributeError) as exc:
            logger.warning("%s: skipping producer entry %r: %s", url, entry, exc)
            continue
        producers.setdefault(producer.tcp_address, producer)
    return list(producers.values())


class LookupdPoller:
    """Polls nsqlookupd for ``topic`` on the running loop and reports the producers.

    ``start()`` queries at once, waits a random jitter in ``[0, poll_jitter * poll_interval)``
    (so consumers restarted together do not poll in step), then queries every
    ``poll_interval`` seconds. Each successful query calls ``on_producers`` with that lookupd's
    list (possibly empty); each failed one calls ``on_error`` with the
    :class:`~rxnsq.errors.LookupdError`.

    Each tick asks ONE lookupd, round-robin, as go-nsq and pynsq do, rather than the union of
    all of them that nsq's docs suggest: nsqd registers with every lookupd, so one answer is
    normally complete, the load on lookupds does not grow with their number, and a caller that
    keeps the connections it already has accumulates the union over a few ticks anyway. When
    that lookupd fails, the next one is tried, up to one attempt per lookupd per tick.

    ``query_now()`` queries at once (e.g. when a connection dropped); it joins a query already
    running instead of starting a second. ``random`` (its ``random()``) and ``sleep`` (the
    coroutine function used for every wait) are injectable so tests can check the schedule
    without waiting for it.
    """

    def __init__(
        self,
        addresses: str | Sequence[str],
        topic: str,
        *,
        on_producers: Callable[[list[Producer]], object],
        on_error: Callable[[Exception], object] | None = None,
        poll_interval: float = 60.0,
        poll_jitter: float = 0.3,
        connect_timeout: float = 1.0,
        request_timeout: float = 2.0,
        auth_secret: str | bytes | None = None,
        client: AsyncHTTPClient | None = None,
        random: _random.Random | None = None,
        sleep: Callable[[float], Awaitable[object]] | None = None,
    ) -> None:
        self.addresses = http_address_list(_OPTION, addresses, "127.0.0.1:4161")
        if not self.addresses:
            raise ConfigError(_OPTION, addresses, "at least one nsqlookupd HTTP address")
        self.topic = check_topic_name(topic)
        for address in self.addresses:
            lookupd_url(address, topic)  # fail now, not at the first poll
        check_range("poll_interval", poll_interval, 0.001, 86400.0)
        check_range("poll_jitter", poll_jitter, 0.0, 1.0)
        check_range("connect_timeout", connect_timeout, 0.001, 3600.0)
        check_range("request_timeout", request_timeout, 0.001, 3600.0)
        self.poll_interval = float(poll_interval)
        self.poll_jitter = float(poll_jitter)
        self.connect_timeout = float(connect_timeout)
        self.request_timeout = float(request_timeout)
        self._auth_secret = auth_secret
        self._on_producers = on_producers
        self._on_error = on_error
        self._client = client
        self._owns_client = client is None
        self._random = random if random is not None else _random.Random()
        self._sleep = sleep if sleep is not None else asyncio.sleep
        self._next = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._query: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def next_index(self) -> int:
        """The index in ``addresses`` of the nsqlookupd the next poll asks."""
        return self._next % len(self.addresses)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._task else "new"
        return f"<LookupdPoller topic={self.topic!r} lookupds={list(self.addresses)!r} {state}>"

    @property
    def running(self) -> bool:
        """Whether ``start()`` was called and ``close()`` was not."""
        return self._task is not None and not self._closed

    def start(self) -> None:
        """Start polling on the running loop (a no-op when already started)."""
        if self._closed:
            raise RuntimeError("this LookupdPoller is closed")
        if self._task is not None:
            return
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "LookupdPoller.start() needs a running asyncio loop: call it from async code"
            ) from None
        if self._client is None:
            self._client = AsyncHTTPClient(force_instance=True)
        self._task = self._loop.create_task(self._run(), name=f"rxnsq-lookupd-poll {self.topic}")

    def query_now(self) -> asyncio.Future[None]:
        """Query at once, or join the query already running; await the result if you like.

        The future never fails: errors go to ``on_error``. After ``close()`` it is a no-op.
        """
        if self._loop is None:
            raise RuntimeError("LookupdPoller.query_now() before start()")
        if self._closed:
            done: asyncio.Future[None] = self._loop.create_future()
            done.set_result(None)
            return done
        return self._query_task()

    async def close(self) -> None:
        """Stop polling and close the HTTP client this poller made.

        A query in flight is allowed to finish (bounded by ``request_timeout``), since tornado
        cannot abort a request; its result is dropped. No task is left pending.
        """
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        query = self._query
        if query is not None and query is not asyncio.current_task():
            await asyncio.wait([query])
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await _httpapi.close_client(client)

    # --- internals ---------------------------------------------------------------------------

    def _query_task(self) -> asyncio.Task[None]:
        if self._query is None or self._query.done():
            assert self._loop is not None
            self._query = self._loop.create_task(
                self._query_round(), name=f"rxnsq-lookupd-query {self.topic}"
            )
        return self._query

    async def _run(self) -> None:
        # shield: cancelling the schedule must not cancel a query mid-request (see close())
        await asyncio.shield(self._query_task())
        jitter = self._random.random() * self.poll_jitter * self.poll_interval
        logger.debug("lookupd poll for %r: first tick after %.3fs of jitter", self.topic, jitter)
        await self._sleep(jitter)
        while True:
            await self._sleep(self.poll_interval)
            await asyncio.shield(self._query_task())

    async def _query_round(self) -> None:
        """Ask the next lookupd; on failure the one after, at most once each."""
        count = len(self.addresses)
        for _ in range(count):
            if self._closed:
                return
            address = self.addresses[self._next]
            self._next = (self._next + 1) % count
            assert self._client is not None
            try:
                producers = await lookup(
                    address,
                    self.topic,
                    connect_timeout=self.connect_timeout,
                    request_timeout=self.request_timeout,
                    auth_secret=self._auth_secret,
                    client=self._client,
                )
            except LookupdError as exc:
                logger.warning("%s", exc)
                self._report_error(exc)
                continue
            except Exception as exc:
                logger.exception("lookupd query to %s failed unexpectedly", address)
                self._report_error(exc)
                continue
            if self._closed:
                return
            logger.debug("lookupd %s lists %d producers of %r", address, len(producers), self.topic)
            try:
                self._on_producers(producers)
            except Exception:
                logger.exception("on_producers callback failed")
            return
        logger.warning("no nsqlookupd answered for topic %r (tried %d)", self.topic, count)

    def _report_error(self, exc: Exception) -> None:
        if self._on_error is None or self._closed:
            return
        try:
            self._on_error(exc)
        except Exception:
            logger.exception("on_error callback failed")
