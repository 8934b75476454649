"""Where a native deploy keeps things under REMOTE_DIR (every native module and the probe agree on these)."""

from __future__ import annotations

from deploy.hosts.probe import NATIVE_MARKER

META = ".gpu-deploy"
APP = f"{META}/app"  # gpu-deploy's own modules the host needs (deploy.runtimes.native.shipped)
VENV = ".venv"
LOG = "train.log"
MANIFEST = f"{META}/manifest.json"  # every file a deploy shipped, so stale ones (and only those) are removed
RELEASE = f"{META}/release.json"  # what the running process started from
VENV_MARKER = f"{VENV}/gpu-deploy.json"
REQUIREMENTS = "requirements.txt"
SUPERVISOR = NATIVE_MARKER  # .gpu-deploy/supervisor.py: the probe recognises a native deploy by it
SUPERVISOR_FILES = ("supervisor.py", "run.json")
