"""The one atomic remote write and the one remote command helper, over the real sshd."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest

from deploy.errors import HostError
from deploy.hosts.remote import _create_exclusive, run, write_atomic


@pytest.fixture
def folder(ssh_connection):
    path = Path(f"/tmp/gpu-deploy write {uuid.uuid4().hex[:8]}")  # the sshd runs on this machine
    path.mkdir()
    yield path
    for child in sorted(path.rglob("*"), reverse=True):
        child.unlink() if not child.is_dir() or child.is_symlink() else child.rmdir()
    path.rmdir()


def test_a_secret_file_is_0600_and_replaced_whole(ssh_connection, folder: Path) -> None:
    target = folder / ".env"
    target.write_text("OLD=1\n")
    os.chmod(target, 0o644)
    write_atomic(ssh_connection, str(target), b"S3_BUCKET='b'\n")
    assert target.read_text() == "S3_BUCKET='b'\n" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in folder.iterdir()) == [".env"]  # no temporary file left


def test_the_mode_is_set_by_the_open_itself_before_any_byte(ssh_connection, folder: Path) -> None:
    sftp = ssh_connection.sftp()
    for mode in (0o600, 0o755):
        path = folder / f"new-{mode:o}"
        handle = _create_exclusive(sftp, str(path), mode)
        try:
            assert stat.S_IMODE(path.stat().st_mode) == mode and path.stat().st_size == 0
        finally:
            handle.close()


def test_a_link_planted_at_the_temporary_name_is_not_followed(ssh_connection, folder: Path) -> None:
    victim = folder / "victim"
    victim.write_text("keep me\n")
    (folder / ".run.json.gpu-deploy.tmp").symlink_to(victim)
    write_atomic(ssh_connection, str(folder / "run.json"), b"{}\n", mode=0o644)
    assert victim.read_text() == "keep me\n"
    assert (folder / "run.json").read_text() == "{}\n" and not (folder / "run.json").is_symlink()
    assert stat.S_IMODE((folder / "run.json").stat().st_mode) == 0o644


def test_a_file_object_is_copied_and_its_mtime_kept(ssh_connection, folder: Path, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(300_000))
    with open(local, "rb") as handle:
        write_atomic(ssh_connection, str(folder / "big.bin"), handle, mode=0o644, mtime=1_700_000_000)
    assert (folder / "big.bin").read_bytes() == local.read_bytes()
    assert int((folder / "big.bin").stat().st_mtime) == 1_700_000_000


def test_writing_into_a_missing_folder_is_one_sentence(ssh_connection, folder: Path) -> None:
    with pytest.raises(HostError, match=r"^Writing .*/nope/.env over SFTP failed \(.*\); check that its folder exists"):
        write_atomic(ssh_connection, str(folder / "nope" / ".env"), b"x")


def test_a_failed_remote_command_names_host_port_and_cause(ssh_server, ssh_connection, folder: Path) -> None:
    with pytest.raises(HostError) as caught:
        run(ssh_connection, ["ls", str(folder / "not here")], "Listing the run")
    message = str(caught.value)
    assert message.startswith(f"Listing the run failed on 127.0.0.1:{ssh_server.port}: ls: cannot access")
    assert "No such file or directory" in message and "\n" not in message


def test_make_dirs_is_mkdir_p_over_sftp(ssh_connection, folder: Path) -> None:
    from deploy.hosts.remote import make_dirs

    make_dirs(ssh_connection, str(folder / "a" / "b c" / "d"))
    assert (folder / "a" / "b c" / "d").is_dir()
    make_dirs(ssh_connection, str(folder / "a" / "b c"))          # there already: nothing to do
    (folder / "real").mkdir()
    (folder / "link").symlink_to(folder / "real")
    make_dirs(ssh_connection, str(folder / "link" / "e"))         # a link to a folder counts as the folder
    assert (folder / "real" / "e").is_dir()
    (folder / "file").write_text("x")
    with pytest.raises(HostError, match="is not a folder"):
        make_dirs(ssh_connection, str(folder / "file" / "f"))


def test_run_together_reads_each_command_apart_in_one_round_trip(ssh_connection) -> None:
    from deploy.hosts.remote import Part, run_together

    parts = run_together(ssh_connection, [["echo", "a  b"], "printf 'no newline'", ["false"],
                                          "echo out; echo err >&2; exit 3", ["cat"], "echo '@@gpu-deploy-0 1' # note"],
                         "Reading the host")
    assert parts == [Part("a  b\n", 0), Part("no newline", 0), Part("", 1), Part("out\n", 3), Part("", 0),
                     Part("@@gpu-deploy-0 1\n", 0)]
