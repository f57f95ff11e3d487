"""Every Python code block in the README and docs/ runs, against real daemons.

Blocks are run as a user would run them, in a subprocess, with the documented addresses
(127.0.0.1:4150 and :4161) replaced by the test daemons' ports. A block defining ``test_``
functions runs under pytest; a block ending in ``nsq.run()`` is stopped with SIGTERM, as a
service would be, and must exit cleanly.
"""

from __future__ import annotations

import ast
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rxnsq.testing import wait_until

pytestmark = pytest.mark.nsqd

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks() -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        for index, match in enumerate(BLOCK.finditer(path.read_text())):
            found.append((f"{path.relative_to(ROOT)}#{index + 1}", match.group(1)))
    return found


BLOCKS = blocks()


def expected_prints(code: str) -> list[str]:
    """``print(x)  # 9900``: a literal in the comment is what the docs promise is printed."""
    found = []
    for match in re.finditer(r"print\(.*\)\s+#\s*(.+)$", code, re.MULTILINE):
        try:
            value = ast.literal_eval(match.group(1).strip())
        except (ValueError, SyntaxError):
            continue
        found.append(str(value))
    return found


def test_the_docs_have_code_blocks() -> None:
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=[w for w, _ in BLOCKS])
def test_code_block_runs(where: str, code: str, nsqlookupd, nsqd_factory, tmp_path: Path) -> None:
    nsqd = nsqd_factory(lookupd_tcp_addresses=[nsqlookupd.tcp_address])
    original = code
    code = code.replace("127.0.0.1:4150", nsqd.tcp_address).replace(
        "127.0.0.1:4161", nsqlookupd.http_address
    )
    if code.lstrip().startswith("import rxnsq.compat as nsq   # was"):
        code = code.replace("# was: import nsq", "").strip() + "\nprint('imported', nsq.Reader)\n"
    for i, page in enumerate(["/", "/docs", "/", "/pricing"] * 5):
        nsqd.http_pub("pageviews", json.dumps({"page": page, "n": i}).encode())
    script = tmp_path / "block.py"
    if re.search(r"^\S.*\bawait ", code, re.MULTILINE):
        # notebook cells: top-level await, run inside a running loop as a kernel does
        code = (
            "import ast, asyncio\n"
            f"SOURCE = {code!r}\n"
            "async def main():\n"
            "    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT\n"
            "    result = eval(compile(SOURCE, 'cell', 'exec', flags=flags), {})\n"
            "    if result is not None:\n"
            "        await result\n"
            "asyncio.run(main())\n"
        )
    script.write_text(code)
    if re.search(r"^def test_", code, re.MULTILINE):
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(script)],
            capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert " passed" in result.stdout
        return
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        if "nsq.run()" in code:
            time.sleep(2.5)
            proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"{where} failed:\n{output}"
    for expected in expected_prints(original):
        assert expected in output, f"{where}: expected {expected!r} in the output:\n{output}"
    if "pageviews" in code:
        assert "('/', 10)" in output, output  # all 20 events were counted
        wait_until(
            lambda: (
                (nsqd.stats(topic="pageviews")["topics"] or [{}])[0]
                .get("channels", [{}])[0]
                .get("in_flight_count")
                == 0
            )
        )
