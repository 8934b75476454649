"""sync-from-runpod's rules without a host: the rsync flags, the modes, what never travels, and rsync's exit 24
(a real rsync, a file made to vanish mid-transfer by a stalling remote shell: no sleeps)."""

from __future__ import annotations

import fnmatch
import os
import shlex
import shutil
import stat
import sys
from pathlib import Path

import pytest

from deploy.errors import HostError
from deploy.hosts import HostSpec
from deploy.hosts.results import NEVER_TRAVEL, never_travels, safe_mode
from deploy.hosts.rsync import SAFE_CHMOD, SAFE_RECEIVE, VANISHED, rsync_run, run_rsync
from deploy.training import journal
from tests.harness.fab import REPO

SPEC = HostSpec("gpu-a", 22, "root")
STALL = str(REPO / "tests" / "harness" / "stall_rsh.py")


def test_the_receive_flags_never_carry_owner_group_devices_or_specials() -> None:
    flags = list(SAFE_RECEIVE)
    assert "-a" not in flags and not any(f.startswith("-") and not f.startswith("--") and set("aogD") & set(f[1:])
                                         for f in flags)
    assert {"--no-devices", "--no-specials", "--no-owner", "--no-group", "--safe-links",
            f"--chmod={SAFE_CHMOD}"} <= set(flags)


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_a_callers_dash_a_before_the_safe_flags_cannot_bring_specials_back(tmp_path: Path) -> None:
    import subprocess

    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "fifo")
    (src / "file").write_text("x")
    subprocess.run(["rsync", "-a", *SAFE_RECEIVE, f"{src}/", f"{tmp_path / 'dst'}/"], check=True)
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["file"]


@pytest.mark.parametrize("mode, safe", [
    (0o106755, 0o100755),  # setuid + setgid executable: the special bits go, the owner's bits stay
    (0o100666, 0o100644),  # world-writable: no write for group and others
    (0o041777, 0o040755),  # a sticky, world-writable folder
    (0o100400, 0o100600),  # read-only for its owner: still replaceable by the next sync
    (0o100000, 0o100600),
])
def test_a_copied_file_gets_a_safe_mode(mode: int, safe: int) -> None:
    assert stat.S_IMODE(safe_mode(mode)) == stat.S_IMODE(safe)


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_sftp_and_rsync_give_the_same_modes(tmp_path: Path) -> None:
    import subprocess

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    modes = {"suid": 0o6755, "wide": 0o666, "mine": 0o400, "plain": 0o640}
    for name, mode in modes.items():
        (src / name).write_text(name)
        os.chmod(src / name, mode)
    subprocess.run(["rsync", *SAFE_RECEIVE, f"{src}/", f"{dst}/"], check=True)
    for name, mode in modes.items():
        assert stat.S_IMODE((dst / name).stat().st_mode) == stat.S_IMODE(safe_mode(mode)), name


def test_staging_and_the_journal_never_travel(tmp_path: Path) -> None:
    """The journal's entries and snapshots live in STAGING_DIR, which NEVER_TRAVEL excludes as a folder."""
    checkpoint = tmp_path / "checkpoints" / "epoch=0-step=10.ckpt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"PK")
    staged = journal.stage(str(checkpoint), "ckpts/epoch=0-step=10.ckpt", {"step": "10"})
    for made in (staged.entry, staged.snapshot):
        folder = Path(made).parent
        assert folder.name == journal.STAGING_DIR and never_travels(folder.name, is_dir=True)
        assert NEVER_TRAVEL[0] == f"{folder.name}/"
    assert not never_travels(checkpoint.name, is_dir=False)


def test_the_uploader_s_temporary_copies_never_travel(tmp_path: Path) -> None:
    """deploy.training.uploader names its copy of a growing file itself: its name must match NEVER_TRAVEL."""
    from deploy.training.uploader import BackgroundUploader, UploadJob

    seen: list[str] = []
    events = tmp_path / "events.out.tfevents.1"
    events.write_bytes(b"event")
    uploader = BackgroundUploader(lambda job: seen.append(os.path.basename(job.path)))
    uploader.submit(UploadJob(key="logs/events", path=str(events), copy_first=True))
    assert uploader.close(timeout=10).ok
    assert len(seen) == 1 and seen[0] != events.name
    assert fnmatch.fnmatchcase(seen[0], NEVER_TRAVEL[1]) and never_travels(seen[0], is_dir=False)


def vanishing_tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    """src/ with a large first file and a small second one (sent after it); the stalling shell removes the second."""
    src = tmp_path / "src"
    (src / "checkpoints").mkdir(parents=True)
    (src / "checkpoints" / "epoch=0.ckpt").write_bytes(os.urandom(8 * 1024 * 1024))
    gone = src / "checkpoints" / "epoch=1.ckpt"
    gone.write_bytes(b"soon gone")
    (src / "hparams.yaml").write_text("lr: 0.1\n")
    return src, gone, tmp_path / "dst"


def local_rsync(src: Path, gone: Path, dst: Path) -> list[str]:
    """rsync from "host:" src with a remote shell that runs the server here and removes ``gone`` mid-transfer."""
    local_shell = ["sh", "-c", 'shift; exec sh -c "$*"', "rsh"]  # drops the host, runs rsync's server command
    rsh = shlex.join([sys.executable, STALL, str(gone), str(256 * 1024), *local_shell])
    return ["rsync", "--protect-args", "--stats", *SAFE_RECEIVE, "-e", rsh, f"host:{src}/", f"{dst}/"]


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_exit_24_is_a_warning_that_names_the_vanished_file(tmp_path: Path) -> None:
    src, gone, dst = vanishing_tree(tmp_path)
    done = rsync_run(local_rsync(src, gone, dst), SPEC, "rsync from", vanished_ok=True)
    assert done.vanished == (str(gone),)
    assert (dst / "checkpoints" / "epoch=0.ckpt").stat().st_size == 8 * 1024 * 1024
    assert (dst / "hparams.yaml").read_text() == "lr: 0.1\n"
    assert not (dst / "checkpoints" / "epoch=1.ckpt").exists()


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_exit_24_is_still_a_failure_where_it_was_not_allowed(tmp_path: Path) -> None:
    src, gone, dst = vanishing_tree(tmp_path)
    with pytest.raises(HostError, match=rf"rsync from gpu-a:22 failed \(exit {VANISHED}\)"):
        run_rsync(local_rsync(src, gone, dst), SPEC, "rsync from")


def test_a_failure_other_than_24_still_raises(tmp_path: Path) -> None:
    with pytest.raises(HostError, match=r"failed \(exit 23\)"):
        rsync_run(["rsync", "-r", str(tmp_path / "missing") + "/", str(tmp_path / "dst")], SPEC, "rsync from",
                  vanished_ok=True)
