"""A graceful stop: one flush deadline for every callback, inside the stop grace period; open uploads aborted."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("lightning")

from deploy.training import stop  # noqa: E402
from deploy.training.stop import STOP, STOP_BUDGET, STOP_GRACE, StopRequest  # noqa: E402
from deploy.training.syncbase import SyncCallback  # noqa: E402
from deploy.training.uploader import Backoff, BackgroundUploader, UploadJob  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


class FakeStorage:
    """Only what the stop path uses: names, and aborting multipart uploads."""

    def __init__(self) -> None:
        self.open_uploads = [{"key": "p/checkpoints/slow.ckpt", "upload_id": "u1"}]
        self.aborted: list[str] = []

    def multipart_uploads(self, prefix: str) -> list[dict[str, str]]:
        return [u for u in self.open_uploads if u["key"].startswith(prefix)]

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self.aborted.append(upload_id)


class StalledTransfer:
    """An upload that hangs (a frozen S3 server) until closed, like the helper process being killed."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.closed_with: list[float] = []

    def __call__(self, job: UploadJob) -> None:
        self.released.wait(30)
        raise ConnectionError("the upload helper process stopped")

    def close(self, timeout: float = 5.0) -> None:
        self.closed_with.append(timeout)
        self.released.set()


def stalled_callback(tmp_path: Path, name: str, flush_timeout: float) -> tuple[SyncCallback, StalledTransfer]:
    callback = SyncCallback(enabled=True, flush_timeout=flush_timeout, storage=FakeStorage())
    transfer = StalledTransfer()
    callback._transfer = transfer
    callback.uploader = BackgroundUploader(transfer, backoff=Backoff(base=0.05, cap=0.1))
    path = tmp_path / f"{name}.ckpt"
    path.write_bytes(b"x")
    callback.uploader.submit(UploadJob(key="p/checkpoints/slow.ckpt", path=str(path)))
    return callback, transfer


@pytest.fixture
def fresh_stop(monkeypatch: pytest.MonkeyPatch) -> StopRequest:
    request = StopRequest()
    monkeypatch.setattr(stop, "STOP", request)
    monkeypatch.setattr("deploy.training.syncbase.STOP", request)
    return request


@pytest.mark.filterwarnings("ignore:SyncCallback")
def test_two_callbacks_share_one_deadline_after_sigterm(tmp_path: Path, fresh_stop: StopRequest) -> None:
    first, first_transfer = stalled_callback(tmp_path, "a", flush_timeout=1.5)
    second, _ = stalled_callback(tmp_path, "b", flush_timeout=1.5)
    given: list[float] = []  # how long each flush was allowed to wait
    for callback in (first, second):
        flush = callback.uploader.flush
        callback.uploader.flush = lambda timeout, flush=flush: given.append(timeout) or flush(timeout)
    fresh_stop.request()  # SIGTERM arrived now
    for callback in (first, second):
        result = callback._stop("SIGTERMException")
        assert result is not None and result.pending == 1
    # Each flush alone may wait 1.5 s; one after the other they used to take 3 s and more. The first waits until
    # the shared deadline (its upload never ends), so the second gets nothing left.
    assert 0 < given[0] <= 1.5 and given[1] == 0.0, given
    assert first_transfer.closed_with and first_transfer.closed_with[0] <= 0.5 + 1e-6  # no time left: stopped at once
    assert first.storage.aborted == ["u1"]  # the multipart upload of the job cut short


def test_the_deadline_after_sigterm_stays_inside_the_stop_grace_period(fresh_stop: StopRequest) -> None:
    before = time.monotonic()
    deadline = fresh_stop.flush_deadline(10)  # no signal yet: 10 s from now
    assert before + 10 <= deadline <= time.monotonic() + 10
    fresh_stop.request()
    signalled = fresh_stop.received_at
    assert fresh_stop.flush_deadline(3600) == signalled + STOP_BUDGET
    time.sleep(0.2)
    assert fresh_stop.flush_deadline(60) == signalled + 60  # counted from the signal, the same for everyone
    assert STOP_BUDGET <= STOP_GRACE - 15


def test_stop_grace_matches_compose_and_fab_stop() -> None:
    from deploy.runtimes.compose.service import STOP_TIMEOUT

    assert STOP_GRACE == STOP_TIMEOUT
    for name in ("docker-compose.runpod.yml", "docker-compose.train.yml"):
        text = (REPO / name).read_text()
        assert re.search(rf"stop_grace_period:\s*{int(STOP_GRACE)}s", text), name


def test_flush_warns_about_jobs_dropped_while_set_aside(tmp_path: Path, fresh_stop: StopRequest) -> None:
    gate, busy = threading.Event(), threading.Event()

    def upload(job: UploadJob) -> None:
        busy.set()
        gate.wait(5)

    callback = SyncCallback(enabled=True, flush_timeout=5)
    callback.uploader = BackgroundUploader(upload, max_pending=1)
    paths = []
    for n in range(3):
        path = tmp_path / f"{n}.ckpt"
        path.write_bytes(b"x")
        paths.append(path)
        callback.uploader.submit(UploadJob(key=f"k/{n}", path=str(path), source=str(path)))
        assert busy.wait(10)  # 0 is being uploaded: 1 waits, and 2 sets it aside (the queue holds one)
    paths[1].unlink()
    gate.set()
    with pytest.warns(UserWarning, match=r"1 dropped because Lightning removed the file"):
        result = callback._stop("end of training")
    assert result is not None and result.dropped and not result.ok


def test_sigterm_is_only_recorded_when_a_callback_coordinates_the_stop(fresh_stop: StopRequest) -> None:
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        trainer = object()
        fresh_stop.arm(trainer)
        os.kill(os.getpid(), signal.SIGTERM)
        assert fresh_stop.requested and seen == [signal.SIGTERM]  # Lightning's handler still runs

        other = object()
        fresh_stop.arm(other, coordinated=True)  # a new fit starts afresh
        assert not fresh_stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert fresh_stop.requested and len(seen) == 1  # the coordinator decides at the next batch
        fresh_stop.release(other)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_process_transfer_starts_no_helper_after_close() -> None:
    from deploy.errors import StorageError
    from deploy.training.transfer import ProcessTransfer

    transfer = ProcessTransfer()
    transfer.close()
    with pytest.raises(StorageError, match="stopped"):
        transfer(UploadJob(key="k", path="/nonexistent"))
    assert transfer._proc is None


def test_module_stop_is_one_per_process() -> None:
    assert isinstance(STOP, StopRequest)
