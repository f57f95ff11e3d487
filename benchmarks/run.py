"""Benchmarks: rxnsq against pynsq and the go-nsq reference client, on one nsqd, in one run.

    python -m benchmarks.run                 # the full run (about 10 minutes on 2 cores)
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

RXNSQ, PYNSQ, GO, COMPAT = "rxnsq", "pynsq", "go-nsq", "rxnsq.compat"
#: rxnsq-only scenarios and the scenario whose pynsq/go-nsq figures they are compared with
COMPARED_WITH = {"consume_batch500": "consume_mif2500", "publish_sink_direct": "publish_single"}
ALL_CLIENTS = (PYNSQ, RXNSQ, GO, COMPAT)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- settings and scenarios -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    count: int = 200_000  # consume backlog, publish count
    count_mif1: int = 200_000  # consume backlog at max_in_flight 1 (one round trip each)
    pub_count: int = 200_000
    window: int = 5_000  # publish: at most this many messages unconfirmed
    latency_rate: int = 2_000
    latency_seconds: float = 5.0
    latency_mif: int = 200
    drain_small: int = 10_000
    drain_large: int = 1_000_000
    reps: int = 3
    drain_reps: int = 3

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            count=2_000,
            count_mif1=500,
            pub_count=2_000,
            window=1_000,
            latency_rate=500,
            latency_seconds=1.0,
            drain_small=1_000,
            drain_large=5_000,
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


def scenarios(s: Settings) -> list[Scenario]:
    per_message = {PYNSQ: "consume", RXNSQ: "consume", GO: "consume", COMPAT: "consume"}
    latency = {PYNSQ: "latency", RXNSQ: "latency", GO: "latency", COMPAT: "latency"}
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
        ),
        Scenario(
            "consume_mif2500",
            "consume, max_in_flight 2500",
            "consume",
            s.count,
            per_message,
            mif=2500,
            reps=s.reps,
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
            "publish_single",
            "publish single messages (rxnsq: sink fed item by item)",
            "publish",
            s.pub_count,
            {PYNSQ: "pub", RXNSQ: "sink", GO: "pub", COMPAT: "pub"},
            reps=s.reps,
        ),
        Scenario(
            "publish_sink_direct",
            "publish: sink.on_next called directly (no RxPY source)",
            "publish",
            s.pub_count,
            {RXNSQ: "sink_direct"},
            reps=s.reps,
        ),
        Scenario(
            "publish_mpub100",
            "publish MPUB of 100",
            "publish",
            s.pub_count,
            {PYNSQ: "mpub", RXNSQ: "mpub", GO: "mpub", COMPAT: "mpub"},
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
            f"drain {s.drain_small:,} backlog, mif 2500",
            "consume",
            s.drain_small,
            {PYNSQ: "consume", RXNSQ: "consume", GO: "consume"},
            reps=s.drain_reps,
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
        opts = {
            "mode": mode,
            "addr": address,
            "topic": topic,
            "channel": "bench",
            "count": scenario.count,
            "mif": scenario.mif,
            "batch": scenario.batch,
            "window": settings.window,
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
        largest = max(s.count, s.count_mif1, s.pub_count * 2, s.drain_large, s.drain_small)
        largest += 2_500 + 2_000  # backlog_margin
        args = [f"--mem-queue-size={largest + 20_000}", "--max-rdy-count=2500"]
        self.nsqd = NsqdProcess(extra_args=args).start()
        self.nsqd_args = args
        self.nsqd_version = subprocess.run(
            [_nsqd_binary(), "--version"], capture_output=True, text=True
        ).stdout.strip()
        log(f"nsqd on {self.nsqd.tcp_address} ({' '.join(args)})")
        return self.nsqd

    def run(self) -> None:
        order = [name for name in ALL_CLIENTS if self.clients[name].argv is not None]
        reps = max((sc.reps for sc in self.scenarios), default=0)
        for rep in range(reps):
            rotated = order[rep % len(order) :] + order[: rep % len(order)] if order else []
            for scenario in self.scenarios:
                if rep >= scenario.reps:
                    continue
                for name in rotated:
                    if name in scenario.modes:
                        self.run_one(scenario, self.clients[name], rep)

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
            "count": scenario.count,
            "max_in_flight": scenario.mif,
            "clients": {},
        }
        for name in scenario.modes:
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
        }
    sink = get("publish_single", RXNSQ, "throughput")
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
            "sink fed single items >= 10x pynsq single pub",
            ratio(sink, get("publish_single", PYNSQ, "throughput")),
            10.0,
        ),
        target(
            "sink fed single items >= 1.0x pynsq mpub of 100",
            ratio(sink, get("publish_mpub100", PYNSQ, "throughput")),
            1.0,
        ),
        target(
            "(reference) the same with sink.on_next called directly, no RxPY source",
            ratio(
                get("publish_sink_direct", RXNSQ, "throughput"),
                get("publish_mpub100", PYNSQ, "throughput"),
            ),
            1.0,
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
    notes = [c.note for c in bench.clients.values() if c.note]
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
    "Consume runs pre-load the backlog plus max_in_flight + 2,000 extra messages and stop at the "
    "count: if the channel ran dry inside the measured interval, a client that never fills its "
    "RDY window would wait up to nsqd's 250 ms output-buffer flush for the last partial buffer.",
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
        f"**Counts:** consume backlog {s['count']:,} messages of 200 bytes "
        f"({s['count_mif1']:,} at max_in_flight 1); publish {s['pub_count']:,} "
        f"(at most {s['window']:,} unconfirmed); latency {s['latency_rate']:,} msg/s for "
        f"{s['latency_seconds']:g} s (first 0.5 s skipped); drains {s['drain_small']:,} and "
        f"{s['drain_large']:,}.",
        "",
        "## Throughput (messages/s) and latency (ms)",
        "",
        "| scenario | pynsq | rxnsq | go-nsq | rxnsq/pynsq | rxnsq/go-nsq |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for scenario_id, row in report["rows"].items():
        clients = row["clients"]
        ratios = report["ratios"].get(scenario_id, {})
        if row["kind"] == "latency":
            for key in ("p50_ms", "p99_ms"):
                label = f"{row['title']}: {key[:3]} (lower is better)"
                cells = [_cell(clients.get(c), key, 3) for c in (PYNSQ, RXNSQ, GO)]
                if key == "p50_ms":
                    r = {
                        n: ratio(clients.get(RXNSQ, {}).get(key), clients.get(n, {}).get(key))
                        for n in (PYNSQ, GO)
                    }
                    rr = [r[PYNSQ], r[GO]]
                else:
                    rr = [ratios.get("rxnsq/pynsq"), ratios.get("rxnsq/go-nsq")]
                out.append(
                    f"| {label} | "
                    + " | ".join(cells)
                    + " | "
                    + " | ".join(_fmt(x, 2) for x in rr)
                    + " |"
                )
            continue
        cells = [_cell(clients.get(c), "throughput") for c in (PYNSQ, RXNSQ, GO)]
        if scenario_id in COMPARED_WITH:
            cells = ["(row above)" if c == NA else c for c in cells]
        out.append(
            f"| {row['title']} | "
            + " | ".join(cells)
            + " | "
            + _fmt(ratios.get("rxnsq/pynsq"), 2)
            + " | "
            + _fmt(ratios.get("rxnsq/go-nsq"), 2)
            + " |"
        )
    out += [
        "",
        "For `batch(500)` the ratios are against the pynsq and go-nsq per-message consumers at "
        "max_in_flight 2500; for the sink rows, against their single PUBs (the targets below "
        "also compare the sink with pynsq's MPUB of 100). The sink is fed from a "
        "`reactivex.subject.Subject` (as a user's hot source would), at most "
        f"{s['window']:,} messages unconfirmed; the direct row calls `sink.on_next` itself, "
        "which separates the sink's own cost from RxPY's. pynsq's `pub` is called without "
        "waiting (pipelined, same window), confirmations counted in its callback; `mpub` rows "
        "keep window/100 commands in flight (rxnsq: that many concurrent `await writer.mpub`).",
        "",
        "## Client CPU per message and peak RSS",
        "",
        "| scenario | pynsq CPU µs/msg | rxnsq CPU µs/msg | go-nsq CPU µs/msg "
        "| pynsq RSS MiB | rxnsq RSS MiB | go-nsq RSS MiB |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for row in report["rows"].values():
        c = row["clients"]
        out.append(
            f"| {row['title']} | "
            + " | ".join(_cell(c.get(n), "cpu_us_per_msg", 1) for n in (PYNSQ, RXNSQ, GO))
            + " | "
            + " | ".join(_cell(c.get(n), "max_rss_mib", 1) for n in (PYNSQ, RXNSQ, GO))
            + " |"
        )
    out += [
        "",
        "CPU is user + system time of the client process over the measured interval; "
        "RSS is the process's peak (VmHWM).",
        "",
        "## Targets (issue 8)",
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
    event-loop part kept) and once under pyinstrument (the measured interval only)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_id = {sc.id: sc for sc in bench.scenarios}
    client = bench.clients[RXNSQ]
    written: dict[str, str] = {}
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    for scenario_id in scenario_ids:
        scenario = by_id.get(scenario_id)
        if scenario is None or RXNSQ not in scenario.modes:
            log(f"profile: no rxnsq scenario {scenario_id!r}")
            continue
        raw = out_dir / f"{scenario_id}.collapsed"
        if Path(py_spy).exists():
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
        else:
            log("profile: py-spy not installed (pip install -e '.[bench]')")
        text = out_dir / f"{scenario_id}.pyinstrument.txt"
        if (
            bench.run_one(scenario, client, 98, extra=[f"--profile={text}"], record=False)
            and text.exists()
        ):
            written[f"{scenario_id} (pyinstrument)"] = _display(text)
    return written


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
        default=",".join(ALL_CLIENTS),
        help=f"comma-separated subset of {', '.join(ALL_CLIENTS)}",
    )
    p.add_argument("--scenarios", default="", help="comma-separated scenario ids (default all)")
    p.add_argument("--count", type=int, help="consume backlog (default 200,000)")
    p.add_argument("--count-mif1", type=int, help="backlog at max_in_flight 1 (default --count)")
    p.add_argument("--pub-count", type=int, help="messages per publish run (default 200,000)")
    p.add_argument("--window", type=int, help="publish: most messages unconfirmed (5,000)")
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
            "window",
            "latency_rate",
            "latency_seconds",
            "drain_small",
            "drain_large",
            "reps",
            "drain_reps",
        )
        if getattr(args, k) is not None
    }
    if "count" in overrides and "count_mif1" not in overrides:
        overrides["count_mif1"] = overrides["count"]
    settings = dataclasses.replace(settings, **overrides)

    wanted = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = set(wanted) - set(ALL_CLIENTS)
    if unknown:
        raise SystemExit(f"unknown clients {sorted(unknown)}; choose from {ALL_CLIENTS}")
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
