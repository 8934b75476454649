"""Where the native runtime keeps its own things under REMOTE_DIR (what every runtime shares: deploy.runtimes.code.layout)."""

from __future__ import annotations

from deploy.hosts.probe import NATIVE_MARKER

VENV = ".venv"
VENV_MARKER = f"{VENV}/gpu-deploy.json"
REQUIREMENTS = "requirements.txt"
SUPERVISOR = NATIVE_MARKER  # .gpu-deploy/supervisor.py: the probe recognises a native deploy by it
SUPERVISOR_FILES = ("supervisor.py", "run.json")
