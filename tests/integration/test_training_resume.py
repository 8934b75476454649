"""Resume from S3 with real training processes: after SIGKILL, and past a corrupt newest checkpoint."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")

from deploy.training.resume import resolve_checkpoint  # noqa: E402
from deploy.storage.checkpoints import parse_checkpoint_name  # noqa: E402
from tests.harness.training_runs import (  # noqa: E402
    demo_fit,
    finish,
    local_checkpoints,
    output,
    start,
    storage_for,
    uploaded,
    wait_until,
)

pytestmark = pytest.mark.slow


def test_run_killed_with_sigkill_continues_from_the_newest_checkpoint_written(s3_env, tmp_path: Path) -> None:
    env = {"ENABLE_S3_SYNC": "1", "CHECKPOINT": "s3"}
    storage = storage_for()
    first = start(tmp_path, demo_fit("--trainer.max_epochs=1000"), env)
    wait_until(lambda: len(uploaded(storage)) >= 3, 90, "three uploaded checkpoints", first, tmp_path)
    os.killpg(first.pid, signal.SIGKILL)  # no flush, no goodbye: a preempted machine
    first.wait()
    before = {c.key: c.step for c in uploaded(storage)}
    written = local_checkpoints(tmp_path)
    # The newest file written before the kill, uploaded or not: the restart sends what is missing.
    last = max(parse_checkpoint_name(name).step for name in written)

    second = start(tmp_path, demo_fit(f"--trainer.max_steps={last + 20}", "--trainer.max_epochs=-1"), env)
    assert finish(second, 120, tmp_path) == 0, output(tmp_path)[-3000:]
    text = output(tmp_path)
    assert f"(step {last})" in text and "Restoring states from the checkpoint path" in text, text[-3000:]
    after = {c.key: c.step for c in uploaded(storage)}
    assert {key.rsplit("/", 1)[-1] for key in after} >= set(written)  # nothing written before the kill is lost
    new_steps = sorted(step for key, step in after.items() if key not in before and key.rsplit("/", 1)[-1] not in written)
    assert new_steps == [last + 10, last + 20]  # continued from `last`: not from 0, not from an older one


def test_corrupt_newest_checkpoint_in_s3_falls_back_to_the_previous(s3_env, tmp_path: Path) -> None:
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    from deploy.training.callbacks import S3CheckpointSync
    from deploy.training.demo import DemoData, DemoModel

    def trainer(root: Path, *callbacks, steps: int) -> Trainer:
        return Trainer(default_root_dir=root, max_steps=steps, accelerator="cpu", enable_progress_bar=False,
                       enable_model_summary=False, logger=False,
                       callbacks=[ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=4, save_top_k=-1,
                                                  monitor=None), *callbacks])

    trainer(tmp_path / "a", S3CheckpointSync(enabled=True), steps=12).fit(DemoModel(), DemoData(batch_size=64))
    storage = storage_for()
    newest = uploaded(storage)[-1]
    assert newest.step == 12
    # Damage the newest object but keep its metadata: its sha256 no longer matches.
    head = storage.head(newest.key)
    storage.client.put_object(Bucket=storage.bucket, Key=newest.key, Body=b"\0" * head.size,
                              Metadata=dict(head.metadata))

    plan = resolve_checkpoint("s3", lambda: storage, tmp_path / "resume")
    assert plan.step == 8 and newest.name in plan.message and "is corrupt" in plan.message
    resumed = trainer(tmp_path / "b", steps=16)
    resumed.fit(DemoModel(), DemoData(batch_size=64), ckpt_path=plan.path)
    assert resumed.global_step == 16
    assert torch.load(plan.path, weights_only=False)["global_step"] == 8
