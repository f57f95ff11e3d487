"""The benchmark runner must not rot: a ``--quick`` run of its rxnsq rows, as a subprocess.

Tiny counts and one repetition, rxnsq only (pynsq and the Go reference are not needed here);
the full comparison is ``python -m benchmarks.run`` (see README, "Benchmarks").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.nsqd

ROOT = Path(__file__).resolve().parents[1]

RXNSQ_ROWS = {
    "consume_mif1",
    "consume_mif200",
    "consume_mif2500",
    "consume_batch500",
    "consume_batch200",
    "consume_keyed_batch",
    "publish_pub",
    "publish_mpub100",
    "publish_sink",
    "publish_sink_direct",
    "publish_sink_send",
    "latency",
    "latency_default_buffer",
    "drain_small",
    "drain_large",
}


@pytest.mark.timeout(90)
def test_quick_run_reports_every_rxnsq_row_with_positive_figures(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--clients",
            "rxnsq",
            "--output-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "latest.json").read_text())
    assert set(report["rows"]) == RXNSQ_ROWS
    for scenario, row in report["rows"].items():
        assert set(row["clients"]) == {"rxnsq"}, scenario
        entry = row["clients"]["rxnsq"]
        assert entry["reps"] == 1, scenario
        assert entry["count"] > 0, scenario
        assert entry["throughput"] > 0, scenario
        assert entry["cpu_us_per_msg"] > 0, scenario
        assert entry["max_rss_mib"] > 0, scenario
        if row["kind"] == "latency":
            assert 0 < entry["p50_ms"] <= entry["p99_ms"], scenario
    assert report["machine"]["cores"] and report["machine"]["python"]
    assert {t["target"] for t in report["targets"]}  # evaluated (n/a without pynsq/go-nsq)
    markdown = (tmp_path / "latest.md").read_text()
    assert markdown.startswith("# rxnsq benchmarks")
    assert "| consume, max_in_flight 2500 |" in markdown
