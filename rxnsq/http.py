"""nsqd's and nsqlookupd's HTTP APIs, async on tornado's ``AsyncHTTPClient``.

Parameters go in the query string: nsqd reads nothing else (a form-encoded body is ignored).
Names and bodies are checked before sending, with the rules of :mod:`rxnsq.protocol`, so bad
input fails without IO. Errors are typed:

- no HTTP reply (refused, reset, timed out): :class:`~rxnsq.errors.NSQConnectionError`
  (:class:`~rxnsq.errors.ConnectTimeoutError` when connecting timed out);
- a non-2xx reply: :class:`~rxnsq.errors.HTTPAPIError` with ``status`` and nsqd's reason
  (``message``, e.g. ``TOPIC_NOT_FOUND``). A refused body (``MSG_EMPTY``, ``MSG_TOO_BIG``,
  ``BODY_TOO_BIG``, ``BAD_MESSAGE``, ``BAD_BODY``) is an
  :class:`~rxnsq.errors.HTTPInvalidBodyError`, which is also an
  :class:`~rxnsq.errors.InvalidBodyError`, the error of the local check; a refused name
  (``INVALID_TOPIC``, ``INVALID_ARG_TOPIC``, ``INVALID_ARG_CHANNEL``) likewise an
  :class:`~rxnsq.errors.HTTPInvalidNameError` / :class:`~rxnsq.errors.InvalidNameError`.
  We chose the ``Invalid*`` classes over the ``ProtocolError`` ones (``BadMessageError``...)
  because those stand for TCP error frames, which carry a fatal/non-fatal meaning HTTP has not.

A client makes its ``AsyncHTTPClient`` on the first request (constructing one does no IO);
``close()`` lets requests in flight end, then closes it. Replies are read in the 1.x format,
which the ``Accept: application/vnd.nsq; version=1.0`` header also gets from 0.2.29-0.3.x
servers; only :meth:`LookupdHTTPClient.lookup` still reads the older wrapped shape.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, ClassVar, Self

from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from . import _httpapi, lookupd
from .address import parse_http_address
from .config import check_range
from .errors import HTTPAPIError, error_from_http
from .lookupd import Producer
from .protocol import check_body, check_channel_name, check_topic_name, encode_mpub_body

__all__ = ["Body", "LookupdHTTPClient", "NsqdHTTPClient"]

logger = logging.getLogger(__name__)

_Params = Mapping[str, str]
#: A message body: bytes-like, or text sent as UTF-8 (as the Writer takes it).
Body = bytes | bytearray | memoryview | str


def _body(body: Body) -> bytes:
    return check_body(body.encode() if isinstance(body, str) else body)


class _HTTPAPIClient:
    """The HTTP plumbing both clients share: base URL, timeouts, typed errors, close."""

    _option: ClassVar[str]
    _example: ClassVar[str]

    def __init__(
        self,
        address_or_url: str,
        *,
        connect_timeout: float = 1.0,
        request_timeout: float = 5.0,
        client: AsyncHTTPClient | None = None,
    ) -> None:
        parts = parse_http_address(address_or_url, self._option, self._example)
        check_range("connect_timeout", connect_timeout, 0.001, 3600.0)
        check_range("request_timeout", request_timeout, 0.001, 3600.0)
        #: The base URL requests go to, e.g. ``"http://127.0.0.1:4151"``.
        self.url = urllib.parse.urlunsplit(
            (parts.scheme, parts.netloc, parts.path.rstrip("/"), "", "")
        )
        self.connect_timeout = float(connect_timeout)
        self.request_timeout = float(request_timeout)
        self._client = client
        self._owns_client = client is None
        self._closed = False
        self._headers: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}{' closed' if self._closed else ''}>"

    def _http(self) -> AsyncHTTPClient:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self._client is None:
            self._client = AsyncHTTPClient(force_instance=True)
        return self._client

    async def _request(
        self,
        method: str,
        path: str,
        params: _Params | None = None,
        body: bytes | None = None,
    ) -> HTTPResponse:
        """Send one request; a non-2xx reply raises the typed :class:`HTTPAPIError`."""
        url = self.url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        response = await _httpapi.fetch(
            self._http(),
            method,
            url,
            body=body,
            headers=self._headers,
            connect_timeout=self.connect_timeout,
            request_timeout=self.request_timeout,
        )
        if not 200 <= response.code < 300:
            raise error_from_http(method, url, response.code, _httpapi.reply_reason(response))
        return response

    async def _post(self, path: str, params: _Params, body: bytes = b"") -> None:
        await self._request("POST", path, params, body)

    async def _get_json(self, path: str, params: _Params | None = None) -> Any:
        response = await self._request("GET", path, params)
        try:
            data = json.loads(response.body or b"")
        except ValueError:
            raise HTTPAPIError(
                "GET", response.effective_url, response.code, "the reply is not JSON"
            ) from None
        return data

    async def _get_text(self, path: str) -> str:
        response = await self._request("GET", path)
        return (response.body or b"").decode("utf-8", errors="replace")

    async def ping(self) -> None:
        """``GET /ping``: returns when the daemon answers ``OK``; an unhealthy nsqd answers 500
        ``NOK - <reason>``, raised as :class:`HTTPAPIError`."""
        text = await self._get_text("/ping")
        if text.strip() != "OK":
            raise HTTPAPIError("GET", self.url + "/ping", 200, text.strip() or "empty reply")

    async def info(self) -> dict[str, Any]:
        """``GET /info``: version and, for nsqd, its addresses and limits (durations in ns)."""
        info: dict[str, Any] = await self._get_json("/info")
        return info

    async def close(self) -> None:
        """Close the client (after requests in flight end); later calls raise RuntimeError."""
        if not self._closed:
            logger.debug("closing %r", self)
        self._closed = True
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await _httpapi.close_client(client)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _topic(topic: str) -> dict[str, str]:
    return {"topic": check_topic_name(topic)}


def _channel(topic: str, channel: str) -> dict[str, str]:
    return {"topic": check_topic_name(topic), "channel": check_channel_name(channel)}


class NsqdHTTPClient(_HTTPAPIClient):
    """nsqd's HTTP API at ``address_or_url`` (``"127.0.0.1:4151"`` or ``"http://host:4151"``).

    ``connect_timeout`` and ``request_timeout`` are seconds; ``client`` is an
    ``AsyncHTTPClient`` to share (left open by ``close()``).
    """

    _option = "nsqd_http_address"
    _example = "127.0.0.1:4151"

    async def stats(
        self,
        topic: str | None = None,
        channel: str | None = None,
        *,
        include_clients: bool = True,
    ) -> dict[str, Any]:
        """``GET /stats?format=json``, optionally for one topic (and one of its channels)."""
        params = {"format": "json"}
        if topic is not None:
            params["topic"] = check_topic_name(topic)
        if channel is not None:
            if topic is None:
                raise ValueError("stats(channel=...) needs the topic too")
            params["channel"] = check_channel_name(channel)
        if not include_clients:
            params["include_clients"] = "false"
        stats: dict[str, Any] = await self._get_json("/stats", params)
        return stats

    async def pub(self, topic: str, body: Body, defer: float | None = None) -> None:
        """Publish one message (``POST /pub``); nsqd creates the topic if needed.

        ``defer`` (seconds) holds the message back that long; nsqd 1.3.0 refuses more than its
        ``--max-req-timeout`` (``INVALID_DEFER``).
        """
        params = _topic(topic)
        data = _body(body)
        if defer is not None:
            check_range("defer", defer, 0.0, 86400.0 * 365)
            params["defer"] = str(round(defer * 1000))
        await self._post("/pub", params, data)

    async def mpub(self, topic: str, bodies: Iterable[Body]) -> None:
        """Publish several messages atomically (``POST /mpub?binary=true``).

        Binary mode carries any bytes, newlines included; the text mode would split on them
        and silently drop empty lines. nsqd 1.3.0 has no ``defer`` for ``/mpub``.
        """
        params = _topic(topic)
        params["binary"] = "true"
        await self._post("/mpub", params, encode_mpub_body([_body(body) for body in bodies]))

    async def create_topic(self, topic: str) -> None:
        """Create ``topic`` (no error if it exists)."""
        await self._post("/topic/create", _topic(topic))

    async def delete_topic(self, topic: str) -> None:
        """Delete ``topic``, its channels and messages (404 ``TOPIC_NOT_FOUND`` if missing)."""
        await self._post("/topic/delete", _topic(topic))

    async def empty_topic(self, topic: str) -> None:
        """Drop the messages queued in ``topic`` (not those already in its channels)."""
        await self._post("/topic/empty", _topic(topic))

    async def pause_topic(self, topic: str) -> None:
        """Stop ``topic`` from passing messages to its channels; they queue in the topic."""
        await self._post("/topic/pause", _topic(topic))

    async def unpause_topic(self, topic: str) -> None:
        """Undo :meth:`pause_topic`."""
        await self._post("/topic/unpause", _topic(topic))

    async def create_channel(self, topic: str, channel: str) -> None:
        """Create ``channel``; nsqd needs ``topic`` to exist (404 ``TOPIC_NOT_FOUND``)."""
        await self._post("/channel/create", _channel(topic, channel))

    async def delete_channel(self, topic: str, channel: str) -> None:
        """Delete ``channel`` and its messages (404 ``CHANNEL_NOT_FOUND`` if missing)."""
        await self._post("/channel/delete", _channel(topic, channel))

    async def empty_channel(self, topic: str, channel: str) -> None:
        """Drop every message queued in ``channel``."""
        await self._post("/channel/empty", _channel(topic, channel))

    async def pause_channel(self, topic: str, channel: str) -> None:
        """Stop delivering ``channel`` to its consumers (RDY notwithstanding)."""
        await self._post("/channel/pause", _channel(topic, channel))

    async def unpause_channel(self, topic: str, channel: str) -> None:
        """Undo :meth:`pause_channel`."""
        await self._post("/channel/unpause", _channel(topic, channel))


class LookupdHTTPClient(_HTTPAPIClient):
    """nsqlookupd's HTTP API at ``address_or_url`` (``"127.0.0.1:4161"`` or a URL).

    :meth:`lookup` is :func:`rxnsq.lookupd.lookup` (404 is ``[]``, other failures
    :class:`~rxnsq.errors.LookupdError`); the other calls raise as described in this module.
    ``auth_secret`` goes out as ``Authorization: Bearer <secret>`` on every request.
    """

    _option = "lookupd_http_address"
    _example = "127.0.0.1:4161"

    def __init__(
        self,
        address_or_url: str,
        *,
        connect_timeout: float = 1.0,
        request_timeout: float = 5.0,
        auth_secret: str | bytes | None = None,
        client: AsyncHTTPClient | None = None,
    ) -> None:
        super().__init__(
            address_or_url,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
            client=client,
        )
        self._auth_secret = auth_secret
        if auth_secret is not None:
            secret = auth_secret.decode() if isinstance(auth_secret, bytes) else auth_secret
            self._headers["Authorization"] = f"Bearer {secret}"

    async def lookup(self, topic: str) -> list[Producer]:
        """The nsqds that hold ``topic`` (``GET /lookup``), de-duplicated; ``[]`` if unknown."""
        return await lookupd.lookup(
            self.url + "/lookup",
            topic,
            connect_timeout=self.connect_timeout,
            request_timeout=self.request_timeout,
            auth_secret=self._auth_secret,
            client=self._http(),
        )

    async def topics(self) -> list[str]:
        """Every topic any nsqd registered (``GET /topics``)."""
        data = await self._get_json("/topics")
        return list(data["topics"])

    async def channels(self, topic: str) -> list[str]:
        """The channels of ``topic`` (``GET /channels``); ``[]`` for an unknown topic."""
        data = await self._get_json("/channels", _topic(topic))
        return list(data["channels"])

    async def nodes(self) -> list[dict[str, Any]]:
        """Every registered nsqd (``GET /nodes``), as nsqlookupd describes it: addresses,
        ports, version, ``topics`` and a ``tombstones`` flag per topic."""
        data = await self._get_json("/nodes")
        return list(data["producers"])

    async def create_topic(self, topic: str) -> None:
        """Register ``topic`` with no producer (so ``/lookup`` finds it, with no producers)."""
        await self._post("/topic/create", _topic(topic))

    async def delete_topic(self, topic: str) -> None:
        """Forget ``topic`` (no error if unknown); nsqds that still have it register it again."""
        await self._post("/topic/delete", _topic(topic))

    async def create_channel(self, topic: str, channel: str) -> None:
        """Register ``channel`` (and ``topic`` if needed) with no producer."""
        await self._post("/channel/create", _channel(topic, channel))

    async def delete_channel(self, topic: str, channel: str) -> None:
        """Forget ``channel`` (404 ``CHANNEL_NOT_FOUND`` if unknown)."""
        await self._post("/channel/delete", _channel(topic, channel))

    async def tombstone_topic_producer(self, topic: str, node: str | Producer) -> None:
        """Hide one nsqd from ``/lookup`` for ``topic`` during ``--tombstone-lifetime``.

        ``node`` is ``"<broadcast_address>:<http_port>"`` or a :class:`Producer`. nsqlookupd
        answers 200 even when no producer matches, so a wrong node is silently ignored.
        """
        if isinstance(node, Producer):
            node = f"{node.broadcast_address}:{node.http_port}"
        params = _topic(topic)
        params["node"] = node
        await self._post("/topic/tombstone", params)
