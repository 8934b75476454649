"""Where the native runtime keeps its own things under REMOTE_DIR (what every runtime shares: deploy.runtimes.code.layout)."""

from __future__ import annotations

import posixpath

from deploy.hosts.probe import NATIVE_MARKER
from deploy.runtimes.code.layout import APP

VENV = ".venv"
VENV_MARKER = f"{VENV}/gpu-deploy.json"
REQUIREMENTS = "requirements.txt"
SUPERVISOR = NATIVE_MARKER  # .gpu-deploy/supervisor.py: the probe recognises a native deploy by it
SUPERVISOR_FILES = ("detach.py", "supervisor.py", "run.json")


def training_paths(remote_dir: str) -> dict[str, list[str]]:
    """What the training finds first on PATH and PYTHONPATH: the virtualenv's bin; the project, its ``src/``
    (a src layout such as Piper's), then gpu-deploy's training code. ``run.json``'s ``prepend``; fab build-ext too."""
    d = remote_dir.rstrip("/")
    return {"PATH": [posixpath.join(d, VENV, "bin")], "PYTHONPATH": [d, f"{d}/src", f"{d}/{APP}"]}
