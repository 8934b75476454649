"""The background uploader: retries with backoff, the queue bound, coalescing, flush deadlines."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from deploy.training.uploader import Backoff, BackgroundUploader, UploadJob

FAST = Backoff(base=0.01, factor=2.0, cap=0.05, jitter=False)


class FlakyTransfer:
    """Fails the first ``failures`` calls, then records what it was asked to send."""

    def __init__(self, failures: int = 0, gate: threading.Event | None = None) -> None:
        self.failures = failures
        self.calls = 0
        self.sent: list[tuple[str, bytes]] = []
        self.gate = gate
        self.busy = threading.Event()  # set once the worker holds a job (and hangs on the gate)

    def __call__(self, job: UploadJob) -> str:
        self.busy.set()
        if self.gate is not None:
            self.gate.wait(10)
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("S3 is down")
        self.sent.append((job.key, Path(job.path).read_bytes() if job.path else b""))
        return job.key


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_failed_upload_is_retried_with_backoff_until_it_lands(tmp_path: Path) -> None:
    transfer = FlakyTransfer(failures=3)
    events = []
    uploader = BackgroundUploader(transfer, backoff=FAST, observer=events.append)
    uploader.submit(UploadJob(key="k/a.ckpt", path=write(tmp_path, "a.ckpt", b"A")))
    result = uploader.close(timeout=5)
    assert result.ok and result.completed == 1
    assert transfer.sent == [("k/a.ckpt", b"A")]
    retries = [e for e in events if e.kind == "retrying"]
    assert [e.attempt for e in retries] == [1, 2, 3]
    assert [e.delay for e in retries] == [0.01, 0.02, 0.04]  # exponential
    assert events[-1].kind == "uploaded"


def test_backoff_is_capped_and_jittered_below_its_ceiling() -> None:
    plain = Backoff(base=1, factor=2, cap=30, jitter=False)
    assert [plain.delay(n) for n in (1, 2, 3, 6, 20)] == [1, 2, 4, 30, 30]
    jittered = Backoff(base=1, factor=2, cap=30)
    assert all(2 <= jittered.delay(3) <= 4 for _ in range(50))
    with pytest.raises(ValueError):
        Backoff(base=0)


def test_submit_never_waits_for_a_slow_upload(tmp_path: Path) -> None:
    gate = threading.Event()  # the "network" hangs until the test opens it
    uploader = BackgroundUploader(FlakyTransfer(gate=gate), backoff=FAST, max_pending=4)
    started = time.monotonic()
    for n in range(10):
        path = write(tmp_path, f"{n}.ckpt", b"x")
        uploader.submit(UploadJob(key=f"k/{n}", path=path, source=path))
    assert time.monotonic() - started < 0.5
    gate.set()
    assert uploader.close(timeout=5).ok


def test_full_queue_sets_the_oldest_aside_and_flush_still_sends_it(tmp_path: Path) -> None:
    gate = threading.Event()
    transfer = FlakyTransfer(gate=gate)
    events = []
    uploader = BackgroundUploader(transfer, backoff=FAST, max_pending=2, observer=events.append)
    paths = [write(tmp_path, f"{n}.ckpt", bytes([n])) for n in range(5)]
    for n, path in enumerate(paths):
        uploader.submit(UploadJob(key=f"k/{n}", path=path, source=path))
        if n == 0:
            assert transfer.busy.wait(5)  # the worker holds job 0 (it hangs on the gate)
    assert sum(e.kind == "set_aside" for e in events) == 2
    assert uploader.pending == 5
    gate.set()
    result = uploader.close(timeout=5)
    assert result.ok
    assert sorted(transfer.sent) == [(f"k/{n}", bytes([n])) for n in range(5)]


def test_a_newer_file_for_the_same_key_replaces_the_waiting_one(tmp_path: Path) -> None:
    gate = threading.Event()
    transfer = FlakyTransfer(gate=gate)
    uploader = BackgroundUploader(transfer, backoff=FAST)
    uploader.submit(UploadJob(key="k/busy", path=write(tmp_path, "busy", b"0")))
    assert transfer.busy.wait(5)
    old = write(tmp_path, "last-1", b"old")
    uploader.submit(UploadJob(key="k/last.ckpt", path=old, owned=True))
    uploader.submit(UploadJob(key="k/last.ckpt", path=write(tmp_path, "last-2", b"new"), owned=True))
    assert not Path(old).exists()  # the superseded snapshot is released at once
    gate.set()
    assert uploader.close(timeout=5).ok
    assert transfer.sent == [("k/busy", b"0"), ("k/last.ckpt", b"new")]
    assert not (tmp_path / "last-2").exists()  # owned snapshots are removed once sent


def test_flush_returns_by_its_deadline_while_s3_stays_down(tmp_path: Path) -> None:
    transfer = FlakyTransfer(failures=10**6)
    uploader = BackgroundUploader(transfer, backoff=Backoff(base=0.05, cap=0.2))
    uploader.submit(UploadJob(key="k/a", path=write(tmp_path, "a", b"A")))
    started = time.monotonic()
    result = uploader.flush(timeout=0.5)
    assert 0.4 < time.monotonic() - started < 1.5
    assert not result.ok and result.pending == 1
    closed = uploader.close()
    assert closed.pending == 1 and transfer.calls > 2


def test_a_file_that_vanished_is_reported_not_retried(tmp_path: Path) -> None:
    transfer = FlakyTransfer()
    uploader = BackgroundUploader(transfer, backoff=FAST)
    uploader.submit(UploadJob(key="k/gone", path=str(tmp_path / "gone.ckpt")))
    result = uploader.close(timeout=2)
    assert result.failed and "no longer exists" in result.failed[0]
    assert transfer.calls == 0


def test_copy_first_uploads_a_consistent_copy_of_a_growing_file(tmp_path: Path) -> None:
    path = write(tmp_path, "events", b"first")
    transfer = FlakyTransfer()
    uploader = BackgroundUploader(transfer, backoff=FAST)
    uploader.submit(UploadJob(key="logs/events", path=path, copy_first=True))
    assert uploader.close(timeout=5).ok
    assert transfer.sent == [("logs/events", b"first")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events"]  # the temp copy is gone


def test_invalid_queue_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        BackgroundUploader(FlakyTransfer(), max_pending=0)


def test_the_worker_thread_runs_at_a_lower_cpu_priority(tmp_path: Path) -> None:
    import os

    seen = []

    def transfer(job: UploadJob) -> None:
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    uploader = BackgroundUploader(transfer, nice=5)
    uploader.submit(UploadJob(key="k", path=write(tmp_path, "a", b"A")))
    assert uploader.close(timeout=5).ok
    assert seen == [min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5)]


def test_jobs_set_aside_during_an_outage_go_up_once_the_queue_drains_without_a_flush(tmp_path: Path) -> None:
    gate = threading.Event()  # the outage: the worker's first upload hangs until it ends
    transfer = FlakyTransfer(gate=gate)
    events = []
    uploader = BackgroundUploader(transfer, backoff=FAST, max_pending=2, observer=events.append)
    paths = [write(tmp_path, f"{n}.ckpt", bytes([n])) for n in range(6)]
    for n, path in enumerate(paths):
        uploader.submit(UploadJob(key=f"k/{n}", path=path, source=path))
        if n == 0:
            assert transfer.busy.wait(5)
    assert sum(e.kind == "set_aside" for e in events) == 3
    gate.set()  # S3 answers again
    deadline = time.monotonic() + 5
    while len(transfer.sent) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(transfer.sent) == [(f"k/{n}", bytes([n])) for n in range(6)]  # before any flush
    assert uploader.close(timeout=1).ok
