"""Where a deploy keeps things under REMOTE_DIR, for every runtime (the probe and the host programs agree).

A runtime's own files (the native virtualenv and supervisor) are named in that runtime's package.
"""

from __future__ import annotations

META = ".gpu-deploy"
APP = f"{META}/app"  # gpu-deploy's own modules the host needs (deploy.runtimes.code.shipped)
MANIFEST = f"{META}/manifest.json"  # every file a deploy shipped, so stale ones (and only those) are removed
RELEASE = f"{META}/release.json"  # the code (and, natively, settings and packages) the running service started from
LOG = "train.log"  # the native runtime's log in REMOTE_DIR: never shipped from a working tree
