"""Benchmarks: rxnsq against pynsq and the go-nsq reference client, on one nsqd, in one run.

    python -m benchmarks.run                 # the full run (about 30 minutes on 2 cores)
    python -m benchmarks.run --quick         # tiny counts, one repetition (a smoke test)
    python -m benchmarks.run --clients rxnsq,go-nsq --scenarios consume_mif2500 --reps 5
    python -m benchmarks.run --profile consume_mif2500,publish_sink   # + py-spy/pyinstrument

The runner starts its own nsqd (``--mem-queue-size`` above the largest backlog, so nothing
spills to disk), then runs every scenario for every client, each client in its own process
(``benchmarks/workers/*``, ``benchmarks/go``), alternating clients within each repetition,
and reports the median of the repetitions. Consume scenarios pre-load the backlog with raw
MPUBs first; every scenario uses a fresh topic, deleted afterwards. Throughput, CPU and peak
RSS are measured by the worker itself over the measured interval (first message to last, or
first publish to last confirmation): CPU from ``getrusage(RUSAGE_SELF)``, peak RSS from
``VmHWM``. Results go to ``benchmarks/results/latest.json`` and ``latest.md``.

Every row compares the same wire shape (PUB with PUB, MPUB of 100 with MPUB of 100, a sink of
``max_batch`` 100 beside the others' MPUB of 100); each timed run is meant to last at least
2 s (shorter ones are listed in the notes); each consume run drains the whole backlog and ends
with a check of nsqd's ``/stats`` (depth, in flight, requeued and timed out all 0), a failed
check fails the run. nsq's own ``bench_reader``/``bench_writer`` (v1.3.0, built by
``scripts/install-nsq --bench``) run beside the consume and MPUB rows as a reference column.

pynsq runs from the project's interpreter when it can import it (``pip install -e
'.[bench]'``), else from ``benchmarks/.venv-pynsq``, which the runner creates. The go-nsq
program is built into ``benchmarks/.build`` with the local Go toolchain when missing. A row
whose client is unavailable is skipped and the reason is written into the results.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # `python benchmarks/run.py`
    sys.path.insert(0, str(ROOT))

from benchmarks import _wire  # noqa: E402
from rxnsq.testing import NsqdProcess  # noqa: E402

WORKERS = HERE / "workers"
GO_DIR = HERE / "go"
BUILD_DIR = HERE / ".build"
GO_BINARY = BUILD_DIR / "nsq-bench-go"
PYNSQ_VENV = HERE / ".venv-pynsq"
RESULTS = HERE / "results"
PYNSQ_REQUIREMENT = "pynsq>=0.9,<0.10"

RXNSQ, PYNSQ, GO, COMPAT, NSQ = "rxnsq", "pynsq", "go-nsq", "rxnsq.compat", "nsq-bench"
#: rxnsq-only scenarios and the scenario whose pynsq/go-nsq figures they are compared with
COMPARED_WITH = {
    "consume_batch500": "consume_mif2500",
    "consume_batch200": "consume_mif200",
    "consume_keyed_batch": "consume_mif200",
    "publish_sink": "publish_mpub100",
    "publish_sink_direct": "publish_mpub100",
    "publish_sink_send": "publish_mpub100",
}
ALL_CLIENTS = (PYNSQ, RXNSQ, GO, COMPAT)
#: at least this long, each timed run (shorter ones are named in the notes)
MIN_SECONDS = 2.0


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- settings and scenarios -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    count: int = 600_000  # consume backlog measured (the margin is consumed too)
    count_mif1: int = 40_000  # consume at max_in_flight 1 (one round trip each)
    pub_count: int = 400_000  # single PUBs
    mpub_count: int = 5_000_000  # MPUB of 100 and the sink rows
    sink_loop_count: int = 2_000_000  # the plain loop into a sink (>= 1M, and >= 2 s at ~700k/s)
    window: int = 5_000  # single PUBs: at most this many messages unconfirmed
    mpub_window: int = 10  # MPUB of 100 and the sinks: at most this many commands in flight
    latency_rate: int = 2_000
    latency_seconds: float = 5.0
    latency_mif: int = 200
    drain_small: int = 10_000
    drain_large: int = 1_000_000
    bench_seconds: float = 2.5  # nsq's bench_reader / bench_writer run for this long
    bench_backlog: int = 2_000_000  # bench_reader's backlog (more than it reads in that time)
    reps: int = 3
    drain_reps: int = 3

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            count=2_000,
            count_mif1=500,
            pub_count=2_000,
            mpub_count=5_000,
            sink_loop_count=5_000,
            window=1_000,
            latency_rate=500,
            latency_seconds=1.0,
            drain_small=1_000,
            drain_large=5_000,
            bench_seconds=0.2,
            bench_backlog=300_000,
            reps=1,
            drain_reps=1,
        )


@dataclasses.dataclass(frozen=True)
class Scenario:
    id: str
    title: str
    kind: str  # consume | publish | latency
    count: int
    modes: dict[str, str]  # client -> worker mode
    mif: int = 2500
    batch: int = 100
    reps: int = 3
    obuf: int = 0  # IDENTIFY output_buffer_size for every reader (0: each client's default)
    window: int = 0  # publish: most messages unconfirmed (0: the settings' window)
    bench: tuple[str, ...] = ()  # nsq's bench tool and its arguments: the reference column
    timed: bool = True  # False: a row for its RSS only (too short to time)


def scenarios(s: Settings) -> list[Scenario]:
    per_message = {PYNSQ: "consume", RXNSQ: "consume", GO: "consume", COMPAT: "consume"}
    latency = {PYNSQ: "latency", RXNSQ: "latency", GO: "latency", COMPAT: "latency"}
    mpub_window = s.mpub_window * 100
    return [
        Scenario(
            "consume_mif1",
            "consume, max_in_flight 1",
            "consume",
            s.count_mif1,
            per_message,
            mif=1,
            reps=s.reps,
        ),
        Scenario(
            "consume_mif200",
            "consume, max_in_flight 200",
            "consume",
            s.count,
            per_message,
            mif=200,
            reps=s.reps,
            bench=("bench_reader", "-rdy=200"),
        ),
        Scenario(
            "consume_mif2500",
            "consume, max_in_flight 2500",
            "consume",
            s.count,
            per_message,
            mif=2500,
            reps=s.reps,
            bench=("bench_reader", "-rdy=2500"),
        ),
        Scenario(
            "consume_batch500",
            "consume, batch(500) + process_batch, mif 2500",
            "consume",
            s.count,
            {RXNSQ: "batch"},
            mif=2500,
            batch=500,
            reps=s.reps,
        ),
        Scenario(
            "consume_batch200",
            "consume, batch(200, 1 s) + process_batch, mif 200",
            "consume",
            s.count,
            {RXNSQ: "batch"},
            mif=200,
            batch=200,
            reps=s.reps,
        ),
        Scenario(
            "consume_keyed_batch",
            "consume, batch(50, 1 s, key: 5 keys) + process_batch, mif 200",
            "consume",
            s.count,
            {RXNSQ: "keyed_batch"},
            mif=200,
            batch=50,
            reps=s.reps,
        ),
        Scenario(
            "publish_pub",
            f"publish single messages: PUB, pipelined, at most {s.window:,} unconfirmed",
            "publish",
            s.pub_count,
            {PYNSQ: "pub", RXNSQ: "pub", GO: "pub", COMPAT: "pub"},
            reps=s.reps,
            bench=("bench_writer", "-batch-size=1"),
        ),
        Scenario(
            "publish_mpub100",
            f"publish MPUB of 100, {s.mpub_window} in flight",
            "publish",
            s.mpub_count,
            {PYNSQ: "mpub", RXNSQ: "mpub", GO: "mpub", COMPAT: "mpub"},
            batch=100,
            reps=s.reps,
            window=mpub_window,
            bench=("bench_writer", "-batch-size=100"),
        ),
        Scenario(
            "publish_sink",
            f"sink (max_batch 100) fed from an RxPY Subject, at most {mpub_window:,} unconfirmed",
            "publish",
            s.mpub_count,
            {RXNSQ: "sink"},
            batch=100,
            reps=s.reps,
            window=mpub_window,
        ),
        Scenario(
            "publish_sink_direct",
            f"sink (max_batch 100), sink.on_next called directly, at most {mpub_window:,} "
            "unconfirmed",
            "publish",
            s.mpub_count,
            {RXNSQ: "sink_direct"},
            batch=100,
            reps=s.reps,
            window=mpub_window,
        ),
        Scenario(
            "publish_sink_send",
            f"sink (max_batch 100) fed {s.sink_loop_count:,} items by a plain loop of "
            "`await sink.send()`, default bounds",
            "publish",
            s.sink_loop_count,
            {RXNSQ: "sink_send"},
            batch=100,
            reps=s.reps,
        ),
        Scenario(
            "latency",
            f"latency at {s.latency_rate:,} msg/s, mif {s.latency_mif}, "
            "output_buffer_size 64 (unbuffered)",
            "latency",
            int(s.latency_rate * s.latency_seconds),
            latency,
            mif=s.latency_mif,
            reps=s.reps,
            obuf=64,
        ),
        Scenario(
            "latency_default_buffer",
            f"latency at {s.latency_rate:,} msg/s, mif "
            f"{s.latency_mif}, nsqd's default 16 KiB / 250 ms output buffer",
            "latency",
            int(s.latency_rate * s.latency_seconds),
            latency,
            mif=s.latency_mif,
            reps=s.reps,
        ),
        Scenario(
            "drain_small",
            f"drain {s.drain_small:,} backlog, mif 2500 (for its peak RSS; too short to time)",
            "consume",
            s.drain_small,
            {PYNSQ: "consume", RXNSQ: "consume", GO: "consume"},
            reps=s.drain_reps,
            timed=False,
        ),
        Scenario(
            "drain_large",
            f"drain {s.drain_large:,} backlog, mif 2500",
            "consume",
            s.drain_large,
            {PYNSQ: "consume", RXNSQ: "consume", GO: "consume"},
            reps=s.drain_reps,
        ),
    ]


# --- clients ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Client:
    name: str
    argv: list[str] | None  # the worker command line prefix; None when unavailable
    style: str = "python"  # python (--flag) or go (-flag)
    note: str = ""
    versions: dict[str, str] = dataclasses.field(default_factory=dict)

    def command(
        self, scenario: Scenario, mode: str, address: str, topic: str, settings: Settings
    ) -> list[str]:
        assert self.argv is not None
        total = scenario.count + backlog_margin(scenario) if scenario.kind == "consume" else 0
        opts = {
            "mode": mode,
            "addr": address,
            "topic": topic,
            "channel": "bench",
            "count": scenario.count,
            "total": total or scenario.count,
            "mif": scenario.mif,
            "batch": scenario.batch,
            "window": scenario.window or settings.window,
            "warmup": settings.latency_rate // 2 if scenario.kind == "latency" else 0,
            "obuf": scenario.obuf,
            "timeout": f"{worker_timeout(scenario):.0f}" + ("s" if self.style == "go" else ""),
        }
        dash = "-" if self.style == "go" else "--"
        args = [f"{dash}{key}={value}" for key, value in opts.items()]
        return [*self.argv, *args]


def backlog_margin(scenario: Scenario) -> int:
    return scenario.mif + 2_000


def worker_timeout(scenario: Scenario) -> float:
    return 60.0 + scenario.count / 1_500


def _python_version_of(python: str, code: str) -> str:
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    return out.stdout.strip() if out.returncode == 0 else ""


def _pkg_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def rxnsq_client() -> Client:
    versions = {name: _pkg_version(name) for name in ("rxnsq", "reactivex", "tornado")}
    return Client(RXNSQ, [sys.executable, str(WORKERS / "rxnsq_worker.py")], versions=versions)


_PYNSQ_PROBE = "import nsq, tornado; print(nsq.__version__, tornado.version)"


def pynsq_client(explicit: str | None) -> Client:
    """pynsq from --pynsq-python, else the project interpreter, else benchmarks/.venv-pynsq."""
    candidates = [explicit] if explicit else [sys.executable]
    venv_python = PYNSQ_VENV / "bin" / "python"
    if not explicit:
        candidates.append(str(venv_python))
    for python in candidates:
        if python and Path(python).exists():
            probe = _python_version_of(python, _PYNSQ_PROBE)
            if probe:
                version, tornado_version = probe.split()
                where = "project venv" if python == sys.executable else python
                return Client(
                    PYNSQ,
                    [python, str(WORKERS / "pynsq_worker.py")],
                    note=f"pynsq {version} on tornado {tornado_version} ({where})",
                    versions={"pynsq": version, "tornado (pynsq)": tornado_version},
                )
    if explicit:
        return Client(PYNSQ, None, note=f"--pynsq-python {explicit} cannot import nsq")
    # Not installed in the project venv: make a separate one with the project's tornado.
    log(f"pynsq is not importable here; creating {PYNSQ_VENV.relative_to(ROOT)}")
    tornado_version = _pkg_version("tornado")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(PYNSQ_VENV)], check=True)
        subprocess.run(
            [
                str(venv_python),
                "-m",
                "pip",
                "install",
                "-q",
                PYNSQ_REQUIREMENT,
                f"tornado=={tornado_version}",
            ],
            check=True,
            timeout=600,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return Client(PYNSQ, None, note=f"could not install pynsq: {exc}")
    return pynsq_client(str(venv_python))


def compat_client() -> Client:
    """rxnsq's pynsq-compatible layer, driven by the pynsq worker (--nsq-module rxnsq.compat).

    The row appears once ``rxnsq.compat`` exports pynsq's ``Reader`` and ``Writer``."""
    probe = _python_version_of(
        sys.executable,
        "import rxnsq.compat as m; assert callable(m.Reader) and callable(m.Writer); print('ok')",
    )
    if probe != "ok":
        return Client(
            COMPAT,
            None,
            note="rxnsq.compat (pynsq-compatible Reader/Writer) is not available yet: row skipped",
        )
    return Client(
        COMPAT,
        [
            sys.executable,
            str(WORKERS / "pynsq_worker.py"),
            "--nsq-module=rxnsq.compat",
            "--client-name=rxnsq.compat",
        ],
    )


def bench_tools() -> tuple[Path | None, str]:
    """The folder of nsq's bench_reader and bench_writer, built by ``scripts/install-nsq
    --bench`` (the same throwaway-module build as nsqd's) when missing; else why not."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-nsq"), "--bench"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode != 0:
        return None, f"nsq bench tools unavailable: {out.stderr.strip()[-300:]}"
    from rxnsq.testing import find_binary

    try:
        folder = Path(find_binary("bench_reader")).parent
    except FileNotFoundError as exc:
        return None, str(exc)
    return (
        folder,
        "nsq-bench: nsq v1.3.0's bench_reader / bench_writer (scripts/install-nsq --bench)",
    )


def go_client(rebuild: bool) -> Client:
    sources = [GO_DIR / "main.go", GO_DIR / "go.mod", GO_DIR / "go.sum"]
    stale = not GO_BINARY.exists() or any(
        p.stat().st_mtime > GO_BINARY.stat().st_mtime for p in sources
    )
    if stale or rebuild:
        go = shutil.which("go")
        if go is None:
            return Client(GO, None, style="go", note="no Go toolchain to build benchmarks/go")
        log("building the go-nsq reference client")
        BUILD_DIR.mkdir(exist_ok=True)
        env = {**os.environ, "GOFLAGS": "-mod=mod"}
        out = subprocess.run(
            [go, "build", "-trimpath", "-o", str(GO_BINARY), "."],
            cwd=GO_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if out.returncode != 0:
            return Client(GO, None, style="go", note=f"go build failed: {out.stderr[-500:]}")
    go_version = ""
    if shutil.which("go"):
        go_version = subprocess.run(["go", "version"], capture_output=True, text=True).stdout
    return Client(
        GO,
        [str(GO_BINARY)],
        style="go",
        note="go-nsq v1.1.0",
        versions={"go-nsq": "1.1.0", "go": go_version.strip()},
    )


# --- running one worker -----------------------------------------------------------------------


class WorkerError(RuntimeError):
    pass


def run_worker(
    argv: list[str], timeout: float, on_ready: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Run a worker to its end; return its RESULT plus the whole process's CPU (wait4)."""
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        result: dict[str, Any] | None = None
        try:
            while True:
                try:
                    line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    raise WorkerError(f"timed out after {timeout:.0f}s") from None
                if line is None:
                    break
                if line == "READY" and on_ready is not None:
                    on_ready()
                elif line.startswith("RESULT "):
                    result = json.loads(line[len("RESULT ") :])
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        finally:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        if result is None or proc.returncode != 0:
            errors.seek(0)
            tail = errors.read().decode(errors="replace")[-2000:]
            raise WorkerError(f"exit code {proc.returncode}, no result; stderr:\n{tail}")
    result["process_cpu"] = usage.ru_utime + usage.ru_stime
    return result


# --- the run ----------------------------------------------------------------------------------


class Bench:
    def __init__(
        self, settings: Settings, clients: dict[str, Client], selected: list[Scenario]
    ) -> None:
        self.settings = settings
        self.clients = clients
        self.scenarios = selected
        self.samples: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
        self.errors: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
        self.nsqd: NsqdProcess | None = None
        self.preload_seconds: list[float] = []

    def start_nsqd(self) -> NsqdProcess:
        s = self.settings
        # bench_writer publishes for bench_seconds at whatever rate it reaches: room for 5M/s
        bench_written = int(5_000_000 * s.bench_seconds)
        largest = max(
            s.count, s.count_mif1, s.pub_count, s.mpub_count, s.sink_loop_count, s.drain_large,
            s.drain_small, s.bench_backlog, bench_written,
        )  # fmt: skip
        largest += 2_500 + 2_000  # backlog_margin
        args = [f"--mem-queue-size={largest + 20_000}", "--max-rdy-count=2500"]
        self.nsqd = NsqdProcess(extra_args=args).start()
        self.nsqd_args = args
        self.nsqd_version = subprocess.run(
            [_nsqd_binary(), "--version"], capture_output=True, text=True
        ).stdout.strip()
        log(f"nsqd on {self.nsqd.tcp_address} ({' '.join(args)})")
        return self.nsqd

    def ensure_nsqd(self) -> None:
        """nsqd must not die in a run; if it does, say so (with its log) and start it again,
        so one crash costs the runs it broke, not the rest of the table."""
        assert self.nsqd is not None
        if self.nsqd.running:
            return
        code = self.nsqd.returncode
        tail = self.nsqd.log_tail(15).replace("\n", " | ")
        message = f"nsqd exited (code {code}) and was restarted; its log ended: {tail}"
        log(message)
        self.incidents.append(message)
        self.nsqd.restart()

    incidents: list[str]

    def run(self) -> None:
        self.incidents = []
        order = [name for name in ALL_CLIENTS if self.clients[name].argv is not None]
        reps = max((sc.reps for sc in self.scenarios), default=0)
        for rep in range(reps):
            rotated = order[rep % len(order) :] + order[: rep % len(order)] if order else []
            for scenario in self.scenarios:
                if rep >= scenario.reps:
                    continue
                for name in rotated:
                    if name in scenario.modes:
                        self.ensure_nsqd()
                        self.run_one(scenario, self.clients[name], rep)
                if scenario.bench and self.bench_dir is not None:
                    self.ensure_nsqd()
                    self.run_bench(scenario, rep)

    bench_dir: Path | None = None  # nsq's bench tools, when they are part of the run
    bench_note: str = ""

    def run_bench(self, scenario: Scenario, rep: int) -> None:
        """nsq's own bench_reader / bench_writer on the scenario's shape, for bench_seconds."""
        assert self.nsqd is not None and self.bench_dir is not None
        base = self.nsqd.http_url
        tool, *options = scenario.bench
        topic = f"{scenario.id}_nsq_bench_{rep}"[:64]
        seconds = self.settings.bench_seconds
        argv = [
            str(self.bench_dir / tool),
            f"-nsqd-tcp-address={self.nsqd.tcp_address}",
            f"-topic={topic}",
            f"-runfor={seconds}s",
            "-size=200",
            *options,
        ]
        try:
            if tool == "bench_reader":
                argv.append("-channel=bench")
                _wire.create_channel(base, topic, "bench")
                backlog = self.settings.bench_backlog
                self.preload_seconds.append(_wire.preload(self.nsqd.tcp_address, topic, backlog))
                self.wait_depth(topic, backlog)
            started = time.monotonic()
            with tempfile.TemporaryFile() as errors:
                proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors, cwd=ROOT)
                _, status, usage = os.wait4(proc.pid, 0)
                errors.seek(0)
                text = errors.read().decode(errors="replace")
            wall = time.monotonic() - started
            if os.waitstatus_to_exitcode(status) != 0 or "ops/s" not in text:
                raise WorkerError(f"{tool} failed: {text[-1000:]}")
            line = [x for x in text.splitlines() if "ops/s" in x][-1]
            rate = float(line.split(" - ")[2].removesuffix("ops/s"))
            elapsed = _go_seconds(line.split("duration: ")[1].split(" - ")[0])
            count = round(rate * elapsed)
            if tool == "bench_reader" and count >= backlog:
                raise WorkerError(f"bench_reader ran dry: raise bench_backlog above {backlog:,}")
            result = {
                "client": NSQ,
                "mode": tool,
                "count": count,
                "elapsed": elapsed,
                "cpu": (usage.ru_utime + usage.ru_stime) * elapsed / max(wall, elapsed),
                "max_rss_kib": 0,
                "process_cpu": usage.ru_utime + usage.ru_stime,
            }
        except (WorkerError, OSError, RuntimeError, ValueError, IndexError) as exc:
            message = f"rep {rep}: {exc}"
            log(f"{scenario.id} {NSQ}: FAILED {message}")
            self.errors[(scenario.id, NSQ)].append(message)
            return
        finally:
            _wire.delete_topic(base, topic)
        self.samples[(scenario.id, NSQ)].append(result)
        log(f"{scenario.id:17} {NSQ:13} rep {rep + 1}: {describe(scenario, result)}")

    def run_one(
        self,
        scenario: Scenario,
        client: Client,
        rep: int,
        extra: Iterable[str] = (),
        prefix: Iterable[str] = (),
        record: bool = True,
    ) -> dict[str, Any] | None:
        assert self.nsqd is not None
        base = self.nsqd.http_url
        topic = f"{scenario.id}_{client.name.replace('.', '_').replace('-', '_')}_{rep}"
        topic = topic[:64]
        mode = scenario.modes[client.name]
        argv = [
            *prefix,
            *client.command(scenario, mode, self.nsqd.tcp_address, topic, self.settings),
            *extra,
        ]
        on_ready = None
        try:
            if scenario.kind in ("consume", "latency"):
                _wire.create_channel(base, topic, "bench")
            if scenario.kind == "consume":
                # More than the worker counts, so the channel never runs dry inside the
                # measured interval: a client that is never "not ready" would otherwise wait
                # up to nsqd's 250 ms output-buffer flush for the last partial buffer.
                backlog = scenario.count + backlog_margin(scenario)
                self.preload_seconds.append(_wire.preload(self.nsqd.tcp_address, topic, backlog))
                self.wait_depth(topic, backlog)
            if scenario.kind == "latency":
                on_ready = self.rate_publisher(topic, scenario.count)
            result = run_worker(argv, worker_timeout(scenario), on_ready)
            if scenario.kind in ("consume", "latency"):
                result["stats"] = self.check_stats(topic)
        except (WorkerError, OSError, RuntimeError) as exc:
            message = f"rep {rep}: {exc}"
            log(f"{scenario.id} {client.name}: FAILED {message}")
            self.errors[(scenario.id, client.name)].append(message)
            return None
        finally:
            _wire.delete_topic(base, topic)
        if record:
            self.samples[(scenario.id, client.name)].append(result)
        label = f"rep {rep + 1}" if record else "profiled"
        log(f"{scenario.id:17} {client.name:13} {label}: {describe(scenario, result)}")
        return result

    def check_stats(self, topic: str, timeout: float = 10.0) -> dict[str, int]:
        """After a consume run: nothing left in nsqd, nothing requeued or timed out; the last
        FINs may still be on their way, so in-flight is given a moment to reach 0."""
        assert self.nsqd is not None
        deadline = time.monotonic() + timeout
        while True:
            stats = _wire.channel_stats(self.nsqd.http_url, topic, "bench")
            if stats["in_flight"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if any(stats.values()):
            raise WorkerError(f"nsqd's /stats after the run are not all 0: {stats}")
        return stats

    def wait_depth(self, topic: str, count: int, timeout: float = 120.0) -> None:
        assert self.nsqd is not None
        deadline = time.monotonic() + timeout
        while (depth := _wire.channel_depth(self.nsqd.http_url, topic, "bench")) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"backlog of {topic} reached only {depth} of {count}")
            time.sleep(0.02)

    def rate_publisher(self, topic: str, count: int) -> Callable[[], None]:
        assert self.nsqd is not None
        argv = [
            sys.executable,
            str(WORKERS / "rate_pub.py"),
            f"--addr={self.nsqd.tcp_address}",
            f"--topic={topic}",
            f"--rate={self.settings.latency_rate}",
            f"--count={count}",
        ]

        def publish() -> None:
            out = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=count / self.settings.latency_rate + 60,
            )
            if out.returncode != 0:
                raise WorkerError(f"rate publisher failed: {out.stdout} {out.stderr[-1000:]}")

        return publish


def _go_seconds(text: str) -> float:
    """A Go duration as printed by ``time.Duration.String`` ("2.0004s", "301.2ms") in seconds."""
    for unit, scale in (("ms", 1e-3), ("µs", 1e-6), ("us", 1e-6), ("ns", 1e-9), ("s", 1.0)):
        if text.endswith(unit) and "m" not in text[: -len(unit)]:
            return float(text[: -len(unit)]) * scale
    raise ValueError(f"unexpected Go duration {text!r}")


def _nsqd_binary() -> str:
    from rxnsq.testing import find_binary

    return find_binary("nsqd")


def describe(scenario: Scenario, r: dict[str, Any]) -> str:
    rate = r["count"] / r["elapsed"] if r["elapsed"] else 0.0
    text = (
        f"{rate:>11,.0f} msg/s  cpu {1e6 * r['cpu'] / max(1, r['count']):6.1f} us/msg  "
        f"rss {r['max_rss_kib'] / 1024:6.1f} MiB"
    )
    if scenario.kind == "latency":
        text = f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  " + text
    return text


# --- summaries, ratios, targets ---------------------------------------------------------------


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    def med(values: Iterable[float]) -> float:
        return float(statistics.median(list(values)))

    summary = {
        "reps": len(samples),
        "count": samples[0]["count"],
        "throughput": med(r["count"] / r["elapsed"] for r in samples if r["elapsed"] > 0),
        "throughput_all": [r["count"] / r["elapsed"] for r in samples if r["elapsed"] > 0],
        "elapsed": med(r["elapsed"] for r in samples),
        "cpu_seconds": med(r["cpu"] for r in samples),
        "cpu_us_per_msg": med(1e6 * r["cpu"] / max(1, r["count"]) for r in samples),
        "max_rss_mib": med(r["max_rss_kib"] / 1024 for r in samples),
        "process_cpu_seconds": med(r["process_cpu"] for r in samples),
    }
    if "p99_ms" in samples[0]:
        summary["p50_ms"] = med(r["p50_ms"] for r in samples)
        summary["p99_ms"] = med(r["p99_ms"] for r in samples)
        summary["max_ms"] = med(r["max_ms"] for r in samples)
    return summary


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def build_report(bench: Bench, started: float, args: argparse.Namespace) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for scenario in bench.scenarios:
        row: dict[str, Any] = {
            "title": scenario.title,
            "kind": scenario.kind,
            "timed": scenario.timed,
            "count": scenario.count,
            "max_in_flight": scenario.mif,
            "clients": {},
        }
        names = [*scenario.modes, *((NSQ,) if scenario.bench else ())]
        for name in names:
            if name == NSQ:
                samples = bench.samples.get((scenario.id, NSQ))
                if samples:
                    entry = {"mode": scenario.bench[0], **summarize(samples)}
                elif (scenario.id, NSQ) in bench.errors:
                    entry = {"failed": bench.errors[(scenario.id, NSQ)]}
                else:
                    continue
                rows[scenario.id] = row
                row["clients"][NSQ] = entry
                continue
            client = bench.clients[name]
            samples = bench.samples.get((scenario.id, name))
            if samples:
                entry: dict[str, Any] = {"mode": scenario.modes[name], **summarize(samples)}
            elif client.argv is None:
                entry = {"skipped": client.note}
            elif (scenario.id, name) in bench.errors:
                entry = {"failed": bench.errors[(scenario.id, name)]}
            else:
                continue  # not selected in this run
            rows[scenario.id] = row
            row["clients"][name] = entry

    def get(scenario_id: str, client: str, key: str) -> float | None:
        value = rows.get(scenario_id, {}).get("clients", {}).get(client, {}).get(key)
        return float(value) if isinstance(value, (int, float)) else None

    ratios: dict[str, dict[str, float | None]] = {}
    for scenario_id, row in rows.items():
        key = "p99_ms" if row["kind"] == "latency" else "throughput"
        ours = get(scenario_id, RXNSQ, key)
        base = COMPARED_WITH.get(scenario_id, scenario_id)
        ratios[scenario_id] = {
            "rxnsq/pynsq": ratio(ours, get(base, PYNSQ, key)),
            "rxnsq/go-nsq": ratio(ours, get(base, GO, key)),
            "rxnsq/nsq-bench": ratio(ours, get(base, NSQ, key)),
        }
    consume_rss = get("consume_mif2500", RXNSQ, "max_rss_mib")
    targets = [
        target(
            "consume, per-message pipeline, mif 2500 >= 5x pynsq",
            ratio(
                get("consume_mif2500", RXNSQ, "throughput"),
                get("consume_mif2500", PYNSQ, "throughput"),
            ),
            5.0,
        ),
        target(
            "consume, batch(500) >= 1.0x go-nsq (mif 2500)",
            ratio(
                get("consume_batch500", RXNSQ, "throughput"),
                get("consume_mif2500", GO, "throughput"),
            ),
            1.0,
        ),
        target(
            "keyed batch (5 keys x 50, mif 200) within 2x of an unkeyed batch(200) "
            "(throughput ratio >= 0.5)",
            ratio(
                get("consume_keyed_batch", RXNSQ, "throughput"),
                get("consume_batch200", RXNSQ, "throughput"),
            ),
            0.5,
        ),
        target(
            "sink (max_batch 100) fed from an RxPY Subject >= 1.0x pynsq's MPUB of 100",
            ratio(
                get("publish_sink", RXNSQ, "throughput"),
                get("publish_mpub100", PYNSQ, "throughput"),
            ),
            1.0,
        ),
        target(
            "(reference) the same sink with sink.on_next called directly, no RxPY",
            ratio(
                get("publish_sink_direct", RXNSQ, "throughput"),
                get("publish_mpub100", PYNSQ, "throughput"),
            ),
            1.0,
        ),
        target(
            f"await writer.mpub of 100, {bench.settings.mpub_window} in flight >= 0.8x go-nsq "
            "at the same window",
            ratio(
                get("publish_mpub100", RXNSQ, "throughput"),
                get("publish_mpub100", GO, "throughput"),
            ),
            0.8,
        ),
        target(
            "peak RSS of the Subject-fed sink within 20% of consuming (mif 2500; ratio <= 1.2)",
            ratio(get("publish_sink", RXNSQ, "max_rss_mib"), consume_rss),
            1.2,
            lower_is_better=True,
        ),
        target(
            f"peak RSS of the plain loop feeding {bench.settings.sink_loop_count:,} items "
            "within 20% of consuming (ratio <= 1.2)",
            ratio(get("publish_sink_send", RXNSQ, "max_rss_mib"), consume_rss),
            1.2,
            lower_is_better=True,
        ),
        target(
            f"latency p99 at {bench.settings.latency_rate} msg/s <= pynsq (ratio <= 1)",
            ratio(get("latency", RXNSQ, "p99_ms"), get("latency", PYNSQ, "p99_ms")),
            1.0,
            lower_is_better=True,
        ),
        target(
            f"peak RSS draining {bench.settings.drain_large:,} within 20% of draining "
            f"{bench.settings.drain_small:,} (ratio <= 1.2)",
            ratio(
                get("drain_large", RXNSQ, "max_rss_mib"), get("drain_small", RXNSQ, "max_rss_mib")
            ),
            1.2,
            lower_is_better=True,
        ),
    ]
    short = []
    for scenario in bench.scenarios:
        if not scenario.timed or scenario.kind == "latency":
            continue
        for name in [*scenario.modes, NSQ]:
            for sample in bench.samples.get((scenario.id, name), []):
                if sample["elapsed"] < MIN_SECONDS:
                    short.append(f"{scenario.id}/{name} ({sample['elapsed']:.2f} s)")
    notes = [c.note for c in bench.clients.values() if c.note]
    if getattr(bench, "bench_note", ""):
        notes.append(bench.bench_note)
    if short:
        notes.append(f"runs shorter than {MIN_SECONDS:g} s (raise the counts): " + ", ".join(short))
    notes += getattr(bench, "incidents", [])
    versions: dict[str, str] = {}
    for client in bench.clients.values():
        versions.update(client.versions)
    versions["nsqd"] = getattr(bench, "nsqd_version", "")
    return {
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.run", *args.argv]),
        "wall_seconds": round(time.monotonic() - started, 1),
        "machine": machine(),
        "load_average": {
            "start": [round(x, 2) for x in getattr(bench, "load_start", ())],
            "end": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": versions,
        "settings": dataclasses.asdict(bench.settings),
        "nsqd_args": getattr(bench, "nsqd_args", []),
        "notes": notes,
        "rows": rows,
        "ratios": ratios,
        "targets": targets,
        "profiles": getattr(bench, "profiles", {}),
    }


def target(
    name: str, value: float | None, bound: float, lower_is_better: bool = False
) -> dict[str, Any]:
    met = None if value is None else (value <= bound if lower_is_better else value >= bound)
    return {"target": name, "value": value, "bound": bound, "met": met}


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }


# --- markdown ---------------------------------------------------------------------------------

METHOD_NOTES = [
    "Consume runs pre-load the backlog plus max_in_flight + 2,000 extra messages and measure "
    "the first count: if the channel ran dry inside the measured interval, a client that never "
    "fills its RDY window would wait up to nsqd's 250 ms output-buffer flush for the last "
    "partial buffer. The client then consumes the rest and stops; each run ends with nsqd's "
    "/stats for the channel checked: depth, in flight, requeued, timed out and deferred all 0 "
    "(else the run counts as failed). bench_reader stops on a timer with messages in flight: "
    "its runs are not checked.",
    "Latency: one raw-socket publisher (benchmarks/workers/rate_pub.py) at a fixed rate for "
    "every client, the publish time in the body, measured at handler entry. With nsqd's default "
    "16 KiB / 250 ms output buffer the figure is nsqd's buffering (the same for every client), "
    "so the target uses the row where every client asks for output_buffer_size 64 "
    "(effectively unbuffered).",
    "Each client runs alone in its process; nsqd, the client and (for latency) the publisher "
    "share the machine's cores. Other work on the machine shows in the load average above.",
]


NA = "n/a"


def _fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return NA
    return f"{value:,.{digits}f}{suffix}"


def _cell(entry: dict[str, Any] | None, key: str, digits: int = 0) -> str:
    if entry is None:
        return NA
    if "skipped" in entry:
        return "skipped"
    if "failed" in entry:
        return "failed"
    return _fmt(entry.get(key), digits)


def markdown(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    v = report["versions"]
    out = [
        "# rxnsq benchmarks",
        "",
        f"Generated {report['generated']} by `{report['command']}` in "
        f"{report['wall_seconds']:.0f} s. One nsqd ({v.get('nsqd', '?')}, "
        f"`{' '.join(report['nsqd_args'])}`) on loopback; every client in its own process; "
        f"clients alternate within each repetition; figures are medians of "
        f"{s['reps']} repetitions ({s['drain_reps']} for the drains).",
        "",
        f"**Machine:** {m['cpu']}, {m['cores']} cores, {m['memory']}, {m['os']}, {m['python']}; "
        f"load average (1/5/15 min) {report['load_average']['start']} at the start, "
        f"{report['load_average']['end']} at the end.",
        "",
        "**Versions:** " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".",
        "",
        f"**Counts:** consume {s['count']:,} messages of 200 bytes measured "
        f"({s['count_mif1']:,} at max_in_flight 1), the whole backlog consumed; single PUBs "
        f"{s['pub_count']:,} (at most {s['window']:,} unconfirmed); MPUB of 100 and sinks "
        f"{s['mpub_count']:,} ({s['mpub_window']} commands in flight); the plain loop "
        f"{s['sink_loop_count']:,} items; latency {s['latency_rate']:,} msg/s for "
        f"{s['latency_seconds']:g} s (first 0.5 s skipped); drains {s['drain_small']:,} and "
        f"{s['drain_large']:,}; nsq's bench tools {s['bench_seconds']:g} s each.",
        "",
        "## Throughput (messages/s) and latency (ms)",
        "",
        "| scenario | pynsq | rxnsq | go-nsq | nsq bench | rxnsq/pynsq | rxnsq/go-nsq "
        "| rxnsq/nsq bench |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for scenario_id, row in report["rows"].items():
        clients = row["clients"]
        ratios = report["ratios"].get(scenario_id, {})
        if row["kind"] == "latency":
            for key in ("p50_ms", "p99_ms"):
                label = f"{row['title']}: {key[:3]} (lower is better)"
                cells = [_cell(clients.get(c), key, 3) for c in (PYNSQ, RXNSQ, GO)] + [NA]
                if key == "p50_ms":
                    r = {
                        n: ratio(clients.get(RXNSQ, {}).get(key), clients.get(n, {}).get(key))
                        for n in (PYNSQ, GO)
                    }
                    rr = [r[PYNSQ], r[GO], None]
                else:
                    rr = [ratios.get("rxnsq/pynsq"), ratios.get("rxnsq/go-nsq"), None]
                out.append(
                    f"| {label} | "
                    + " | ".join(cells)
                    + " | "
                    + " | ".join(_fmt(x, 2) for x in rr)
                    + " |"
                )
            continue
        cells = [_cell(clients.get(c), "throughput") for c in (PYNSQ, RXNSQ, GO, NSQ)]
        if scenario_id in COMPARED_WITH:
            base = COMPARED_WITH[scenario_id]
            label = "(MPUB row)" if row["kind"] == "publish" else f"({base.split('_')[1]} row)"
            cells = [label if c == NA else c for c in cells]
        if row.get("timed") is False:
            cells = [c if c == NA else f"({c})" for c in cells]
        out.append(
            f"| {row['title']} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(
                _fmt(ratios.get(k), 2) for k in ("rxnsq/pynsq", "rxnsq/go-nsq", "rxnsq/nsq-bench")
            )
            + " |"
        )
    out += [
        "",
        "For `batch(500)` the ratios are against the per-message consumers at max_in_flight "
        "2500; for the sink rows, against the MPUB of 100 row (the sinks send MPUBs of 100, "
        f"at most {s['mpub_window'] * 100:,} messages unconfirmed, like the MPUB row's "
        f"{s['mpub_window']} commands in flight). The Subject row feeds the sink from a "
        "`reactivex.subject.Subject` (as a user's hot source would); the direct row calls "
        "`sink.on_next` itself, which separates the sink's own cost from RxPY's; the plain loop "
        "row awaits `sink.send()` per item with the sink's default bounds (its figure is "
        "mostly about memory). PUB rows call pynsq's `pub`, go-nsq's `PublishAsync` and "
        "rxnsq's `pub_nowait` without waiting, confirmations counted in callbacks; MPUB rows "
        "keep that many commands in flight (rxnsq: that many concurrent `await writer.mpub`). "
        "nsq bench is nsq's own `bench_reader`/`bench_writer` as shipped: one connection per "
        "core, FINs flushed in bursts, and bench_writer waits for each MPUB's answer before "
        "the next (one in flight per connection; its PUB row is an MPUB of 1). Figures in "
        "parentheses are too short to be timed.",
        "",
        "## Client CPU per message and peak RSS",
        "",
        "| scenario | pynsq CPU µs/msg | rxnsq CPU µs/msg | go-nsq CPU µs/msg "
        "| nsq bench CPU µs/msg | pynsq RSS MiB | rxnsq RSS MiB | go-nsq RSS MiB |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in report["rows"].values():
        c = row["clients"]
        out.append(
            f"| {row['title']} | "
            + " | ".join(_cell(c.get(n), "cpu_us_per_msg", 1) for n in (PYNSQ, RXNSQ, GO, NSQ))
            + " | "
            + " | ".join(_cell(c.get(n), "max_rss_mib", 1) for n in (PYNSQ, RXNSQ, GO))
            + " |"
        )
    out += [
        "",
        "CPU is user + system time of the client process over the measured interval (nsq "
        "bench: of the whole process); RSS is the process's peak (VmHWM).",
        "",
        "## Targets (issues 8 and 13)",
        "",
        "| target | measured | met |",
        "|---|--:|:-:|",
    ]
    for t in report["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        out.append(f"| {t['target']} | {_fmt(t['value'], 2)} | {met} |")
    compat = [r for r in report["rows"].values() if COMPAT in r["clients"]]
    if compat:
        out += [
            "",
            "## rxnsq.compat (the pynsq-compatible layer, driven by the pynsq worker)",
            "",
            "| scenario | rxnsq.compat | pynsq | compat/pynsq |",
            "|---|--:|--:|--:|",
        ]
        for row in compat:
            key = "p99_ms" if row["kind"] == "latency" else "throughput"
            digits = 3 if key == "p99_ms" else 0
            ours, theirs = row["clients"][COMPAT], row["clients"].get(PYNSQ)
            label = row["title"] + (": p99 ms" if key == "p99_ms" else "")
            out.append(
                f"| {label} | {_cell(ours, key, digits)} | {_cell(theirs, key, digits)} | "
                + _fmt(ratio(ours.get(key), (theirs or {}).get(key)), 2)
                + " |"
            )
    out += ["", "## Notes", ""] + [f"- {note}" for note in [*METHOD_NOTES, *report["notes"]]]
    if report.get("profiles"):
        out += ["", "## Profiles", ""]
        for name, path in report["profiles"].items():
            out.append(f"- {name}: `{path}`")
    return "\n".join(out) + "\n"


# --- profiling --------------------------------------------------------------------------------


def profile(bench: Bench, scenario_ids: list[str], out_dir: Path) -> dict[str, str]:
    """Run the rxnsq worker of each scenario once more under py-spy (whole process, the
    event-loop part kept) and once under pyinstrument (the measured interval only); main
    checked that both are installed (:func:`missing_profilers`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_id = {sc.id: sc for sc in bench.scenarios}
    client = bench.clients[RXNSQ]
    written: dict[str, str] = {}
    py_spy = _py_spy()
    for scenario_id in scenario_ids:
        scenario = by_id.get(scenario_id)
        if scenario is None or RXNSQ not in scenario.modes:
            log(f"profile: no rxnsq scenario {scenario_id!r}")
            continue
        raw = out_dir / f"{scenario_id}.collapsed"
        prefix = [
            py_spy,
            "record",
            "--nonblocking",
            "--rate",
            "1000",
            "--format",
            "raw",
            "--output",
            str(raw),
            "--",
        ]
        if bench.run_one(scenario, client, 99, prefix=prefix, record=False) and raw.exists():
            summary = out_dir / f"{scenario_id}.py-spy.txt"
            summary.write_text(summarize_collapsed(raw.read_text()))
            written[f"{scenario_id} (py-spy)"] = _display(summary)
        text = out_dir / f"{scenario_id}.pyinstrument.txt"
        if (
            bench.run_one(scenario, client, 98, extra=[f"--profile={text}"], record=False)
            and text.exists()
        ):
            written[f"{scenario_id} (pyinstrument)"] = _display(text)
    return written


def _py_spy() -> str:
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def missing_profilers() -> list[str]:
    """What ``--profile`` needs and this environment lacks (checked before any run, so a long
    run never ends without the profiles it was asked for)."""
    missing = [] if Path(_py_spy()).exists() else ["py-spy"]
    if importlib.util.find_spec("pyinstrument") is None:
        missing.append("pyinstrument")
    return missing


def _display(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(ROOT))
    return str(path)


def summarize_collapsed(text: str, top: int = 25) -> str:
    """Self and inclusive time per function, and self time per line, from py-spy's raw
    (collapsed) stacks, keeping only samples taken inside the asyncio event loop."""
    self_fn: collections.Counter[str] = collections.Counter()
    total_fn: collections.Counter[str] = collections.Counter()
    self_line: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if not any(f.split(" (", 1)[0].endswith("_run_once") for f in frames):
            continue  # imports, connect, interpreter start-up
        count = int(count_text)
        samples += count
        seen: set[str] = set()
        for frame in frames:
            fn = _function_of(frame)
            if fn not in seen:
                seen.add(fn)
                total_fn[fn] += count
        self_fn[_function_of(frames[-1])] += count
        self_line[_short(frames[-1])] += count
    if not samples:
        return "no samples inside the event loop\n"
    out = [f"{samples} samples inside the event loop (1000 Hz)", "", "self %  function"]
    out += [f"{100 * n / samples:6.1f}  {fn}" for fn, n in self_fn.most_common(top)]
    out += ["", "total %  function (inclusive)"]
    out += [f"{100 * n / samples:7.1f}  {fn}" for fn, n in total_fn.most_common(top)]
    out += ["", "self %  line"]
    out += [f"{100 * n / samples:6.1f}  {fn}" for fn, n in self_line.most_common(top)]
    return "\n".join(out) + "\n"


def _short(frame: str) -> str:
    """`fn (/long/path/site-packages/pkg/mod.py:12)` -> `fn (pkg/mod.py:12)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/lib/python3", str(ROOT) + "/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})"


def _function_of(frame: str) -> str:
    short = _short(frame)
    return short.rsplit(":", 1)[0] + ")" if ":" in short else short


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny counts, one repetition: checks that everything runs",
    )
    p.add_argument(
        "--clients",
        default=",".join((*ALL_CLIENTS, NSQ)),
        help=f"comma-separated subset of {', '.join((*ALL_CLIENTS, NSQ))}",
    )
    p.add_argument("--scenarios", default="", help="comma-separated scenario ids (default all)")
    p.add_argument("--count", type=int, help="consume backlog measured (default 600,000)")
    p.add_argument("--count-mif1", type=int, help="messages at max_in_flight 1 (40,000)")
    p.add_argument("--pub-count", type=int, help="single PUBs per run (default 400,000)")
    p.add_argument(
        "--mpub-count", type=int, help="messages per MPUB-of-100 and sink run (5,000,000)"
    )
    p.add_argument("--sink-loop-count", type=int, help="items of the plain loop (1,000,000)")
    p.add_argument("--window", type=int, help="single PUBs: most messages unconfirmed (5,000)")
    p.add_argument("--mpub-window", type=int, help="MPUB of 100: commands in flight (10)")
    p.add_argument("--bench-seconds", type=float, help="nsq bench tools' run time (2.5)")
    p.add_argument("--latency-rate", type=int, help="msg/s for the latency run (2,000)")
    p.add_argument("--latency-seconds", type=float, help="seconds of the latency run (5)")
    p.add_argument("--drain-small", type=int, help="small backlog drained (10,000)")
    p.add_argument("--drain-large", type=int, help="large backlog drained (1,000,000)")
    p.add_argument("--reps", type=int, help="repetitions (3; the median is reported)")
    p.add_argument("--drain-reps", type=int, help="repetitions of the drains (3)")
    p.add_argument(
        "--profile", default="", help="comma-separated scenario ids to profile rxnsq on afterwards"
    )
    p.add_argument("--pynsq-python", help="interpreter that has pynsq (default: found/created)")
    p.add_argument("--rebuild-go", action="store_true", help="rebuild the go-nsq program")
    p.add_argument(
        "--output-dir",
        type=Path,
        default=RESULTS,
        help="where latest.json and latest.md go (default benchmarks/results)",
    )
    args = p.parse_args(argv)
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    settings = Settings.quick() if args.quick else Settings()
    overrides = {
        k: getattr(args, k)
        for k in (
            "count",
            "count_mif1",
            "pub_count",
            "mpub_count",
            "sink_loop_count",
            "window",
            "mpub_window",
            "bench_seconds",
            "latency_rate",
            "latency_seconds",
            "drain_small",
            "drain_large",
            "reps",
            "drain_reps",
        )
        if getattr(args, k) is not None
    }
    settings = dataclasses.replace(settings, **overrides)

    wanted = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = set(wanted) - {*ALL_CLIENTS, NSQ}
    if unknown:
        raise SystemExit(f"unknown clients {sorted(unknown)}; choose from {(*ALL_CLIENTS, NSQ)}")
    if args.profile.strip() and (missing := missing_profilers()):
        raise SystemExit(f"--profile needs {' and '.join(missing)}: pip install -e '.[bench]'")
    off = Client("", None, note="not selected (--clients)")
    clients = {
        RXNSQ: rxnsq_client() if RXNSQ in wanted else dataclasses.replace(off, name=RXNSQ),
        PYNSQ: pynsq_client(args.pynsq_python)
        if PYNSQ in wanted
        else dataclasses.replace(off, name=PYNSQ),
        GO: go_client(args.rebuild_go) if GO in wanted else dataclasses.replace(off, name=GO),
        COMPAT: compat_client() if COMPAT in wanted else dataclasses.replace(off, name=COMPAT),
    }
    for client in clients.values():
        if client.argv is None and client.name in wanted:
            log(f"{client.name}: {client.note}")
    for client in clients.values():  # rows of clients not asked for are left out, not skipped
        if client.name not in wanted:
            client.note = ""
    chosen = [c.strip() for c in args.scenarios.split(",") if c.strip()]
    selected = [sc for sc in scenarios(settings) if not chosen or sc.id in chosen]
    selected = [
        dataclasses.replace(sc, modes={k: v for k, v in sc.modes.items() if k in wanted})
        for sc in selected
    ]
    selected = [sc for sc in selected if sc.modes]

    bench = Bench(settings, clients, selected)
    if NSQ in wanted and any(sc.bench for sc in selected):
        bench.bench_dir, bench.bench_note = bench_tools()
        log(bench.bench_note)
    bench.load_start = os.getloadavg()  # type: ignore[attr-defined]
    bench.start_nsqd()
    try:
        bench.run()
        to_profile = [p.strip() for p in args.profile.split(",") if p.strip()]
        if to_profile and clients[RXNSQ].argv is not None:
            bench.profiles = profile(bench, to_profile, args.output_dir / "profiles")  # type: ignore[attr-defined]
    finally:
        assert bench.nsqd is not None
        bench.nsqd.close()
    report = build_report(bench, started, args)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.output_dir / "latest.md").write_text(markdown(report))
    log(
        f"wrote {args.output_dir / 'latest.json'} and latest.md in "
        f"{time.monotonic() - started:.0f} s"
    )
    print(markdown(report))
    failed = any("failed" in e for r in report["rows"].values() for e in r["clients"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
