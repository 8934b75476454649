"""A checkpoint whose metric is never logged saves nothing, instead of ending the training.

Lightning's ``ModelCheckpoint(monitor="m")`` raises ``MisconfigurationException`` ("could not find
the monitored key in the returned metrics") at every save once validation has run and ``m`` is not
among the logged metrics. Piper's trainer builds one such checkpoint into its command line
(``ModelCheckpoint(monitor="val_mos")`` in ``piper.train.__main__``, passed as LightningCLI
``trainer_defaults``, which no ``--trainer.callbacks`` flag or config file can remove), and logs
``val_mos`` only when its MOS predictor (UTMOS, fetched through ``torch.hub``) loaded: on a host that
cannot download it, every epoch end fails.

:class:`SkipMissingMonitors` runs before the checkpoints (Lightning calls checkpoint callbacks last)
and, at each point a checkpoint would save, turns off (``save_top_k = 0``) every checkpoint whose
monitored metric is missing, and turns it back on once the metric is logged. The other checkpoints
(Piper's best-by-``val_mel`` and ``last.ckpt``) save as before. It decides on every rank (the logged
metrics are the same on each) and says so once, on rank zero.

Attach it to a LightningCLI with no code change::

    python -m piper.train fit --trainer.callbacks+=deploy.training.monitors.SkipMissingMonitors ...
"""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn


class SkipMissingMonitors(Callback):
    """Checkpoints monitoring a metric that is not logged save nothing until it is (see the module docstring)."""

    def __init__(self) -> None:
        self._paused: dict[int, int] = {}  # id(checkpoint) -> its save_top_k while it is off
        self._said: set[str] = set()

    def _check(self, trainer: Trainer) -> None:
        logged = trainer.callback_metrics
        for checkpoint in trainer.checkpoint_callbacks:
            if not isinstance(checkpoint, ModelCheckpoint) or checkpoint.monitor is None:
                continue
            key = id(checkpoint)
            if checkpoint.monitor in logged:
                if key in self._paused:
                    checkpoint.save_top_k = self._paused.pop(key)
                continue
            if key not in self._paused and checkpoint.save_top_k != 0:
                self._paused[key] = checkpoint.save_top_k
                checkpoint.save_top_k = 0
                if checkpoint.monitor not in self._said:
                    self._said.add(checkpoint.monitor)
                    rank_zero_warn(f"gpu-deploy: nothing logs {checkpoint.monitor!r}, so ModelCheckpoint(monitor="
                                   f"{checkpoint.monitor!r}) saves nothing until something does; the other "
                                   "checkpoints save as before (SkipMissingMonitors)")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check(trainer)
