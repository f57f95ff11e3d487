"""The supervisor's HTTP port: ``/metrics``, ``/healthz`` and ``/readyz``.

``/healthz`` (liveness) answers 200 while the supervisor's loop runs (it is answering) and no
running worker process has been silent for ``--heartbeat-timeout`` (each reports every
second from its loop, so silence means a loop stuck in CPU-bound or blocking code). It never
depends on nsqd: an nsqd outage must not make an orchestrator restart every consumer.

``/readyz`` (readiness) answers 200 when every worker process has booted, has at least one
nsqd connection (or built no Reader) and is not draining; 503 before the first connection,
while a process restarts, and from the first SIGTERM on. Both answer a JSON body describing
each process.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from .metrics import render
from .supervisor import Supervisor

__all__ = ["start_server"]

logger = logging.getLogger("rxnsq.worker.http")


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Probes come every few seconds: a line each only at debug level."""
    request = handler.request
    logger.debug("%d %s %s", handler.get_status(), request.method, request.uri)


class _Handler(tornado.web.RequestHandler):
    supervisor: Supervisor

    def initialize(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def _answer(self, ok: bool, body: dict[str, Any]) -> None:
        self.set_status(200 if ok else 503)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class _Health(_Handler):
    def get(self) -> None:
        ok, processes = self.supervisor.alive()
        self._answer(ok, {"alive": ok, "processes": processes})


class _Ready(_Handler):
    def get(self) -> None:
        ok, processes = self.supervisor.ready()
        self._answer(ok, {"ready": ok, "processes": processes})


class _Metrics(_Handler):
    def get(self) -> None:
        body, content_type = render(self.supervisor)
        self.set_header("Content-Type", content_type)
        self.finish(body)


def start_server(supervisor: Supervisor, host: str, port: int) -> tuple[Any, int]:
    """Listen on ``host:port`` (0: any free port); the server and the port it got."""
    args = {"supervisor": supervisor}
    app = tornado.web.Application(
        [("/metrics", _Metrics, args), ("/healthz", _Health, args), ("/readyz", _Ready, args)],
        log_function=_log_request,
    )
    server = tornado.httpserver.HTTPServer(app)
    sockets = tornado.netutil.bind_sockets(port, host)
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]
