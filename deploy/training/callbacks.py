"""Lightning callbacks that copy checkpoints and TensorBoard logs to the bucket while training runs.

:class:`S3CheckpointSync` uploads every checkpoint file Lightning writes (``last.ckpt``, top-k,
every-n-steps) once the file is complete. ``Callback.on_save_checkpoint`` is called *before* the
file exists, so the callback instead wraps the strategy's checkpoint IO: the wrapper's
``save_checkpoint`` returns only after the real writer has written the file (below any
``AsyncCheckpointIO``, whose own ``save_checkpoint`` returns early). The finished file is
hard-linked into a staging folder (no copy, and a later overwrite of ``last.ckpt`` cannot change
the bytes being sent) and handed to a :class:`~deploy.training.uploader.BackgroundUploader`, whose
hashing and HTTP work runs in a helper process (:mod:`deploy.training.transfer`) so it never holds
the training process's GIL.

:class:`S3LogSync` sends the current logger version's event files and ``hparams.yaml`` to
``logs/version_N/`` every ``every_n_epochs`` epochs and at the end, only what changed.

Both run on global rank zero only, never wait on the network in the training loop, and flush
what is pending at the end of ``fit``, on an exception, and on SIGTERM (Lightning turns SIGTERM
into an exception at the next batch), each time for at most ``flush_timeout`` seconds.

Attach them to any LightningCLI with no code change (settings come from the environment and
``.env``; with ``ENABLE_S3_SYNC`` unset or 0 they do nothing)::

    python -m piper.train fit --trainer.callbacks+=deploy.training.callbacks.S3CheckpointSync \\
                              --trainer.callbacks+=deploy.training.callbacks.S3LogSync ...
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from deploy.storage.checkpoints import checkpoint_metadata
from deploy.errors import DeployError, TrainingError
from deploy.settings import Settings, load_settings
from deploy.storage import CHECKPOINTS, LOGS, Storage
from deploy.training.transfer import ProcessTransfer
from deploy.training.uploader import Backoff, BackgroundUploader, FlushResult, UploadJob

log = logging.getLogger(__name__)

DEFAULT_FLUSH_TIMEOUT = 60.0
"""Seconds a flush may take; the compose files give the container longer than this to stop."""

STAGING_DIR = ".s3-sync"
"""Folder beside the checkpoints where finished files are hard-linked while they wait to upload."""


def _settings() -> Settings:
    return load_settings()


def storage_transfer(storage: Storage) -> Callable[[UploadJob], Any]:
    """The uploader's network step for ``storage``: upload with metadata, or delete."""

    def transfer(job: UploadJob) -> Any:
        if job.delete:
            return storage.delete(job.key)
        return storage.upload_file(job.path, job.key, metadata=job.metadata)

    return transfer


class SyncCheckpointIO(CheckpointIO):
    """A checkpoint IO that delegates to ``inner`` and reports each file once it is written.

    ``on_saved(path, checkpoint)`` runs after ``inner.save_checkpoint`` returned, i.e. after the
    file is complete on disk; ``on_removed(path)`` after ``inner.remove_checkpoint``.
    """

    def __init__(self, inner: CheckpointIO, on_saved: Callable[[str, dict[str, Any]], None],
                 on_removed: Callable[[str], None]) -> None:
        super().__init__()
        self.inner = inner
        self._on_saved = on_saved
        self._on_removed = on_removed

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)
        self._on_saved(str(path), checkpoint)

    def load_checkpoint(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.inner.load_checkpoint(*args, **kwargs)

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)
        self._on_removed(str(path))

    def teardown(self) -> None:
        self.inner.teardown()

    def __getattr__(self, name: str) -> Any:  # anything a specific IO adds (only called when missing here)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def install_checkpoint_io(trainer: Trainer, make: Callable[[CheckpointIO], SyncCheckpointIO]) -> Callable[[], None]:
    """Put ``make(writer)`` in place of the strategy's innermost checkpoint writer; return an undo.

    Wrapping IOs (``AsyncCheckpointIO``) return before the file exists, so the hook goes below them,
    around the IO that really writes.
    """
    strategy = trainer.strategy
    top = strategy.checkpoint_io  # the property fills in the default TorchCheckpointIO
    parent: _WrappingCheckpointIO | None = None
    node: CheckpointIO = top
    while isinstance(node, _WrappingCheckpointIO) and node.checkpoint_io is not None:
        parent, node = node, node.checkpoint_io
    if isinstance(node, SyncCheckpointIO):
        raise TrainingError("S3CheckpointSync is attached twice; attach it once.")
    wrapper = make(node)
    if parent is None:
        strategy.checkpoint_io = wrapper
    else:
        parent._checkpoint_io = wrapper  # the public setter refuses to replace a configured IO

    def undo() -> None:
        if parent is None:
            if strategy._checkpoint_io is wrapper:
                strategy.checkpoint_io = node
        elif parent._checkpoint_io is wrapper:
            parent._checkpoint_io = node

    return undo


def snapshot(path: str) -> tuple[str, bool]:
    """A private name for ``path``'s current bytes: a hard link (instant), else a copy.

    Lightning replaces checkpoint files by rename, so the link keeps the finished bytes even when
    ``last.ckpt`` is written again or a top-k file is deleted before its upload starts.
    Returns (path to upload, whether the uploader owns and removes it).
    """
    staging = os.path.join(os.path.dirname(path) or ".", STAGING_DIR)
    os.makedirs(staging, exist_ok=True)
    target = os.path.join(staging, f"{uuid.uuid4().hex[:12]}-{os.path.basename(path)}")
    try:
        os.link(path, target)
    except OSError:
        shutil.copyfile(path, target)  # no hard links on this file system: pay for one copy
    return target, True


def _clear_staging(folder: str) -> None:
    """Remove snapshots a killed process left behind (they are re-sent from the files themselves)."""
    staging = os.path.join(folder, STAGING_DIR)
    if os.path.isdir(staging):
        shutil.rmtree(staging, ignore_errors=True)


class _SyncCallback(Callback):
    """What both callbacks share: enable from settings, rank zero only, an uploader, flushes."""

    def __init__(self, enabled: bool | None = None, flush_timeout: float | None = None,
                 max_pending: int = 16, max_retry_delay: float = 30.0, storage: Any = None) -> None:
        self.backoff = Backoff(base=min(1.0, max_retry_delay), cap=max_retry_delay)  # validates it
        if flush_timeout is not None and flush_timeout < 0:
            raise ValueError(f"flush_timeout must be >= 0 seconds, got {flush_timeout}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self.enabled = enabled
        self.flush_timeout = flush_timeout
        self.max_pending = max_pending
        self.storage: Storage | None = storage
        self._storage_given = storage is not None
        self.uploader: BackgroundUploader | None = None
        self.last_flush: FlushResult | None = None
        self._transfer: Callable[[UploadJob], Any] | None = None

    @property
    def active(self) -> bool:
        return self.uploader is not None

    def _start(self, trainer: Trainer) -> bool:
        """Decide on every rank, act on rank zero: True when this process should upload."""
        if self.uploader is not None:
            return True
        settings: Settings | None = None
        if self.enabled is None or not self._storage_given or self.flush_timeout is None:
            settings = _settings()
        if self.enabled is None:
            assert settings is not None
            self.enabled = settings.enable_s3_sync
        if not self.enabled:
            rank_zero_info(f"{type(self).__name__}: ENABLE_S3_SYNC is off; nothing is uploaded.")
            return False
        if self.flush_timeout is None:
            assert settings is not None
            self.flush_timeout = float(settings.s3_sync_flush_timeout)
        if not trainer.is_global_zero:
            return False
        if self._storage_given:
            assert self.storage is not None
            self._transfer = storage_transfer(self.storage)
        else:
            try:
                self.storage = Storage.from_settings(settings or _settings())
            except DeployError as exc:
                raise TrainingError(f"ENABLE_S3_SYNC=1 but S3 is not configured: {exc}") from exc
            # Storage built from the settings can be built again in a helper process, which then
            # does the network work; this process only names the keys.
            self._transfer = ProcessTransfer()
        self.uploader = BackgroundUploader(self._transfer, max_pending=self.max_pending,
                                           backoff=self.backoff, name=f"{type(self).__name__}-uploader")
        return True

    def flush(self, reason: str) -> FlushResult | None:
        if self.uploader is None:
            return None
        timeout = self.flush_timeout if self.flush_timeout is not None else DEFAULT_FLUSH_TIMEOUT
        waiting = self.uploader.pending
        if waiting:
            rank_zero_info(f"{type(self).__name__}: {reason}: flushing {waiting} upload(s) (at most {timeout:.0f} s)")
        result = self.uploader.flush(timeout)
        self.last_flush = result
        if not result.ok:
            rank_zero_warn(f"{type(self).__name__}: {result.pending} upload(s) still pending and "
                           f"{len(result.failed)} failed after {result.seconds:.1f} s: {', '.join(result.failed)}")
        return result

    def _stop(self, reason: str) -> FlushResult | None:
        result = self.flush(reason)
        if self.uploader is not None:
            self.uploader.close()
            self.uploader = None
        close = getattr(self._transfer, "close", None)
        if callable(close):
            close()
        self._transfer = None
        return result

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._stop(f"{type(exception).__name__}")


class S3CheckpointSync(_SyncCallback):
    """Upload every checkpoint file to ``checkpoints/`` in the bucket, with epoch and step metadata.

    Args:
        enabled: upload or not; default ``ENABLE_S3_SYNC`` from the settings.
        folder: bucket folder under ``S3_PREFIX`` (default ``checkpoints``, where the S3 tasks look).
        mirror_deletions: also delete an object when Lightning deletes its file (top-k rotation).
            Off by default: the bucket keeps every checkpoint, including earlier runs'.
        flush_timeout: seconds a flush may take; default ``S3_SYNC_FLUSH_TIMEOUT``.
        max_pending: uploads that may wait at once before the oldest is set aside for the flush.
        max_retry_delay: longest wait in seconds between two tries of a failed upload.
        storage: a :class:`~deploy.storage.Storage` (tests); default built from the settings.
    """

    def __init__(self, enabled: bool | None = None, folder: str = CHECKPOINTS, mirror_deletions: bool = False,
                 flush_timeout: float | None = None, max_pending: int = 16, max_retry_delay: float = 30.0,
                 storage: Any = None) -> None:
        super().__init__(enabled=enabled, flush_timeout=flush_timeout, max_pending=max_pending,
                         max_retry_delay=max_retry_delay, storage=storage)
        self.folder = folder
        self.mirror_deletions = mirror_deletions
        self.submitted: list[str] = []
        self._undo: Callable[[], None] | None = None
        self._staged_dirs: set[str] = set()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or not self._start(trainer):
            return
        self._undo = install_checkpoint_io(trainer, lambda inner: SyncCheckpointIO(inner, self._saved, self._removed))
        rank_zero_info(f"S3CheckpointSync: uploading checkpoints to {self.storage.url(self._key(''))}/")

    def _key(self, name: str) -> str:
        assert self.storage is not None
        return self.storage.key(self.folder, name)

    def _saved(self, path: str, checkpoint: dict[str, Any]) -> None:
        if self.uploader is None or not os.path.isfile(path):
            return  # a directory (sharded strategies) or a remote URL: not ours to send
        folder = os.path.dirname(path) or "."
        if folder not in self._staged_dirs:
            _clear_staging(folder)
            self._staged_dirs.add(folder)
        staged, owned = snapshot(path)
        meta = checkpoint_metadata(int(checkpoint.get("epoch", 0)), int(checkpoint.get("global_step", 0)))
        self.uploader.submit(UploadJob(key=self._key(os.path.basename(path)), path=staged, metadata=meta,
                                       owned=owned, source=path))
        self.submitted.append(path)

    def _removed(self, path: str) -> None:
        if self.uploader is None or not self.mirror_deletions:
            return
        self.uploader.submit(UploadJob(key=self._key(os.path.basename(path)), delete=True, source=path))

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._stop("end of training")
        self._unhook()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        self._unhook()

    def _unhook(self) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None
        for folder in self._staged_dirs:
            staging = Path(folder, STAGING_DIR)
            if staging.is_dir() and not any(staging.iterdir()):
                staging.rmdir()
        self._staged_dirs.clear()


class S3LogSync(_SyncCallback):
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
        if self.uploader is None or self.storage is None:
            return 0
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
