"""What :class:`~deploy.training.callbacks.S3CheckpointSync` and ``S3LogSync`` share.

Enabling from the settings (decided on every rank, uploading on global rank zero only), one
:class:`~deploy.training.uploader.BackgroundUploader` each, and flushes that end by a deadline: at
the end of ``fit``, on an exception, and on SIGTERM, where every callback shares the one deadline
the signal set (:mod:`deploy.training.stop`), so the whole stop fits in the stop grace period.

With a run's lease claimed (``RUN_ID`` and ``RUN_ATTEMPT``, set by the entrypoint), a write the
upload helper refuses because a newer attempt took the run (:mod:`deploy.training.lease`) is never
retried: the process records it (``STOP.superseded_by``), sends nothing more, and the callbacks
give up what is pending without a flush.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from deploy.errors import DeployError, TrainingError
from deploy.settings import Settings, load_settings
from deploy.storage import Storage
from deploy.training.lease import LeaseLost, fence_from_environment
from deploy.training.stop import STOP
from deploy.training.transfer import ProcessTransfer, abort_open_uploads_within
from deploy.training.uploader import Backoff, BackgroundUploader, FlushResult, PermanentError, UploadJob

DEFAULT_FLUSH_TIMEOUT = 60.0
"""Seconds a flush may take when ``S3_SYNC_FLUSH_TIMEOUT`` is not read (see :mod:`deploy.training.stop`)."""
CLOSE_TIMEOUT = 5.0
"""Seconds the upload helper gets to finish its job once a flush is over, when time is left."""
ABORT_TIMEOUT = 3.0
"""Seconds spent aborting the multipart upload of a job cut short, at most."""


def _settings() -> Settings:
    return load_settings()


def storage_transfer(storage: Storage) -> Callable[[UploadJob], Any]:
    """The uploader's network step for ``storage``: upload with metadata, or delete."""

    def transfer(job: UploadJob) -> Any:
        if job.delete:
            return storage.delete(job.key)
        return storage.upload_file(job.path, job.key, metadata=job.metadata)

    return transfer


def refuse_when_superseded(transfer: Callable[[UploadJob], Any]) -> Callable[[UploadJob], Any]:
    """``transfer``, except that once a newer attempt took the run nothing more is sent, and the
    refusal that said so is recorded (``STOP.superseded_by``) and never retried."""

    def guarded(job: UploadJob) -> Any:
        if STOP.superseded_by is not None:
            attempt, host = STOP.superseded_by
            raise PermanentError(f"not sent: attempt {attempt} on {host} holds the run now")
        try:
            return transfer(job)
        except LeaseLost as exc:
            STOP.supersede(exc.lease.claimed, exc.lease.claimed_by)
            raise PermanentError(str(exc)) from exc

    return guarded


def describe(result: FlushResult) -> str:
    """One sentence for a flush that did not get everything into the bucket."""
    parts = []
    if result.pending:
        parts.append(f"{result.pending} upload(s) still pending")
    if result.failed:
        parts.append(f"{len(result.failed)} failed ({', '.join(result.failed)})")
    if result.dropped:
        parts.append(f"{len(result.dropped)} dropped because Lightning removed the file before it could be "
                     f"sent ({', '.join(result.dropped)})")
    return f"{' and '.join(parts)} after {result.seconds:.1f} s"


class SyncCallback(Callback):
    """The shared part of the two S3 callbacks (see the module doc)."""

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

    def _decide(self) -> bool:
        """Every rank: is sync on (from the settings unless given), and how long may a flush take."""
        settings: Settings | None = None
        if self.enabled is None or self.flush_timeout is None:
            settings = _settings()
        if self.enabled is None:
            assert settings is not None
            self.enabled = settings.enable_s3_sync
        if self.enabled and self.flush_timeout is None:
            assert settings is not None
            self.flush_timeout = float(settings.s3_sync_flush_timeout)
        return bool(self.enabled)

    def _start(self, trainer: Trainer) -> bool:
        """Decide on every rank, act on rank zero: True when this process should upload."""
        if self.uploader is not None:
            return True
        if not self._decide():
            rank_zero_info(f"{type(self).__name__}: ENABLE_S3_SYNC is off; nothing is uploaded.")
            return False
        if not trainer.is_global_zero:
            return False
        if self._storage_given:
            assert self.storage is not None
            fence_from_environment(self.storage)  # in this process: the helper fences its own client
            self._transfer = storage_transfer(self.storage)
        else:
            try:
                self.storage = Storage.from_settings(_settings())
            except DeployError as exc:
                raise TrainingError(f"ENABLE_S3_SYNC=1 but S3 is not configured: {exc}") from exc
            # Storage built from the settings can be built again in a helper process, which then
            # does the network work; this process only names the keys.
            self._transfer = ProcessTransfer()
        self.uploader = BackgroundUploader(refuse_when_superseded(self._transfer), max_pending=self.max_pending,
                                           backoff=self.backoff, name=f"{type(self).__name__}-uploader")
        return True

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.enabled:
            STOP.arm(trainer)  # Lightning registered its SIGTERM handler just before: wrap it

    def flush(self, reason: str) -> FlushResult | None:
        """Wait for pending uploads until the deadline (the shared one after SIGTERM); warn about leftovers."""
        if self.uploader is None:
            return None
        timeout = self.flush_timeout if self.flush_timeout is not None else DEFAULT_FLUSH_TIMEOUT
        remaining = max(0.0, STOP.flush_deadline(timeout) - time.monotonic())
        waiting = self.uploader.pending
        if waiting:
            rank_zero_info(f"{type(self).__name__}: {reason}: flushing {waiting} upload(s) "
                           f"(at most {remaining:.0f} s)")
        result = self.uploader.flush(remaining)
        self.last_flush = result
        if not result.ok:
            rank_zero_warn(f"{type(self).__name__}: {describe(result)}")
        return result

    def _stop(self, reason: str) -> FlushResult | None:
        """Flush, then stop the uploader and its helper within what is left of the deadline.

        A job still in flight then is cut short: its helper is stopped and the multipart upload it
        may have open is aborted; a journaled job stays staged for the next start.
        """
        superseded = STOP.superseded
        result = None if superseded else self.flush(reason)  # superseded: what is pending is never sent
        if self.uploader is None:
            return result
        timeout = self.flush_timeout if self.flush_timeout is not None else DEFAULT_FLUSH_TIMEOUT
        left = lambda: max(0.0, STOP.flush_deadline(timeout) - time.monotonic())  # noqa: E731
        cut_short = self.uploader.shutdown(discard=superseded)
        close = getattr(self._transfer, "close", None)
        if callable(close):
            close(timeout=min(CLOSE_TIMEOUT, max(0.5, left())))
        self.uploader.join(timeout=1.0)
        if cut_short is not None and not cut_short.delete and self.storage is not None:
            if not superseded:
                abort_open_uploads_within(self.storage, [cut_short.key], ABORT_TIMEOUT)
            elif self.uploader.pending:  # the helper was stopped mid-job: its multipart upload is still open
                # An abort by key could end the newer attempt's upload of the same key; leave it.
                rank_zero_warn(f"{type(self).__name__}: an unfinished multipart upload of {cut_short.key} may be "
                               "left open; `fab s3.abort-uploads` removes it")
        self.uploader = None
        self._transfer = None
        return result

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            STOP.release(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._stop(f"{type(exception).__name__}")
        STOP.release(trainer)
