"""The demo training job: a tiny regression model on synthetic data that trains on a CPU in seconds.

It is the image's default training command and what the tests and the benchmark train. It is a
LightningCLI like the trainers users bring (``python -m piper.train fit ...``), so it proves that
the S3 callbacks attach to such a CLI without code changes::

    python -m deploy.training.demo fit --trainer.max_epochs=3 \\
        --trainer.callbacks+=deploy.training.callbacks.S3CheckpointSync

Defaults come from the settings: ``BATCH_SIZE`` (data.batch_size, else 32), ``PRECISION``
(trainer.precision, else 32-true), ``MAX_EPOCHS`` (trainer.max_epochs, else 2). Checkpointing is the
``--checkpoint.*`` group (a ModelCheckpoint: every epoch, best 2 by val_loss and ``last.ckpt``;
``--checkpoint.every_n_train_steps=5 --checkpoint.save_top_k=-1`` keeps one every 5 steps).

The command line is LightningCLI's own (jsonargparse, part of the ``train`` extra): ``--config``,
``--print_config``, ``--ckpt_path`` and the ``fit``/``validate``/``test`` subcommands all work.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deploy.settings import Settings, load_settings

DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_EPOCHS = 2
DEFAULT_PRECISION = "32-true"
CHECKPOINT_FILENAME = "epoch={epoch}-step={step}-val_loss={val_loss:.4f}"
CHECKPOINT_DEFAULTS: dict[str, Any] = {
    "filename": CHECKPOINT_FILENAME,
    "auto_insert_metric_name": False,
    "monitor": "val_loss",
    "save_top_k": 2,
    "save_last": True,
}


class DemoModel(LightningModule):
    """A two-layer MLP that learns a fixed linear map; the loss falls quickly, so progress is visible."""

    def __init__(self, features: int = 16, hidden: int = 32, lr: float = 0.05, step_delay: float = 0.0) -> None:
        super().__init__()
        if step_delay < 0:
            raise ValueError(f"step_delay must be >= 0 seconds, got {step_delay}")
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.lr = lr
        self.step_delay = step_delay  # seconds of pretend work per step, so a test can stop a run midway

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.step_delay:
            time.sleep(self.step_delay)
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class DemoData(LightningDataModule):
    """Synthetic ``y = x @ w + noise``, the same every run (seeded). ``batch_size`` None: ``BATCH_SIZE``."""

    def __init__(self, batch_size: int | None = None, samples: int = 512, features: int = 16,
                 seed: int = 0) -> None:
        super().__init__()
        if batch_size is None:
            batch_size = load_settings().batch_size or DEFAULT_BATCH_SIZE
        if batch_size < 1 or samples < 2:
            raise ValueError(f"batch_size must be >= 1 and samples >= 2; got {batch_size} and {samples}")
        self.batch_size = batch_size
        self.samples = samples
        self.features = features
        self.seed = seed

    def setup(self, stage: str | None = None) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        x = torch.randn(self.samples, self.features, generator=generator)
        w = torch.randn(self.features, 1, generator=generator)
        y = x @ w + 0.1 * torch.randn(self.samples, 1, generator=generator)
        split = max(1, self.samples // 8)
        self.train_set = TensorDataset(x[split:], y[split:])
        self.val_set = TensorDataset(x[:split], y[:split])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


def trainer_defaults(settings: Settings) -> dict[str, Any]:
    """Trainer arguments taken from the settings (flags on the command line still win)."""
    return {
        "max_epochs": settings.max_epochs or DEFAULT_MAX_EPOCHS,
        "precision": settings.precision or DEFAULT_PRECISION,
        "log_every_n_steps": 5,
    }


def lightning_cli(args: Sequence[str] | None = None) -> None:
    """The LightningCLI; ``args`` None reads ``sys.argv``."""
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    class DemoCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.set_defaults({f"checkpoint.{k}": v for k, v in CHECKPOINT_DEFAULTS.items()})

    DemoCLI(DemoModel, DemoData, args=None if args is None else list(args),
            trainer_defaults=trainer_defaults(load_settings()), save_config_kwargs={"overwrite": True})


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m deploy.training.demo fit ...``; ``argv`` None reads ``sys.argv``."""
    lightning_cli(argv)


if __name__ == "__main__":
    main()
