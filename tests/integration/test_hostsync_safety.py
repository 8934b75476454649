"""sync-from-runpod run as root on the real sshd: nothing dangerous comes back from the host, the uploads'
staging never travels, and a file that vanishes mid-transfer is a warning, not a failure.

The host is this machine (loopback sshd, root), so the tests plant device nodes, FIFOs, sockets and
setuid files in REMOTE_DIR directly.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.hosts import HostOptions, HostSpec
from deploy.hosts.results import pull
from deploy.training.journal import STAGING_DIR
from tests.harness.fab import REPO, run_fab

STALL = str(REPO / "tests" / "harness" / "stall_rsh.py")
UNSAFE_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH


@pytest.fixture
def remote_dir(ssh_connection) -> Iterator[Path]:
    root = Path(f"/tmp/gpu-deploy safety {uuid.uuid4().hex[:8]}")
    (root / "lightning_logs" / "version_0" / "checkpoints").mkdir(parents=True)
    yield root
    ssh_connection.run(f"rm -rf '{root}'")


def plant_hostile_tree(root: Path) -> Path:
    """What a hostile or careless host can hold: specials, setuid, world-writable, sticky, staging debris."""
    if os.geteuid() != 0:
        pytest.skip("device nodes need root (the case this test is about)")
    logs = root / "lightning_logs" / "version_0"
    (logs / "hparams.yaml").write_text("lr: 0.1\n")
    os.mkfifo(logs / "fifo")
    os.mknod(logs / "null", 0o666 | stat.S_IFCHR, os.stat("/dev/null").st_rdev)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(logs / "sock"))
    (logs / "suid.sh").write_text("#!/bin/sh\nid\n")
    os.chmod(logs / "suid.sh", 0o6755)
    (logs / "wide.txt").write_text("anyone may write me\n")
    os.chmod(logs / "wide.txt", 0o666)
    (logs / "shared").mkdir()
    os.chmod(logs / "shared", 0o3777)  # setgid + sticky, world-writable
    (logs / "shared" / "note.txt").write_text("note\n")
    checkpoints = logs / "checkpoints"
    (checkpoints / "last.ckpt").write_bytes(b"PK checkpoint")
    (checkpoints / STAGING_DIR).mkdir()
    (checkpoints / STAGING_DIR / "0123abcd-last.ckpt").write_bytes(b"PK snapshot")
    (checkpoints / STAGING_DIR / "0123abcd-last.ckpt.json").write_text("{}")
    (checkpoints / f"{STAGING_DIR}-k2j3h4").write_bytes(b"uploader copy")
    return logs


def fab_env(ssh_server, root: Path) -> dict[str, str]:
    return {"RUNPOD_HOST": "127.0.0.1", "RUNPOD_PORT": str(ssh_server.port), "RUNPOD_USER": ssh_server.user,
            "RUNPOD_SSH_KEY": str(ssh_server.client_key), "SSH_KNOWN_HOSTS": str(ssh_server.known_hosts),
            "REMOTE_DIR": str(root)}


def local_tree(folder: Path) -> dict[str, int]:
    """Every path under ``folder`` and its lstat mode."""
    return {str(p.relative_to(folder)): p.lstat().st_mode for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("method", ["rsync", "sftp"])
def test_as_root_nothing_special_and_no_special_bit_comes_back(method: str, ssh_server, remote_dir: Path,
                                                              tmp_path: Path) -> None:
    plant_hostile_tree(remote_dir)
    dest = tmp_path / "results"
    synced = run_fab("sync-from-runpod", f"--method={method}", f"--dest={dest}", env=fab_env(ssh_server, remote_dir),
                     cwd=tmp_path, timeout=180)
    assert synced.returncode == 0, synced.stderr
    assert "Traceback" not in synced.stderr
    tree = local_tree(dest / "lightning_logs")
    assert sorted(tree) == ["version_0", "version_0/checkpoints", "version_0/checkpoints/last.ckpt",
                            "version_0/hparams.yaml", "version_0/shared", "version_0/shared/note.txt",
                            "version_0/suid.sh", "version_0/wide.txt"]
    for name, mode in tree.items():
        assert stat.S_ISREG(mode) or stat.S_ISDIR(mode), f"{name} is {stat.filemode(mode)}"
        assert not mode & UNSAFE_BITS, f"{name} came back as {stat.filemode(mode)}"
    assert stat.S_IMODE(tree["version_0/suid.sh"]) == 0o755  # the owner's bits stay
    assert stat.S_IMODE(tree["version_0/wide.txt"]) == 0o644
    assert (dest / "lightning_logs/version_0/wide.txt").read_text() == "anyone may write me\n"
    assert f"by {method}" in synced.stdout


def test_a_source_that_is_a_device_is_refused(ssh_server, ssh_connection, remote_dir: Path, tmp_path: Path) -> None:
    plant_hostile_tree(remote_dir)
    synced = run_fab("sync-from-runpod", "--path=lightning_logs/version_0/null", f"--dest={tmp_path / 'r'}",
                     env=fab_env(ssh_server, remote_dir), cwd=tmp_path, timeout=180)
    assert synced.returncode != 0 and "Traceback" not in synced.stderr
    assert "is not a regular file or a folder" in synced.stderr + synced.stdout
    assert not (tmp_path / "r").exists() or list((tmp_path / "r").iterdir()) == []


def vanishing_tree(root: Path) -> Path:
    """A large checkpoint, then one sent after it that is removed while the large one is on its way."""
    checkpoints = root / "lightning_logs" / "version_0" / "checkpoints"
    (checkpoints / "epoch=0-step=10.ckpt").write_bytes(os.urandom(32 * 1024 * 1024))
    gone = checkpoints / "epoch=1-step=20.ckpt"
    gone.write_bytes(b"removed before its turn")
    (checkpoints.parent / "hparams.yaml").write_text("lr: 0.1\n")
    (checkpoints / STAGING_DIR).mkdir()
    (checkpoints / STAGING_DIR / "0123abcd-epoch=1-step=20.ckpt.json").write_text("{}")
    return gone


def test_rsync_a_file_that_vanishes_mid_transfer_is_a_warning(ssh_server, ssh_connection, remote_dir: Path,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The remote shell is ssh behind tests/harness/stall_rsh.py, which removes the file after 1 MB of the
    32 MB checkpoint before it came back: rsync listed it and cannot open it (exit 24)."""
    import deploy.hosts.rsync as rsync

    gone = vanishing_tree(remote_dir)
    real = rsync.ssh_command
    monkeypatch.setattr(rsync, "ssh_command", lambda spec, options: [sys.executable, STALL, str(gone),
                                                                      str(1024 * 1024), *real(spec, options)])
    spec = HostSpec("127.0.0.1", ssh_server.port, ssh_server.user)
    options = HostOptions(key_file=str(ssh_server.client_key), known_hosts=str(ssh_server.known_hosts))
    result = pull(ssh_connection, spec, options, str(remote_dir), "lightning_logs", tmp_path, method="rsync")
    assert not gone.exists()
    assert result.vanished == (str(gone),)
    got = tmp_path / "lightning_logs" / "version_0"
    assert (got / "checkpoints" / "epoch=0-step=10.ckpt").stat().st_size == 32 * 1024 * 1024
    assert (got / "hparams.yaml").read_text() == "lr: 0.1\n"
    assert not (got / "checkpoints" / STAGING_DIR).exists()
    summary = result.summary()
    assert "warning: 1 file vanished on the host before it could be copied" in summary
    assert str(gone) in summary and "\n" not in summary


def test_sftp_a_file_that_vanishes_mid_transfer_is_a_warning(ssh_server, ssh_connection, remote_dir: Path,
                                                             tmp_path: Path) -> None:
    """SFTP copies in name order: the first progress report (during the large checkpoint) removes the next one."""
    gone = vanishing_tree(remote_dir)
    spec = HostSpec("127.0.0.1", ssh_server.port, ssh_server.user)

    def progress(_: int) -> None:
        if gone.exists():
            gone.unlink()

    result = pull(ssh_connection, spec, HostOptions(), str(remote_dir), "lightning_logs", tmp_path, method="sftp",
                  progress=progress)
    assert result.vanished == (str(gone),)
    assert result.files == 2
    got = tmp_path / "lightning_logs" / "version_0"
    assert (got / "checkpoints" / "epoch=0-step=10.ckpt").stat().st_size == 32 * 1024 * 1024
    assert not (got / "checkpoints" / "epoch=1-step=20.ckpt").exists()
    assert not (got / "checkpoints" / STAGING_DIR).exists()
    assert not list(got.rglob("*.part"))
    assert "warning: 1 file vanished" in result.summary()
