"""Small helpers the slower tests share: an operator's .env, and polling instead of sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def write_dotenv(path: Path, values: Mapping[str, str]) -> Path:
    """Write ``values`` as a .env file, as a user would."""
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
