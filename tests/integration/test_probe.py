"""The probe over real SSH."""

from __future__ import annotations

from deploy.hosts.probe import probe


def test_probe_reports_the_ssh_host(ssh_connection) -> None:
    facts = probe(ssh_connection, "/workspace/gpu-deploy-probe-test")
    assert facts.os and facts.arch and facts.python3.startswith("3.")
    assert facts.is_root
    assert facts.disk_free_kb > 0 and facts.disk_dir.startswith("/")
    assert not facts.remote_dir_exists


def test_the_probe_starts_the_warm_ahead_for_what_remote_dir_holds(ssh_connection, tmp_path) -> None:
    from deploy.hosts.probe import NATIVE_MARKER
    from tests.harness.waiting import wait_until

    lines = {"warm_native": f"echo native >> {tmp_path}/warmed", "warm_compose": f"echo compose >> {tmp_path}/warmed"}
    probe(ssh_connection, str(tmp_path / "missing"), **lines)      # no REMOTE_DIR: nothing runs there to warm
    (tmp_path / "run" / ".gpu-deploy").mkdir(parents=True)
    probe(ssh_connection, str(tmp_path / "run"), **lines)
    wait_until(lambda: (tmp_path / "warmed").exists(), timeout=30, what="the warm-ahead")
    (tmp_path / "run" / NATIVE_MARKER).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "run" / NATIVE_MARKER).write_text("{}")
    probe(ssh_connection, str(tmp_path / "run"), **lines)
    wait_until(lambda: len((tmp_path / "warmed").read_text().split()) == 2, timeout=30, what="the second warm-ahead")
    assert (tmp_path / "warmed").read_text().split() == ["compose", "native"]


def test_the_probe_reads_compose_1s_version_as_compose_itself_says_it(ssh_connection) -> None:
    import shutil
    import subprocess

    import pytest

    if shutil.which("docker-compose") is None:
        pytest.skip("no docker-compose on this machine")
    said = subprocess.run(["docker-compose", "version", "--short"], capture_output=True, text=True).stdout.strip()
    assert probe(ssh_connection, "/workspace/gpu-deploy-probe-test").compose_v1 == said


def test_a_host_connected_and_probed_ahead_is_taken_as_it_is_or_raises_its_error(ssh_server, tmp_path) -> None:
    import socket

    import pytest

    from deploy.errors import HostError
    from deploy.flow.ahead import Ahead
    from deploy.hosts.ssh import HostOptions, HostSpec

    options = HostOptions(key_file=str(ssh_server.client_key), known_hosts=str(tmp_path / "known_hosts"))
    spec = HostSpec("127.0.0.1", ssh_server.port, ssh_server.user)
    with socket.socket() as closed:  # a port nothing listens on (bound, never listening)
        closed.bind(("127.0.0.1", 0))
        dead = HostSpec("127.0.0.1", closed.getsockname()[1], ssh_server.user)
        ahead = Ahead.start([spec, dead], options, "auto", str(tmp_path / "run"))
        opened = ahead.take(spec)
        assert opened is not None and opened.facts.os and not opened.facts.remote_dir_exists
        assert opened.conn.run("echo ok", hide=True).stdout.strip() == "ok"  # open, and usable from this thread
        opened.conn.close()
        with pytest.raises(HostError, match=f"Cannot reach 127.0.0.1:{dead.port} over SSH"):
            ahead.take(dead)
    assert ahead.take(spec) is None  # taken once; a host not started ahead is connected where it is needed
    left = Ahead.start([spec], options, "auto", str(tmp_path / "run"))
    left.close()  # never taken: closed, now or once open
    assert left.take(spec) is None
