"""The test harness itself (rxnsq.testing) against the real nsqd / nsqlookupd binaries."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
import trustme

from rxnsq.testing import (
    BIN_ENV_VAR,
    DaemonError,
    DaemonHTTPError,
    NsqCluster,
    NsqClusterFactory,
    NsqdFactory,
    NsqdProcess,
    NsqlookupdProcess,
    find_binary,
    wait_until,
)
from rxnsq.testing import daemons as daemons_module

pytestmark = pytest.mark.nsqd

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str) -> tuple[int, bytes]:
    with _NO_PROXY.open(url, timeout=5) as response:
        return response.status, response.read()


def assert_gone(pid: int | None) -> None:
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def fake_binary(folder: Path, name: str, script: str) -> str:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    return str(path)


# -- find_binary --------------------------------------------------------------------------


def test_find_binary_uses_the_env_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_binary(tmp_path, "nsqd", "exit 0")
    monkeypatch.setenv(BIN_ENV_VAR, str(tmp_path))
    assert find_binary("nsqd") == fake


def test_missing_binary_tells_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BIN_ENV_VAR, str(tmp_path))  # authoritative: no fallback elsewhere
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="bash scripts/install-nsq") as info:
        find_binary("nsqd")
    assert "PATH" in str(info.value)
    with pytest.raises(FileNotFoundError, match="install-nsq"):
        NsqdProcess().start()


def test_find_binary_finds_the_project_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BIN_ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)  # not below the project: found from the package's location
    found = Path(find_binary("nsqlookupd"))
    assert found.name == "nsqlookupd"
    assert found.parent.name == "bin"
    assert os.access(found, os.X_OK)


# -- one nsqd -----------------------------------------------------------------------------


def test_nsqd_starts_on_distinct_loopback_ports(nsqd: NsqdProcess) -> None:
    assert nsqd.running
    assert isinstance(nsqd.pid, int)
    ports = {nsqd.tcp_port, nsqd.http_port, nsqd.https_port}
    assert len(ports) == 3
    assert nsqd.tcp_address == f"127.0.0.1:{nsqd.tcp_port}"
    assert nsqd.http_address == f"127.0.0.1:{nsqd.http_port}"
    assert nsqd.http_url == f"http://127.0.0.1:{nsqd.http_port}"
    assert http_get(nsqd.http_url + "/ping") == (200, b"OK")
    _, body = http_get(nsqd.http_url + "/info")
    info = json.loads(body)
    assert (info["tcp_port"], info["http_port"]) == (nsqd.tcp_port, nsqd.http_port)
    assert info["broadcast_address"] == "127.0.0.1"
    assert f"TCP: listening on 127.0.0.1:{nsqd.tcp_port}" in nsqd.log_text()
    assert nsqd.log_path.parent == nsqd.workdir
    assert nsqd.data_path.is_dir()


def test_extra_args_take_effect(nsqd_factory: NsqdFactory) -> None:
    nsqd = nsqd_factory(extra_args=["--max-rdy-count=50", "--msg-timeout=2s"])
    assert nsqd.config("max_rdy_count") == 50
    assert nsqd.config("msg_timeout") == 2_000_000_000  # nanoseconds


def test_tls_required_nsqd_serves_https_on_loopback(
    nsqd_factory: NsqdFactory, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    nsqd = nsqd_factory(
        extra_args=[f"--tls-cert={cert_path}", f"--tls-key={key_path}", "--tls-required=true"]
    )  # plain HTTP now answers 403 TLS_REQUIRED, which start() accepts as "up"
    assert f"HTTPS: listening on {nsqd.https_address}" in nsqd.log_text()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    with opener.open(f"https://{nsqd.https_address}/ping", timeout=5) as response:
        assert (response.status, response.read()) == (200, b"OK")


def test_http_helpers(nsqd: NsqdProcess) -> None:
    nsqd.create_channel("orders", "billing")  # also creates the topic
    for body in (b"one", b"two"):
        nsqd.http_pub("orders", body)
    [topic] = nsqd.stats(topic="orders")["topics"]
    [channel] = topic["channels"]
    assert (topic["topic_name"], channel["channel_name"]) == ("orders", "billing")
    assert channel["depth"] == 2
    assert nsqd.stats(topic="missing")["topics"] in (None, [])
    with pytest.raises(DaemonHTTPError) as info:
        nsqd.http_pub("bad topic!", b"x")
    assert info.value.status == 400
    assert b"INVALID_TOPIC" in info.value.body


def test_stop_ends_the_process_and_close_removes_the_temp_dir() -> None:
    nsqd = NsqdProcess().start()
    pid, workdir = nsqd.pid, nsqd.workdir
    nsqd.stop()
    assert not nsqd.running
    assert nsqd.returncode == 0  # SIGTERM is a clean shutdown for nsqd
    assert_gone(pid)
    assert workdir.is_dir()  # kept for restart()
    nsqd.close()
    assert not workdir.exists()
    assert "nsqd v" in nsqd.log_text()  # the log outlives the temp dir
    nsqd.close()  # idempotent
    with pytest.raises(DaemonError, match="closed"):
        nsqd.start()


def test_context_manager_closes(tmp_path: Path) -> None:
    with NsqlookupdProcess() as lookupd:
        assert http_get(lookupd.http_url + "/ping") == (200, b"OK")
        assert lookupd.tcp_port != lookupd.http_port
        pid, workdir = lookupd.pid, lookupd.workdir
    assert_gone(pid)
    assert not workdir.exists()


def test_given_data_path_is_used_and_kept(tmp_path: Path) -> None:
    data = tmp_path / "nsqd-data"
    with NsqdProcess(data_path=data) as nsqd:
        nsqd.create_topic("kept")
        assert nsqd.data_path == data
    assert "kept" in (data / "nsqd.dat").read_text()


def test_stop_and_restart_keep_ports_and_messages(nsqd: NsqdProcess) -> None:
    nsqd.create_channel("t", "c")
    for i in range(3):
        nsqd.http_pub("t", b"m%d" % i)
    ports, pid = (nsqd.tcp_port, nsqd.http_port, nsqd.https_port), nsqd.pid
    nsqd.restart()  # SIGTERM: nsqd flushes its memory queues to disk
    assert nsqd.pid != pid
    assert (nsqd.tcp_port, nsqd.http_port, nsqd.https_port) == ports
    assert http_get(nsqd.http_url + "/ping") == (200, b"OK")
    [topic] = nsqd.stats(topic="t")["topics"]
    assert topic["channels"][0]["depth"] == 3


def test_kill_and_restart_keep_synced_messages(nsqd_factory: NsqdFactory) -> None:
    nsqd = nsqd_factory(extra_args=["--mem-queue-size=0", "--sync-every=1"])
    nsqd.create_channel("t", "c")
    for i in range(3):
        nsqd.http_pub("t", b"m%d" % i)
    meta = nsqd.data_path / "t:c.diskqueue.meta.dat"
    # the disk queue syncs its metadata just after the write is acknowledged
    wait_until(lambda: meta.exists() and meta.read_text().split()[0] == "3", message="sync")
    pid = nsqd.pid
    nsqd.kill()
    assert nsqd.returncode == -9
    assert_gone(pid)
    nsqd.restart()
    [topic] = nsqd.stats(topic="t")["topics"]
    assert topic["channels"][0]["depth"] == 3


def test_restart_on_a_taken_port_fails_clearly(nsqd: NsqdProcess) -> None:
    nsqd.stop()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", nsqd.tcp_port))
        squatter.listen()
        with pytest.raises(DaemonError, match="address already in use"):
            nsqd.start()
    assert not nsqd.running


def test_taken_free_port_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    real_free_ports = daemons_module._free_ports
    calls: list[int] = []

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]

        def racy_free_ports(count: int) -> list[int]:
            calls.append(count)
            ports = real_free_ports(count)
            return [taken, *ports[1:]] if len(calls) == 1 else ports

        monkeypatch.setattr(daemons_module, "_free_ports", racy_free_ports)
        with NsqdProcess() as nsqd:
            assert len(calls) == 2
            assert nsqd.tcp_port != taken
            assert "address already in use" in nsqd.log_text()  # the first, failed launch
            assert http_get(nsqd.http_url + "/ping") == (200, b"OK")


def test_start_failure_reports_the_log_tail() -> None:
    nsqd = NsqdProcess(extra_args=["--no-such-flag"])
    try:
        with pytest.raises(DaemonError, match="exited with code") as info:
            nsqd.start()
        assert "no-such-flag" in str(info.value)  # Go's flag error, from the daemon log
        assert not nsqd.running
    finally:
        nsqd.close()


def test_start_timeout_kills_a_silent_daemon(tmp_path: Path) -> None:
    binary = fake_binary(tmp_path, "nsqd", "echo pretending to start\nexec sleep 30")
    nsqd = NsqdProcess(binary=binary)
    try:
        with pytest.raises(DaemonError, match="did not answer") as info:
            nsqd.start(timeout=0.5)
        assert "pretending to start" in str(info.value)
        assert_gone(nsqd.pid)
    finally:
        nsqd.close()


def test_leftover_daemons_are_killed_at_exit() -> None:
    script = textwrap.dedent(
        """
        from rxnsq.testing import NsqCluster
        cluster = NsqCluster(nsqd_count=1).start()  # never closed
        for daemon in (*cluster.nsqds, *cluster.lookupds):
            print(daemon.pid, daemon.workdir, flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    lines = result.stdout.split("\n")[:-1]
    assert len(lines) == 2
    for line in lines:
        pid, workdir = line.split(" ", 1)
        assert_gone(int(pid))
        assert not Path(workdir).exists()
    assert "leftover" in result.stderr


# -- clusters -----------------------------------------------------------------------------


def test_cluster_registers_every_nsqd(nsq_cluster: NsqCluster) -> None:
    assert len(nsq_cluster.nsqds) == 3
    assert len(nsq_cluster.lookupds) == 1
    [lookupd] = nsq_cluster.lookupds
    assert nsq_cluster.lookupd_http_urls == [lookupd.http_url]
    assert len(set(nsq_cluster.nsqd_tcp_addresses)) == 3
    for nsqd in nsq_cluster.nsqds:
        assert nsqd.lookupd_tcp_addresses == (lookupd.tcp_address,)
        nsqd.http_pub("clicks", b"hi")

    def producer_ports() -> set[int]:
        return {producer["tcp_port"] for producer in lookupd.producers("clicks")}

    expected = {nsqd.tcp_port for nsqd in nsq_cluster.nsqds}
    wait_until(lambda: producer_ports() == expected, message="3 producers of clicks")
    for producer in lookupd.producers("clicks"):
        assert producer["broadcast_address"] == "127.0.0.1"

    fourth = nsq_cluster.add_nsqd()  # joins mid-run
    assert fourth in nsq_cluster.nsqds
    assert fourth.tcp_port in {node["tcp_port"] for node in lookupd.nodes()}
    fourth.http_pub("clicks", b"hi")
    wait_until(lambda: fourth.tcp_port in producer_ports(), message="the fourth producer")
    assert len(producer_ports()) == 4


def test_cluster_factory_with_two_lookupds(nsq_cluster_factory: NsqClusterFactory) -> None:
    cluster = nsq_cluster_factory(nsqd_count=2, lookupd_count=2, extra_args=["--max-rdy-count=7"])
    assert len(cluster.lookupd_http_urls) == 2
    expected = {nsqd.tcp_port for nsqd in cluster.nsqds}
    for lookupd in cluster.lookupds:
        assert {node["tcp_port"] for node in lookupd.nodes()} == expected
    assert [nsqd.config("max_rdy_count") for nsqd in cluster.nsqds] == [7, 7]
    assert cluster.lookupds[0].producers("never-published") == []


def test_cluster_close_stops_everything() -> None:
    with NsqCluster(nsqd_count=2) as cluster:
        daemons = [*cluster.nsqds, *cluster.lookupds]
        pids = [daemon.pid for daemon in daemons]
    for daemon, pid in zip(daemons, pids, strict=True):
        assert not daemon.running
        assert_gone(pid)


# -- the pytest plugin --------------------------------------------------------------------


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester


def test_failing_test_shows_the_daemon_log(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        def test_fails(nsqd, nsqlookupd):
            nsqd.http_pub("t", b"x")
            assert False, "boom"

        def test_passes(nsqd):
            assert nsqd.running
        """
    )
    result = inner.runpytest()
    result.assert_outcomes(failed=1, passed=1)
    output = result.stdout.str()
    assert re.search(r"-+ nsqd 127\.0\.0\.1:\d+ log -+", output)
    assert re.search(r"-+ nsqlookupd 127\.0\.0\.1:\d+ log -+", output)
    assert "TOPIC(t): created" in output  # from the failing test's nsqd
    assert output.count("TCP: listening on") == 2  # the passing test's nsqd is not shown


def test_nsq_bin_option(inner: pytest.Pytester, tmp_path: Path) -> None:
    before = os.environ.get(BIN_ENV_VAR)
    inner.makepyfile("def test_needs_nsqd(nsqd):\n    pass\n")
    result = inner.runpytest(f"--nsq-bin={tmp_path}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["E*FileNotFoundError: nsqd executable not found*install-nsq*"])
    assert os.environ.get(BIN_ENV_VAR) == before  # restored at unconfigure


def test_sigterm_closes_the_daemons_first(inner: pytest.Pytester, tmp_path: Path) -> None:
    report = tmp_path / "daemon.txt"
    inner.makepyfile(
        f"""
        import os, signal

        def test_terminated(nsqd):
            with open({str(report)!r}, "w") as f:
                f.write(f"{{nsqd.pid}} {{nsqd.workdir}}")
            os.kill(os.getpid(), signal.SIGTERM)
        """
    )
    result = inner.runpytest_subprocess()
    assert result.ret == -signal.SIGTERM  # still dies of the signal
    pid, workdir = report.read_text().split(" ", 1)
    assert_gone(int(pid))
    assert not Path(workdir).exists()


def test_fixture_users_get_the_nsqd_marker(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        def test_with_cluster(nsq_cluster):
            assert len(nsq_cluster.nsqds) == 3

        def test_without_daemons():
            pass
        """
    )
    result = inner.runpytest("--strict-markers", "-m", "nsqd")
    result.assert_outcomes(passed=1, deselected=1)
    result = inner.runpytest("--strict-markers", "-m", "not nsqd")
    result.assert_outcomes(passed=1, deselected=1)
