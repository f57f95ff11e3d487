"""The command-line tools, run as a user runs them: subprocesses against real nsqd.

Each test asserts on what the tool prints, its exit status and what nsqd's /stats says
happened (published counts, channel depth, messages in flight), including after a SIGINT or
SIGTERM in the middle of a run: nothing may be lost or duplicated.
"""

from __future__ import annotations

import gzip
import io
import os
import pty
import re
import select
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rxnsq._version import __version__
from rxnsq.cli import pub, stat, tail, to_file, to_nsq
from rxnsq.cli._common import OptionError, consumer_options, parse_duration, producer_options
from rxnsq.flow import ExponentialBackoff
from rxnsq.testing import wait_until

ROOT = Path(__file__).resolve().parent.parent
TOOLS = {
    "rxnsq-tail": tail,
    "rxnsq-pub": pub,
    "rxnsq-to-file": to_file,
    "rxnsq-to-nsq": to_nsq,
    "rxnsq-stat": stat,
}


# --- helpers ----------------------------------------------------------------------------------


def command(module: Any, *args: str) -> list[str]:
    return [sys.executable, "-m", module.__name__, *args]


def run(module: Any, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        command(module, *args), input=stdin, capture_output=True, timeout=60, check=False
    )


def start(module: Any, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command(module, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def stop(proc: subprocess.Popen[bytes], signum: int) -> tuple[bytes, bytes]:
    proc.send_signal(signum)
    try:
        return proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def channel_stats(nsqd: Any, topic: str, channel: str) -> dict[str, Any]:
    for t in nsqd.stats(topic=topic)["topics"] or []:
        for c in t["channels"]:
            if c["channel_name"] == channel:
                return c
    return {}


def published(nsqd: Any, topic: str) -> int:
    topics = nsqd.stats(topic=topic)["topics"] or []
    return topics[0]["message_count"] if topics else 0


def mpub(nsqd: Any, topic: str, bodies: list[bytes]) -> None:
    """Publish many newline-free bodies in one HTTP request, then wait until the topic has
    passed them all on to its channels (if it has any)."""
    request = urllib.request.Request(
        f"{nsqd.http_url}/mpub?topic={topic}", data=b"\n".join(bodies), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    topic_stats = nsqd.stats(topic=topic)["topics"][0]
    if topic_stats["channels"]:
        wait_until(lambda: nsqd.stats(topic=topic)["topics"][0]["depth"] == 0, timeout=20)


def file_lines(directory: Path) -> list[bytes]:
    lines: list[bytes] = []
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            opener: Any = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rb") as handle:
                lines.extend(handle.read().splitlines())
    return lines


def newline_count(directory: Path) -> int:
    """Lines written so far (plain files only; safe to call while they are being written)."""
    return sum(p.read_bytes().count(b"\n") for p in directory.glob("*") if p.is_file())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- installation, flags, options (no nsqd) ---------------------------------------------------


@pytest.mark.parametrize("script", sorted(TOOLS))
def test_console_script_is_installed(script: str) -> None:
    path = Path(sys.executable).parent / script
    assert path.exists(), f"{script} missing: reinstall with pip install -e ."
    result = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{script} {__version__}"


@pytest.mark.parametrize("script", sorted(TOOLS))
def test_module_form_has_the_same_interface(script: str) -> None:
    result = run(TOOLS[script], "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith(f"usage: {script} ")


def test_consumer_opt_with_an_unknown_key_is_a_clear_usage_error() -> None:
    result = run(
        tail, "--topic", "t", "--nsqd-tcp-address", "127.0.0.1:1", "--consumer-opt", "max_tires,3"
    )
    assert result.returncode == 2
    err = result.stderr.decode()
    assert "rxnsq-tail: error: --consumer-opt: unknown option 'max_tires'" in err
    assert "did you mean 'max_tries'?" in err
    assert "Traceback" not in err


def test_consumer_opt_bad_values_are_usage_errors() -> None:
    base = ("--topic", "t", "--nsqd-tcp-address", "127.0.0.1:1")
    result = run(to_file, *base, "--consumer-opt", "max_tries,-1")
    assert result.returncode == 2
    assert "invalid max_tries=-1: an int from 0 to 65535" in result.stderr.decode()
    result = run(tail, *base, "--consumer-opt", "snappy,maybe")
    assert result.returncode == 2
    assert "--consumer-opt snappy: bad value 'maybe'" in result.stderr.decode()
    result = run(tail, *base, "--consumer-opt", "nocomma")
    assert result.returncode == 2
    assert "expected key,value" in result.stderr.decode()


def test_consumer_and_producer_options_are_typed() -> None:
    options = consumer_options(
        [
            ("max_attempts", "10"),
            ("msg_timeout", "2m"),
            ("snappy", "true"),
            ("lookupd_poll_interval", "1.5"),
            ("backoff_multiplier", "250ms"),
            ("tls_root_ca_file", "/ca.pem"),
            ("tls_insecure_skip_verify", "true"),
            ("user_agent", "me/1"),
        ]
    )
    assert options == {
        "max_tries": 10,
        "msg_timeout": 120.0,
        "snappy": True,
        "lookupd_poll_interval": 1.5,
        "backoff": ExponentialBackoff(0.25),
        "tls_v1": True,
        "tls_options": {
            "ca_certs": "/ca.pem",
            "cert_reqs": ssl.CERT_NONE,
            "check_hostname": False,
        },
        "user_agent": "me/1",
    }
    assert producer_options([("dial_timeout", "2s"), ("max_msg_size", "1024")]) == {
        "connect_timeout": 2.0,
        "max_msg_size": 1024,
    }
    with pytest.raises(OptionError, match="--producer-opt: unknown option 'max_in_flight'"):
        producer_options([("max_in_flight", "5")])
    with pytest.raises(OptionError, match="--consumer-opt max_in_flight: bad value 'x'"):
        consumer_options([("max_in_flight", "x")])
    with pytest.raises(OptionError, match="unknown option 'giving_up'"):
        consumer_options([("giving_up", "x")])  # a callable: not settable from text


def test_durations_take_seconds_or_go_durations() -> None:
    assert parse_duration("2") == 2.0
    assert parse_duration("0.5") == 0.5
    assert parse_duration("250ms") == 0.25
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("1h") == 3600.0
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("5 minutes")


def test_discovery_flags_are_one_or_the_other() -> None:
    both = run(tail, "--topic", "t", "--nsqd-tcp-address", "a:1", "--lookupd-http-address", "b:2")
    assert both.returncode == 2
    assert "not both" in both.stderr.decode()
    neither = run(to_nsq, "--topic", "t", "--destination-nsqd-tcp-address", "a:1")
    assert neither.returncode == 2
    assert "--nsqd-tcp-address or --lookupd-http-address is required" in neither.stderr.decode()


def doc_commands() -> list[tuple[str, list[str]]]:
    """Every ``rxnsq-*`` command line in the bash blocks of docs/cli.md."""
    text = (ROOT / "docs" / "cli.md").read_text()
    found = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        for line in block.splitlines():
            line = line.removeprefix("$ ")
            for part in line.split(" | "):
                part = part.split(" < ")[0].split(" > ")[0].strip()
                if not part.startswith(("rxnsq-", "python -m ")) or part.split()[0] == "rxnsq-":
                    continue
                words = shlex.split(part)
                if words[0] in TOOLS:
                    found.append((words[0], words[1:]))
                elif words[:2] == ["python", "-m"]:
                    name = "rxnsq-" + words[2].rsplit(".", 1)[1].replace("_", "-")
                    found.append((name, words[3:]))
    return found


def test_the_cli_guide_documents_every_tool_with_valid_flags() -> None:
    commands = doc_commands()
    assert {name for name, _ in commands} == set(TOOLS)
    for name, args in commands:
        module = TOOLS[name]
        try:
            module.build_parser().parse_args(args)
        except SystemExit:  # pragma: no cover - argparse printed why
            pytest.fail(f"docs/cli.md: {name} {shlex.join(args)} does not parse")


# --- rxnsq-tail ------------------------------------------------------------------------------


def test_tail_prints_exactly_n_messages_and_leaves_the_rest(nsqd: Any) -> None:
    nsqd.create_channel("tailed", "tail")
    bodies = [b"message %d" % i for i in range(14)] + [b"\xff\xfe raw bytes"]
    for body in bodies:
        nsqd.http_pub("tailed", body)
    result = run(
        tail, "--topic", "tailed", "--channel", "tail", "-n", "10",
        "--nsqd-tcp-address", nsqd.tcp_address,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.splitlines()
    assert len(lines) == 10 and len(set(lines)) == 10
    assert set(lines) <= set(bodies)
    stats = channel_stats(nsqd, "tailed", "tail")
    assert stats["in_flight_count"] == 0
    assert stats["depth"] == 5  # the ones past -n were requeued, not lost


def test_tail_several_topics_through_lookupd(nsqlookupd: Any, nsqd_factory: Any) -> None:
    nsqd = nsqd_factory(lookupd_tcp_addresses=[nsqlookupd.tcp_address])
    for topic in ("left", "right"):
        for i in range(3):
            nsqd.http_pub(topic, f"{topic}-{i}".encode())
        wait_until(lambda topic=topic: nsqlookupd.producers(topic))
    result = run(
        tail, "--topic", "left", "--topic", "right", "--print-topic", "-n", "6",
        "--lookupd-http-address", nsqlookupd.http_address,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert sorted(result.stdout.decode().splitlines()) == [
        f"{topic} | {topic}-{i}" for topic in ("left", "right") for i in range(3)
    ]


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_tail_stopped_by_a_signal_exits_as_shells_expect(
    nsqd: Any, signum: signal.Signals, status: int
) -> None:
    nsqd.http_pub("stopme", b"one")
    nsqd.create_channel("stopme", "tail")
    proc = start(
        tail, "--topic", "stopme", "--channel", "tail", "--nsqd-tcp-address", nsqd.tcp_address
    )

    def printed() -> bool:
        stats = channel_stats(nsqd, "stopme", "tail")
        return bool(stats["clients"]) and stats["depth"] == 0 and stats["in_flight_count"] == 0

    wait_until(printed, timeout=10)
    started = time.monotonic()
    out, err = stop(proc, signum)
    assert proc.returncode == status, err.decode()
    assert out == b"one\n" and time.monotonic() - started < 5


def test_tail_says_when_it_was_given_the_http_port(nsqd: Any) -> None:
    result = run(tail, "--topic", "t", "--nsqd-tcp-address", nsqd.http_address)
    assert result.returncode == 1
    assert "rxnsq-tail: error: the peer answered with HTTP" in result.stderr.decode()
    assert "give its TCP port" in result.stderr.decode()


# --- rxnsq-pub -------------------------------------------------------------------------------


def test_pub_publishes_every_line(nsqd: Any) -> None:
    lines = [b"line %d" % i for i in range(1000)]
    stdin = b"\n".join(lines[:500]) + b"\n\n\n" + b"\n".join(lines[500:])  # no final newline
    result = run(pub, "--topic", "lines", "--nsqd-tcp-address", nsqd.tcp_address, stdin=stdin)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b""
    assert "1000 messages read, 1000 confirmed, 0 failed" in result.stderr.decode()
    assert published(nsqd, "lines") == 1000


def test_pub_delimiter_and_rate(nsqd: Any) -> None:
    nsqd.create_channel("chunks", "check")
    started = time.monotonic()
    result = run(
        pub, "--topic", "chunks", "--nsqd-tcp-address", nsqd.tcp_address,
        "--delimiter", "\\0", "--rate", "20", stdin=b"a\nb\0c\0\0d\0e",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert time.monotonic() - started >= 3 / 20  # the 4th message goes 0.15 s after the 1st
    assert published(nsqd, "chunks") == 4
    back = run(tail, "--topic", "chunks", "--channel", "check", "-n", "4",
               "--nsqd-tcp-address", nsqd.tcp_address)  # fmt: skip
    assert sorted(back.stdout.split(b"\n")) == [b"", b"a", b"b", b"c", b"d", b"e"]


def test_pub_ctrl_c_publishes_what_it_read_and_exits_130(nsqd: Any) -> None:
    proc = subprocess.Popen(
        command(pub, "--topic", "slow", "--nsqd-tcp-address", nsqd.tcp_address, "--rate", "5"),
        stdin=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(b"".join(b"line %d\n" % i for i in range(20)))
    proc.stdin.flush()  # and stdin stays open: the tool is still reading when stopped
    wait_until(lambda: published(nsqd, "slow") >= 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130  # 128 + SIGINT, as shells expect after Ctrl-C
    match = re.search(rb"(\d+) messages read, (\d+) confirmed, 0 failed .*\(interrupted", err)
    assert match, err.decode()
    assert match[1] == match[2] and 2 <= int(match[2]) < 20
    assert published(nsqd, "slow") == int(match[2])


def test_pub_refuses_a_bad_topic_name(nsqd: Any) -> None:
    result = run(pub, "--topic", "no spaces", "--nsqd-tcp-address", nsqd.tcp_address, stdin=b"x")
    assert result.returncode == 2
    assert "rxnsq-pub: error: argument --topic: invalid topic name 'no spaces'" in (
        result.stderr.decode()
    )


def test_pub_fails_fast_when_nsqd_is_unreachable() -> None:
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run(pub, "--topic", "t", "--nsqd-tcp-address", address, stdin=b"x\ny\n")
    assert result.returncode == 1
    assert f"rxnsq-pub: error: cannot connect to any nsqd ({address})" in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()
    assert time.monotonic() - started < 10


# --- rxnsq-to-file ---------------------------------------------------------------------------


def test_to_file_writes_every_message(nsqd: Any, tmp_path: Path) -> None:
    bodies = [b"event %d" % i for i in range(500)]
    mpub(nsqd, "archive", bodies)
    proc = start(
        to_file, "--topic", "archive", "--nsqd-tcp-address", nsqd.tcp_address,
        "--output-dir", str(tmp_path), "--host-identifier", "box", "--sync-interval", "0.2",
    )  # fmt: skip
    wait_until(lambda: newline_count(tmp_path) == 500, timeout=20)
    wait_until(lambda: channel_stats(nsqd, "archive", "nsq_to_file")["in_flight_count"] == 0)
    out, err = stop(proc, signal.SIGTERM)  # a service stop: a clean drain exits 0
    assert proc.returncode == 0, err.decode()
    assert out == b""
    (path,) = tmp_path.iterdir()
    assert re.fullmatch(r"archive\.box\.\d{4}-\d\d-\d\d_\d\d\.log", path.name), path.name
    assert Counter(file_lines(tmp_path)) == Counter(bodies)
    assert channel_stats(nsqd, "archive", "nsq_to_file")["depth"] == 0
    assert "500 messages written" in err.decode()


def test_to_file_gzip_with_rotation_by_size(nsqd: Any, tmp_path: Path) -> None:
    bodies = [os.urandom(20).hex().encode() for _ in range(600)]
    mpub(nsqd, "zipped", bodies)
    proc = start(
        to_file, "--topic", "zipped", "--nsqd-tcp-address", nsqd.tcp_address,
        "--output-dir", str(tmp_path), "--gzip", "--gzip-level", "9", "--rotate-size", "3000",
        "--max-in-flight", "40", "--sync-interval", "0.2",
    )  # fmt: skip
    wait_until(
        lambda: (
            channel_stats(nsqd, "zipped", "nsq_to_file").get("message_count") == 600
            and channel_stats(nsqd, "zipped", "nsq_to_file")["depth"] == 0
            and channel_stats(nsqd, "zipped", "nsq_to_file")["in_flight_count"] == 0
        ),
        timeout=20,
    )
    _, err = stop(proc, signal.SIGTERM)
    assert proc.returncode == 0, err.decode()
    files = sorted(tmp_path.iterdir())
    assert len(files) >= 3, files
    assert all(p.name.endswith(".log.gz") for p in files)
    assert any("-1." in p.name for p in files)  # <REV> counts up
    assert Counter(file_lines(tmp_path)) == Counter(bodies)


def test_to_file_sigint_mid_run_loses_nothing(nsqd: Any, tmp_path: Path) -> None:
    total = 40_000
    nsqd.create_channel("busy", "nsq_to_file")  # every message goes straight to the channel
    mpub(nsqd, "busy", [b"busy message %06d" % i for i in range(total)])
    proc = start(
        to_file, "--topic", "busy", "--nsqd-tcp-address", nsqd.tcp_address,
        "--output-dir", str(tmp_path), "--max-in-flight", "20",
    )  # fmt: skip
    wait_until(lambda: newline_count(tmp_path) >= 300, timeout=20)
    _, err = stop(proc, signal.SIGINT)
    assert proc.returncode == 130, err.decode()  # Ctrl-C: 128 + SIGINT, after the drain
    assert "received SIGINT: draining" in err.decode()
    lines = file_lines(tmp_path)
    assert len(lines) == len(set(lines))  # nothing written twice
    stats = channel_stats(nsqd, "busy", "nsq_to_file")
    assert stats["in_flight_count"] == 0
    assert 0 < stats["depth"] < total  # stopped mid-run
    assert len(lines) + stats["depth"] == total  # every FINed message is in the files


# --- rxnsq-to-nsq ----------------------------------------------------------------------------


def test_to_nsq_relays_everything_once(nsqd_factory: Any) -> None:
    source, destination = nsqd_factory(), nsqd_factory()
    mpub(source, "orders", [b"order %d" % i for i in range(2000)])
    proc = start(
        to_nsq, "--topic", "orders", "--nsqd-tcp-address", source.tcp_address,
        "--destination-nsqd-tcp-address", destination.tcp_address,
        "--destination-topic", "orders_copy", "--status-every", "500",
    )  # fmt: skip
    wait_until(lambda: published(destination, "orders_copy") >= 2000, timeout=20)
    wait_until(lambda: channel_stats(source, "orders", "nsq_to_nsq")["in_flight_count"] == 0)
    _, err = stop(proc, signal.SIGTERM)
    assert proc.returncode == 0, err.decode()
    assert published(destination, "orders_copy") == 2000
    assert channel_stats(source, "orders", "nsq_to_nsq")["depth"] == 0
    assert re.search(r"rxnsq-to-nsq: 500 relayed \(\d+/s\)", err.decode()), err.decode()


def test_to_nsq_sigterm_mid_run_loses_nothing(nsqd_factory: Any) -> None:
    source, destination = nsqd_factory(), nsqd_factory()
    total = 40_000
    source.create_channel("flow", "nsq_to_nsq")
    mpub(source, "flow", [b"flow %d" % i for i in range(total)])
    proc = start(
        to_nsq, "--topic", "flow", "--nsqd-tcp-address", source.tcp_address,
        "--destination-nsqd-tcp-address", destination.tcp_address, "--max-in-flight", "20",
        "--status-every", "0",
    )  # fmt: skip
    wait_until(lambda: published(destination, "flow") >= 500, timeout=20)
    _, err = stop(proc, signal.SIGTERM)
    assert proc.returncode == 0, err.decode()
    relayed = published(destination, "flow")
    stats = channel_stats(source, "flow", "nsq_to_nsq")
    assert stats["in_flight_count"] == 0
    assert 0 < stats["depth"] < total  # stopped mid-run
    assert relayed + stats["depth"] == total  # each message relayed once or still queued
    assert f"{relayed} relayed in" in err.decode()


def test_to_nsq_fails_fast_without_a_destination(nsqd: Any) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = run(
        to_nsq, "--topic", "t", "--nsqd-tcp-address", nsqd.tcp_address,
        "--destination-nsqd-tcp-address", address,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"cannot connect to any destination nsqd ({address})" in result.stderr.decode()


# --- rxnsq-stat ------------------------------------------------------------------------------


def stat_rows(output: str) -> list[list[str]]:
    rows = []
    for line in output.splitlines():
        if line.count("|") == 2 and "ingress" not in line:
            rows.append(" | ".join(p.strip() for p in line.split("|")).split())
    return rows


def test_stat_prints_the_header_and_rows(nsqd: Any) -> None:
    nsqd.create_channel("watched", "archive")
    for i in range(7):
        nsqd.http_pub("watched", b"w%d" % i)
    result = run(
        stat, "--topic", "watched", "--channel", "archive", "--nsqd-http-address",
        nsqd.http_address, "--interval", "0.2", "--count", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    first, second, *rest = out.splitlines()
    assert re.match(r"-+rate-+\+-+depth-+\+-+metadata-+$", first)
    assert second.split() == [
        "ingress", "egress", "|", "total", "mem", "disk", "inflt", "def", "|",
        "req", "t-o", "msgs", "clients",
    ]  # fmt: skip
    rows = stat_rows(out)
    assert len(rows) == 2
    # ingress egress | total mem disk inflt def | req t-o msgs clients
    assert rows[0] == ["-", "-", "|", "7", "7", "0", "0", "0", "|", "0", "0", "7", "0"]
    assert rows[1] == ["0", "0", "|", "7", "7", "0", "0", "0", "|", "0", "0", "7", "0"]


def test_stat_rates_and_repeated_header() -> None:
    before = stat.Snapshot(nsqds=1, topic_messages=100, messages=100, depth=40, in_flight=10)
    after = stat.Snapshot(nsqds=1, topic_messages=300, messages=300, depth=20, in_flight=10)
    # 200 came in over 2 s; the channel holds 20 fewer: 220 left it
    assert stat.row(before, after, 2.0)[:3] == ["100", "110", "20"]
    out = io.StringIO()
    view = stat.PlainView(out)
    for _ in range(26):
        view.show(stat.row(None, after, 0.0), after)
    lines = out.getvalue().splitlines()
    assert len(lines) == 26 + 2 * 2
    assert lines[0].startswith("-") and lines[27].startswith("-")  # again after 25 rows


def test_stat_finds_nsqd_through_lookupd(nsqlookupd: Any, nsqd_factory: Any) -> None:
    nsqds = [nsqd_factory(lookupd_tcp_addresses=[nsqlookupd.tcp_address]) for _ in range(2)]
    for n, nsqd in enumerate(nsqds):
        nsqd.create_channel("spread", "archive")
        for i in range(n + 2):
            nsqd.http_pub("spread", b"s%d" % i)
    wait_until(lambda: len(nsqlookupd.producers("spread")) == 2)
    result = run(
        stat, "--topic", "spread", "--channel", "archive", "--lookupd-http-address",
        nsqlookupd.http_address, "--interval", "0.1", "--count", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert [row[3] for row in stat_rows(result.stdout.decode())] == ["5"]  # 2 + 3


def test_stat_reports_an_unreachable_nsqd() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = run(
        stat, "--topic", "t", "--channel", "c", "--nsqd-http-address", address,
        "--interval", "0.1", "--count", "2",
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.decode().count("rxnsq-stat: error: no nsqd answered") == 2


def test_stat_draws_a_rich_table_on_a_terminal(nsqd: Any) -> None:
    pytest.importorskip("rich")
    nsqd.create_channel("live", "archive")
    for i in range(3):
        nsqd.http_pub("live", b"l%d" % i)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        command(
            stat, "--topic", "live", "--channel", "archive", "--nsqd-http-address",
            nsqd.http_address, "--interval", "0.1", "--count", "2",
        ),
        stdout=terminal, stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "120", "TERM": "xterm-256color"},
    )  # fmt: skip
    os.close(terminal)
    screen = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.1)
        if ready:
            try:
                data = os.read(controller, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not data:
                break
            screen += data
        elif proc.poll() is not None:
            break
    os.close(controller)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err.decode()
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", screen).decode()
    assert "live/archive on 1 nsqd" in text
    assert "┃" in text and "ingress" in text  # a rich table, not the plain header
    assert "---rate---" not in text
    assert re.search(r"│\s+0 │\s+0 │\s+3 │", text), text
