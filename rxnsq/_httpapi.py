"""What rxnsq's two HTTP users (:mod:`rxnsq.lookupd`, :mod:`rxnsq.http`) share.

Address parsing, one request with tornado's ``AsyncHTTPClient`` (failures without an HTTP
reply become :class:`~rxnsq.errors.NSQConnectionError`), the server's reason for an error
reply, and a close that lets requests in flight end first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
import weakref
from collections.abc import Mapping
from typing import Final

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.httputil import HTTPInputError
from tornado.iostream import StreamClosedError
from tornado.simple_httpclient import HTTPStreamClosedError

from ._version import __version__
from .errors import ConnectTimeoutError, NSQConnectionError

__all__ = [
    "ACCEPT_V1",
    "USER_AGENT",
    "close_client",
    "fetch",
    "reply_reason",
]

logger = logging.getLogger(__name__)

#: Asks nsqd / nsqlookupd 0.2.29-0.3.x for the bare 1.x JSON instead of the ``data`` wrapper;
#: 1.x servers answer in that format anyway.
ACCEPT_V1: Final = "application/vnd.nsq; version=1.0"
USER_AGENT: Final = f"rxnsq/{__version__}"

#: Errors tornado raises (even with ``raise_error=False``) when no HTTP reply came.
_TRANSPORT_ERRORS: Final = (OSError, HTTPClientError, StreamClosedError, HTTPInputError)
#: Of those, the ones a TCP listener causes when it reads "GET /..." as a protocol magic and
#: hangs up (nsqd and nsqlookupd both do): worth a hint about the port.
_HUNG_UP: Final = (ConnectionResetError, StreamClosedError, HTTPStreamClosedError, HTTPInputError)

# Requests in flight per client. tornado cannot abort a fetch, and one left running when the
# loop stops leaks its socket, so close_client() waits for them (each ends by its timeout).
_in_flight: weakref.WeakKeyDictionary[AsyncHTTPClient, set[asyncio.Future[HTTPResponse]]] = (
    weakref.WeakKeyDictionary()
)


def reply_reason(response: HTTPResponse) -> str:
    """The server's reason for a reply: 1.x ``{"message": ...}``, 0.x ``status_txt``, or text."""
    body = response.body or b""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("message", "status_txt"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return value
    text = body.decode("utf-8", errors="replace").strip()
    if len(text) > 200:
        text = text[:200] + "..."
    return text or response.reason or f"HTTP {response.code}"


async def fetch(
    client: AsyncHTTPClient,
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    connect_timeout: float,
    request_timeout: float,
) -> HTTPResponse:
    """Do one request and return the reply whatever its status.

    Raises :class:`NSQConnectionError` (:class:`ConnectTimeoutError` for a connect timeout)
    when no HTTP reply came. If the caller is cancelled, the request still runs to its end
    (tornado cannot abort it) and :func:`close_client` waits for it.
    """
    request = HTTPRequest(
        url,
        method=method,
        body=b"" if body is None and method in ("POST", "PUT") else body,
        headers={"Accept": ACCEPT_V1, **(headers or {})},
        connect_timeout=connect_timeout,
        request_timeout=request_timeout,
        user_agent=USER_AGENT,
        follow_redirects=False,
    )
    future = client.fetch(request, raise_error=False)
    pending = _in_flight.setdefault(client, set())
    pending.add(future)

    def done(finished: asyncio.Future[HTTPResponse]) -> None:
        pending.discard(finished)
        if not finished.cancelled():
            finished.exception()  # retrieved, also when the caller was cancelled meanwhile

    future.add_done_callback(done)
    logger.debug("%s %s", method, url)
    try:
        # shield: cancelling the caller must not mark the request done while its socket is open
        return await asyncio.shield(future)
    except _TRANSPORT_ERRORS as exc:
        raise _transport_error(method, url, exc) from exc


def _transport_error(method: str, url: str, exc: BaseException) -> NSQConnectionError:
    netloc = urllib.parse.urlsplit(url).netloc
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, HTTPClientError) and exc.code == 599 and "connect" in reason.lower():
        return ConnectTimeoutError(f"{method} {url}: no connection to {netloc}: {reason}")
    text = f"{method} {url}: no HTTP reply from {netloc}: {reason}"
    if isinstance(exc, _HUNG_UP):
        text += " (the peer hung up without an HTTP reply: is that a TCP port, not the HTTP one?)"
    return NSQConnectionError(text)


async def close_client(client: AsyncHTTPClient) -> None:
    """Close ``client`` once its requests in flight (started by :func:`fetch`) have ended."""
    pending = _in_flight.pop(client, None)
    if pending:
        logger.debug("waiting for %d HTTP requests in flight before closing", len(pending))
        await asyncio.wait(pending)
    client.close()
