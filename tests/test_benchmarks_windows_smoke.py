"""benchmarks/windows.py must not rot: a tiny run of a store row and the by-hand row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.nsqd

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_a_tiny_run_reports_rows_with_positive_figures(tmp_path: Path) -> None:
    report = tmp_path / "windows.md"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.windows", "--events", "3000", "--id-retention", "0.5",
         "--rows", "windows_sqlite_full,batch_by_hand", "--out", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [line for line in report.read_text().splitlines() if line.startswith("| windows_")]
    rows += [line for line in report.read_text().splitlines() if line.startswith("| batch_")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert int(cells[1].replace(",", "")) > 0 and float(cells[2]) > 0
    assert "windows," in rows[0]  # the store's size is reported
