"""Rich progress bars: the task side of the library's observers (:class:`deploy.storage.sync.SyncObserver`
for directory syncs, :class:`deploy.images.ImageProgress` for image pushes and pulls).

A bar (bytes, rate, ...) goes to stderr and only when stderr is a terminal; results go to stdout.
"""

from __future__ import annotations

import threading
from types import TracebackType

from rich.console import Console
from rich.filesize import decimal
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from deploy.images import ImageProgress
from deploy.storage.sync import SyncItem, SyncObserver, SyncPlan


def transfer_bar(console: Console, last: ProgressColumn) -> Progress:
    """Description, bar, bytes, rate, then ``last``; shown only on a terminal, gone when done."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), last,
                    console=console, transient=True, disable=not console.is_terminal)


class RichTransferProgress(SyncObserver):
    """Renders a sync's progress; use as a context manager around :func:`deploy.storage.sync.execute`."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._bar = transfer_bar(self.console, TimeRemainingColumn())
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


class RichImageProgress(ImageProgress):
    """Bytes read from the engine, bytes sent, skipped layers, rate and compression ratio (stderr)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.bar = transfer_bar(self.console, TextColumn("{task.fields[info]}"))
        self.lock = threading.Lock()
        self.read_n = self.sent_n = self.raw_n = self.down_n = 0
        self.skips = 0
        self.task: TaskID | None = None

    def begin(self, what: str, total: int) -> None:
        self.bar.start()
        self.task = self.bar.add_task(what, total=total or None, info="")

    def _show(self, advance: int = 0) -> None:
        if self.task is None:
            return
        ratio = f"{self.raw_n / self.sent_n:.2f}x" if self.sent_n else "-"
        info = (f"sent {decimal(self.sent_n)}, ratio {ratio}, skipped {self.skips} layer(s)"
                if not self.down_n else f"downloaded {decimal(self.down_n)}")
        self.bar.update(self.task, advance=advance, info=info)

    def read(self, n: int) -> None:
        with self.lock:
            self.read_n += n
            self._show(n)

    def raw(self, n: int) -> None:
        with self.lock:
            self.raw_n += n

    def sent(self, n: int) -> None:
        with self.lock:
            self.sent_n += n
            self._show()

    def skipped(self, diff_id: str, size: int) -> None:
        with self.lock:
            self.skips += 1
            self._show()

    def downloaded(self, n: int) -> None:
        with self.lock:
            self.down_n += n
            self._show(n)

    def end(self) -> None:
        self.bar.stop()
