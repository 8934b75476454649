"""Progress from the training itself: a heartbeat file on the host, and the run's events and heartbeat in S3.

:class:`Heartbeat` is a Lightning callback. On global rank zero it reports the global step, epoch,
the latest logged metrics, steps/s and the ETA to ``max_steps``/``max_epochs``:

- every ``every`` seconds (default 5) to ``lightning_logs/heartbeat.json`` under the working
  directory (``HEARTBEAT_FILE`` overrides), which is ``REMOTE_DIR/lightning_logs/heartbeat.json`` on
  the host in both runtimes; ``fab status`` reads it (a stale one while the process lives is a hang);
- at most every ``record_every`` seconds (default 60) into the run's record in the bucket, when
  ``RUN_ID`` is set and S3 is configured (``runs/<run-id>/heartbeat/<writer>.json``).

A background thread does all the writing: the training loop only hands it a small dict.

The bucket writes go through :class:`deploy.training.ledger.TrainingLedger`.

Attach it like the S3 callbacks (the entrypoint does for a LightningCLI ``fit``)::

    python -m piper.train fit --trainer.callbacks+=deploy.training.heartbeat.Heartbeat
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from deploy.ledger.model import HEARTBEAT_FILE  # one path: the operator's readers use it too
from deploy.training.ledger import TrainingLedger, iso_now


def write_file_atomic(path: str, data: dict[str, Any]) -> None:
    """Write JSON to ``path`` through a temp file and a rename, so a reader never sees half of it."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


class _Writer(threading.Thread):
    """Takes the newest beat from the training loop; writes the file and, when due, the record."""

    def __init__(self, path: str, ledger: TrainingLedger | None, every: float, record_every: float) -> None:
        super().__init__(name="heartbeat-writer", daemon=True)
        self.path, self.ledger, self.every, self.record_every = path, ledger, every, record_every
        self._beat: dict[str, Any] | None = None
        self._notes: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._last_record = -math.inf
        self._warned = False

    def offer(self, beat: dict[str, Any]) -> None:
        with self._lock:
            self._beat = beat
        self._wake.set()

    def note(self, **data: Any) -> None:
        with self._lock:
            self._notes.append(data)
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        self.join(timeout)

    def run(self) -> None:
        while True:
            self._wake.wait(self.every)
            self._wake.clear()
            with self._lock:
                beat, notes, self._notes = self._beat, self._notes, []
            final = self._stopping
            self._write(beat, notes, final)
            if final:
                return

    def _write(self, beat: dict[str, Any] | None, notes: list[dict[str, Any]], final: bool) -> None:
        try:
            if beat is not None:
                write_file_atomic(self.path, beat)
            if self.ledger is None:
                return
            for data in notes:
                self.ledger.event("note", **data)
            due = time.monotonic() - self._last_record >= self.record_every
            if beat is not None and (due or final):
                self.ledger.heartbeat(beat)
                self._last_record = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - never let the heartbeat end a training
            if not self._warned:
                self._warned = True
                print(f"gpu-deploy: heartbeat not written ({exc}); training goes on", flush=True)


def _metrics(trainer: Trainer) -> dict[str, float]:
    found: dict[str, float] = {}
    for name, value in list(trainer.callback_metrics.items())[:16]:
        try:
            number = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            found[str(name)] = number
    return found


def eta_seconds(step: int, rate: float | None, max_steps: int | None, max_epochs: int | None,
                steps_per_epoch: float | None) -> float | None:
    """Seconds left at ``rate`` steps/s to ``max_steps``, else to ``max_epochs`` of ``steps_per_epoch``."""
    if not rate:
        return None
    if max_steps and max_steps > 0:
        total: float = max_steps
    elif max_epochs and max_epochs > 0 and steps_per_epoch and math.isfinite(steps_per_epoch):
        total = max_epochs * steps_per_epoch
    else:
        return None
    return max(0.0, (total - step) / rate)


class Heartbeat(Callback):
    """Report progress every ``every`` s to a file on the host, and every ``record_every`` s to the run record.

    Args:
        every: seconds between two heartbeat file writes.
        record_every: seconds between two heartbeats in the bucket (``RUN_ID`` and S3 needed).
        path: the file; default ``HEARTBEAT_FILE`` or ``lightning_logs/heartbeat.json``.
        ledger: a :class:`TrainingLedger` (tests); default from the settings, or none.
    """

    def __init__(self, every: float = 5.0, record_every: float = 60.0, path: str | None = None,
                 ledger: TrainingLedger | None = None) -> None:
        if every <= 0 or record_every <= 0:
            raise ValueError(f"every and record_every must be > 0 seconds, got {every} and {record_every}")
        self.every, self.record_every = every, record_every
        self.path = path or os.environ.get("HEARTBEAT_FILE") or HEARTBEAT_FILE
        self.ledger = ledger
        self._writer: _Writer | None = None
        self._last: tuple[float, int] | None = None
        self._rate: float | None = None
        self._next = 0.0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero or self._writer is not None:
            return
        if self.ledger is None:
            self.ledger = TrainingLedger.from_settings()
        self._writer = _Writer(self.path, self.ledger, self.every, self.record_every)
        self._writer.start()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        version = getattr(trainer.logger, "version", None) if trainer.logger is not None else None
        if self._writer is not None and version is not None:
            name = version if isinstance(version, str) else f"version_{version}"
            self._writer.note(what=f"logging to logs/{name}", log_version=name)
        self._beat(trainer, force=True)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._beat(trainer)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._beat(trainer)  # a long validation is progress, not a hang

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._beat(trainer, force=True)  # validation metrics are new: report them now

    def _beat(self, trainer: Trainer, force: bool = False) -> None:
        if self._writer is None:
            return
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + self.every
        step = int(trainer.global_step)
        if self._last is not None and now > self._last[0] and step >= self._last[1]:
            self._rate = (step - self._last[1]) / (now - self._last[0]) or self._rate
        self._last = (now, step)
        batches = trainer.num_training_batches
        per_epoch = (batches / max(1, trainer.accumulate_grad_batches)
                     if isinstance(batches, (int, float)) and math.isfinite(batches) else None)
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self._writer.offer({
            "at": iso_now(), "pid": os.getpid(), "step": step, "epoch": int(trainer.current_epoch),
            "max_steps": max_steps, "max_epochs": trainer.max_epochs if (trainer.max_epochs or 0) > 0 else None,
            "steps_per_second": self._rate,
            "eta_seconds": eta_seconds(step, self._rate, max_steps, trainer.max_epochs, per_epoch),
            "metrics": _metrics(trainer)})

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and self._writer is not None:
            self._beat(trainer, force=True)
            self._writer.stop()
            if self._writer.is_alive():
                rank_zero_warn("Heartbeat: the last heartbeat is still being written; leaving it")
            self._writer = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")
