"""The README's main job, run as a user would: it succeeds and leaves no process behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.nsqd


def test_demo_runs_and_cleans_up() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rxnsq.demo", "--count", "1000", "--window", "100"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout.split("summary:", 1)[1].splitlines()[0])
    assert summary["processed"] == summary["events"] == 1000
    assert summary["windows_failed"] == 1 and summary["requeued"] == 100
    assert summary["finished"] == 1000
    assert "backoff level 1" in proc.stdout
    pids = [int(p) for p in re.findall(r"pid (\d+)", proc.stdout)]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
