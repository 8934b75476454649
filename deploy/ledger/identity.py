"""Which run a deploy belongs to, and the facts its record keeps (command, image or commit, settings digest).

A deploy continues the newest unfinished run of the prefix (``CHECKPOINT=s3`` resumes that run's
lineage anyway), so a kill and a redeploy keep one run id; ``RUN_ID`` picks one by hand; once a
run has finished, the next deploy starts a new one.

Example::

    run_id, is_new = resolve_run_id(storage, settings)
    record = make_record(run_id, settings, storage, image="piper-train:latest", image_id="sha256:...")
"""

from __future__ import annotations

import hashlib
import secrets
import shlex
import subprocess
import sys
from collections.abc import Sequence

from deploy.ledger.index import current_run
from deploy.ledger.model import Record, now
from deploy.settings import SETTING_FIELDS, Settings
from deploy.storage import Storage

DIGESTED_GROUPS = ("training",)
DIGESTED_KEYS = ("DATASET", "DATA_DIR", "RUNTIME", "NATIVE_PYTHON")
NOT_DIGESTED = ("RUN_ID", "FROM_RUN", "ENABLE_S3_SYNC", "CHECKPOINT")  # deploy sets the last two on every host


def new_run_id() -> str:
    """``20261130-060215-a1b2``: sorts by creation time, unique without coordination."""
    return f"{now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def resolve_run_id(storage: Storage, settings: Settings, save: bool = True) -> tuple[str, bool]:
    """(run id, whether it is new): ``RUN_ID``, else the newest unfinished run, else a new id.

    ``save=False`` (a dry run) writes nothing, not even the listing's index."""
    if settings.run_id:
        return settings.run_id, False
    current = current_run(storage, save=save)
    if current is not None:
        return str(current["run_id"]), False
    return new_run_id(), True


def training_settings(settings: Settings) -> dict[str, str]:
    """The settings that shape the training (never a secret), as shown in the record."""
    shown: dict[str, str] = {}
    for spec in SETTING_FIELDS:
        meta = spec.metadata
        key = meta["key"]
        if meta["secret"] or key in NOT_DIGESTED:
            continue
        if meta["group"] in DIGESTED_GROUPS or key in DIGESTED_KEYS:
            value = getattr(settings, spec.name)
            if value not in (None, ""):
                shown[key] = str(int(value) if isinstance(value, bool) else value)
    return shown


def settings_digest(shown: dict[str, str]) -> str:
    """sha256 over ``KEY=value`` lines, sorted: equal digests mean the same training settings."""
    text = "\n".join(f"{k}={v}" for k, v in sorted(shown.items()))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def git_source(folder: str = ".") -> tuple[str, bool | None]:
    """(commit, dirty) of the working tree at ``folder``; ("", None) outside a git checkout."""
    try:
        commit = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return "", None
        status = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "", None
    return commit.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None


def operator_command(argv: Sequence[str] | None = None) -> str:
    """The command the operator ran, e.g. ``fab deploy-runpod --hosts=gpu-a`` (flags only, no .env values)."""
    args = list(sys.argv if argv is None else argv)
    if args:
        args[0] = args[0].rsplit("/", 1)[-1]
    return shlex.join(args)


def make_record(run_id: str, settings: Settings, storage: Storage, image: str = "", image_id: str = "",
                source: str = ".", argv: Sequence[str] | None = None) -> Record:
    """The record a first deploy writes; the commit is the training project's (``TRAIN_PROJECT``, whose
    code the hosts run), else ``source``'s."""
    commit, dirty = git_source(settings.train_project or source)
    shown = training_settings(settings)
    return Record(run_id=run_id, created=now(), command=operator_command(argv), image=image, image_id=image_id,
                  commit=commit, dirty=dirty, settings_digest=settings_digest(shown), settings=shown,
                  prefix=storage.prefix)
