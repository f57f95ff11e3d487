"""The README's main job, run as a user would: it counts exactly and leaves no process behind."""

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
        [sys.executable, "-m", "rxnsq.demo", "--count", "2000"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout.split("summary:", 1)[1].splitlines()[0])
    # per page and minute of event time, exactly what was published; late clicks apart
    assert summary["exact"] is True and summary["events"] == 2000
    assert summary["counted"] + summary["late"] == 2000 and summary["late"] > 0
    assert summary["results_failed"] == 1 and "hands it out again" in proc.stdout
    assert summary["finished"] == 2000 + 5  # every click and each page's last event: FINed
    assert summary["store_windows_open"] == 5  # only the windows of the last events remain
    pids = [int(p) for p in re.findall(r"pid (\d+)", proc.stdout)]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
