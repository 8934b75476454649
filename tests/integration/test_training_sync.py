"""The S3 callbacks on real Lightning training (CPU, in this process) against the real S3 server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")

from lightning.pytorch import Trainer  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.plugins.io import AsyncCheckpointIO  # noqa: E402

from deploy.settings import load_settings  # noqa: E402
from deploy.storage import Storage  # noqa: E402
from deploy.training.callbacks import S3CheckpointSync, S3LogSync  # noqa: E402
from deploy.training.demo import DemoData, DemoModel  # noqa: E402

pytestmark = pytest.mark.slow


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bucket_files(storage: Storage, folder: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Every object under ``folder``: relative name -> (bytes, metadata), read back from the server."""
    found = {}
    for obj in storage.list(storage.key(folder) + "/", with_metadata=True):
        body = storage.client.get_object(Bucket=storage.bucket, Key=obj.key)["Body"].read()
        found[obj.key[len(storage.key(folder)) + 1:]] = (body, dict(obj.metadata))
    return found


def fit(tmp_path: Path, *callbacks, plugins=None, epochs: int = 2, **checkpoint) -> Trainer:
    options = {"every_n_train_steps": 3, "save_top_k": -1, "save_last": True, "monitor": None, **checkpoint}
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=epochs, accelerator="cpu", logger=True,
                      enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                      callbacks=[ModelCheckpoint(**options), *callbacks], plugins=plugins)
    trainer.fit(DemoModel(), datamodule=DemoData(batch_size=64, samples=512))
    return trainer


@pytest.mark.parametrize("plugins", [None, [AsyncCheckpointIO()]], ids=["torch-io", "async-io"])
def test_every_checkpoint_file_is_in_s3_with_matching_sha256(s3_env, tmp_path: Path, plugins) -> None:
    sync = S3CheckpointSync(enabled=True)
    trainer = fit(tmp_path, sync, plugins=plugins)

    local = {p.name: p.read_bytes() for p in Path(trainer.checkpoint_callback.dirpath).glob("*.ckpt")}
    assert len(local) >= 4 and "last.ckpt" in local
    stored = bucket_files(Storage.from_settings(load_settings()), "checkpoints")
    assert set(stored) == set(local)
    for name, data in local.items():
        body, meta = stored[name]
        # The bytes in the bucket are the final file's bytes, not a partial or an earlier write.
        assert sha256(body) == sha256(data) == meta["sha256"], name
        assert int(meta["size"]) == len(data)
        state = torch.load(Path(trainer.checkpoint_callback.dirpath) / name, weights_only=False)
        assert (int(meta["step"]), int(meta["epoch"])) == (state["global_step"], state["epoch"]), name
    assert sync.last_flush is not None and sync.last_flush.ok
    assert not any(Path(trainer.checkpoint_callback.dirpath).glob(".s3-sync/*"))  # snapshots cleaned up


def test_deleted_top_k_files_stay_in_s3_unless_mirroring_is_asked_for(s3_env, tmp_path: Path) -> None:
    storage = Storage.from_settings(load_settings())
    keep = S3CheckpointSync(enabled=True, folder="kept")
    trainer = fit(tmp_path / "a", keep, save_top_k=1, monitor="train_loss", save_last=False)
    local = {p.name for p in Path(trainer.checkpoint_callback.dirpath).glob("*.ckpt")}
    assert len(local) == 1
    assert set(bucket_files(storage, "kept")) == {Path(p).name for p in keep.submitted} > local

    mirror = S3CheckpointSync(enabled=True, folder="mirrored", mirror_deletions=True)
    trainer = fit(tmp_path / "b", mirror, save_top_k=1, monitor="train_loss", save_last=False)
    local = {p.name for p in Path(trainer.checkpoint_callback.dirpath).glob("*.ckpt")}
    assert set(bucket_files(storage, "mirrored")) == local


def test_log_sync_sends_the_version_folder_and_only_what_changed(s3_env, tmp_path: Path) -> None:
    logs = S3LogSync(enabled=True)
    trainer = fit(tmp_path, logs)
    log_dir = Path(trainer.logger.log_dir)
    stored = bucket_files(Storage.from_settings(load_settings()), "logs")
    local = {f"{log_dir.name}/{p.relative_to(log_dir)}": p.read_bytes()
             for p in log_dir.rglob("*") if p.is_file() and p.suffix != ".ckpt"}
    assert any("events.out.tfevents" in name for name in local) and f"{log_dir.name}/hparams.yaml" in local
    assert set(stored) == set(local)
    for name, data in local.items():
        assert sha256(stored[name][0]) == sha256(data), name
    assert logs.changed_files(str(log_dir)) == []  # nothing changed since the last sync


def test_sync_is_off_without_enable_s3_sync(s3_env, tmp_path: Path) -> None:
    sync = S3CheckpointSync()  # ENABLE_S3_SYNC is unset: no uploads, no credentials needed
    fit(tmp_path, sync, epochs=1)
    assert sync.submitted == [] and not sync.active
    assert bucket_files(Storage.from_settings(load_settings()), "checkpoints") == {}


def test_callbacks_attach_to_a_lightning_cli_by_class_path_alone(s3_env, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse[signatures]")
    from deploy.training.demo import lightning_cli

    monkeypatch.setenv("ENABLE_S3_SYNC", "1")  # the init arguments come from the environment
    lightning_cli(["fit", "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path}",
                   "--trainer.enable_progress_bar=false",
                   "--trainer.callbacks+=deploy.training.callbacks.S3CheckpointSync",
                   "--trainer.callbacks+=deploy.training.callbacks.S3LogSync"])
    storage = Storage.from_settings(load_settings())
    local = {p.name: p.read_bytes() for p in tmp_path.rglob("*.ckpt")}
    stored = bucket_files(storage, "checkpoints")
    assert local and set(stored) == set(local)
    assert all(sha256(stored[name][0]) == sha256(data) for name, data in local.items())
    assert any(name.endswith("hparams.yaml") for name in bucket_files(storage, "logs"))


def test_upload_helper_process_survives_ctrl_c_and_is_restarted_when_killed(s3_env, tmp_path: Path) -> None:
    import signal

    from deploy.training.transfer import ProcessTransfer
    from deploy.training.uploader import UploadJob

    path = tmp_path / "a.ckpt"
    path.write_bytes(b"checkpoint bytes")
    storage = Storage.from_settings(load_settings())
    transfer = ProcessTransfer()
    try:
        job = UploadJob(key=storage.key("checkpoints", "a.ckpt"), path=str(path), metadata={"step": "3"})
        assert transfer(job)["sha256"] == sha256(path.read_bytes())
        first = transfer._proc
        first.send_signal(signal.SIGINT)  # Ctrl+C reaches the whole process group: the helper stays
        assert transfer(job)["ok"] and transfer._proc is first
        first.kill()
        first.wait()
        assert transfer(job)["ok"] and transfer._proc is not first
    finally:
        transfer.close()
    assert storage.head(job.key).metadata["step"] == "3"


def test_upload_helper_aborts_the_multipart_upload_a_failed_try_left_open(s3_env, tmp_path: Path) -> None:
    from deploy.errors import StorageError
    from deploy.training.transfer import ProcessTransfer
    from deploy.training.uploader import UploadJob

    storage = Storage.from_settings(load_settings())
    key = storage.key("checkpoints", "epoch=0-step=5.ckpt")
    other = storage.key("checkpoints", "epoch=0-step=5.ckpt.other")
    for name in (key, other):  # an upload of this key cut short, and one of another key
        storage.client.create_multipart_upload(Bucket=storage.bucket, Key=name)
    transfer = ProcessTransfer()
    try:
        with pytest.raises(StorageError):
            transfer(UploadJob(key=key, path=str(tmp_path / "gone.ckpt")))  # this try fails
    finally:
        transfer.close()
    assert [u["key"] for u in storage.multipart_uploads(storage.key("checkpoints") + "/")] == [other]
