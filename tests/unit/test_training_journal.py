"""The upload journal and the recovery on start: staged files found, checked, sent, preferred for resume."""

from __future__ import annotations

import os
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from deploy.errors import StorageError
from deploy.storage.checkpoints import CheckpointInfo
from deploy.training import journal
from deploy.training.recovery import LocalCheckpoint, recover_staged
from deploy.training.resume import resume_from_latest
from deploy.training.uploader import BackgroundUploader, UploadJob


def checkpoint(path: Path, payload: str = "weights") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
    return path


class RecordingStorage:
    """Uploads recorded by key; ``down`` makes every call fail like an unreachable bucket."""

    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.uploads: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.open_uploads: list[dict[str, str]] = []
        self.aborted: list[str] = []

    def multipart_uploads(self, prefix: str) -> list[dict[str, str]]:
        if self.down:
            raise StorageError("Cannot reach the endpoint")
        return [u for u in self.open_uploads if u["key"].startswith(prefix)]

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self.aborted.append(upload_id)
        self.open_uploads = [u for u in self.open_uploads if u["upload_id"] != upload_id]

    def upload_file(self, path: str, key: str, metadata: dict[str, str]) -> None:
        if self.down:
            raise StorageError("Cannot reach the endpoint")
        self.uploads[key] = (Path(path).read_bytes(), dict(metadata))


def test_a_staged_checkpoint_is_found_after_the_process_died(tmp_path: Path) -> None:
    source = checkpoint(tmp_path / "lightning_logs" / "version_3" / "checkpoints" / "epoch=0-step=10.ckpt")
    staged = journal.stage(str(source), "run/checkpoints/epoch=0-step=10.ckpt", {"epoch": "0", "step": "10"})
    source.unlink()  # top-k rotation removed the file; the snapshot keeps its bytes

    [found] = journal.find_staged([str(tmp_path)])
    assert (found.key, found.step, found.name) == (staged.key, 10, "epoch=0-step=10.ckpt")
    assert journal.usable_file(found) == staged.snapshot


def test_debris_is_removed_and_a_damaged_snapshot_is_not_usable(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    good = journal.stage(str(checkpoint(folder / "a.ckpt")), "k/a.ckpt", {"step": "1"})
    bad = journal.stage(str(checkpoint(folder / "b.ckpt")), "k/b.ckpt", {"step": "2"})
    Path(bad.snapshot).write_bytes(b"\0" * bad.size)  # same size, not a checkpoint any more
    staging = folder / journal.STAGING_DIR
    (staging / "ffff-orphan.ckpt").write_bytes(b"linked, killed before its entry was written")
    (staging / "broken.json").write_text("{not json")

    found = {s.key: s for s in journal.find_staged([str(tmp_path)])}
    assert set(found) == {"k/a.ckpt", "k/b.ckpt"}
    assert not (staging / "ffff-orphan.ckpt").exists() and not (staging / "broken.json").exists()
    assert journal.usable_file(found["k/a.ckpt"]) == good.snapshot
    assert journal.usable_file(found["k/b.ckpt"]) is None


def test_the_source_stands_in_for_a_released_snapshot_only_while_unchanged(tmp_path: Path) -> None:
    source = checkpoint(tmp_path / "last.ckpt")
    staged = journal.stage(str(source), "k/last.ckpt", {"step": "5"})
    os.unlink(staged.snapshot)  # set aside while the queue was full: only the entry is left
    assert journal.usable_file(staged) == str(source)
    later = time.time() + 60
    os.utime(source, (later, later))  # last.ckpt written again after it was staged: another step
    assert journal.usable_file(staged) is None


def test_recovery_sends_what_was_staged_and_offers_the_newest_for_resume(tmp_path: Path) -> None:
    folder = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    older = journal.stage(str(checkpoint(folder / "epoch=0-step=10.ckpt", "10")), "p/checkpoints/epoch=0-step=10.ckpt",
                          {"epoch": "0", "step": "10"})
    newer = journal.stage(str(checkpoint(folder / "epoch=0-step=20.ckpt", "20")), "p/checkpoints/epoch=0-step=20.ckpt",
                          {"epoch": "0", "step": "20"})
    store = RecordingStorage()
    store.open_uploads = [{"key": newer.key, "upload_id": "left-by-the-killed-helper"},
                          {"key": newer.key + ".other", "upload_id": "not-ours"}]

    recovery = recover_staged(lambda: store, [str(tmp_path)], tmp_path / ".resume")

    assert recovery.uploaded == ("epoch=0-step=10.ckpt", "epoch=0-step=20.ckpt") and not recovery.failed
    assert store.uploads[newer.key][1] == {"epoch": "0", "step": "20"}
    assert store.aborted == ["left-by-the-killed-helper"]
    assert journal.find_staged([str(tmp_path)]) == [] and not Path(older.snapshot).exists()
    assert recovery.newest is not None and recovery.newest.step == 20
    assert Path(recovery.newest.path).read_bytes() == (folder / "epoch=0-step=20.ckpt").read_bytes()
    assert "sent 2 checkpoint(s)" in recovery.message


def test_recovery_keeps_what_it_could_not_send_for_the_next_start(tmp_path: Path) -> None:
    staged = journal.stage(str(checkpoint(tmp_path / "c" / "epoch=1-step=30.ckpt")), "p/checkpoints/x.ckpt",
                           {"step": "30"})
    recovery = recover_staged(lambda: RecordingStorage(down=True), [str(tmp_path)], tmp_path / ".resume")
    assert recovery.failed == ("epoch=1-step=30.ckpt",) and "Cannot reach" in recovery.message
    assert [s.key for s in journal.find_staged([str(tmp_path)])] == [staged.key]
    assert recovery.newest is not None and recovery.newest.step == 30  # still usable to resume from


def test_nothing_staged_never_touches_the_bucket(tmp_path: Path) -> None:
    def no_storage():
        raise AssertionError("S3 must not be touched")

    recovery = recover_staged(no_storage, [str(tmp_path)], tmp_path / ".resume")
    assert recovery.newest is None and "no unsent" in recovery.message


def info(name: str, step: int) -> CheckpointInfo:
    return CheckpointInfo(name=name, key=f"p/checkpoints/{name}", size=1, step=step, epoch=0, val_loss=None,
                          step_source="metadata", uploaded=datetime(2026, 1, 1, tzinfo=timezone.utc))


def test_resume_prefers_a_newer_verified_local_file_over_an_older_object(tmp_path: Path) -> None:
    local = LocalCheckpoint(str(checkpoint(tmp_path / "r" / "epoch=0-step=20.ckpt")), 20, "epoch=0-step=20.ckpt",
                            "p/checkpoints/epoch=0-step=20.ckpt")

    class NoDownloads:
        def key(self, *parts: str) -> str:
            return "/".join(("p", *parts))

        def url(self, key: str = "") -> str:
            return f"s3://bucket/{key}"

        def download_file(self, key: str, dest: Path) -> None:
            raise AssertionError(f"{key} must not be downloaded: the local file is newer")

    plan = resume_from_latest(NoDownloads(), tmp_path / "r", [info("epoch=0-step=10.ckpt", 10)], local=local)
    assert plan.path == local.path and plan.step == 20 and "on this machine" in plan.message
    plan = resume_from_latest(NoDownloads(), tmp_path / "r", [], local=local)
    assert plan.step == 20


def test_a_journaled_upload_cut_short_stays_staged_and_a_landed_one_is_cleared(tmp_path: Path) -> None:
    import threading

    gate = threading.Event()
    sent: list[str] = []

    def transfer(job: UploadJob) -> None:
        if job.key.endswith("slow.ckpt"):
            gate.wait(5)
            raise ConnectionError("the helper was stopped")
        sent.append(job.key)

    uploader = BackgroundUploader(transfer)
    fast = journal.stage(str(checkpoint(tmp_path / "fast.ckpt")), "k/fast.ckpt", {"step": "1"})
    uploader.submit(UploadJob(key=fast.key, path=fast.snapshot, owned=True, journal=fast.entry))
    assert uploader.flush(5).ok and sent == ["k/fast.ckpt"]
    assert not Path(fast.entry).exists() and not Path(fast.snapshot).exists()

    slow = journal.stage(str(checkpoint(tmp_path / "slow.ckpt")), "k/slow.ckpt", {"step": "2"})
    waiting = journal.stage(str(checkpoint(tmp_path / "waiting.ckpt")), "k/waiting.ckpt", {"step": "3"})
    for staged in (slow, waiting):
        uploader.submit(UploadJob(key=staged.key, path=staged.snapshot, owned=True, journal=staged.entry))
    assert not uploader.flush(0.2).ok
    in_flight = uploader.shutdown()
    gate.set()
    uploader.join(2)
    assert in_flight is not None and in_flight.key == "k/slow.ckpt"
    assert {s.key for s in journal.find_staged([str(tmp_path)])} == {"k/slow.ckpt", "k/waiting.ckpt"}


@pytest.mark.parametrize("source_exists", [True, False])
def test_a_set_aside_job_whose_file_was_rotated_away_is_counted_and_reported(tmp_path: Path,
                                                                             source_exists: bool) -> None:
    import threading

    gate = threading.Event()
    busy = threading.Event()
    events = []

    def transfer(job: UploadJob) -> None:
        busy.set()
        gate.wait(5)

    uploader = BackgroundUploader(transfer, max_pending=1, observer=events.append)
    paths = [checkpoint(tmp_path / f"epoch=0-step={n}.ckpt") for n in (1, 2, 3)]
    for n, path in enumerate(paths):
        uploader.submit(UploadJob(key=f"k/{n}", path=str(path), source=str(path)))
        if n == 0:
            assert busy.wait(5)  # the worker holds job 0 and hangs on the gate; job 1 is then set aside
    if not source_exists:
        paths[1].unlink()  # Lightning's top-k rotation removed it before the flush
    gate.set()
    result = uploader.close(timeout=5)
    if source_exists:
        assert result.ok and not result.dropped
    else:
        assert not result.ok and result.pending == 0 and not result.failed
        assert len(result.dropped) == 1 and "epoch=0-step=2.ckpt" in result.dropped[0]
        assert [e.job.key for e in events if e.kind == "dropped"] == ["k/1"]


def test_a_kill_while_the_file_was_written_is_caught_by_its_intent(tmp_path: Path) -> None:
    old = checkpoint(tmp_path / "c" / "last.ckpt", "an earlier step")
    earlier = time.time() - 60
    os.utime(old, (earlier, earlier))
    intent = journal.intend(str(old), "k/last.ckpt", {"step": "40"})
    assert journal.usable_file(intent) is None  # still the earlier file: not what the intent is about

    (tmp_path / "c" / "last.ckpt").write_bytes(b"PK\x03\x04 half of a zip")  # killed mid-write
    assert journal.usable_file(intent) is None

    checkpoint(tmp_path / "c" / "last.ckpt", "step 40")  # written whole, killed before it was linked
    [found] = journal.find_staged([str(tmp_path)])
    assert found.snapshot == "" and found.step == 40
    assert journal.usable_file(found) == str(tmp_path / "c" / "last.ckpt")

    staged = journal.stage(str(tmp_path / "c" / "last.ckpt"), "k/last.ckpt", {"step": "40"}, intent=intent)
    assert staged.entry == intent.entry and [s.snapshot for s in journal.find_staged([str(tmp_path)])] == [staged.snapshot]


def test_a_newer_object_in_the_bucket_still_wins_over_an_older_local_file(tmp_path: Path) -> None:
    local = LocalCheckpoint(str(checkpoint(tmp_path / "r" / "epoch=0-step=20.ckpt")), 20, "epoch=0-step=20.ckpt",
                            "p/checkpoints/epoch=0-step=20.ckpt")
    newer = checkpoint(tmp_path / "bucket" / "epoch=0-step=30.ckpt").read_bytes()

    class Bucket:
        def key(self, *parts: str) -> str:
            return "/".join(("p", *parts))

        def url(self, key: str = "") -> str:
            return f"s3://bucket/{key}"

        def download_file(self, key: str, dest: Path) -> None:
            Path(dest).write_bytes(newer)

    plan = resume_from_latest(Bucket(), tmp_path / "r", [info("epoch=0-step=20.ckpt", 20),
                                                        info("epoch=0-step=30.ckpt", 30)], local=local)
    assert plan.step == 30 and plan.path == str(tmp_path / "r" / "epoch=0-step=30.ckpt")
    assert not Path(local.path).exists()  # the resume folder keeps one checkpoint
