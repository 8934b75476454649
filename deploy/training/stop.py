"""A graceful stop (SIGTERM) for the training process: one deadline for every flush, agreed on every rank.

``docker compose stop`` (``stop_grace_period``), ``fab stop`` (``--timeout``) and the native
supervisor send SIGTERM and wait :data:`STOP_GRACE` seconds before SIGKILL. Everything the callbacks
do after the signal (save the current step, upload it and what is pending, stop the helper process)
must fit in that window, so the first SIGTERM sets one process-wide deadline,
:meth:`StopRequest.flush_deadline`, that every callback's flush shares instead of each taking
``S3_SYNC_FLUSH_TIMEOUT`` in turn.

:class:`StopRequest` replaces Lightning's SIGTERM handler for the duration of ``fit`` (Lightning
restores its predecessor at teardown). When an ``S3CheckpointSync`` coordinates the stop, the
handler only records the signal: the callback decides at the next batch boundary, on every rank
together (``reduce_boolean_decision``, so one rank's signal stops all ranks at the same step),
saves that step through ``trainer.save_checkpoint`` and then sets Lightning's own SIGTERM flag on
every rank, so Lightning ends the run on all of them at that same batch. Lightning's handler, if
called from inside the signal, would broadcast on the process group at an arbitrary point of the
step and could desynchronise the ranks' collectives; without a coordinator it is called as before.

The same record keeps the other way a training ends early: superseded (``STOP.superseded_by``),
when the upload helper was refused because a newer attempt claimed the run's lease
(:mod:`deploy.training.lease`). That stop is agreed on every rank in the same all-reduce as SIGTERM
(:func:`agree`) and saves nothing.

Example::

    STOP.arm(trainer, coordinated=True)       # in a callback, once Lightning registered its handlers
    ...
    remaining = STOP.flush_deadline(60.0) - time.monotonic()
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

STOP_GRACE = 120.0
"""Seconds between SIGTERM and SIGKILL: compose's ``stop_grace_period`` and ``fab stop --timeout``
(``deploy.runtimes.compose.service.STOP_TIMEOUT``); a unit test keeps them equal."""
STOP_MARGIN = 20.0
"""Seconds of the grace period kept back for saving the stop checkpoint, stopping the upload helper,
aborting its open upload and the process exit."""
STOP_BUDGET = STOP_GRACE - STOP_MARGIN
"""The most any stop spends on flushing uploads, counted from the first SIGTERM."""
SAVED_ON_STOP = "gpu-deploy: saved step {step} on stop"
"""The line (printed once, on global rank zero) that says which step a graceful stop saved; the
rest of the line says where it went: ``, uploaded to s3://...`` or ``, upload pending ...``."""

Handler = Callable[[int, Any], Any]


class StopRequest:
    """The process-wide record of a SIGTERM: when it came, and the deadline it sets for flushes."""

    def __init__(self) -> None:
        self.received_at: float | None = None
        self.coordinated = False
        self.superseded_by: tuple[int, str] | None = None
        """(attempt, host) of the newer training that took the run (deploy.training.lease); kept for
        the life of the process: a superseded training never writes again."""
        self._trainer: Any = None
        self._previous: Any = None
        self._lock = threading.Lock()

    @property
    def requested(self) -> bool:
        return self.received_at is not None

    def arm(self, trainer: Any, coordinated: bool = False) -> None:
        """Take over SIGTERM for ``trainer``'s fit (call once Lightning registered its handlers).

        A new fit (another trainer, or Lightning registered its handler again) starts a fresh
        record; arming again within the same fit only adds coordination. Does nothing off the main
        thread (signals can only be handled there).
        """
        if threading.current_thread() is not threading.main_thread():
            return
        with self._lock:
            if self._trainer is not trainer or signal.getsignal(signal.SIGTERM) != self._on_sigterm:
                self._trainer = trainer
                self.received_at = None
                self.coordinated = False
                self._previous = signal.getsignal(signal.SIGTERM)
                signal.signal(signal.SIGTERM, self._on_sigterm)
            self.coordinated = self.coordinated or coordinated

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if self.received_at is None:
            self.received_at = time.monotonic()
        previous = self._previous
        if not self.coordinated and callable(previous):
            previous(signum, frame)  # Lightning's own: stop at the next batch, without saving

    def request(self) -> None:
        """Record a stop as if SIGTERM had arrived now (tests, and a stop asked for in code)."""
        if self.received_at is None:
            self.received_at = time.monotonic()

    def supersede(self, attempt: int, host: str) -> bool:
        """Record that attempt ``attempt`` on ``host`` took the run; True the first time (print the line then)."""
        with self._lock:
            if self.superseded_by is not None:
                return False
            self.superseded_by = (attempt, host)
            return True

    @property
    def superseded(self) -> bool:
        return self.superseded_by is not None

    def flush_deadline(self, timeout: float) -> float:
        """When a flush starting now must end: ``timeout`` from now, or, once SIGTERM arrived,
        ``timeout`` (at most :data:`STOP_BUDGET`) from the signal, the same for every callback."""
        if self.received_at is None:
            return time.monotonic() + max(0.0, timeout)
        return self.received_at + min(max(0.0, timeout), STOP_BUDGET)

    def release(self, trainer: Any) -> None:
        """Forget ``trainer`` (its fit is over); the next fit arms afresh."""
        with self._lock:
            if self._trainer is trainer:
                self._trainer = None
                self.coordinated = False


STOP = StopRequest()
"""The one record for this process: signals are process-wide."""


def agree_to_stop(trainer: Any) -> bool:
    """True on every rank when any rank was asked to stop: one small all-reduce per batch in DDP.

    A rank that was not signalled itself starts its flush deadline at the agreement.
    """
    return agree(trainer, STOP.requested)[0]


def agree(trainer: Any, asked: bool, superseded: bool = False) -> tuple[bool, bool]:
    """(asked to stop, superseded), each true on every rank when it is true on any: one all-reduce in DDP.

    Only global rank zero uploads, so only it learns that a newer attempt took the run; the other
    ranks must stop at the same batch. A rank that was not signalled itself starts its flush deadline
    at the agreement.
    """
    if getattr(trainer, "world_size", 1) > 1:
        import torch  # the training side only; this module is imported without torch elsewhere

        flags = torch.tensor([int(asked), int(superseded)], device=trainer.strategy.root_device)
        total = trainer.strategy.reduce(flags, reduce_op="sum")
        asked, superseded = (bool(v) for v in total.tolist())
        if asked:
            STOP.request()
    return asked, superseded


def end_run_after_this_batch(trainer: Any) -> None:
    """Set Lightning's own SIGTERM flag, so it raises ``SIGTERMException`` at the end of this batch
    (the same batch on every rank, since every rank sets it at the same step)."""
    trainer._signal_connector.received_sigterm = True
