"""Benchmark of ``rxnsq worker``: consume throughput with 1 and with 2 processes, in one run.

    python -m benchmarks.worker                      # 600,000 messages, 3 repetitions
    python -m benchmarks.worker --messages 50000 --reps 1 --output /tmp/w   # a smoke run

One nsqd (``--mem-queue-size`` above the backlog, so nothing spills to disk) on loopback. For
each run: a fresh topic, its channel created and *paused*, the backlog pre-loaded with raw
MPUBs, then ``rxnsq worker benchmarks.worker:consume --processes N --max-in-flight 2500``
started and waited for (``/readyz``), so interpreter start-up is not timed. The clock starts
when the channel is unpaused and stops when nsqd's ``/stats`` shows the channel empty with
nothing in flight (polled every 20 ms), and the run is checked: nothing requeued or timed out.
CPU time of nsqd, the supervisor and each worker process comes from ``/proc/<pid>/stat`` over
the same interval, which says where the time went. Runs of 1 and 2 processes alternate
within each repetition; the figures are medians. Results go to ``worker.md`` and
``worker.json`` in ``--output`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # `python benchmarks/worker.py`
    sys.path.insert(0, str(ROOT))

from benchmarks import _wire  # noqa: E402

CHANNEL = "bench"
MAX_IN_FLIGHT = 2500
TICKS = os.sysconf("SC_CLK_TCK")


def consume(ctx: Any) -> Any:
    """The factory under test: finish every message as it arrives (client cost only)."""
    return ctx.reader().messages.subscribe(on_next=lambda message: message.fin())


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return (total - idle) / TICKS, total / TICKS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, None


def one_run(nsqd: Any, processes: int, messages: int, tag: str) -> dict[str, Any]:
    topic = f"wbench_{tag}"
    base = nsqd.http_url
    _wire.create_channel(base, topic, CHANNEL)
    _wire.http("POST", base, "/channel/pause", topic=topic, channel=CHANNEL)
    _wire.preload(nsqd.tcp_address, topic, messages)
    port = free_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "rxnsq.cli.worker", "worker", "benchmarks.worker:consume",
         "--processes", str(processes), "--topic", topic, "--channel", CHANNEL,
         "--nsqd-tcp-address", nsqd.tcp_address, "--max-in-flight", str(MAX_IN_FLIGHT),
         "--metrics-port", str(port), "--log-level", "warning"],
        cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            status, body = get_json(f"http://127.0.0.1:{port}/readyz")
            if status == 200:
                break
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not become ready ({status} {body})")
            time.sleep(0.05)
        children = [p["pid"] for p in body["processes"]]
        pids = {"nsqd": nsqd.pid, "supervisor": worker.pid}
        pids.update({f"worker {i}": pid for i, pid in enumerate(children)})
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        machine_before = machine_busy()
        started = time.perf_counter()
        _wire.http("POST", base, "/channel/unpause", topic=topic, channel=CHANNEL)
        while True:
            stats = _wire.channel_stats(base, topic, CHANNEL)
            if stats["depth"] == 0 and stats["in_flight"] == 0:
                break
            if time.perf_counter() - started > 600:
                raise RuntimeError(f"the channel did not drain: {stats}")
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        machine_after = machine_busy()
        machine_cores = (machine_after[0] - machine_before[0]) / elapsed
        if stats["requeued"] or stats["timed_out"]:
            raise RuntimeError(f"run {tag} requeued or timed out messages: {stats}")
        time.sleep(1.2)  # one more state report from each process
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            metrics_text = response.read().decode()
        shares = [
            float(line.rsplit(" ", 1)[1])
            for line in metrics_text.splitlines()
            if line.startswith("rxnsq_messages_finished_total{")
        ]
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            code = worker.wait()
        _wire.delete_topic(base, topic)
    if code != 0:
        raise RuntimeError(f"the worker exited {code}")
    return {
        "processes": processes,
        "messages": messages,
        "seconds": elapsed,
        "rate": messages / elapsed,
        "cpu": cpu,
        "machine_busy": machine_cores,
        "finished_per_process": shares,
    }


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model or platform.processor(),
        "cores": len(os.sched_getaffinity(0)),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "load": [round(x, 2) for x in os.getloadavg()],
    }


def summarize(runs: list[dict[str, Any]], processes: int) -> dict[str, Any]:
    mine = [r for r in runs if r["processes"] == processes]
    seconds = statistics.median(r["seconds"] for r in mine)
    messages = mine[0]["messages"]

    def per_message(pick: Any) -> float:
        return statistics.median(pick(r) / r["messages"] * 1e6 for r in mine)

    return {
        "processes": processes,
        "rate": statistics.median(r["rate"] for r in mine),
        "rates": [round(r["rate"]) for r in mine],
        "seconds": seconds,
        "us_workers": per_message(
            lambda r: sum(v for k, v in r["cpu"].items() if k.startswith("worker"))
        ),
        "us_nsqd": per_message(lambda r: r["cpu"]["nsqd"]),
        "us_supervisor": per_message(lambda r: r["cpu"]["supervisor"]),
        "busy": statistics.median(sum(r["cpu"].values()) / r["seconds"] for r in mine),
        "worker_busy": statistics.median(
            max(v for k, v in r["cpu"].items() if k.startswith("worker")) / r["seconds"]
            for r in mine
        ),
        "nsqd_busy": statistics.median(r["cpu"]["nsqd"] / r["seconds"] for r in mine),
        "machine_busy": statistics.median(r["machine_busy"] for r in mine),
        "shares": mine[-1]["finished_per_process"],
        "messages": messages,
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    one, two = report["rows"]
    lines = [
        "# rxnsq worker: consume throughput with 1 and 2 processes",
        "",
        f"Generated {report['generated']} by `{report['command']}` in {report['took']:.0f} s.",
        "",
        f"**Machine:** {m['cpu']}, {m['cores']} cores, {m['os']}, {m['python']}; load average "
        f"{m['load']} at the start, {report['load_end']} at the end. nsqd "
        f"({report['nsqd']}) on the same machine, on loopback.",
        "",
        f"**Method:** {one['messages']:,} messages of 200 bytes per run, max_in_flight "
        f"{MAX_IN_FLIGHT} per process, a handler that finishes each message at once; the clock "
        "runs from unpausing the channel (every process connected and ready) to nsqd showing "
        "it empty with nothing in flight; medians of "
        f"{report['reps']} repetitions, 1 and 2 processes alternating. CPU from /proc over the "
        "same interval.",
        "",
        "| processes | messages/s | runs | ratio to 1 | worker CPU µs/msg (all processes) "
        "| nsqd CPU µs/msg | supervisor CPU µs/msg | busiest worker process | nsqd "
        "| worker + nsqd (cores busy) | whole machine (cores busy) |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in (one, two):
        lines.append(
            f"| {row['processes']} | {row['rate']:,.0f} "
            f"| {', '.join(f'{r:,}' for r in row['rates'])} "
            f"| {row['rate'] / one['rate']:.2f} | {row['us_workers']:.1f} | {row['us_nsqd']:.1f} "
            f"| {row['us_supervisor']:.2f} | {row['worker_busy']:.0%} | {row['nsqd_busy']:.0%} "
            f"| {row['busy']:.2f} | {row['machine_busy']:.2f} |"
        )
    lines += ["", "## Where the time goes", "", report["analysis"], ""]
    return "\n".join(lines)


def analysis(one: dict[str, Any], two: dict[str, Any], cores: int) -> str:
    ratio = two["rate"] / one["rate"]
    parts = [
        f"With one process the worker process is {one['worker_busy']:.0%} busy (one core is "
        f"its ceiling) and nsqd uses {one['nsqd_busy']:.0%} of a core; the machine is "
        f"{one['busy']:.2f} of {cores} cores busy.",
        f"With two processes throughput is {ratio:.2f}x: the two worker processes together "
        f"need {two['us_workers']:.1f} µs of CPU per message (against {one['us_workers']:.1f} "
        f"with one) and nsqd {two['us_nsqd']:.1f} µs (against {one['us_nsqd']:.1f}), for "
        f"{two['busy']:.2f} of {cores} cores busy, and the whole machine (other work "
        f"included) {two['machine_busy']:.2f}.",
    ]
    if two["machine_busy"] >= cores * 0.85:
        parts.append(
            "The cores are saturated: the worker processes, nsqd and whatever else runs on the "
            "machine compete for them, so the second process gains only what the others leave "
            "free. The client's cost per message does not grow with processes; on a machine "
            "with cores to spare (or nsqd elsewhere) each process has a core of its own and "
            "throughput grows with them."
        )
    parts.append(
        f"The supervisor costs {two['us_supervisor']:.2f} µs per message (a state report per "
        "process per second); the last run's split of finished messages over the processes "
        f"was {', '.join(f'{s:,.0f}' for s in two['shares'])}."
    )
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=600_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--output", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    from rxnsq.testing import NsqdProcess

    command = "python -m benchmarks.worker" + (" " + " ".join(argv) if argv else "")
    if argv is None and len(sys.argv) > 1:
        command = "python -m benchmarks.worker " + " ".join(sys.argv[1:])
    started = time.time()
    info = machine()
    runs: list[dict[str, Any]] = []
    queue = max(args.messages * 2, 100_000)
    with NsqdProcess(
        extra_args=[f"--mem-queue-size={queue}", f"--max-rdy-count={MAX_IN_FLIGHT}"]
    ) as nsqd:
        version = _wire.http("GET", nsqd.http_url, "/info")
        nsqd_version = json.loads(version).get("version", "?")
        for rep in range(args.reps):
            order = (1, 2) if rep % 2 == 0 else (2, 1)
            for processes in order:
                run = one_run(nsqd, processes, args.messages, f"{rep}_{processes}")
                print(
                    f"rep {rep + 1}: {processes} process(es): {run['rate']:,.0f} msg/s, cpu "
                    + ", ".join(f"{k} {v:.2f}s" for k, v in run["cpu"].items()),
                    flush=True,
                )
                runs.append(run)
    one, two = summarize(runs, 1), summarize(runs, 2)
    report = {
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command,
        "took": time.time() - started,
        "machine": info,
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "nsqd": f"nsqd v{nsqd_version}",
        "reps": args.reps,
        "rows": [one, two],
        "runs": runs,
        "analysis": analysis(one, two, info["cores"]),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "worker.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.output / "worker.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
