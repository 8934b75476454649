"""sync-from-runpod's engine over the real sshd: rsync and SFTP, incremental, safe paths."""

from __future__ import annotations

import os
import shlex
import uuid
from pathlib import Path

import pytest

from deploy.errors import ConfigError, HostError
from deploy.hosts import HostOptions, HostSpec
from deploy.hosts.results import pull, remote_path


@pytest.fixture
def remote(ssh_connection):
    root = f"/tmp/gpu-deploy pull {uuid.uuid4().hex[:8]}"  # a space: rsync -s and no hand quoting must hold
    logs = shlex.quote(f"{root}/lightning_logs/version_0")
    ssh_connection.run(
        f"mkdir -p {logs}/checkpoints && cd {logs} && "
        "head -c 300000 /dev/urandom > events.out.tfevents.1 && echo 'lr: 0.1' > hparams.yaml && "
        "head -c 100000 /dev/urandom > checkpoints/last.ckpt")
    yield root
    ssh_connection.run(f"rm -rf {shlex.quote(root)}")


@pytest.mark.parametrize("method", ["rsync", "sftp"])
def test_pull_is_incremental(method: str, ssh_server, ssh_connection, remote: str, tmp_path: Path) -> None:
    spec = HostSpec("127.0.0.1", ssh_server.port, ssh_server.user)
    options = HostOptions(key_file=str(ssh_server.client_key), known_hosts=str(ssh_server.known_hosts))
    first = pull(ssh_connection, spec, options, remote, "lightning_logs", tmp_path, method=method)
    assert (first.files, first.bytes) == (3, 400008)
    got = tmp_path / "lightning_logs/version_0"
    assert (got / "hparams.yaml").read_text() == "lr: 0.1\n"
    assert (got / "checkpoints/last.ckpt").stat().st_size == 100000
    second = pull(ssh_connection, spec, options, remote, "lightning_logs", tmp_path, method=method)
    assert (second.files, second.bytes, second.skipped) == (0, 0, 3)
    ssh_connection.run(f"echo more >> {shlex.quote(remote + '/lightning_logs/version_0/hparams.yaml')}")
    third = pull(ssh_connection, spec, options, remote, "lightning_logs", tmp_path, method=method,
                 exclude=["*.ckpt"])
    assert third.files == 1
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob(".rsync-partial"))


@pytest.mark.parametrize("path", ["../etc", "/etc", "lightning_logs/../../x", "."])
def test_paths_that_leave_remote_dir_are_refused(path: str) -> None:
    with pytest.raises(ConfigError):
        remote_path("/workspace/train", path)


def test_missing_remote_path_says_so(ssh_server, ssh_connection, remote: str, tmp_path: Path) -> None:
    spec = HostSpec("127.0.0.1", ssh_server.port, ssh_server.user)
    with pytest.raises(HostError, match="does not exist"):
        pull(ssh_connection, spec, HostOptions(), remote, "nothing_here", tmp_path)


@pytest.mark.parametrize("method", ["rsync", "sftp"])
def test_a_key_others_can_read_is_refused_alike_by_both_transfers(method: str, ssh_server, tmp_path: Path) -> None:
    from deploy.hosts import connect

    key = tmp_path / "loose_key"
    key.write_bytes(Path(ssh_server.client_key).read_bytes())
    os.chmod(key, 0o644)  # OpenSSH refuses it, paramiko would use it: both paths must say the same
    spec = HostSpec("127.0.0.1", ssh_server.port, ssh_server.user)
    options = HostOptions(key_file=str(key), known_hosts=str(ssh_server.known_hosts))
    with pytest.raises(ConfigError, match=f"run `chmod 600 {key}`"):
        if method == "sftp":
            connect(spec, options)
        else:
            from deploy.hosts.rsync import rsync_command
            rsync_command(spec, options, ["-a"], "a", "b")


def test_an_rsync_failure_names_ssh_s_cause(ssh_server, ssh_connection, remote: str, tmp_path: Path) -> None:
    import subprocess

    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    spec = HostSpec("127.0.0.1", ssh_server.port, ssh_server.user)
    options = HostOptions(key_file=str(stranger), known_hosts=str(ssh_server.known_hosts))
    with pytest.raises(HostError, match=r"Permission denied \(publickey"):
        pull(ssh_connection, spec, options, remote, "lightning_logs", tmp_path, method="rsync")
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, blob = Path(f"{other}.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{spec.port} {kind} {blob}\n")  # the host's key "changed"
    options = HostOptions(key_file=str(ssh_server.client_key), known_hosts=str(known))
    with pytest.raises(HostError, match="REMOTE HOST IDENTIFICATION HAS CHANGED.*Host key verification failed"):
        pull(ssh_connection, spec, options, remote, "lightning_logs", tmp_path, method="rsync")


@pytest.fixture
def planted(ssh_connection, remote: str):
    """REMOTE_DIR with links that lead out: to /etc, to a file beside REMOTE_DIR, and one that stays inside."""
    secret = f"{remote}-outside.txt"
    logs = f"{remote}/lightning_logs"
    ssh_connection.run(" && ".join([
        f"echo secret > {shlex.quote(secret)}",
        f"ln -s /etc {shlex.quote(logs + '/etc_link')}",
        f"ln -s {shlex.quote(secret)} {shlex.quote(logs + '/version_0/stolen.txt')}",
        f"ln -s ../../../{shlex.quote(posixpath_basename(secret))} {shlex.quote(logs + '/version_0/relative.txt')}",
        f"ln -s hparams.yaml {shlex.quote(logs + '/version_0/inside.yaml')}",
        f"ln -s /etc {shlex.quote(remote + '/etc_at_top')}",
    ]))
    yield remote
    ssh_connection.run(f"rm -f {shlex.quote(secret)}")


def posixpath_basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


@pytest.mark.parametrize("method", ["rsync", "sftp"])
def test_links_that_leave_remote_dir_are_skipped_and_named(method: str, ssh_server, ssh_connection, planted: str,
                                                          tmp_path: Path) -> None:
    spec = HostSpec("127.0.0.1", ssh_server.port, ssh_server.user)
    options = HostOptions(key_file=str(ssh_server.client_key), known_hosts=str(ssh_server.known_hosts))
    result = pull(ssh_connection, spec, options, planted, "lightning_logs", tmp_path, method=method)
    got = tmp_path / "lightning_logs"
    assert (got / "version_0/hparams.yaml").read_text() == "lr: 0.1\n"
    leaked = [p for p in got.rglob("*") if p.is_file() and (p.read_bytes() == b"secret\n" or p.name == "passwd")]
    assert leaked == []
    assert not (got / "etc_link").exists()  # never a folder full of /etc (a dangling or absent link at most)
    summary = result.summary()
    assert "skipped 3 links leading outside REMOTE_DIR" in summary and "etc_link -> /etc" in summary
    assert "\n" not in summary


@pytest.mark.parametrize("method", ["rsync", "sftp"])
def test_a_path_that_is_a_link_out_of_remote_dir_is_refused(method: str, ssh_server, ssh_connection, planted: str,
                                                           tmp_path: Path) -> None:
    spec = HostSpec("127.0.0.1", ssh_server.port, ssh_server.user)
    options = HostOptions(key_file=str(ssh_server.client_key), known_hosts=str(ssh_server.known_hosts))
    for path in ("etc_at_top", "lightning_logs/etc_link", "lightning_logs/version_0/stolen.txt"):
        with pytest.raises(HostError, match="outside REMOTE_DIR"):
            pull(ssh_connection, spec, options, planted, path, tmp_path, method=method)
    assert list(tmp_path.iterdir()) == []


def test_a_hostile_sftp_name_is_refused(tmp_path: Path) -> None:
    from deploy.hosts.results import _walk

    class Attrs:
        def __init__(self, name: str) -> None:
            self.filename, self.st_mode, self.st_size, self.st_mtime = name, 0o100644, 1, 0

    class HostileSftp:  # what a compromised server could list; a real sshd never sends it
        def listdir_attr(self, folder: str) -> list[Attrs]:
            return [Attrs("../../escaped.txt")]

    with pytest.raises(HostError, match="not a plain file name"):
        list(_walk(HostileSftp(), "/workspace/run/lightning_logs", set()))
