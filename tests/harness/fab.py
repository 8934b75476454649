"""Run `fab` as a user would: a subprocess in some folder, settings from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).parent / "fab")


def run_fab(*args: str, env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``fab --search-root <repo> ARGS`` with ``env`` on top of this process's environment."""
    return subprocess.run([FAB, "--search-root", str(REPO), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def all_tasks(collection, prefix: str = "") -> list:
    """Every task of an invoke ``Collection`` as ``(dotted name, Task)``, sub-collections included."""
    found = [(prefix + name, task) for name, task in collection.tasks.items()]
    for name, sub in collection.collections.items():
        found += all_tasks(sub, f"{prefix}{name}.")
    return found
