"""``rxnsq worker``, run as a user runs it: a subprocess against real nsqd and nsqlookupd.

Each test checks what the command says (exit status, log lines), what its HTTP port answers
(/metrics parsed with prometheus_client's own parser, /healthz, /readyz) and what nsqd says
happened (/stats: depth, in flight, finish counts). The factories live in
tests/worker_apps.py; what their handlers saw goes to files under the test's tmp_path.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rxnsq.testing import publish, wait_until

ROOT = Path(__file__).resolve().parent.parent


# --- helpers ----------------------------------------------------------------------------------


class Worker:
    """One ``rxnsq worker`` subprocess; its stderr goes to a file the test reads as it goes."""

    def __init__(
        self, tmp_path: Path, app: str, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.out = tmp_path / "handled"
        self.out.mkdir(exist_ok=True)
        self.log_path = tmp_path / f"worker-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        environ = {**os.environ, "WORKER_TEST_OUT": str(self.out), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rxnsq.cli.worker", "worker", app, *args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=environ,
        )  # fmt: skip
        self._port: int | None = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def port(self) -> int:
        if self._port is None:
            found: list[str] = []

            def listening() -> bool:
                found[:] = re.findall(r"on http://127\.0\.0\.1:(\d+)", self.log)
                assert self.proc.poll() is None, self.log
                return bool(found)

            wait_until(listening, timeout=20, message="the metrics port")
            self._port = int(found[0])
        return self._port

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def probe(self, path: str) -> tuple[int, dict[str, Any]]:
        status, body = self.get(path)
        return status, json.loads(body)

    def metrics(self) -> dict[str, Any]:
        status, body = self.get("/metrics")
        assert status == 200, body
        return {family.name: family for family in text_string_to_metric_families(body)}

    def values(self, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Samples of ``name`` (a family's sample name) matching ``labels``."""
        found = {}
        for family in self.metrics().values():
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    found[tuple(sorted(sample.labels.items()))] = sample.value
        return found

    def total(self, name: str, **labels: str) -> float:
        return sum(self.values(name, **labels).values())

    def by_process(self, name: str) -> dict[str, float]:
        totals: dict[str, float] = {}
        for key, value in self.values(name).items():
            process = dict(key)["process"]
            totals[process] = totals.get(process, 0.0) + value
        return totals

    def pids(self) -> dict[int, int]:
        _status, body = self.probe("/readyz")
        return {p["process"]: p["pid"] for p in body["processes"] if p["pid"]}

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_until(lambda: self.get("/readyz")[0] == 200, timeout=timeout,
                   message=f"the worker to be ready; log:\n{self.log}")  # fmt: skip

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def workers():
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.close()


def run_worker(
    app: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "rxnsq.cli.worker", "worker", app, *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=environ, check=False,
    )  # fmt: skip


def handled(folder: Path) -> list[bytes]:
    lines: list[bytes] = []
    for path in folder.glob("*.txt"):
        lines.extend(path.read_bytes().splitlines())
    return lines


def channel(nsqd: Any, topic: str, name: str) -> dict[str, Any]:
    return nsqd.channel_stats(topic, name)


def finish_count(nsqd: Any, topic: str, name: str) -> int:
    """What nsqd counts as finished on the channel: the sum over its connected clients."""
    return sum(client["finish_count"] for client in channel(nsqd, topic, name)["clients"])


def drained(nsqds: list[Any], topic: str, name: str) -> bool:
    stats = [channel(nsqd, topic, name) for nsqd in nsqds]
    return all(s["depth"] == 0 and s["in_flight_count"] == 0 for s in stats)


# --- scale-out: two processes, two nsqd, one nsqlookupd ---------------------------------------


def test_two_processes_share_100k_messages_from_two_nsqd_found_through_lookupd(
    nsq_cluster_factory, tmp_path, workers
) -> None:
    cluster = nsq_cluster_factory(nsqd_count=2, lookupd_count=1)
    bodies = [b"%d" % i for i in range(100_000)]
    halves = [bodies[:50_000], bodies[50_000:]]
    for nsqd, half in zip(cluster.nsqds, halves, strict=True):
        nsqd.create_channel("clicks", "etl")
        asyncio.run(publish(nsqd.tcp_address, "clicks", half))
    lookupd = cluster.lookupds[0]
    wait_until(lambda: len(lookupd.producers("clicks")) == 2, message="both producers listed")
    worker = Worker(
        tmp_path, "tests.worker_apps:fast", "--processes", "2", "--topic", "clicks",
        "--channel", "etl", "--lookupd-http-address", lookupd.http_address,
        "--max-in-flight", "500", "--metrics-port", "0",
    )  # fmt: skip
    workers.append(worker)
    wait_until(lambda: drained(cluster.nsqds, "clicks", "etl"), timeout=120,
               message="both channels to drain")  # fmt: skip
    wait_until(lambda: worker.total("rxnsq_messages_finished_total") == 100_000, timeout=10)
    per_process = worker.by_process("rxnsq_messages_finished_total")
    assert set(per_process) == {"0", "1"}
    assert all(count > 0 for count in per_process.values()), per_process  # both did work
    assert worker.total("rxnsq_messages_requeued_total") == 0
    assert worker.total("rxnsq_messages_received_total") == 100_000
    # every process consumed from both nsqd
    connections = worker.values("rxnsq_ready")
    addresses = {(dict(k)["process"], dict(k)["nsqd_address"]) for k in connections}
    assert addresses == {(p, n.tcp_address) for p in "01" for n in cluster.nsqds}
    # what the metrics say was finished is what nsqd counted as finished
    assert worker.total("rxnsq_messages_finished_total") == sum(
        finish_count(nsqd, "clicks", "etl") for nsqd in cluster.nsqds
    )
    for nsqd in cluster.nsqds:
        assert channel(nsqd, "clicks", "etl")["message_count"] == 50_000
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.log


# --- SIGTERM: drain, requeue, no loss -----------------------------------------------------------


def test_sigterm_mid_run_drains_in_time_and_a_restarted_worker_processes_the_rest(
    nsqd_factory, tmp_path, workers
) -> None:
    nsqd = nsqd_factory()
    nsqd.create_channel("jobs", "work")
    bodies = [b"job-%d" % i for i in range(300)]
    asyncio.run(publish(nsqd.tcp_address, "jobs", bodies))
    args = ("--processes", "2", "--topic", "jobs", "--channel", "work",
            "--nsqd-tcp-address", nsqd.tcp_address, "--max-in-flight", "20",
            "--drain-timeout", "1.5")  # fmt: skip
    # each message takes 2.5s: at the signal some can finish within the drain, the rest cannot
    worker = Worker(tmp_path, "tests.worker_apps:slow", *args, env={"WORKER_TEST_DELAY": "2.5"})
    workers.append(worker)
    wait_until(lambda: len(handled(worker.out)) >= 40, timeout=60, message="some work done")
    time.sleep(0.2)  # the next batch has just begun: it cannot finish within the drain
    assert channel(nsqd, "jobs", "work")["in_flight_count"] > 0
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 0, worker.log
    elapsed = time.monotonic() - started
    assert elapsed <= 1.5 + 1.0, elapsed
    stats = channel(nsqd, "jobs", "work")
    assert stats["in_flight_count"] == 0  # requeued at once, not left to msg_timeout
    assert stats["timeout_count"] == 0
    assert stats["requeue_count"] > 0  # what could not finish in time went back
    assert "draining" in worker.log
    # a new worker processes the rest: every message was handled at least once
    again = Worker(tmp_path, "tests.worker_apps:slow", *args, env={"WORKER_TEST_DELAY": "0"})
    workers.append(again)
    wait_until(lambda: drained([nsqd], "jobs", "work"), timeout=60, message="the rest")
    assert set(handled(worker.out)) == set(bodies)
    again.signal(signal.SIGTERM)
    assert again.wait() == 0, again.log


def test_a_second_signal_requeues_at_once(nsqd_factory, tmp_path, workers) -> None:
    nsqd = nsqd_factory()
    nsqd.create_channel("jobs", "work")
    asyncio.run(publish(nsqd.tcp_address, "jobs", [b"job-%d" % i for i in range(50)]))
    worker = Worker(
        tmp_path, "tests.worker_apps:slow", "--topic", "jobs", "--channel", "work",
        "--nsqd-tcp-address", nsqd.tcp_address, "--max-in-flight", "10",
        "--drain-timeout", "30", "--metrics-port", "0", env={"WORKER_TEST_DELAY": "60"},
    )  # fmt: skip
    workers.append(worker)
    wait_until(lambda: channel(nsqd, "jobs", "work")["in_flight_count"] == 10, timeout=30)
    worker.signal(signal.SIGTERM)
    wait_until(lambda: "draining" in worker.log, timeout=10)
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 128 + signal.SIGTERM, worker.log
    assert time.monotonic() - started < 3.0
    stats = channel(nsqd, "jobs", "work")
    assert stats["in_flight_count"] == 0 and stats["depth"] == 50, stats


# --- supervision --------------------------------------------------------------------------------


def test_a_killed_process_is_restarted_and_the_work_goes_on(
    nsqd_factory, tmp_path, workers
) -> None:
    nsqd = nsqd_factory(extra_args=["--msg-timeout=2s"])
    nsqd.create_channel("jobs", "work")
    bodies = [b"m-%d" % i for i in range(400)]
    asyncio.run(publish(nsqd.tcp_address, "jobs", bodies))
    worker = Worker(
        tmp_path, "tests.worker_apps:slow", "--processes", "2", "--topic", "jobs",
        "--channel", "work", "--nsqd-tcp-address", nsqd.tcp_address, "--max-in-flight", "5",
        "--metrics-port", "0", env={"WORKER_TEST_DELAY": "0.05"},
    )  # fmt: skip
    workers.append(worker)
    worker.wait_ready()
    victim = worker.pids()[1]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: worker.pids().get(1) not in (None, victim), timeout=20,
               message="process 1 to come back")  # fmt: skip
    wait_until(lambda: worker.values("rxnsq_worker_restarts_total", process="1"), timeout=5)
    assert worker.values("rxnsq_worker_restarts_total", process="1").popitem()[1] == 1
    assert worker.values("rxnsq_worker_restarts_total", process="0").popitem()[1] == 0
    assert f"process 1 (pid {victim}) crashed (killed by SIGKILL)" in worker.log
    assert "restarting process 1 (restart 1)" in worker.log
    worker.wait_ready()
    wait_until(lambda: drained([nsqd], "jobs", "work"), timeout=60, message="all work done")
    assert set(handled(worker.out)) == set(bodies)
    wait_until(lambda: worker.by_process("rxnsq_messages_finished_total").get("1", 0) > 0)
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.log


def test_processes_that_keep_crashing_make_the_worker_exit_1(nsqd, tmp_path) -> None:
    result = run_worker(
        "tests.worker_apps:fails_later", "--topic", "t", "--channel", "c",
        "--nsqd-tcp-address", nsqd.tcp_address, "--max-restarts", "2",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("the pipeline of tests.worker_apps:fails_later raised") == 3
    assert "ValueError('the pipeline broke')" in result.stderr
    assert "3 times in a row: giving up" in result.stderr
    assert "restarting process 0 (restart 2)" in result.stderr


def test_worker_processes_drain_and_exit_when_the_supervisor_is_killed(
    nsqd_factory, tmp_path, workers
) -> None:
    nsqd = nsqd_factory()
    nsqd.create_channel("jobs", "work")
    asyncio.run(publish(nsqd.tcp_address, "jobs", [b"j-%d" % i for i in range(100)]))
    worker = Worker(
        tmp_path, "tests.worker_apps:slow", "--processes", "2", "--topic", "jobs",
        "--channel", "work", "--nsqd-tcp-address", nsqd.tcp_address, "--max-in-flight", "5",
        "--drain-timeout", "1", "--metrics-port", "0", env={"WORKER_TEST_DELAY": "30"},
    )  # fmt: skip
    workers.append(worker)
    worker.wait_ready()
    children = list(worker.pids().values())
    wait_until(lambda: channel(nsqd, "jobs", "work")["in_flight_count"] == 10, timeout=20)
    worker.proc.kill()
    worker.wait()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(lambda: all(gone(pid) for pid in children), timeout=10, message="no orphans")
    assert "the supervisor is gone" in worker.log
    stats = channel(nsqd, "jobs", "work")
    assert stats["in_flight_count"] == 0 and stats["depth"] == 100, stats


# --- probes ------------------------------------------------------------------------------------


def test_readyz_is_unready_before_the_first_connection_and_during_the_drain(
    nsq_cluster_factory, tmp_path, workers
) -> None:
    cluster = nsq_cluster_factory(nsqd_count=1, lookupd_count=1)
    nsqd, lookupd = cluster.nsqds[0], cluster.lookupds[0]
    worker = Worker(
        tmp_path, "tests.worker_apps:slow", "--processes", "2", "--topic", "later",
        "--channel", "c", "--lookupd-http-address", lookupd.http_address,
        "--consumer-opt", "lookupd_poll_interval,0.5", "--drain-timeout", "3",
        "--metrics-port", "0", env={"WORKER_TEST_DELAY": "30"},
    )  # fmt: skip
    workers.append(worker)
    # both processes booted, but the topic exists nowhere yet: nothing to connect to
    wait_until(lambda: len(worker.pids()) == 2 and "started event=started" in worker.log)
    time.sleep(1.0)
    status, body = worker.probe("/readyz")
    assert status == 503 and body["ready"] is False, body
    assert all(p["connections"] == 0 for p in body["processes"])
    assert worker.probe("/healthz")[0] == 200  # alive all the same
    nsqd.http_pub("later", b"hello")
    worker.wait_ready()
    status, body = worker.probe("/readyz")
    assert status == 200 and all(p["ready"] and p["connections"] == 1 for p in body["processes"])
    wait_until(lambda: channel(nsqd, "later", "c")["in_flight_count"] == 1, timeout=10)
    worker.signal(signal.SIGTERM)
    wait_until(lambda: "draining" in worker.log, timeout=5)
    status, body = worker.probe("/readyz")
    assert status == 503, body
    assert worker.wait(timeout=10) == 0, worker.log
    assert channel(nsqd, "later", "c")["in_flight_count"] == 0


def test_healthz_fails_when_a_process_loop_is_stuck(nsqd, tmp_path, workers) -> None:
    worker = Worker(
        tmp_path, "tests.worker_apps:stuck", "--topic", "t", "--channel", "c",
        "--nsqd-tcp-address", nsqd.tcp_address, "--heartbeat-timeout", "2", "--drain-timeout", "1",
        "--metrics-port", "0",
    )  # fmt: skip
    workers.append(worker)
    worker.wait_ready()
    assert worker.probe("/healthz")[0] == 200
    nsqd.http_pub("t", b"block the loop")
    wait_until(lambda: worker.get("/healthz")[0] == 503, timeout=10)
    status, body = worker.probe("/healthz")
    assert body["alive"] is False and body["processes"][0]["running"] is True
    # its loop never reads the end of file: the supervisor's death still ends it (SIGHUP, then
    # an alarm after the drain timeout + 3 s)
    (child,) = worker.pids().values()
    worker.proc.kill()
    worker.wait()
    wait_until(lambda: not Path(f"/proc/{child}").exists() or _zombie(child), timeout=20,
               message="the stuck process to end")  # fmt: skip


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return True


# --- metrics ---------------------------------------------------------------------------------


def test_metrics_parse_and_count_what_nsqd_counts(nsqd, tmp_path, workers) -> None:
    bodies = [b"r-%d" % i for i in range(500)]
    nsqd.create_channel("in", "relay")
    asyncio.run(publish(nsqd.tcp_address, "in", bodies))
    worker = Worker(
        tmp_path, "tests.worker_apps:relay", "--processes", "2", "--topic", "in",
        "--channel", "relay", "--nsqd-tcp-address", nsqd.tcp_address, "--metrics-port", "0",
    )  # fmt: skip
    workers.append(worker)
    wait_until(lambda: drained([nsqd], "in", "relay"), timeout=60)
    wait_until(lambda: worker.total("rxnsq_messages_finished_total") == 500, timeout=10)
    families = worker.metrics()
    assert families["rxnsq_messages_finished"].type == "counter"
    assert families["rxnsq_messages_in_flight"].type == "gauge"
    assert families["rxnsq_message_processing_seconds"].type == "histogram"
    assert worker.total("rxnsq_messages_finished_total") == finish_count(nsqd, "in", "relay")
    assert worker.total("rxnsq_messages_published_total", topic="in-out") == 500
    assert worker.total("rxnsq_publish_failures_total") == 0
    assert worker.total("rxnsq_message_processing_seconds_count") == 500
    assert worker.total("rxnsq_message_processing_seconds_bucket", le="+Inf") == 500
    assert worker.total("rxnsq_connections") == 2
    assert worker.total("rxnsq_messages_in_flight") == 0
    assert worker.values("rxnsq_worker_processes") == {(): 2.0}
    assert worker.total("rxnsq_worker_up") == 2
    labels = {key for sample in worker.values("rxnsq_ready") for key, _ in sample}
    assert labels == {"topic", "channel", "nsqd_address", "process"}
    nsqd_out = nsqd.stats(topic="in-out")["topics"][0]
    assert nsqd_out["message_count"] == 500
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.log


# --- logs ------------------------------------------------------------------------------------


def test_json_logs_one_line_per_event_with_fields_and_no_secret(nsqd, tmp_path, workers) -> None:
    secret = "s3cret-value-never-logged"
    nsqd.http_pub("t", b"good")
    nsqd.http_pub("t", b"bad")
    worker = Worker(
        tmp_path, "tests.worker_apps:strict", "--topic", "t", "--channel", "c",
        "--nsqd-tcp-address", nsqd.tcp_address, "--log-format", "json", "--metrics-port", "0",
        "--consumer-opt", "max_tries,1", "--consumer-opt", "default_requeue_delay,0",
        env={"RXNSQ_AUTH_SECRET": secret, "RXNSQ_LOG_LEVEL": "info"},
    )  # fmt: skip
    workers.append(worker)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in worker.log.splitlines() if line.strip()]

    wait_until(lambda: any(line.get("event") == "giving_up" for line in lines()), timeout=30)
    children = [pid for pid in worker.pids().values()]
    for pid in [worker.proc.pid, *children]:
        assert secret.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert secret not in worker.log
    records = lines()  # every line is JSON
    connected = [r for r in records if r.get("event") == "connected"]
    assert connected and connected[0]["topic"] == "t" and connected[0]["channel"] == "c"
    assert connected[0]["nsqd_address"] == nsqd.tcp_address and connected[0]["process"] == 0
    caught = [r for r in records if "cannot handle 'bad'" in json.dumps(r)]
    assert len(caught) == 1, caught  # one line, not the Reader's and the worker's
    (error,) = caught
    assert error["event"] == "caught_error" and error["level"] == "error"
    assert error["topic"] == "t" and error["nsqd_address"] == nsqd.tcp_address
    assert re.fullmatch(r"[0-9a-f]{16}", error["message_id"]) and error["attempts"] == 1
    assert "Traceback" in error["traceback"]
    (given_up,) = [r for r in records if r.get("event") == "giving_up"]
    assert given_up["message_id"] == error["message_id"] and given_up["attempts"] == 2
    assert {r["process"] for r in records} == {0, "supervisor"}
    assert any(r.get("event") == "drain" and r["process"] == "supervisor" for r in records)
    assert any(r.get("event") == "drain" and r["process"] == 0 for r in records)


# --- wrong input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        ("no_colon", "is not MODULE:FACTORY"),
        ("tests.no_such_module:build", "cannot import 'tests.no_such_module'"),
        ("tests.worker_apps:missing", "has no attribute 'missing'"),
        ("tests.worker_apps:NOT_CALLABLE", "is a int, not a callable factory(ctx)"),
    ],
)
def test_a_bad_module_factory_is_a_usage_error(app: str, expected: str) -> None:
    result = run_worker(app, "--topic", "t", "--channel", "c", "--nsqd-tcp-address", "127.0.0.1:1")
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "restarting" not in result.stderr


@pytest.mark.parametrize(
    ("app", "args", "expected"),
    [
        ("tests.worker_apps:raises", ("--topic", "t"),
         "the factory tests.worker_apps:raises raised RuntimeError('no database at db.invalid')"),
        ("tests.worker_apps:returns_a_number", ("--topic", "t"),
         "returned 42: expected a disposable"),
        ("tests.worker_apps:fast", (), "give --topic (RXNSQ_TOPIC) or ctx.reader(topic=...)"),
    ],
)  # fmt: skip
def test_a_factory_that_raises_stops_the_worker_with_exit_3(
    app: str, args: tuple[str, ...], expected: str
) -> None:
    result = run_worker(
        app, *args, "--channel", "c", "--nsqd-tcp-address", "127.0.0.1:1", "--processes", "2"
    )
    assert result.returncode == 3, result.stderr
    assert expected in result.stderr
    assert "could not start" in result.stderr
    assert "restarting" not in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (("--processes", "two"), {}, "argument -p/--processes: 'two' is not an integer"),
        (("--processes", "0"), {}, "'0': must be >= 1"),
        (("--drain-timeout", "5 minutes"), {}, "is not a duration"),
        (("--metrics-port", "70000"), {}, "a port is at most 65535"),
        ((), {"RXNSQ_MAX_IN_FLIGHT": "lots"}, "RXNSQ_MAX_IN_FLIGHT='lots': 'lots' is not an int"),
        ((), {"RXNSQ_LOG_FORMAT": "xml"}, "RXNSQ_LOG_FORMAT='xml': 'xml': choose from text, json"),
        ((), {"RXNSQ_NSQD_TCP_ADDRESSES": "127.0.0.1"}, "RXNSQ_NSQD_TCP_ADDRESSES="),
        (("--consumer-opt", "max_tires,3"), {}, "unknown option 'max_tires' (did you mean"),
        (("--consumer-opt", "max_tries,many"), {}, "--consumer-opt max_tries: bad value 'many'"),
        (("--topic", "bad topic!"), {}, "--topic"),
    ],
)  # fmt: skip
def test_wrong_option_values_are_usage_errors(
    args: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    result = run_worker("tests.worker_apps:fast", *args, env=env)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# --- options, docs and the runner hook, in process ---------------------------------------------


def test_flags_win_over_environment_variables_which_win_over_defaults() -> None:
    from rxnsq.cli.worker import _parsers
    from rxnsq.worker.options import from_args

    parser, worker_parser = _parsers()
    environ = {
        "RXNSQ_MAX_IN_FLIGHT": "50",
        "RXNSQ_LOOKUPD_HTTP_ADDRESSES": "127.0.0.1:4161, 127.0.0.1:4261",
        "RXNSQ_CONSUMER_OPTS": "max_tries,10;msg_timeout,2m",
        "RXNSQ_AUTH_SECRET": "hush",
        "RXNSQ_PROCESSES": "3",
    }
    args = parser.parse_args(["worker", "app:build", "--processes", "2", "--topic", "t"])
    options = from_args(worker_parser, args, environ)
    assert options.processes == 2  # the flag
    assert options.max_in_flight == 50  # the variable
    assert options.drain_timeout == 8.0 and options.channel is None  # defaults
    assert options.lookupd_http_addresses == ("127.0.0.1:4161", "127.0.0.1:4261")
    reader_options = options.reader_options()
    assert reader_options["max_tries"] == 10 and reader_options["msg_timeout"] == 120.0
    assert reader_options["auth_secret"] == "hush"
    assert "hush" not in repr(options)


def test_metrics_port_without_prometheus_client_is_a_usage_error(monkeypatch, capsys) -> None:
    from rxnsq.cli import worker

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    with pytest.raises(SystemExit) as exc:
        worker.parse(["worker", "app:build", "--metrics-port", "9117"])
    assert exc.value.code == 2
    assert "pip install 'rxnsq[metrics]'" in capsys.readouterr().err


def doc_worker_commands() -> list[list[str]]:
    found = []
    for page in ("worker.md", "deploying.md"):
        text = (ROOT / "docs" / page).read_text()
        for block in re.findall(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
            for line in block.splitlines():
                words = shlex.split(line, comments=True)
                while words and "=" in words[0]:  # VAR=value before the command
                    words.pop(0)
                if words[:2] == ["rxnsq", "worker"]:
                    found.append(words[1:])
    return found


def test_every_documented_worker_command_parses() -> None:
    from rxnsq.cli.worker import _parsers

    commands = doc_worker_commands()
    assert len(commands) >= 4
    parser, _worker = _parsers()
    for words in commands:
        try:
            parser.parse_args(words)
        except SystemExit:  # pragma: no cover - argparse printed why
            pytest.fail(f"docs: rxnsq {shlex.join(words)} does not parse")


RUNNER_SCRIPT = """
import asyncio, signal
from rxnsq import runner

class Fake:
    def __init__(self, name, takes, log):
        self.name, self.takes, self.log = name, takes, log
        runner.register(self)
    async def close(self, timeout=30.0):
        self.log.append((self.name, round(timeout, 1)))
        await asyncio.sleep(min(self.takes, timeout))

class FakeReader(Fake):
    def set_max_in_flight(self, n): pass

log = []
clients = [FakeReader("reader", 0.3, log), Fake("writer", 0.0, log)]

async def main():
    assert runner.stop() is True
    assert runner.stop() is True  # asked twice (a signal and the supervisor): one drain
    await asyncio.sleep(60)

outcome = runner.serve(main(), drain_timeout=1.0)
print(repr((outcome.signal.name, outcome.hurried, log, runner.stop())))

async def hurry():
    runner.stop(signal.SIGINT, hurry=True)
    await asyncio.sleep(60)

log.clear()
clients[0].takes = 30
outcome = runner.serve(hurry(), drain_timeout=2.0)
print(repr((outcome.signal.name, outcome.hurried, log)))
"""


def test_runner_stop_drains_once_and_writers_get_what_the_readers_left() -> None:
    result = subprocess.run(
        [sys.executable, "-c", RUNNER_SCRIPT], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    first, second = (ast.literal_eval(line) for line in result.stdout.splitlines())
    # the reader took 0.3 of the 1.0 s budget: the writer got the rest, no more
    assert first[:2] == ("SIGTERM", False) and first[3] is False  # no serve() left to stop
    (_, reader_budget), (_, writer_budget) = first[2]
    assert reader_budget == 1.0 and 0.6 <= writer_budget <= 0.7, first
    # hurry: the reader's close is asked again with 0 (requeue what it waits for, now)
    assert second[:2] == ("SIGINT", True) and second[2][:2] == [("reader", 2.0), ("reader", 0)]


def test_a_process_sent_sigterm_alone_drains_and_comes_back(nsqd, tmp_path, workers) -> None:
    nsqd.create_channel("jobs", "work")
    worker = Worker(
        tmp_path, "tests.worker_apps:slow", "--processes", "2", "--topic", "jobs",
        "--channel", "work", "--nsqd-tcp-address", nsqd.tcp_address, "--metrics-port", "0",
    )  # fmt: skip
    workers.append(worker)
    worker.wait_ready()
    first = worker.pids()[0]
    os.kill(first, signal.SIGTERM)  # an operator's kill of one process, not of the worker
    wait_until(lambda: worker.pids().get(0) not in (None, first), timeout=20)
    assert f"process 0 (pid {first}) stopped on its own signal; restarting" in worker.log
    worker.wait_ready()
    assert worker.proc.poll() is None
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.log


def test_the_worker_benchmark_runs(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", "--messages", "20000", "--reps", "1",
         "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "worker.json").read_text())
    one, two = report["rows"]
    assert one["processes"] == 1 and two["processes"] == 2
    assert one["rate"] > 0 and two["rate"] > 0 and two["us_workers"] > 0
    assert sum(two["shares"]) == 20000
    assert "| 2 |" in (tmp_path / "worker.md").read_text()


# --- the deploying guide's PostgreSQL example, on two "machines" -------------------------------


def test_the_deploying_guide_runs_on_two_workers_sharing_postgres(
    nsq_cluster_factory, postgres_dsn, tmp_path, workers
) -> None:
    """docs/deploying.md's counts.py, run by two ``rxnsq worker --processes 2`` commands (two
    machines) on one channel of two nsqd found through nsqlookupd, sharing one PostgreSQL:
    each window is emitted once, with the exact count, whichever process saw what."""
    text = (ROOT / "docs" / "deploying.md").read_text()
    (code,) = [
        b for b in re.findall(r"^```python\n(.*?)^```", text, re.M | re.S) if "Postgres" in b
    ]
    (tmp_path / "counts.py").write_text(code)
    cluster = nsq_cluster_factory(nsqd_count=2, lookupd_count=1)
    t0 = 1_700_000_040
    pages = ["/", "/docs", "/pricing"]
    first = [json.dumps({"page": p, "ts": t0 + i % 60}).encode() for i in range(100) for p in pages]
    for nsqd, half in zip(cluster.nsqds, (first[::2], first[1::2]), strict=True):
        nsqd.create_channel("clicks", "page-counts")
        asyncio.run(publish(nsqd.tcp_address, "clicks", half))
    lookupd = cluster.lookupds[0]
    wait_until(lambda: len(lookupd.producers("clicks")) == 2)
    args = ("--processes", "2", "--topic", "clicks", "--channel", "page-counts",
            "--lookupd-http-address", lookupd.http_address, "--app-dir", str(tmp_path),
            "--metrics-port", "0")  # fmt: skip
    machines = [
        Worker(tmp_path, "counts:build", *args, env={"COUNTS_DATABASE_URL": postgres_dsn})
        for _ in range(2)
    ]
    workers.extend(machines)
    wait_until(lambda: drained(cluster.nsqds, "clicks", "page-counts"), timeout=60)
    wait_until(
        lambda: sum(m.total("rxnsq_messages_finished_total") for m in machines) == 300,
        timeout=10,
    )
    # one event per page far past the first window closes it (watermark 190 >= 60 + 120)
    closers = [json.dumps({"page": p, "ts": t0 + 200}).encode() for p in pages]
    asyncio.run(publish(cluster.nsqds[0].tcp_address, "clicks", closers))

    def emitted() -> list[tuple[str, float, int]]:
        lines = [line.split() for m in machines for line in m.log.splitlines()]
        return [(w[0], float(w[1]), int(w[2])) for w in lines if len(w) == 3 and w[0] in pages]

    wait_until(lambda: len(emitted()) >= 3, timeout=30, message="the three windows")
    time.sleep(1.0)  # a window emitted twice would show by now
    assert sorted(emitted()) == [(p, float(t0), 100) for p in sorted(pages)]
    for machine in machines:
        machine.signal(signal.SIGTERM)
    assert [m.wait() for m in machines] == [0, 0]


def test_the_log_filter_drops_only_what_the_worker_logs_itself() -> None:
    from rxnsq.worker.logs import SupersededFilter

    def record(func: str, msg: str, args: tuple[object, ...]) -> logging.LogRecord:
        rec = logging.LogRecord("rxnsq.reader", logging.WARNING, "reader.py", 1, msg, args, None)
        rec.funcName = func
        return rec

    keep = SupersededFilter().filter
    assert not keep(record("report_error", "%s raised: %r", ("stage", ValueError())))
    assert not keep(record("_give_up", "giving up on message %s after %d attempts", ("id", 5)))
    assert not keep(record("_connect", "%s: cannot consume: %s", ("a:1", OSError("refused"))))
    assert keep(record("_connect", "%s: max_in_flight %d is above max_rdy_count %d", ("a", 9, 5)))
    assert keep(record("_requeue_held", "%s: requeued %d messages", ("r", 3)))
