"""The native runtime's code sync over the real sshd: SFTP and rsync send the same changes."""

from __future__ import annotations

import os
import shlex
import stat
import uuid
from pathlib import Path

import pytest

from deploy.hosts import HostOptions, HostSpec
from deploy.hosts.envfile import EnvShipment
from deploy.hosts.probe import HostFacts
from deploy.runtimes.code import sync as code_sync
from deploy.runtimes.code.sync import send_files
from deploy.runtimes.code.tree import select_files
from deploy.runtimes.native.plan import NativeDesired, gather_native, plan_native
from deploy.settings import Secret


@pytest.fixture(autouse=True)
def rsync_for_any_change(monkeypatch) -> None:
    """rsync takes every change where it may, however small, so both methods move these few files."""
    monkeypatch.setattr(code_sync, "SFTP_UP_TO", (0, 0))


def desired_for(tree: Path, remote_dir: str, rsync: bool) -> NativeDesired:
    return NativeDesired(remote_dir=remote_dir, env=EnvShipment(keys=(), _content=Secret("")), python="python3",
                         source=str(tree), files=select_files(tree), train_requirements=(), local_rsync=rsync)


@pytest.mark.parametrize("method", ["sftp", "rsync"])
def test_only_changed_files_move_and_deleted_ones_go(method: str, tmp_path: Path, ssh_server, ssh_connection) -> None:
    tree = tmp_path / "tree"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "model.py").write_text("A = 1\n")
    (tree / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(tree / "run.sh", 0o755)
    (tree / "old.py").write_text("gone soon\n")
    (tree / ".gitignore").write_text("*.tmp\n")
    (tree / "scratch.tmp").write_text("local only\n")
    remote_dir = f"/tmp/gpu-deploy native sync {uuid.uuid4().hex[:8]}"  # a space: rsync -s, SFTP, shell quoting
    spec = HostSpec("127.0.0.1", ssh_server.port, ssh_server.user)
    options = HostOptions(key_file=str(ssh_server.client_key), known_hosts=str(ssh_server.known_hosts))

    def sync():
        desired = desired_for(tree, remote_dir, rsync=method == "rsync")
        facts = HostFacts(tools=frozenset({"rsync"}), remote_dir_exists=True)  # what the probe finds here
        plan = plan_native(spec, desired, gather_native(ssh_connection, desired), facts)
        assert plan.sync.method == method or not plan.sync.send  # nothing to send: either method
        ssh_connection.run(f"mkdir -p {shlex.quote(remote_dir)}/.gpu-deploy")
        if plan.needs("sync-code"):
            send_files(ssh_connection, plan, options)
        return plan

    try:
        first = sync()
        assert set(first.sync.send) == {"pkg/model.py", "run.sh", "old.py", ".gitignore"}
        assert Path(remote_dir, "pkg/model.py").read_text() == "A = 1\n"
        assert not Path(remote_dir, "scratch.tmp").exists()
        assert stat.S_IMODE(Path(remote_dir, "run.sh").stat().st_mode) & 0o100
        assert int(Path(remote_dir, "run.sh").stat().st_mtime) == int((tree / "run.sh").stat().st_mtime)

        assert not sync().needs("sync-code")  # nothing changed: nothing moves

        (tree / "pkg" / "model.py").write_text("A = 22\n")
        (tree / "old.py").unlink()
        Path(remote_dir, "output.txt").write_text("written by training\n")  # not shipped: never removed
        second = sync()
        assert second.sync.send == ("pkg/model.py",) and second.sync.delete == ("old.py",)
        assert Path(remote_dir, "pkg/model.py").read_text() == "A = 22\n"
        assert not Path(remote_dir, "old.py").exists() and Path(remote_dir, "output.txt").exists()
        assert not sync().needs("sync-code")
    finally:
        ssh_connection.run(f"rm -rf {shlex.quote(remote_dir)}", warn=True)


def _modes_after_sync(method: str, tmp_path: Path, ssh_server, ssh_connection) -> dict[str, int]:
    tree = tmp_path / "tree"
    tree.mkdir()
    for name, mode in (("private.cfg", 0o600), ("run.sh", 0o755), ("plain.py", 0o644), ("group.py", 0o640)):
        (tree / name).write_text(name)
        os.chmod(tree / name, mode)
    (tree / "prod.env").write_text("AWS_SECRET_ACCESS_KEY=never-shipped\n")
    remote_dir = f"/tmp/gpu-deploy modes {uuid.uuid4().hex[:8]}"
    spec = HostSpec("127.0.0.1", ssh_server.port, ssh_server.user)
    options = HostOptions(key_file=str(ssh_server.client_key), known_hosts=str(ssh_server.known_hosts))
    desired = desired_for(tree, remote_dir, rsync=method == "rsync")
    facts = HostFacts(tools=frozenset({"rsync"}), remote_dir_exists=True)
    plan = plan_native(spec, desired, gather_native(ssh_connection, desired), facts)
    assert plan.sync.method == method
    ssh_connection.run(f"mkdir -p {shlex.quote(remote_dir)}/.gpu-deploy")
    try:
        send_files(ssh_connection, plan, options)
        assert not Path(remote_dir, "prod.env").exists()
        return {name: stat.S_IMODE(Path(remote_dir, name).stat().st_mode)
                for name in ("private.cfg", "run.sh", "plain.py", "group.py")}
    finally:
        ssh_connection.run(f"rm -rf {shlex.quote(remote_dir)}", warn=True)


EXPECTED_MODES = {"private.cfg": 0o600, "run.sh": 0o755, "plain.py": 0o644, "group.py": 0o640}


def test_rsync_keeps_mode_bits_and_leaves_env_files_home(tmp_path: Path, ssh_server, ssh_connection) -> None:
    assert _modes_after_sync("rsync", tmp_path, ssh_server, ssh_connection) == EXPECTED_MODES


def test_sftp_keeps_mode_bits_and_leaves_env_files_home(tmp_path: Path, ssh_server, ssh_connection) -> None:
    assert _modes_after_sync("sftp", tmp_path, ssh_server, ssh_connection) == EXPECTED_MODES
