"""benchmarks/sink_cost.py must not rot: a tiny run reports the three measures, every item
fed to the sink confirmed (the benchmark exits non-zero otherwise)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(60)
def test_a_tiny_run_reports_three_positive_measures(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.sink_cost", "--seconds", "0.2", "--reps", "1",
         "--output", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=50, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [
        line for line in (tmp_path / "sink-cost.md").read_text().splitlines()
        if line.startswith(("| subject hop", "| sink alone", "| sink via Subject"))
    ]  # fmt: skip
    assert len(rows) == 3
    for row in rows:
        assert float(row.strip("|").split("|")[1]) > 0
