"""A background uploader: a bounded queue, one worker thread, retries with backoff, a flush deadline.

The training loop only ever calls :meth:`BackgroundUploader.submit`, which never blocks and never
touches the network. The worker thread moves one job at a time and retries a failed job with
exponential backoff until it lands or a flush deadline runs out, so an S3 outage of minutes costs
training nothing. When the queue is full the oldest pending job is set aside (its file is still
on disk) and tried again at the next flush, from its source file; if Lightning removed that file
meanwhile (top-k rotation) the job is *dropped*, and the flush says so. A job for a key that is
already waiting replaces the older one (``last.ckpt`` written twice before the first upload started
only needs the second).

A job with a ``journal`` entry (see :mod:`deploy.training.journal`) is durable: when the uploader is
closed before it landed, its snapshot and entry stay on disk, so the next start sends it.

Example::

    uploader = BackgroundUploader(lambda job: storage.upload_file(job.path, job.key, job.metadata))
    uploader.submit(UploadJob(path="epoch=0-step=10.ckpt", key="run/checkpoints/epoch=0-step=10.ckpt"))
    result = uploader.flush(timeout=60)     # FlushResult(uploaded=1, pending=0, ...)
    uploader.close()
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadJob:
    """One object to write (or delete, with ``delete=True``).

    ``path`` is the file to read. ``owned`` means the uploader removes ``path`` once the job is done
    (a snapshot made for this job). ``copy_first`` means the worker copies ``path`` to a temp file
    before uploading, for files that keep growing (TensorBoard event files).
    ``source`` is the file a person knows (for messages and to retry a job set aside).
    ``journal`` is the job's journal entry: removed with the job once it landed (or was replaced),
    kept when the uploader closes before that.
    """

    key: str
    path: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    owned: bool = False
    copy_first: bool = False
    delete: bool = False
    source: str = ""
    journal: str = ""

    @property
    def label(self) -> str:
        return self.source or self.path or self.key


@dataclass(frozen=True)
class UploadEvent:
    """What happened to a job: ``uploaded``, ``deleted``, ``retrying``, ``failed``, ``set_aside``, ``dropped``."""

    kind: str
    job: UploadJob
    attempt: int = 1
    error: str = ""
    delay: float = 0.0
    result: Any = None


@dataclass(frozen=True)
class FlushResult:
    """The state after a flush: how many jobs landed in total, and what is still not in the bucket.

    ``dropped`` names jobs set aside when the queue was full whose file was removed (top-k rotation)
    before they could be sent: they will never reach the bucket.
    """

    completed: int
    pending: int
    failed: tuple[str, ...] = ()
    seconds: float = 0.0
    dropped: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.pending == 0 and not self.failed and not self.dropped


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: ``base * factor**(attempt-1)``, capped at ``cap`` seconds."""

    base: float = 1.0
    factor: float = 2.0
    cap: float = 30.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.base <= 0 or self.factor < 1 or self.cap < self.base:
            raise ValueError(f"Backoff needs base > 0, factor >= 1 and cap >= base; got {self}")

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap, self.base * self.factor ** max(0, attempt - 1))
        return random.uniform(ceiling / 2, ceiling) if self.jitter else ceiling


class PermanentError(Exception):
    """A job that can never succeed (its file is gone): dropped without retries."""


Observer = Callable[[UploadEvent], None]


def lower_priority(nice: int) -> bool:
    """Give the calling thread (and the transfer threads it starts, which inherit it) a lower CPU
    priority, so hashing and HTTP work yield to the training loop on a busy machine. Linux only;
    elsewhere, or without permission, it quietly does nothing."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        return False
    return True


def _log_event(event: UploadEvent) -> None:
    if event.kind == "retrying":
        log.warning("S3 upload of %s failed (attempt %d): %s; retrying in %.1f s",
                    event.job.label, event.attempt, event.error, event.delay)
    elif event.kind in ("failed", "set_aside", "dropped"):
        log.warning("S3 upload of %s %s: %s", event.job.label, event.kind.replace("_", " "), event.error)
    else:
        log.info("S3 %s %s", event.kind, event.job.key)


class BackgroundUploader:
    """Runs ``transfer(job)`` for each submitted job on one daemon thread.

    ``transfer`` does the network work (an upload or a delete) and raises on failure; it is the
    collaborator tests replace with a fake that fails on purpose.
    """

    def __init__(self, transfer: Callable[[UploadJob], Any], *, max_pending: int = 16,
                 backoff: Backoff | None = None, observer: Observer = _log_event,
                 name: str = "s3-sync", nice: int = 10) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self._transfer = transfer
        self.max_pending = max_pending
        self.backoff = backoff or Backoff()
        self._observer = observer
        self._name = name
        self.nice = nice
        self._cond = threading.Condition()
        self._pending: OrderedDict[str, UploadJob] = OrderedDict()
        self._set_aside: OrderedDict[str, UploadJob] = OrderedDict()
        self._active: UploadJob | None = None
        self._failed: dict[str, str] = {}
        self._dropped: list[str] = []
        self._completed = 0
        self._deadline: float | None = None  # while flushing: give up retrying after this
        self._closed = False
        self._discard = False  # shutdown(discard=True): journaled jobs go too
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- the training side

    def submit(self, job: UploadJob) -> None:
        """Queue ``job`` and return at once. Never blocks on the network or on a full queue."""
        aside: UploadJob | None = None
        with self._cond:
            if self._closed:
                raise RuntimeError("the uploader is closed")
            replaced = self._pending.pop(job.key, None)
            replaced_aside = self._set_aside.pop(job.key, None)
            self._failed.pop(job.key, None)
            if len(self._pending) >= self.max_pending:
                _, aside = self._pending.popitem(last=False)
                self._set_aside[aside.key] = aside
            self._pending[job.key] = job
            self._ensure_thread()
            self._cond.notify_all()
        for old in (replaced, replaced_aside):
            if old is not None:
                self._release(old)
        if aside is not None:
            # Keep the queue bounded (each job may hold a snapshot on disk); flush() tries it again
            # from its source file, and its journal entry (if any) still names that file.
            self._release_snapshot(aside)
            self._emit(UploadEvent("set_aside", aside, error=f"more than {self.max_pending} uploads waiting"))

    @property
    def pending(self) -> int:
        """Jobs not yet done: waiting, in flight, or set aside."""
        with self._cond:
            return len(self._pending) + len(self._set_aside) + (self._active is not None)

    @property
    def completed(self) -> int:
        return self._completed

    def flush(self, timeout: float) -> FlushResult:
        """Wait until every job has landed, or ``timeout`` seconds have passed; never longer.

        Jobs that were set aside because the queue was full are queued again first (their files are
        re-read from ``source`` if still present).
        """
        started = time.monotonic()
        deadline = started + max(0.0, timeout)
        self._report_dropped(self._requeue_set_aside())
        with self._cond:
            self._deadline = deadline
            if self._pending:
                self._ensure_thread()
            self._cond.notify_all()
            while (self._pending or self._active is not None) and time.monotonic() < deadline:
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            self._deadline = None
            self._cond.notify_all()
            result = FlushResult(completed=self._completed,
                                 pending=len(self._pending) + (self._active is not None),
                                 failed=tuple(self._failed.values()),
                                 seconds=time.monotonic() - started,
                                 dropped=tuple(self._dropped))
        return result

    def _report_dropped(self, dropped: list[UploadJob]) -> None:
        for job in dropped:
            self._release(job)
            self._emit(UploadEvent("dropped", job, error="its file was removed before it could be sent"))

    def _requeue_set_aside(self, limit: int | None = None) -> list[UploadJob]:
        """Queue set-aside jobs again (the oldest ``limit`` of them, default all) from their source files;
        return those whose file is gone."""
        dropped: list[UploadJob] = []
        with self._cond:
            keys = list(self._set_aside)[:limit]
            requeue = [self._set_aside.pop(key) for key in keys]
            for job in requeue:
                if job.key in self._pending:
                    self._release(job)  # a newer version is waiting already
                elif job.source and os.path.exists(job.source):
                    self._pending[job.key] = UploadJob(key=job.key, path=job.source, metadata=job.metadata,
                                                       copy_first=True, source=job.source, journal=job.journal)
                else:
                    dropped.append(job)
                    self._dropped.append(f"{job.label}: removed before it could be sent")
        return dropped

    def shutdown(self, discard: bool = False) -> UploadJob | None:
        """Stop taking and retrying jobs at once, without waiting; return the job still in flight.

        Waiting jobs are given up: journaled ones stay on disk for the next start, unless ``discard``
        (a training a newer attempt superseded: what it did not send must never be sent). The caller
        may then stop the transfer under the job in flight and :meth:`join` the worker.
        """
        with self._cond:
            self._closed = True
            self._discard = self._discard or discard
            self._cond.notify_all()
            leftovers = list(self._pending.values()) + list(self._set_aside.values())
            self._pending.clear()
            self._set_aside.clear()
            active = self._active
        for job in leftovers:
            self._abandon(job)
        return active

    def join(self, timeout: float = 1.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, timeout))

    def close(self, timeout: float = 0.0) -> FlushResult:
        """Flush for up to ``timeout`` seconds, then stop the worker; what is left is reported."""
        result = self.flush(timeout)
        self.shutdown()
        self.join(1.0)
        return result

    # ----------------------------------------------------------------- the worker

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _emit(self, event: UploadEvent) -> None:
        try:
            self._observer(event)
        except Exception:  # noqa: BLE001 - an observer must never stop uploads
            log.exception("S3 sync observer failed")

    def _run(self) -> None:
        lower_priority(self.nice)
        while True:
            with self._cond:
                while not self._pending and not self._set_aside and not self._closed:
                    self._cond.wait()
                if self._closed and not self._pending:
                    return
                refill = not self._pending
            if refill:
                # The queue drained, so S3 answers again: send what was set aside while it was full
                # (an outage longer than max_pending checkpoint intervals), without waiting for a flush.
                self._report_dropped(self._requeue_set_aside(limit=self.max_pending))
                continue
            with self._cond:
                if not self._pending:
                    continue
                _, job = self._pending.popitem(last=False)
                self._active = job
            try:
                self._attempt_until_done(job)
            finally:
                with self._cond:
                    self._active = None
                    self._cond.notify_all()

    def _attempt_until_done(self, job: UploadJob) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                result = self._do(job)
            except PermanentError as exc:
                self._failed[job.key] = f"{job.label}: {exc}"
                self._emit(UploadEvent("failed", job, attempt, str(exc)))
                self._release(job)
                return
            except Exception as exc:  # noqa: BLE001 - every other failure is worth another try
                delay = self.backoff.delay(attempt)
                with self._cond:
                    if self._closed:
                        self._failed[job.key] = f"{job.label}: {exc}"
                        self._abandon(job)
                        return
                    superseded = job.key in self._pending  # a newer version is queued: drop this one
                    deadline = self._deadline
                if superseded:
                    self._release(job)
                    return
                if deadline is not None and time.monotonic() + delay > deadline:
                    delay = max(0.0, deadline - time.monotonic())
                self._emit(UploadEvent("retrying", job, attempt, str(exc), delay))
                with self._cond:
                    # Sleep on the condition so close() cuts the wait short; flush() keeps us retrying.
                    self._cond.wait_for(lambda: self._closed, timeout=delay)
                    if self._closed:
                        self._failed[job.key] = f"{job.label}: {exc}"
                        self._abandon(job)
                        return
                continue
            with self._cond:
                self._completed += 1
                self._failed.pop(job.key, None)
            self._release(job)
            self._emit(UploadEvent("deleted" if job.delete else "uploaded", job, attempt, result=result))
            return

    def _do(self, job: UploadJob) -> Any:
        if job.delete:
            return self._transfer(job)
        if not os.path.exists(job.path):
            raise PermanentError(f"the file {job.path} no longer exists")
        if not job.copy_first:
            return self._transfer(job)
        # A file that may still grow: upload a private copy, so size, sha256 and bytes agree.
        fd, tmp = tempfile.mkstemp(prefix=".s3-sync-", dir=os.path.dirname(job.path) or ".")
        os.close(fd)
        try:
            shutil.copyfile(job.path, tmp)
            return self._transfer(UploadJob(key=job.key, path=tmp, metadata=job.metadata, source=job.label))
        finally:
            os.unlink(tmp)

    @staticmethod
    def _release_snapshot(job: UploadJob) -> None:
        if job.owned and job.path:
            _unlink(job.path)

    @classmethod
    def _release(cls, job: UploadJob) -> None:
        """The job is finished with (landed, replaced, or can never land): its files go."""
        cls._release_snapshot(job)
        if job.journal:
            _unlink(job.journal)

    def _abandon(self, job: UploadJob) -> None:
        """The uploader stops before the job landed: a journaled job stays on disk for the next start
        (unless the shutdown discards: then it goes like a finished one)."""
        if self._discard:
            self._release(job)
        elif not job.journal:
            self._release_snapshot(job)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
