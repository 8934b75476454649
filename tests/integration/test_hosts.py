"""Connecting to the real sshd: host keys, timeouts, authentication failures."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from deploy.errors import HostError
from deploy.hosts import HostOptions, HostSpec, connect


@pytest.fixture
def spec(ssh_server) -> HostSpec:
    return HostSpec("127.0.0.1", ssh_server.port, ssh_server.user)


def test_new_host_key_is_recorded_then_checked(ssh_server, spec: HostSpec, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    options = HostOptions(key_file=str(ssh_server.client_key), known_hosts=str(known))
    with connect(spec, options) as conn:
        assert conn.run("echo ok").stdout.strip() == "ok"
    recorded = known.read_text()
    assert recorded.startswith(f"[127.0.0.1]:{spec.port} ssh-ed25519 ")
    assert oct(known.stat().st_mode & 0o777) == "0o600"
    with connect(spec, options) as conn:  # a second time: the recorded key matches, nothing is added
        conn.run("true")
    assert known.read_text() == recorded


def test_changed_host_key_is_refused(ssh_server, spec: HostSpec, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = tmp_path / "known_hosts"
    kind, blob = Path(f"{other}.pub").read_text().split()[:2]
    known.write_text(f"[127.0.0.1]:{spec.port} {kind} {blob}\n")
    options = HostOptions(key_file=str(ssh_server.client_key), known_hosts=str(known))
    with pytest.raises(HostError, match="has changed"):
        connect(spec, options)


def test_strict_mode_refuses_an_unknown_host(ssh_server, spec: HostSpec, tmp_path: Path) -> None:
    options = HostOptions(key_file=str(ssh_server.client_key), known_hosts=str(tmp_path / "kh"),
                          strict_host_keys=True)
    with pytest.raises(HostError, match="strict host key checking"):
        connect(spec, options)
    assert not (tmp_path / "kh").exists()


def test_authentication_failure_names_the_key(ssh_server, spec: HostSpec, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    options = HostOptions(key_file=str(stranger), known_hosts=str(tmp_path / "kh"))
    with pytest.raises(HostError, match=f"refused authentication with {stranger}"):
        connect(spec, options)


def test_closed_port_fails_naming_host_and_port(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(HostError, match=f"Cannot reach 127.0.0.1:{port}"):
        connect(HostSpec("127.0.0.1", port), HostOptions(known_hosts=str(tmp_path / "kh")))


def test_silent_host_fails_within_the_connect_timeout(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(HostError, match=f"127.0.0.1:{port} over SSH: it accepted the connection but (sent no SSH "
                                            "greeting|did not finish the SSH handshake) within 2 s"):
            connect(HostSpec("127.0.0.1", port), HostOptions(known_hosts=str(tmp_path / "kh"), connect_timeout=2))
    finally:
        listener.close()
        for sock in accepted:
            sock.close()
    assert time.monotonic() - started < 10


def test_the_checkpoint_guard_lists_a_pod_s_checkpoints_and_staged_uploads_over_ssh(ssh_server, spec: HostSpec,
                                                                                      tmp_path: Path) -> None:
    from deploy.pods.guard import pod_listing

    run = tmp_path / "run with space"
    (run / "lightning_logs" / "version_0" / "checkpoints" / ".s3-sync").mkdir(parents=True)
    folder = run / "lightning_logs" / "version_0" / "checkpoints"
    (folder / "epoch=0-step=5.ckpt").write_bytes(b"x")
    (folder / "last.ckpt").write_bytes(b"x")
    (folder / ".s3-sync" / "epoch=0-step=9.ckpt").write_bytes(b"x")  # staged: not a checkpoint of the run
    (folder / ".s3-sync" / "epoch=0-step=9.ckpt.json").write_text("{}")
    options = HostOptions(key_file=str(ssh_server.client_key), known_hosts=str(ssh_server.known_hosts))
    assert pod_listing(spec, options, str(run)) == ([5], 1)
    assert pod_listing(spec, options, str(tmp_path / "nothing here")) == ([], 0)
