"""Lightning callbacks that copy checkpoints and TensorBoard logs to the bucket while training runs.

:class:`S3CheckpointSync` uploads every checkpoint file Lightning writes (``last.ckpt``, top-k,
every-n-steps) once the file is complete: it wraps the strategy's checkpoint IO
(:mod:`deploy.training.checkpoint_io`), because ``Callback.on_save_checkpoint`` is called before the
file exists. The finished file is hard-linked into the staging folder ``.s3-sync/`` beside it and
journaled (:mod:`deploy.training.journal`: no copy, a later overwrite of ``last.ckpt`` cannot
change the bytes being sent, and a kill before the upload leaves the entry for the next start to
send), then handed to a :class:`~deploy.training.uploader.BackgroundUploader`, whose hashing and
HTTP work runs in a helper process (:mod:`deploy.training.transfer`) so it never holds the training
process's GIL.

On SIGTERM (``fab stop``, compose, the platform) it saves the current step through
``trainer.save_checkpoint`` at the next batch boundary, decided on every rank together, uploads it
with what is pending within the stop deadline (:mod:`deploy.training.stop`), and prints one line:
``gpu-deploy: saved step N on stop, uploaded to s3://...``. The next start resumes at exactly N.

When the entrypoint claimed the run's lease (``RUN_ID`` and ``RUN_ATTEMPT``), each upload carries the
attempt in its metadata beside ``run``, and the upload helper refuses every write once a newer attempt
claimed the run (:mod:`deploy.training.lease`). The training then stops at the next batch boundary,
on every rank, without a stop checkpoint and without another write, and prints one line:
``gpu-deploy: superseded by attempt N on HOST; this training stops without writing to S3``.

:class:`S3LogSync` (:mod:`deploy.training.logsync`) sends the current logger version's event files
and ``hparams.yaml`` to ``logs/version_N/`` every ``every_n_epochs`` epochs and at the end.

Both upload on global rank zero only, never wait on the network in the training loop, and flush
what is pending at the end of ``fit``, on an exception, and on SIGTERM.

Attach them to any LightningCLI with no code change (settings come from the environment and
``.env``; with ``ENABLE_S3_SYNC`` unset or 0 they do nothing)::

    python -m piper.train fit --trainer.callbacks+=deploy.training.callbacks.S3CheckpointSync \\
                              --trainer.callbacks+=deploy.training.callbacks.S3LogSync ...
"""

from __future__ import annotations

import atexit
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from deploy.storage import CHECKPOINTS
from deploy.storage.checkpoints import ATTEMPT_METADATA, RUN_METADATA, checkpoint_metadata
from deploy.training import journal
from deploy.training.checkpoint_io import SyncCheckpointIO, install_checkpoint_io
from deploy.training.journal import STAGING_DIR
from deploy.training.lease import ATTEMPT_ENV, RUN_ENV, SUPERSEDED, attempt_from_environment
from deploy.training.logsync import S3LogSync
from deploy.training.resume import STOP_RECORD_ENV, StopRecord
from deploy.training.stop import SAVED_ON_STOP, STOP, agree, end_run_after_this_batch
from deploy.training.syncbase import DEFAULT_FLUSH_TIMEOUT, SyncCallback, storage_transfer
from deploy.training.uploader import FlushResult, UploadJob

__all__ = ["DEFAULT_FLUSH_TIMEOUT", "STAGING_DIR", "S3CheckpointSync", "S3LogSync", "SyncCheckpointIO",
           "install_checkpoint_io", "storage_transfer"]

STOP_CHECKPOINT = "stop-epoch={epoch}-step={step}.ckpt"
"""The name of the checkpoint a graceful stop saves (``step=N`` in it, as in Lightning's names)."""


def _end_process_group_at_exit() -> None:
    """Destroy the process group while the interpreter is whole (Lightning does so only for NCCL).

    Without it a gloo rank that stopped early can abort at exit ("terminate called without an active
    exception", exit 134) when its worker threads outlive the interpreter's teardown.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        _register_group_end()


@functools.cache
def _register_group_end() -> None:
    """Once per process, however many trainers set up."""
    atexit.register(_destroy_group)


def _destroy_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


class S3CheckpointSync(SyncCallback):
    """Upload every checkpoint file to ``checkpoints/`` in the bucket, with epoch and step metadata.

    Args:
        enabled: upload or not; default ``ENABLE_S3_SYNC`` from the settings.
        folder: bucket folder under ``S3_PREFIX`` (default ``checkpoints``, where the S3 tasks look).
        mirror_deletions: also delete an object when Lightning deletes its file (top-k rotation).
            Off by default: the bucket keeps every checkpoint, including earlier runs'.
        save_on_stop: on SIGTERM, save and upload the current step before the run ends (default on).
        flush_timeout: seconds a flush may take; default ``S3_SYNC_FLUSH_TIMEOUT`` (after SIGTERM,
            counted from the signal and capped so the stop fits in the stop grace period).
        max_pending: uploads that may wait at once before the oldest is set aside for the flush.
        max_retry_delay: longest wait in seconds between two tries of a failed upload.
        storage: a :class:`~deploy.storage.Storage` (tests); default built from the settings.
    """

    def __init__(self, enabled: bool | None = None, folder: str = CHECKPOINTS, mirror_deletions: bool = False,
                 save_on_stop: bool = True, flush_timeout: float | None = None, max_pending: int = 16,
                 max_retry_delay: float = 30.0, storage: Any = None) -> None:
        super().__init__(enabled=enabled, flush_timeout=flush_timeout, max_pending=max_pending,
                         max_retry_delay=max_retry_delay, storage=storage)
        self.folder = folder
        self.mirror_deletions = mirror_deletions
        self.save_on_stop = save_on_stop
        self.submitted: list[str] = []
        self.saved_on_stop: tuple[int, str] | None = None
        """(step, file) of the checkpoint the last graceful stop saved."""
        self.superseded = False
        """A newer attempt of the run took it while this fit ran: it ended without saving or sending."""
        self._fenced = False
        self._undo: Callable[[], None] | None = None
        self._staged_dirs: set[str] = set()
        self._intents: dict[str, journal.StagedCheckpoint] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.saved_on_stop = None
        self.superseded = False
        self._fenced = attempt_from_environment() is not None  # the same on every rank
        _end_process_group_at_exit()
        if not self._start(trainer):
            return
        self._undo = install_checkpoint_io(
            trainer, lambda inner: SyncCheckpointIO(inner, self._saved, self._removed, on_saving=self._saving))
        assert self.storage is not None
        rank_zero_info(f"S3CheckpointSync: uploading checkpoints to {self.storage.url(self._key(''))}/")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.enabled:
            STOP.arm(trainer, coordinated=self.save_on_stop)  # every rank: the stop is decided together

    def _key(self, name: str) -> str:
        assert self.storage is not None
        return self.storage.key(self.folder, name)

    def _adopt_staging(self, folder: str) -> None:
        """Send what an earlier process staged in ``folder`` and never confirmed (it was killed)."""
        assert self.uploader is not None
        for staged in journal.sweep(os.path.join(folder, STAGING_DIR)):
            path = journal.usable_file(staged)
            if path is None:
                journal.discard(staged)
                continue
            rank_zero_info(f"S3CheckpointSync: sending {staged.name}, which an earlier run staged but never sent")
            snapshot = path == staged.snapshot
            self.uploader.submit(UploadJob(key=staged.key, path=path, metadata=staged.metadata, owned=snapshot,
                                           copy_first=not snapshot, source=staged.source, journal=staged.entry))

    @staticmethod
    def _metadata(checkpoint: dict[str, Any]) -> dict[str, str]:
        meta = checkpoint_metadata(int(checkpoint.get("epoch", 0)), int(checkpoint.get("global_step", 0)))
        run_id = os.environ.get(RUN_ENV, "")  # the run ledger's run (deploy sets it): `fab runs.show` finds it
        if run_id:
            meta[RUN_METADATA] = run_id
            attempt = os.environ.get(ATTEMPT_ENV, "")  # the lease's attempt the entrypoint claimed
            if attempt:
                meta[ATTEMPT_METADATA] = attempt
        return meta

    def _saving(self, path: str, checkpoint: dict[str, Any]) -> None:
        """Before Lightning writes ``path``: journal the intent, so a kill during the write is noticed."""
        if self.uploader is None or "://" in path:
            return
        folder = os.path.dirname(path) or "."
        if folder not in self._staged_dirs:
            self._staged_dirs.add(folder)
            self._adopt_staging(folder)
        self._intents[path] = journal.intend(path, self._key(os.path.basename(path)), self._metadata(checkpoint))

    def _saved(self, path: str, checkpoint: dict[str, Any]) -> None:
        intent = self._intents.pop(path, None)
        if self.uploader is None or not os.path.isfile(path):
            if intent is not None:
                journal.discard(intent)
            return  # a directory (sharded strategies) or a remote URL: not ours to send
        meta = self._metadata(checkpoint)
        staged = journal.stage(path, self._key(os.path.basename(path)), meta, intent=intent)
        self.uploader.submit(UploadJob(key=staged.key, path=staged.snapshot, metadata=meta, owned=True,
                                       source=path, journal=staged.entry))
        self.submitted.append(path)

    def _removed(self, path: str) -> None:
        if self.uploader is None or not self.mirror_deletions:
            return
        self.uploader.submit(UploadJob(key=self._key(os.path.basename(path)), delete=True, source=path))

    # ----------------------------------------------------------------- a graceful stop

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """At each batch boundary, on every rank: when any rank got SIGTERM, save this step and end the run;
        when a newer attempt took the run (the upload helper was refused), end it without saving."""
        if not self.enabled or self.saved_on_stop is not None or self.superseded:
            return
        watch_stop = self.save_on_stop and STOP.coordinated
        if not (watch_stop or self._fenced):
            return
        asked, superseded = agree(trainer, watch_stop and STOP.requested, self._fenced and STOP.superseded)
        if superseded:
            self._give_up(trainer)
            return
        if not asked:
            return
        step = trainer.global_step
        path = os.path.join(self._stop_dir(trainer),
                            STOP_CHECKPOINT.format(epoch=trainer.current_epoch, step=step))
        trainer.save_checkpoint(path)  # every rank (rank zero writes); the IO hook queues the upload
        self.saved_on_stop = (step, path)
        end_run_after_this_batch(trainer)

    def _give_up(self, trainer: Trainer) -> None:
        """A newer attempt holds the run: say so once, drop what is pending, end the run after this batch.

        No stop checkpoint is saved and nothing more is sent: the newer training resumed from the
        bucket as it was when it claimed the run, and this one's later steps are a branch nobody wants.
        """
        self.superseded = True
        if STOP.superseded_by is not None and self.uploader is not None:  # global rank zero: it was refused
            attempt, host = STOP.superseded_by
            print(SUPERSEDED.format(attempt=attempt, host=host or "an unnamed host"), flush=True)
        self._stop("superseded")
        end_run_after_this_batch(trainer)

    @staticmethod
    def _stop_dir(trainer: Trainer) -> str:
        dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
        return str(dirpath) if dirpath else os.path.join(trainer.default_root_dir, "checkpoints")

    def _report_stop(self, result: FlushResult | None) -> None:
        """The one line the operator's side looks for: which step a graceful stop saved, and where."""
        if self.saved_on_stop is None or result is None or self.storage is None:
            return  # not a stop, or not the rank (or the call) that uploaded
        step, path = self.saved_on_stop
        line = SAVED_ON_STOP.format(step=step)
        if result is not None and result.ok:
            line += f", uploaded to {self.storage.url(self._key(os.path.basename(path)))}"
            record = os.environ.get(STOP_RECORD_ENV)
            if record:  # the entrypoint's next start (a reload) resumes from exactly this one, without a listing
                StopRecord(step, self._key(os.path.basename(path)), os.path.abspath(path)).write(record)
        else:
            line += f", upload pending: {path} stays staged and is sent at the next start"
        print(line, flush=True)

    # ----------------------------------------------------------------- the end

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._report_stop(self._stop("end of training"))
        self._unhook()
        super().teardown(trainer, pl_module, stage)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._report_stop(self._stop(f"{type(exception).__name__}"))
        self._unhook()
        STOP.release(trainer)

    def _unhook(self) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None
        for folder in self._staged_dirs:
            staging = Path(folder, STAGING_DIR)
            if staging.is_dir() and not any(staging.iterdir()):
                staging.rmdir()
        self._staged_dirs.clear()
