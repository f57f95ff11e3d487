"""Before and after: the rxnsq library at two revisions, in one run, on one nsqd.

    python -m benchmarks.compare --ref 5ee1343                     # consume and sink rows
    python -m benchmarks.compare --ref HEAD~3 --scenarios consume_mif2500 --reps 5

Both revisions (``--after`` defaults to HEAD) are checked out (``git worktree``, detached)
under ``benchmarks/.build/ref-*``, so edits made while it runs change nothing, and the same
worker script (this tree's) imports rxnsq from each (``PYTHONPATH``): only the library
differs. They run alternately within each repetition, through the runner's own scenarios,
preloads and ``/stats`` checks; the table gives medians and the ratio after/before. Results
go to ``benchmarks/results/compare.md``. A row whose worker mode the old library cannot run
(an API it did not have yet) is reported as failed, not hidden.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks import run as runner

DEFAULT_SCENARIOS = (
    "consume_mif200",
    "consume_mif2500",
    "consume_batch500",
    "publish_sink",
    "publish_sink_direct",
)


def checkout(ref: str) -> tuple[Path, str]:
    """A detached worktree of ``ref`` (made once per commit) and the commit's short id."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", f"{ref}^{{commit}}"],
        cwd=runner.ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    path = runner.BUILD_DIR / f"ref-{commit}"
    if not (path / "rxnsq").is_dir():
        runner.BUILD_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "worktree", "add", "--force", "--detach", str(path), commit],
            cwd=runner.ROOT, check=True, capture_output=True,
        )  # fmt: skip
    return path, commit


def revision_client(ref: str) -> runner.Client:
    """The rxnsq worker running on the library of ``ref``."""
    path, commit = checkout(ref)
    return runner.Client(
        f"rxnsq-{commit}",
        ["env", f"PYTHONPATH={path}", sys.executable, str(runner.WORKERS / "rxnsq_worker.py")],
        note=f"rxnsq at {commit} ({path.relative_to(runner.ROOT)})",
    )


class Comparison(runner.Bench):
    """The runner's bench with two rxnsq clients: the earlier revision and the later one."""

    def __init__(
        self,
        settings: runner.Settings,
        before: runner.Client,
        after: runner.Client,
        scenarios: list[Any],
    ) -> None:
        super().__init__(settings, {after.name: after, before.name: before}, scenarios)
        self.before, self.after = before.name, after.name

    def run(self) -> None:
        self.incidents = []
        order = [self.after, self.before]
        reps = max((sc.reps for sc in self.scenarios), default=0)
        for rep in range(reps):
            for scenario in self.scenarios:
                if rep >= scenario.reps:
                    continue
                for name in order if rep % 2 == 0 else order[::-1]:
                    self.ensure_nsqd()
                    self.run_one(scenario, self.clients[name], rep)


def median_rate(samples: list[dict[str, Any]]) -> float | None:
    rates = [s["count"] / s["elapsed"] for s in samples if s.get("elapsed")]
    return statistics.median(rates) if rates else None


def median_cpu(samples: list[dict[str, Any]]) -> float | None:
    cpu = [s["cpu"] / s["count"] * 1e6 for s in samples if s.get("count")]
    return statistics.median(cpu) if cpu else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", required=True, help="the earlier revision (a commit, tag...)")
    parser.add_argument("--after", default="HEAD", help="the later revision (default HEAD)")
    parser.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke run)")
    args = parser.parse_args(argv)
    settings = runner.Settings.quick() if args.quick else runner.Settings()
    before, after = revision_client(args.ref), revision_client(args.after)
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    chosen = []
    for scenario in runner.scenarios(settings):
        if scenario.id in wanted:
            mode = scenario.modes[runner.RXNSQ]
            modes = {before.name: mode, after.name: mode}
            chosen.append(runner.dataclasses.replace(scenario, modes=modes, reps=args.reps))
    bench = Comparison(settings, before, after, chosen)
    bench.start_nsqd()
    try:
        bench.run()
    finally:
        assert bench.nsqd is not None
        bench.nsqd.close()
    lines = [
        f"# Before and after: {after.name} against {before.name}",
        "",
        f"`python -m benchmarks.compare --ref {args.ref} --after {args.after} "
        f"--scenarios {args.scenarios} "
        f"--reps {args.reps}{' --quick' if args.quick else ''}`; medians of {args.reps} "
        "alternated runs on one nsqd; the same worker script, only the library differs. "
        f"Machine: {runner.machine()['cpu']}, {runner.machine()['cores']} cores.",
        "",
        "| row | msg/s before | msg/s after | after/before | CPU us/msg before | after |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for scenario in chosen:
        old = median_rate(bench.samples[(scenario.id, before.name)])
        new = median_rate(bench.samples[(scenario.id, after.name)])
        ratio = f"{new / old:.2f}" if old and new else "n/a"
        cpu_old = median_cpu(bench.samples[(scenario.id, before.name)])
        cpu_new = median_cpu(bench.samples[(scenario.id, after.name)])
        fmt = lambda v: f"{v:,.0f}" if v else "failed"  # noqa: E731
        fmt_cpu = lambda v: f"{v:.2f}" if v else "n/a"  # noqa: E731
        lines.append(
            f"| {scenario.title} | {fmt(old)} | {fmt(new)} | {ratio} | {fmt_cpu(cpu_old)} "
            f"| {fmt_cpu(cpu_new)} |"
        )
    errors = [
        f"- {sid} {name}: {msgs[0].strip().splitlines()[-1]}"
        for (sid, name), msgs in bench.errors.items()
    ]
    if errors:
        lines += ["", "Failed runs:", "", *errors]
    text = "\n".join(lines) + "\n"
    (runner.RESULTS / "compare.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
