"""One builder at a time on this machine: the test workers (pytest -n), the demo and a benchmark may all
ask for the same image at once; the first builds it, the others wait and then find it built."""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

LOCK_DIR = "/var/tmp"


@contextmanager
def machine_lock(name: str) -> Iterator[None]:
    """Hold the machine-wide lock ``name`` (a file lock under /var/tmp, released when the holder exits)."""
    path = os.path.join(LOCK_DIR, "gpu-deploy-" + re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".lock")
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
