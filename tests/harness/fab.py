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
