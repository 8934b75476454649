"""Stopping training, gracefully or not, loses nothing: real processes, the real S3 server.

- kill -9 while an upload hangs: the next start sends the staged checkpoint and resumes from it;
- SIGTERM mid-epoch: the current step is saved, uploaded, reported in one line, and resumed exactly;
- the same SIGTERM in two-process DDP (gloo): every rank stops at the same step, rank zero uploads.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

pytest.importorskip("lightning")

from tests.harness.servers import S3Server, free_port  # noqa: E402
from tests.harness.training_runs import (  # noqa: E402
    RECORDER,
    demo_fit,
    finish,
    local_checkpoints,
    object_sha256,
    output,
    recorded_steps,
    sha256_file,
    start,
    storage_for,
    sync_env_for,
    uploaded,
    wait_until,
)

pytestmark = pytest.mark.slow
BUCKET = "training-stop"


def sync_env(server: S3Server) -> dict[str, str]:
    return sync_env_for(server, BUCKET, checkpoint="s3")


def step_of(name: str) -> int:
    return int(name.split("step=")[1].split("-")[0].split(".")[0])


def test_checkpoint_staged_when_killed_is_sent_at_restart_and_resumed_from(private_s3: S3Server,
                                                                           tmp_path: Path) -> None:
    env = sync_env(private_s3)
    storage = storage_for(env)
    run = start(tmp_path, demo_fit("--trainer.max_epochs=1000", every=5), env)
    wait_until(lambda: len(uploaded(storage)) >= 2, 90, "two uploaded checkpoints", run, tmp_path)
    os.kill(private_s3.proc.pid, signal.SIGSTOP)  # uploads now hang mid-request, as on a dead link
    seen = set(local_checkpoints(tmp_path))
    wait_until(lambda: len(set(local_checkpoints(tmp_path)) - seen) >= 2, 60, "checkpoints written meanwhile",
               run, tmp_path)
    os.killpg(run.pid, signal.SIGKILL)  # an OOM kill or a preemption: no flush, no goodbye
    run.wait()
    os.kill(private_s3.proc.pid, signal.SIGCONT)

    before_kill = local_checkpoints(tmp_path)
    newest = max(before_kill, key=step_of)
    last = step_of(newest)
    assert newest not in {c.name for c in uploaded(storage)}  # written while S3 hung: not sent yet
    # What the killed helper would have left had its multipart upload started: the restart aborts it.
    key = storage.key("checkpoints", newest)
    storage.client.create_multipart_upload(Bucket=storage.bucket, Key=key)

    second = start(tmp_path, demo_fit(f"--trainer.max_steps={last + 10}", "--trainer.max_epochs=-1", every=5), env)
    assert finish(second, 120, tmp_path) == 0, output(tmp_path)[-3000:]
    text = output(tmp_path)
    assert "a stopped run left unsent" in text and f"{newest} (step {last})" in text, text[-3000:]
    assert "Restoring states from the checkpoint path" in text
    stored = {c.name: c for c in uploaded(storage)}
    for name, path in before_kill.items():  # every checkpoint written before the kill is in S3, intact
        assert name in stored, f"{name} is missing from S3"
        assert object_sha256(storage, stored[name].key) == stored[name].sha256
    assert stored[newest].step == last
    new_steps = sorted(c.step for name, c in stored.items() if name not in before_kill)
    assert new_steps == [last + 5, last + 10]  # resumed from the newest, not from an older upload
    assert storage.multipart_uploads(storage.key("checkpoints") + "/") == []
    assert not list(tmp_path.rglob(".s3-sync/*"))


def test_sigterm_saves_the_current_step_uploads_it_and_the_restart_resumes_there(private_s3: S3Server,
                                                                                 tmp_path: Path) -> None:
    env = sync_env(private_s3)
    storage = storage_for(env)
    # Checkpoints every 50 steps: without the save on stop, up to 49 steps of work would be lost.
    command = demo_fit("--trainer.max_epochs=1000", f"--trainer.callbacks+={RECORDER}", every=50)
    run = start(tmp_path, command, env)
    wait_until(lambda: len(recorded_steps(tmp_path)) >= 20, 90, "twenty trained steps", run, tmp_path)
    run.send_signal(signal.SIGTERM)  # what `fab stop` and compose send, to the entrypoint
    assert finish(run, 60, tmp_path) == 128 + signal.SIGTERM

    last = recorded_steps(tmp_path)[-1]
    text = output(tmp_path)
    assert f"gpu-deploy: saved step {last} on stop, uploaded to s3://{BUCKET}/run/checkpoints/" in text, text[-3000:]
    stored = {c.name: c for c in uploaded(storage)}
    [saved] = [c for c in stored.values() if c.name.startswith("stop-")]
    assert saved.step == last and saved.name.endswith(f"-step={last}.ckpt")
    local = local_checkpoints(tmp_path)[saved.name]
    assert object_sha256(storage, saved.key) == sha256_file(local) == saved.sha256

    second = start(tmp_path, [*command, f"--trainer.max_steps={last + 3}", "--trainer.max_epochs=-1"], env)
    assert finish(second, 120, tmp_path) == 0, output(tmp_path)[-3000:]
    assert f"{saved.name} (step {last}); read from this machine's copy (its sha256 matches)" in output(tmp_path), \
        output(tmp_path)[-3000:]  # the stop's file is still here: nothing is downloaded back
    steps = recorded_steps(tmp_path)
    assert steps[-3:] == [last + 1, last + 2, last + 3]  # not one step lost, not one trained twice
    assert steps.count(last) == 1


def test_sigterm_to_one_ddp_rank_stops_every_rank_at_the_same_step(s3_env, tmp_path: Path) -> None:
    port = str(free_port())
    command = demo_fit("--trainer.max_epochs=1000", "--trainer.strategy=ddp", "--trainer.num_nodes=2",
                       "--trainer.devices=1", f"--trainer.callbacks+={RECORDER}", step_delay=0.02, every=1000)
    runs = {}
    for rank in (0, 1):
        env = {"ENABLE_S3_SYNC": "1", "NODE_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "CHECKPOINT": ""}
        runs[rank] = start(tmp_path / f"node{rank}", command, env)
    wait_until(lambda: len(recorded_steps(tmp_path / "node1")) >= 10, 120, "ten steps on rank one",
               runs[1], tmp_path / "node1")
    runs[1].send_signal(signal.SIGTERM)  # only rank one is told: rank zero must still save and upload
    assert finish(runs[1], 90, tmp_path / "node1") == 128 + signal.SIGTERM, output(tmp_path / "node1")[-3000:]
    assert finish(runs[0], 90, tmp_path / "node0") == 0, output(tmp_path / "node0")[-3000:]

    last = recorded_steps(tmp_path / "node0")[-1]
    assert recorded_steps(tmp_path / "node1")[-1] == last
    assert f"gpu-deploy: saved step {last} on stop, uploaded to" in output(tmp_path / "node0")
    assert "gpu-deploy: saved step" not in output(tmp_path / "node1")
    storage = storage_for()
    stored = {c.name: c for c in uploaded(storage)}
    assert [c.step for c in stored.values() if c.name.startswith("stop-")] == [last]
