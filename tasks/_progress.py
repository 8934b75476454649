"""A rich progress bar for transfers: the task side of :class:`deploy.storage.sync.SyncObserver`.

The bar (bytes, rate, ETA) goes to stderr and only when stderr is a terminal; results go to stdout.
"""

from __future__ import annotations

import threading
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from deploy.storage.sync import SyncItem, SyncObserver, SyncPlan


class RichTransferProgress(SyncObserver):
    """Renders a sync's progress; use as a context manager around :func:`deploy.storage.sync.execute`."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._bar = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), console=self.console, transient=True, disable=not self.console.is_terminal,
        )
        self._task: TaskID | None = None
        self._lock = threading.Lock()
        self._done = 0
        self._total = 0
        self._verb = ""

    def __enter__(self) -> "RichTransferProgress":
        self._bar.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._bar.stop()

    def started(self, plan: SyncPlan) -> None:
        self._total = len(plan.transfers)
        self._verb = plan.verb.capitalize() + "ing"
        self._task = self._bar.add_task(self._describe(), total=plan.bytes_to_move or None)

    def progress(self, nbytes: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, nbytes)

    def file_done(self, item: SyncItem) -> None:
        with self._lock:
            self._done += 1
        if self._task is not None:
            self._bar.update(self._task, description=self._describe())

    def _describe(self) -> str:
        return f"{self._verb} {self._done}/{self._total} files"
