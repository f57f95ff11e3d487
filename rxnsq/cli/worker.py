"""rxnsq: run a pipeline in production.

  rxnsq worker MODULE:FACTORY [options]

runs FACTORY (a function of a WorkerContext that builds Readers and Writers with ctx.reader()
and ctx.writer()) in --processes worker processes under a supervisor that restarts a crashed
one, drains them all on SIGTERM within --drain-timeout, and serves Prometheus /metrics,
/healthz and /readyz on --metrics-port. Every option also reads from an RXNSQ_* environment
variable (a flag wins). See docs/worker.md.

examples:
  rxnsq worker myapp.pipelines:build --topic clicks --channel etl \\
      --lookupd-http-address 127.0.0.1:4161 --processes 2 --metrics-port 9117
  RXNSQ_LOOKUPD_HTTP_ADDRESSES=127.0.0.1:4161 RXNSQ_TOPIC=clicks RXNSQ_CHANNEL=etl \\
      rxnsq worker myapp.pipelines:build --log-format json

exit status: 0 after a clean drain on SIGTERM (or when every pipeline ended on its own);
130 after SIGINT; 128+N when a second signal N cut the drain short; 1 when processes kept
crashing; 2 for a usage error (a bad flag, variable or MODULE:FACTORY); 3 when the factory
raised.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from .._version import __version__
from ..worker import logs, metrics
from ..worker.options import WorkerOptions, add_arguments, from_args
from ..worker.supervisor import Supervisor

PROG = "rxnsq"

logger = logging.getLogger("rxnsq.worker.supervisor")


def build_parser() -> argparse.ArgumentParser:
    """The ``rxnsq`` parser with its ``worker`` command."""
    return _parsers()[0]


def _parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(__doc__ or "").strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    worker = commands.add_parser(
        "worker",
        help="run MODULE:FACTORY in supervised worker processes",
        description="Run MODULE:FACTORY in supervised worker processes (see docs/worker.md).",
    )
    add_arguments(worker)
    return parser, worker


def parse(argv: list[str] | None = None) -> WorkerOptions:
    """Options from the command line and the environment (exits 2 on a usage error)."""
    parser, worker_parser = _parsers()
    args = parser.parse_args(argv)
    options = from_args(worker_parser, args)
    if options.metrics_port is not None and not metrics.available():
        worker_parser.error(
            "--metrics-port serves Prometheus metrics with prometheus_client, which is not "
            "installed: pip install 'rxnsq[metrics]'"
        )
    return options


async def _serve(options: WorkerOptions) -> int:
    supervisor = Supervisor(options)
    server = None
    if options.metrics_port is not None:
        from ..worker.http import start_server

        try:
            server, port = start_server(supervisor, options.metrics_host, options.metrics_port)
        except OSError as exc:
            logger.error("cannot listen on %s:%d: %s", options.metrics_host,
                         options.metrics_port, exc, extra={"event": "listen_failed"})  # fmt: skip
            return 1
        logger.info("serving /metrics, /healthz and /readyz on http://%s:%d",
                    options.metrics_host, port, extra={"event": "listening"})  # fmt: skip
    try:
        return await supervisor.run()
    finally:
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    logs.setup("supervisor", options.log_format, options.log_level)
    code = asyncio.run(_serve(options))
    logger.info("exiting", extra={"event": "exit", "exit_code": code})
    return code


if __name__ == "__main__":
    sys.exit(main())
