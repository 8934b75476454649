"""Two writers, one run: a newer attempt takes the run and the older training stops without writing.

Real processes (the entrypoint and the demo trainer in two working folders, as two hosts would run
them) against the real S3 server:

- the first training (attempt 1) is frozen mid-training (a hung pod), the second (attempt 2) starts
  and claims the run; once the first runs again, its next upload is refused, it stops at the next
  batch without a stop checkpoint, says so in one line and exits 0; every checkpoint written after
  the claim is the second's, with ``attempt: 2`` in its metadata. Only the training process is
  frozen, and the claim waits until its upload helper sits idle (blocked reading its next job): a
  write the helper checked just before the claim could still land after it (the lease is checked,
  then the write goes out; S3 cannot make one conditional on the other), and the test must not
  freeze the helper inside that window;
- a training of an older attempt that starts late starts nothing;
- a multipart upload already in flight when the lease moves is not completed (the upload helper
  process, held mid-upload by a proxy that stops its part uploads until the claim is made).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import uuid
from pathlib import Path

import pytest

pytest.importorskip("lightning")

from deploy.storage import Storage  # noqa: E402
from deploy.training.lease import ATTEMPT_FILE, Lease, LeaseLost, attempt_document, claim, grant, read_lease  # noqa: E402
from tests.harness.pod import pids_in  # noqa: E402
from tests.harness.training_runs import (  # noqa: E402
    RECORDER,
    REPO,
    demo_fit,
    finish,
    local_checkpoints,
    output,
    recorded_steps,
    start,
    storage_for,
    uploaded,
    wait_until,
)

pytestmark = pytest.mark.slow
RUN = "20261130-0602-twowriters"
HOST_A, HOST_B = "root@203.0.113.5:40022", "root@203.0.113.7:40022"


@pytest.fixture
def env(s3_server, s3_bucket) -> dict[str, str]:
    return {**s3_server.environ(s3_bucket, prefix=f"lease-{uuid.uuid4().hex[:8]}"), "ENABLE_S3_SYNC": "1",
            "CHECKPOINT": "s3", "RUN_ID": RUN, "AWS_MAX_ATTEMPTS": "1", "S3_SYNC_FLUSH_TIMEOUT": "30"}


def deploy(storage: Storage, folder: Path, host: str) -> int:
    """What the flow's take-lease step does for a host: the next attempt, written where training reads it."""
    attempt = grant(storage, RUN, to=host).granted
    (folder / ATTEMPT_FILE).parent.mkdir(parents=True, exist_ok=True)
    (folder / ATTEMPT_FILE).write_bytes(attempt_document(RUN, attempt))
    return attempt


def lease_of(storage: Storage) -> Lease:
    return read_lease(storage, RUN) or Lease(run=RUN)


READ = {"x86_64": "0", "aarch64": "63"}.get(os.uname().machine)  # the read syscall's number


def training_process(folder: Path) -> int:
    [pid] = [p for p in pids_in(str(folder), "deploy.training.demo") if "entrypoint" not in _cmdline(p)]
    return pid


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def helpers_idle(folder: Path) -> bool:
    """Every upload helper of the training in ``folder`` waits for its next job (read() on its stdin): it
    has no upload in flight."""
    helpers = pids_in(str(folder), "deploy.training.transfer")
    return bool(helpers) and all(Path(f"/proc/{p}/syscall").read_text().split()[:2] == [READ, "0x0"]
                                 for p in helpers)


def test_a_newer_attempt_stops_the_older_training_without_writing(env, tmp_path: Path) -> None:
    storage = storage_for(env)
    a, b = tmp_path / "a", tmp_path / "b"
    assert deploy(storage, a, HOST_A) == 1
    # Long epochs: the first's next write after the claim is a checkpoint (every 5 steps), not the logs
    # (at an epoch's end), so it has saved a checkpoint it could not send.
    first = start(a, demo_fit("--trainer.max_epochs=1000", "--data.samples=8192", f"--trainer.callbacks+={RECORDER}",
                              every=5), {**env, "RUN_HOST": HOST_A})
    wait_until(lambda: len([c for c in uploaded(storage) if c.attempt == 1]) >= 2, 120,
               "two checkpoints of attempt 1 in S3", first, a)
    assert lease_of(storage).claimed == 1 and lease_of(storage).claimed_by == HOST_A

    if READ is None:
        pytest.skip(f"no read syscall number known for {os.uname().machine}")
    trainer = training_process(a)
    os.kill(trainer, signal.SIGSTOP)  # the old pod hangs: the operator deploys the run elsewhere
    try:
        wait_until(lambda: helpers_idle(a), 60, "the first's upload helper to finish what it was sending")
        newest = max(c.step for c in uploaded(storage))
        assert deploy(storage, b, HOST_B) == 2
        second = start(b, demo_fit(f"--trainer.max_steps={newest + 30}", "--trainer.max_epochs=-1", every=5),
                       {**env, "RUN_HOST": HOST_B})
        wait_until(lambda: lease_of(storage).claimed == 2, 120, "the second training's claim", second, b)
        claimed = {o.key: o.etag for o in storage.list(storage.key("checkpoints") + "/")}
        steps_at_claim = len(recorded_steps(a))
    finally:
        os.kill(trainer, signal.SIGCONT)

    assert finish(first, 120, a) == 0, output(a)[-3000:]  # 0: neither the supervisor nor compose restarts it
    text = output(a)
    assert f"gpu-deploy: superseded by attempt 2 on {HOST_B}; this training stops without writing to S3" in text, \
        text[-3000:]
    assert (f"entrypoint: superseded by attempt 2 on {HOST_B}; this training (attempt 1) stopped without writing "
            "to S3") in text
    assert "saved step" not in text  # no stop checkpoint
    assert len(recorded_steps(a)) > steps_at_claim  # it trained on after the claim, and tried to upload

    assert finish(second, 180, b) == 0, output(b)[-3000:]
    assert f"entrypoint: attempt 2 of run {RUN} holds the lease" in output(b)
    stored = {c.key: c for c in uploaded(storage)}
    written_after = [c for key, c in stored.items() if claimed.get(key) != storage.head(key).etag]
    assert len(written_after) >= 4  # the second's checkpoints, every 5 of its 30 steps
    assert {(c.run, c.attempt) for c in written_after} == {(RUN, 2)}, [(c.name, c.attempt) for c in written_after]
    mine = {c.name for c in stored.values() if c.attempt == 1}
    assert [n for n in local_checkpoints(a) if n not in mine]  # the first saved more, and sent none of it
    assert storage.multipart_uploads(storage.key("checkpoints") + "/") == []


def test_a_training_of_an_older_attempt_that_starts_late_starts_nothing(env, tmp_path: Path) -> None:
    storage = storage_for(env)
    deploy(storage, tmp_path, HOST_A)
    claim(storage, RUN, 2, HOST_B)  # a newer deploy's training started on another host
    late = start(tmp_path, demo_fit("--trainer.max_epochs=1", f"--trainer.callbacks+={RECORDER}"),
                 {**env, "RUN_HOST": HOST_A})
    assert finish(late, 120, tmp_path) == 0
    assert output(tmp_path).strip().splitlines() == [
        f"entrypoint: run {RUN} is held by attempt 2 on {HOST_B}; this training (attempt 1) is superseded: it starts "
        "nothing and writes nothing"]
    assert recorded_steps(tmp_path) == [] and uploaded(storage) == []


class PartHoldingProxy:
    """A TCP proxy to the S3 server that holds back every part upload (``?partNumber=``) until released."""

    PATTERN = b"partNumber="

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.holding = threading.Event()  # a part upload has arrived and waits
        self.release = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, dest: socket.socket, requests: bool) -> None:
        tail = b""
        try:
            while data := source.recv(65536):
                if requests and not self.release.is_set() and self.PATTERN in tail + data:
                    self.holding.set()
                    self.release.wait(60)
                tail = data[-len(self.PATTERN):]
                dest.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, dest):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.release.set()
        self.server.close()


def test_a_multipart_upload_in_flight_when_the_lease_moves_is_not_completed(env, s3_server, tmp_path: Path,
                                                                           monkeypatch) -> None:
    from deploy.training.transfer import ProcessTransfer
    from deploy.training.uploader import UploadJob

    storage = storage_for(env)
    grant(storage, RUN, to=HOST_A)
    claim(storage, RUN, 1, HOST_A)
    proxy = PartHoldingProxy(s3_server.port)
    helper_env = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}", "RUN_ATTEMPT": "1",
                  "S3_MULTIPART_THRESHOLD_MB": "5", "S3_MULTIPART_CHUNKSIZE_MB": "5", "PYTHONPATH": str(REPO)}
    for key, value in helper_env.items():  # the helper process inherits the training's environment
        monkeypatch.setenv(key, value)
    big = tmp_path / "epoch=3-step=400.ckpt"
    big.write_bytes(os.urandom(12 * 1024 * 1024))  # above the 5 MB threshold: three parts
    key = storage.key("checkpoints", big.name)
    transfer = ProcessTransfer()
    outcome: list[BaseException | object] = []
    worker = threading.Thread(target=lambda: outcome.append(_try(transfer, UploadJob(key=key, path=str(big)))))
    try:
        worker.start()
        assert proxy.holding.wait(60), "the helper never began its part uploads"
        assert [u["key"] for u in storage.multipart_uploads(key)] == [key]  # in flight
        claim(storage, RUN, 2, HOST_B)  # the lease moves while the parts are on their way
        proxy.release.set()
        worker.join(60)
    finally:
        proxy.close()
        transfer.close()
    [error] = outcome
    assert isinstance(error, LeaseLost) and error.lease.claimed == 2 and error.lease.claimed_by == HOST_B
    assert storage.head(key) is None  # not completed
    assert storage.multipart_uploads(key) == []  # and its parts aborted


def _try(transfer, job) -> BaseException | object:
    try:
        return transfer(job)
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        return exc
