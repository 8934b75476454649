"""A run's TensorBoard logs: which ``logs/version_N/`` folders are its own, brought here incrementally.

The training side notes the logger's version in an event (``note`` with ``log_version``) and in its
heartbeat; a run without such a note (older runs, other trainers) gets every version that was
uploaded to while the run lived. The download is the bucket's ordinary incremental sync
(:mod:`deploy.storage.sync`, with its persistent hash cache), so a refresh moves only new bytes.

Example::

    folder = local_log_cache(storage)
    result = download_logs(storage, folder, versions=run_log_versions(storage, run))
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import StorageError
from deploy.ledger.model import ENDING
from deploy.ledger.store import RunData
from deploy.storage import LOGS, Storage
from deploy.storage.cache import default_cache_dir
from deploy.storage.checkpoints import list_log_versions
from deploy.storage.sync import cache_for, execute, plan_download


def noted_versions(run: RunData) -> list[str]:
    """The log versions the training side reported for ``run``, oldest first."""
    seen: list[str] = []
    for event in run.events:
        version = event.data.get("log_version")
        if isinstance(version, str) and version and version not in seen:
            seen.append(version)
    return seen


def run_log_versions(storage: Storage, run: RunData | None) -> list[str]:
    """The ``version_N`` folders of ``run`` (every one when ``run`` is None), in numeric order."""
    every = list_log_versions(storage)
    if run is None:
        return every
    noted = [v for v in noted_versions(run) if v in every]
    if noted:
        return noted
    end = next((e.at for e in reversed(run.events) if e.kind in ENDING), None)
    mine = []
    for version in every:  # no note: the versions written to while the run lived
        times = [o.last_modified for o in storage.list(storage.key(LOGS, version) + "/") if o.last_modified]
        if times and max(times) >= run.record.created and (end is None or min(times) <= end):
            mine.append(version)
    return mine


def local_log_cache(storage: Storage) -> Path:
    """``~/.cache/gpu-deploy/logs/<bucket>/<prefix>``: where ``fab tensorboard`` keeps the logs."""
    return default_cache_dir() / "logs" / storage.bucket / (storage.prefix or "_")


@dataclass(frozen=True)
class LogDownload:
    folder: str
    versions: tuple[str, ...]
    files: int
    bytes: int

    def summary(self) -> str:
        if not self.versions:
            return f"No TensorBoard logs in the bucket for this run yet; {self.folder} is empty."
        moved = f"{self.files} new or changed file(s), {self.bytes} bytes" if self.files else "nothing new"
        return f"logs {', '.join(self.versions)} -> {self.folder}: {moved}"


def download_logs(storage: Storage, folder: str | os.PathLike[str], versions: Iterable[str]) -> LogDownload:
    """Bring ``logs/<version>/`` for each version into ``folder/<version>/``; only what changed moves."""
    files = moved = 0
    done = []
    for version in versions:
        prefix = storage.key(LOGS, version)
        local = os.path.join(folder, version)
        cache = cache_for(storage, prefix, local)
        try:
            plan = plan_download(storage, prefix, local, cache=cache)
        except StorageError:
            continue  # the version vanished between listing and planning
        result = execute(storage, plan, cache=cache)
        files += len(result.moved)
        moved += result.bytes
        done.append(version)
    return LogDownload(folder=str(folder), versions=tuple(done), files=files, bytes=moved)

