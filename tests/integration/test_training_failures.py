"""Training while S3 misbehaves, and stopping with SIGTERM: real processes, a private S3 server each.

A private server lets a test pause (SIGSTOP) or stop it and bring it back on the same port. moto
keeps objects in memory, so a restarted server is empty: the outage test checks the checkpoints
whose uploads failed during the outage and were retried after it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

pytest.importorskip("lightning")

from tests.harness.servers import S3Server  # noqa: E402
from tests.harness.training_runs import (  # noqa: E402
    demo_fit,
    finish,
    local_checkpoints,
    object_sha256,
    output,
    sha256_file,
    start,
    storage_for,
    sync_env_for,
    uploaded,
    wait_until,
)

pytestmark = pytest.mark.slow
BUCKET = "training-failures"


def sync_env(server: S3Server) -> dict[str, str]:
    return sync_env_for(server, BUCKET, checkpoint="")


def test_sigterm_flushes_pending_uploads_before_exit(private_s3: S3Server, tmp_path: Path) -> None:
    env = sync_env(private_s3)
    storage = storage_for(env)
    run = start(tmp_path, demo_fit("--trainer.max_epochs=1000", every=5), env)
    wait_until(lambda: len(uploaded(storage)) >= 2, 90, "two uploaded checkpoints", run, tmp_path)
    # Freeze the server: uploads now hang mid-request, as on a slow link, while training goes on.
    os.kill(private_s3.proc.pid, signal.SIGSTOP)
    seen = len(local_checkpoints(tmp_path))
    wait_until(lambda: len(local_checkpoints(tmp_path)) >= seen + 2, 60, "checkpoints written meanwhile",
               run, tmp_path)
    run.send_signal(signal.SIGTERM)  # to the entrypoint, which passes it on to the trainer
    time.sleep(1.0)
    os.kill(private_s3.proc.pid, signal.SIGCONT)
    assert finish(run, 60, tmp_path) == 128 + signal.SIGTERM  # stopped, not finished

    text = output(tmp_path)
    assert "SIGTERMException: flushing" in text, text[-3000:]
    local = local_checkpoints(tmp_path)
    stored = {c.name: c for c in uploaded(storage)}
    assert set(stored) == set(local)
    for name, path in local.items():
        assert object_sha256(storage, stored[name].key) == sha256_file(path) == stored[name].sha256, name


def test_training_keeps_going_through_an_s3_outage_and_catches_up(private_s3: S3Server, tmp_path: Path) -> None:
    env = sync_env(private_s3)
    storage = storage_for(env)
    command = demo_fit("--trainer.max_steps=400", "--trainer.max_epochs=-1",
                       "--trainer.callbacks+=deploy.training.callbacks.S3CheckpointSync",
                       "--trainer.callbacks.max_retry_delay=1", every=20)
    run = start(tmp_path, command, env)
    wait_until(lambda: len(uploaded(storage)) >= 1, 90, "a first upload", run, tmp_path)

    private_s3.stop()
    down_since = time.time()
    before = set(local_checkpoints(tmp_path))
    wait_until(lambda: len(set(local_checkpoints(tmp_path)) - before) >= 2, 60,
               "checkpoints written during the outage", run, tmp_path)
    time.sleep(max(0.0, down_since + 5 - time.time()))  # at least five seconds down
    assert run.poll() is None, "training stopped during the outage"
    written_during = set(local_checkpoints(tmp_path)) - before

    private_s3.start()  # the same address, but empty: moto keeps objects in memory
    private_s3.client().create_bucket(Bucket=BUCKET)
    assert finish(run, 120, tmp_path) == 0, output(tmp_path)[-3000:]

    text = output(tmp_path)
    assert "retrying in" in text
    stored = {c.name: c for c in uploaded(storage)}
    local = local_checkpoints(tmp_path)
    late = {name for name, path in local.items() if path.stat().st_mtime >= down_since}
    assert written_during <= late and len(late) >= 3
    for name in late:  # everything written since the outage began is in the bucket, intact
        assert name in stored, f"{name} is missing from S3"
        assert object_sha256(storage, stored[name].key) == sha256_file(local[name]) == stored[name].sha256
