"""One way to wait for something in dev tooling, tests and benchmarks: poll a condition, never sleep blind.

A wait ends when the condition holds (its value is returned), when the process it depends on has
exited first, or at its deadline; the last two raise, naming what was awaited and the end of its log.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class WaitFailed(TimeoutError, AssertionError):
    """What was awaited did not happen in time (or its process exited first). An ``AssertionError`` too, so a
    test that waits fails as an assertion does, and a ``TimeoutError`` for tooling that catches that."""


def _tail(log: Path | None, chars: int = 3000) -> str:
    if log is None or not log.exists():
        return ""
    return ":\n" + log.read_text(errors="replace")[-chars:]


def wait_until(predicate: Callable[[], T], timeout: float, what: str, *, interval: float = 0.2,
               proc: subprocess.Popen | None = None, log: Path | None = None,
               ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    ``proc``: the process whose work is awaited; its exit ends the wait at once. ``log``: its output, whose end
    goes into the failure. ``ignore``: exceptions that mean "not yet" (``OSError`` while a port opens).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except ignore:
            value = None
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise WaitFailed(f"the process exited ({proc.returncode}) before {what}{_tail(log)}")
        if time.monotonic() >= deadline:
            raise WaitFailed(f"timed out after {timeout:.0f} s waiting for {what}{_tail(log)}")
        time.sleep(interval)
