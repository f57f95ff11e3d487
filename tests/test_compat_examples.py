"""pynsq's documented examples, unchanged but for the import, against real nsqd.

Each example lives in ``examples/pynsq/``. The test copies it with the daemons' real ports put
in place of the documented 4150/4161 (and a free port for the web example), runs it as a
user would, checks what it did, and stops it with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rxnsq.testing import NsqdProcess, NsqlookupdProcess, wait_until

pytestmark = pytest.mark.nsqd

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "pynsq"


@pytest.fixture
def daemons(nsqlookupd, nsqd_factory) -> tuple[NsqlookupdProcess, NsqdProcess]:
    nsqd = nsqd_factory(lookupd_tcp_addresses=[nsqlookupd.tcp_address])
    return nsqlookupd, nsqd


class Example:
    """A running example: its output so far, and a clean stop."""

    def __init__(self, proc: subprocess.Popen[str], log: Path) -> None:
        self.proc = proc
        self.log = log

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait_output(self, predicate: Callable[[str], Any], timeout: float = 20) -> None:
        wait_until(lambda: predicate(self.output) or self.proc.poll() is not None, timeout=timeout)
        assert self.proc.poll() is None, f"example exited early:\n{self.output}"

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=40)


@pytest.fixture
def run_example(tmp_path: Path) -> Iterator[Callable[..., Example]]:
    started: list[Example] = []

    def start(name: str, replacements: dict[str, str]) -> Example:
        source = (EXAMPLES / name).read_text()
        for old, new in replacements.items():
            assert old in source
            source = source.replace(old, new)
        script = tmp_path / name
        script.write_text(source)
        log = tmp_path / (name + ".log")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, str(script)], stdout=out, stderr=subprocess.STDOUT, env=env,
                text=True,
            )  # fmt: skip
        example = Example(proc, log)
        started.append(example)
        return example

    yield start
    for example in started:
        if example.proc.poll() is None:
            example.proc.kill()
            example.proc.wait()


def channel(nsqd: NsqdProcess, topic: str, name: str) -> dict[str, Any]:
    for t in nsqd.stats(topic=topic)["topics"] or []:
        for c in t["channels"]:
            if c["channel_name"] == name:
                return c
    return {}


def ports(lookupd: NsqlookupdProcess, nsqd: NsqdProcess) -> dict[str, str]:
    return {"127.0.0.1:4161": lookupd.http_address, "127.0.0.1:4150": nsqd.tcp_address}


def test_synchronous_handler(daemons, run_example) -> None:
    lookupd, nsqd = daemons
    for i in range(5):
        nsqd.http_pub("nsq_reader", b"hello %d" % i)
    example = run_example("sync_handler.py", {"127.0.0.1:4161": lookupd.http_address})
    example.wait_output(lambda out: out.count("<Message") == 5)
    wait_until(lambda: channel(nsqd, "nsq_reader", "asdf").get("in_flight_count") == 0)
    stats = channel(nsqd, "nsq_reader", "asdf")
    assert stats["message_count"] == 5 and stats["depth"] == 0 and stats["requeue_count"] == 0
    assert example.stop() == 0


def test_async_batching_handler(daemons, run_example) -> None:
    lookupd, nsqd = daemons
    for i in range(6):
        nsqd.http_pub("nsq_reader", b"job %d" % i)
    example = run_example("async_batching.py", {"127.0.0.1:4161": lookupd.http_address})
    example.wait_output(lambda out: out.count("<Message") == 6)
    assert example.output.count("deferring processing") == 4  # 2 of every 3 wait for the third
    wait_until(lambda: channel(nsqd, "nsq_reader", "async").get("in_flight_count") == 0)
    stats = channel(nsqd, "nsq_reader", "async")
    assert stats["message_count"] == 6 and stats["depth"] == 0 and stats["timeout_count"] == 0
    assert example.stop() == 0


def test_writer_on_a_periodic_callback(daemons, run_example) -> None:
    lookupd, nsqd = daemons
    example = run_example("writer_periodic.py", {"127.0.0.1:4150": nsqd.tcp_address})
    example.wait_output(lambda out: out.count("b'OK'") >= 2)
    topics = nsqd.stats(topic="test")["topics"]
    assert topics and topics[0]["message_count"] >= 2
    assert example.stop() == 0


def test_writer_in_a_tornado_web_handler(daemons, run_example) -> None:
    lookupd, nsqd = daemons
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        web_port = s.getsockname()[1]
    example = run_example(
        "writer_web.py", {"127.0.0.1:4150": nsqd.tcp_address, "8888": str(web_port)}
    )
    url = f"http://127.0.0.1:{web_port}/"
    nsqd.create_channel("log", "c")  # to see the deferred message there

    def get() -> bytes | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return reply.read()
        except OSError:
            return None

    assert wait_until(get, timeout=20) == b"Hello world"

    def published() -> int:
        return int((nsqd.stats(topic="log")["topics"] or [{}])[0].get("message_count", 0))

    # pub, mpub of two, the dpub (deferred 60000 ms) and the customized-callback pub
    wait_until(lambda: published() >= 4)
    time.sleep(0.3)
    assert published() == 5, published()
    log = channel(nsqd, "log", "c")
    assert log["deferred_count"] == 1 and log["depth"] == 4
    # the error path: nsqd gone, the callback gets an Error and publishes again (which fails
    # too, and is logged); the handler and the process carry on
    nsqd.kill()
    assert get() == b"Hello world"
    example.wait_output(lambda out: out.count("failed to publish") >= 2, timeout=30)
    assert example.proc.poll() is None
    example.proc.send_signal(signal.SIGTERM)  # the example has no signal handling of its own
    example.proc.wait(timeout=10)


def test_legacy_reader_with_tasks(daemons, run_example) -> None:
    lookupd, nsqd = daemons
    nsqd.create_topic("nsq_reader")
    wait_until(lambda: lookupd.producers("nsq_reader"))
    example = run_example("legacy_tasks.py", {"127.0.0.1:4161": lookupd.http_address})
    wait_until(
        lambda: (
            channel(nsqd, "nsq_reader", "asdf.task1") and channel(nsqd, "nsq_reader", "asdf.task2")
        ),
        timeout=20,
    )
    assert "DeprecationWarning" in example.output or example.proc.poll() is None
    for i in range(4):
        nsqd.http_pub("nsq_reader", b"work %d" % i)
    example.wait_output(
        lambda out: out.count("task1 <Message") == 4 and out.count("task2 <Message") == 4
    )
    for task in ("asdf.task1", "asdf.task2"):
        wait_until(lambda t=task: channel(nsqd, "nsq_reader", t).get("in_flight_count") == 0)
        assert channel(nsqd, "nsq_reader", task)["message_count"] == 4
    assert example.stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_drains_in_flight_messages_on_a_signal(nsqd, tmp_path: Path, signum: int) -> None:
    for i in range(20):
        nsqd.http_pub("drain", b"%d" % i)
    script = tmp_path / "slow.py"
    script.write_text(
        "import asyncio\n"
        "import rxnsq.compat as nsq\n"
        "async def handler(message):\n"
        "    print('start', message.body.decode(), flush=True)\n"
        "    await asyncio.sleep(1.5)\n"
        "    print('done', message.body.decode(), flush=True)\n"
        "    return True\n"
        "r = nsq.Reader('drain', 'c', message_handler=handler,\n"
        f"               nsqd_tcp_addresses='{nsqd.tcp_address}', max_in_flight=5)\n"
        "nsq.run()\n"
        "print('exited cleanly', flush=True)\n"
    )
    log = tmp_path / "slow.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script)], stdout=out, stderr=subprocess.STDOUT, text=True
        )
    example = Example(proc, log)
    try:
        example.wait_output(lambda out: out.count("start") == 5)
        started = time.monotonic()
        proc.send_signal(signum)
        assert proc.wait(timeout=40) == 0
        assert time.monotonic() - started >= 0.5  # it waited for the handlers
        out = example.output
        assert out.count("done") == 5 and "exited cleanly" in out
        wait_until(lambda: channel(nsqd, "drain", "c").get("in_flight_count") == 0)
        stats = channel(nsqd, "drain", "c")
        # the five in flight were finished, not dropped; the rest wait in the channel
        assert stats["depth"] == 15 and stats["requeue_count"] == 0 and stats["timeout_count"] == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
