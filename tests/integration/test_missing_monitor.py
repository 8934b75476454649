"""A checkpoint monitoring a metric nothing logs, as Piper's trainer has one (``val_mos``), on the real Lightning.

Without :class:`deploy.training.monitors.SkipMissingMonitors` the first epoch end with validation raises;
with it (attached the way docs/training-project.md tells Piper users, ``--trainer.callbacks+=``) the run
trains, the other checkpoints save as before, and the paused one saves again once its metric is logged.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

GUARD = "--trainer.callbacks+=deploy.training.monitors.SkipMissingMonitors"


class Voice(LightningModule):
    """Logs ``val_mel`` every validation, and ``val_mos`` only from epoch ``mos_from`` on (-1: never)."""

    def __init__(self, mos_from: int = -1) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)
        self.mos_from = mos_from

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_mel", nn.functional.l1_loss(self.net(x), y))

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking and 0 <= self.mos_from <= self.current_epoch:
            self.log("val_mos", 3.0 + self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Data(LightningDataModule):
    def _loader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(16, 4, generator=generator), torch.randn(16, 1, generator=generator)),
                          batch_size=8)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()


def piper_like_cli(folder: Path, *args: str) -> None:
    """A LightningCLI whose checkpoints are ``trainer_defaults``, as ``piper.train.__main__`` makes them."""
    callbacks = [
        ModelCheckpoint(dirpath=folder, monitor="val_mel", mode="min", save_top_k=5, save_last=True,
                        filename="epoch={epoch}-val_mel={val_mel:.4f}", auto_insert_metric_name=False),
        ModelCheckpoint(dirpath=folder, monitor="val_mos", mode="max", save_top_k=5, save_last=False,
                        filename="epoch={epoch}-val_mos={val_mos:.4f}", auto_insert_metric_name=False),
    ]
    LightningCLI(Voice, Data, trainer_defaults={"max_epochs": 3, "callbacks": callbacks}, save_config_callback=None,
                 args=["fit", "--trainer.accelerator=cpu", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
                       "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={folder}", *args])


def test_a_monitored_metric_nothing_logs_ends_the_training_at_the_first_validation(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match="could not find the monitored key"):
        piper_like_cli(tmp_path)


def test_the_guard_lets_it_train_and_the_other_checkpoints_save(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"nothing logs 'val_mos', so ModelCheckpoint\(monitor='val_mos'\) saves "
                                         "nothing until something does"):
        piper_like_cli(tmp_path, GUARD)
    names = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert "last.ckpt" in names and sum("val_mel=" in n for n in names) == 3, names
    assert not [n for n in names if "val_mos" in n], names


def test_the_paused_checkpoint_saves_again_once_its_metric_is_logged(tmp_path: Path) -> None:
    piper_like_cli(tmp_path, GUARD, "--model.mos_from=1")
    names = sorted(p.name for p in tmp_path.glob("*val_mos=*.ckpt"))
    assert names == ["epoch=1-val_mos=4.0000.ckpt", "epoch=2-val_mos=5.0000.ckpt"], names
