"""``S3LogSync``: the logger's current version folder (TensorBoard event files, ``hparams.yaml``) to the bucket.

Attach it by its documented class path, ``deploy.training.callbacks.S3LogSync``.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch import LightningModule, Trainer

from deploy.storage import LOGS
from deploy.training.journal import STAGING_DIR
from deploy.training.stop import STOP
from deploy.training.syncbase import SyncCallback
from deploy.training.uploader import UploadJob


class S3LogSync(SyncCallback):
    """Upload the logger's current version folder (event files, ``hparams.yaml``) to ``logs/version_N/``.

    Sends only files whose size or modification time changed since the last sync; checkpoint files
    inside the version folder are left to :class:`S3CheckpointSync`.

    Args:
        every_n_epochs: sync after every this many training epochs (and always at the end).
        folder: bucket folder under ``S3_PREFIX`` (default ``logs``).
        enabled, flush_timeout, max_pending, max_retry_delay, storage: as for :class:`S3CheckpointSync`.
    """

    def __init__(self, every_n_epochs: int = 1, folder: str = LOGS, enabled: bool | None = None,
                 flush_timeout: float | None = None, max_pending: int = 64, max_retry_delay: float = 30.0,
                 storage: Any = None) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be at least 1, got {every_n_epochs}")
        super().__init__(enabled=enabled, flush_timeout=flush_timeout, max_pending=max_pending,
                         max_retry_delay=max_retry_delay, storage=storage)
        self.every_n_epochs = every_n_epochs
        self.folder = folder
        self._sent: dict[str, tuple[int, int]] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._start(trainer)

    @staticmethod
    def log_dir(trainer: Trainer) -> str | None:
        logger = trainer.logger
        if logger is None:
            return None
        folder = getattr(logger, "log_dir", None)
        return str(folder) if folder else None

    def changed_files(self, log_dir: str) -> list[tuple[str, str, tuple[int, int]]]:
        """(path, relative name, stamp) for each log file that is new or changed since the last sync."""
        found = []
        for root, dirs, files in os.walk(log_dir):
            dirs[:] = [d for d in dirs if d not in ("checkpoints", STAGING_DIR)]
            for name in files:
                if name.endswith(".ckpt") or name.startswith(".s3-sync-"):
                    continue
                path = os.path.join(root, name)
                try:
                    stat = os.stat(path)
                except FileNotFoundError:
                    continue
                stamp = (stat.st_size, stat.st_mtime_ns)
                rel = os.path.relpath(path, log_dir).replace(os.sep, "/")
                if self._sent.get(rel) != stamp:
                    found.append((path, rel, stamp))
        return found

    def sync(self, trainer: Trainer) -> int:
        """Queue every changed log file; returns how many were queued. Never waits on the network."""
        if self.uploader is None or self.storage is None or STOP.superseded:
            return 0  # superseded: a newer attempt of the run writes the logs now
        log_dir = self.log_dir(trainer)
        if not log_dir or not os.path.isdir(log_dir):
            return 0
        for experiment in (getattr(lg, "experiment", None) for lg in trainer.loggers):
            flush = getattr(experiment, "flush", None)
            if callable(flush):
                flush()  # TensorBoard buffers events; write them so the copy is current
        version = os.path.basename(os.path.normpath(log_dir))
        queued = 0
        for path, rel, stamp in self.changed_files(log_dir):
            self.uploader.submit(UploadJob(key=self.storage.key(self.folder, version, rel), path=path,
                                           copy_first=True, source=path))
            self._sent[rel] = stamp
            queued += 1
        return queued

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.sync(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.sync(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.sync(trainer)
        super().on_exception(trainer, pl_module, exception)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self.sync(trainer)
            self._stop("end of training")
        super().teardown(trainer, pl_module, stage)
