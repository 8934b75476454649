"""The heartbeat callback and the training side's ledger writer, read back by the operator's deploy.ledger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.ledger.index import list_runs
from deploy.ledger.store import read_run

pytest.importorskip("lightning")

from lightning.pytorch import Trainer  # noqa: E402

from deploy.training.demo import DemoData, DemoModel  # noqa: E402
from deploy.training.heartbeat import Heartbeat, eta_seconds  # noqa: E402
from deploy.training.ledger import TrainingLedger  # noqa: E402


def test_eta_to_max_steps_or_max_epochs() -> None:
    assert eta_seconds(100, 10.0, 1100, None, None) == 100.0
    assert eta_seconds(100, 10.0, None, 3, 100) == 20.0
    assert eta_seconds(100, None, 1000, None, None) is None
    assert eta_seconds(100, 5.0, None, None, 100) is None


def test_training_side_events_and_heartbeats_read_by_the_ledger(moto_storage) -> None:
    ledger = TrainingLedger(moto_storage, "20261130-070000-beef", host="root@gpu-a:22")
    ledger.event("started", attempt=1)
    ledger.heartbeat({"at": "2026-11-30T07:00:30.000000Z", "step": 42, "epoch": 1, "metrics": {"loss": 0.5}})
    ledger.event("exited", code=1)
    run = read_run(moto_storage, ledger.run_id)
    assert run is not None
    assert [(e.kind, e.host) for e in run.events] == [("started", "root@gpu-a:22"), ("exited", "root@gpu-a:22")]
    assert run.events[1].data == {"code": 1}
    assert run.heartbeats[0].step == 42 and run.heartbeats[0].host == "root@gpu-a:22"
    (row,) = list_runs(moto_storage)
    assert row["state"] == "failed (exit 1)" and row["step"] == 42


def test_heartbeat_file_and_record_during_a_real_fit(moto_storage, tmp_path: Path) -> None:
    ledger = TrainingLedger(moto_storage, "20261130-070100-cafe", host="gpu-a")
    beat_file = tmp_path / "hb" / "heartbeat.json"
    callback = Heartbeat(every=0.05, record_every=0.05, path=str(beat_file), ledger=ledger)
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=2, accelerator="cpu", logger=True,
                      enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                      enable_checkpointing=False, callbacks=[callback])
    trainer.fit(DemoModel(), datamodule=DemoData(batch_size=64, samples=512))
    beat = json.loads(beat_file.read_text())
    assert beat["step"] == trainer.global_step and beat["epoch"] >= 1 and beat["max_epochs"] == 2
    assert "train_loss" in beat["metrics"] or "val_loss" in beat["metrics"]
    run = read_run(moto_storage, ledger.run_id)
    assert run is not None and run.heartbeats[-1].step == trainer.global_step
    notes = [e for e in run.events if e.kind == "note"]
    assert notes and notes[0].data["log_version"] == "version_0"


def test_a_failing_bucket_never_stops_training(tmp_path: Path, capsys) -> None:
    class Broken:
        def event(self, *a, **k):
            raise OSError("bucket on fire")

        heartbeat = event

    callback = Heartbeat(every=0.05, record_every=0.05, path=str(tmp_path / "hb.json"), ledger=Broken())  # type: ignore[arg-type]
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=1, accelerator="cpu", logger=True,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      callbacks=[callback])
    trainer.fit(DemoModel(), datamodule=DemoData(batch_size=64, samples=256))
    assert json.loads((tmp_path / "hb.json").read_text())["step"] == trainer.global_step
    assert "heartbeat not written (bucket on fire)" in capsys.readouterr().out
