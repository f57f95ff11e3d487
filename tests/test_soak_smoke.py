"""The soak command, short: nothing lost, nothing leaked, nothing left running."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.nsqd

ROOT = Path(__file__).resolve().parent.parent


def test_short_soak(tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--messages", "20000",
         "--minutes", "1", "--json", str(report_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(report_path.read_text())
    assert report["confirmed"] == report["consumed"] == 20000
    assert report["lost"] == 0 and report["checksum_ok"]
    assert report["leaked_in_flight"] == 0 and report["leftover_tasks"] <= 0
    assert report["leftover_timer_handles"] == 0
