"""The upload journal: which checkpoint files were staged for upload and not yet confirmed in the bucket.

:class:`~deploy.training.callbacks.S3CheckpointSync` hard-links each finished checkpoint into the
staging folder ``.s3-sync/`` beside it and writes a small JSON entry next to the link (key, epoch and
step metadata, the source file, when it was staged). The uploader removes both once the object is
in the bucket. Whatever is still there after a kill -9, an OOM kill or a preemption was never
confirmed: :func:`find_staged` finds it on the next start, :func:`usable_file` checks it is a whole
checkpoint, and :mod:`deploy.training.recovery` sends it before training continues.

Before the checkpoint file is written, an *intent* entry (no snapshot yet) is written for it, and
replaced by the full entry once the file is complete and linked: a kill while Lightning writes the
file, or between the write and the link, leaves the intent, and the next start sends the file if it
turns out whole (:func:`usable_file`). Entries are renamed into place, so each is whole or absent;
a link without an entry is removed as debris.

Example::

    staged = stage("ckpts/epoch=0-step=10.ckpt", "run/checkpoints/epoch=0-step=10.ckpt", {"step": "10"})
    ...                                  # the process is killed before the upload
    for entry in find_staged(["."]):     # the next start
        print(entry.key, usable_file(entry))
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

STAGING_DIR = ".s3-sync"
"""Folder beside the checkpoints where finished files wait (hard-linked) for their upload."""
ENTRY_SUFFIX = ".json"
SCAN_DEPTH = 6
"""How deep below a root :func:`find_staged` looks (``lightning_logs/version_N/checkpoints/.s3-sync`` is 4)."""
_SKIP_DIRS = frozenset({"__pycache__", "node_modules"})


@dataclass(frozen=True)
class StagedCheckpoint:
    """One journal entry: a checkpoint file staged for ``key`` and not yet confirmed in the bucket."""

    entry: str
    key: str
    snapshot: str
    source: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    size: int = 0
    staged_at: float = 0.0

    @property
    def name(self) -> str:
        return os.path.basename(self.source or self.snapshot)

    @property
    def step(self) -> int | None:
        raw = self.metadata.get("step")
        return int(raw) if raw is not None and str(raw).isdigit() else None


def looks_like_checkpoint(path: str | os.PathLike[str]) -> bool:
    """``torch.save`` writes a zip archive; a truncated or overwritten one is not a valid zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _link_or_copy(path: str, target: str) -> None:
    try:
        os.link(path, target)
    except OSError:
        shutil.copyfile(path, target)  # no hard links on this file system: pay for one copy


def _write_json(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)  # an entry is either whole or absent


def _save(staged: StagedCheckpoint) -> StagedCheckpoint:
    _write_json(staged.entry, {"key": staged.key, "snapshot": staged.snapshot, "source": staged.source,
                               "metadata": dict(staged.metadata), "size": staged.size,
                               "staged_at": staged.staged_at})
    return staged


def intend(path: str, key: str, metadata: Mapping[str, str]) -> StagedCheckpoint:
    """Journal that ``path`` is about to be written for ``key`` (no snapshot yet); see the module doc."""
    staging = os.path.join(os.path.dirname(path) or ".", STAGING_DIR)
    os.makedirs(staging, exist_ok=True)
    entry = os.path.join(staging, f"{uuid.uuid4().hex[:12]}-{os.path.basename(path)}{ENTRY_SUFFIX}")
    return _save(StagedCheckpoint(entry=entry, key=key, snapshot="", source=os.path.abspath(path),
                                  metadata=dict(metadata), staged_at=time.time()))


def stage(path: str, key: str, metadata: Mapping[str, str], intent: StagedCheckpoint | None = None) -> StagedCheckpoint:
    """Snapshot ``path`` into its folder's staging folder and journal it for ``key`` (completing ``intent``).

    Lightning replaces checkpoint files by rename, so the link keeps the finished bytes even when
    ``last.ckpt`` is written again or a top-k file is deleted before its upload starts.
    """
    staging = os.path.join(os.path.dirname(path) or ".", STAGING_DIR)
    os.makedirs(staging, exist_ok=True)
    entry = intent.entry if intent is not None else \
        os.path.join(staging, f"{uuid.uuid4().hex[:12]}-{os.path.basename(path)}{ENTRY_SUFFIX}")
    snapshot = entry[: -len(ENTRY_SUFFIX)]
    _link_or_copy(path, snapshot)
    return _save(StagedCheckpoint(entry=entry, key=key, snapshot=os.path.abspath(snapshot),
                                  source=os.path.abspath(path), metadata=dict(metadata),
                                  size=os.path.getsize(snapshot), staged_at=time.time()))


def load(entry: str) -> StagedCheckpoint | None:
    """Read one journal entry; None when it is not a readable entry."""
    try:
        with open(entry, encoding="utf-8") as handle:
            data = json.load(handle)
        return StagedCheckpoint(entry=entry, key=str(data["key"]), snapshot=str(data["snapshot"]),
                                source=str(data.get("source") or ""),
                                metadata={str(k): str(v) for k, v in dict(data.get("metadata") or {}).items()},
                                size=int(data.get("size") or 0), staged_at=float(data.get("staged_at") or 0.0))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def discard(staged: StagedCheckpoint) -> None:
    """Remove an entry and its snapshot (the object is in the bucket, or can never get there)."""
    for path in (staged.snapshot, staged.entry):
        if not path:
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


@dataclass(frozen=True)
class RunFolders:
    """One walk of the folders under a run's roots (:func:`_folders`): its staging folders, and the folders that
    hold checkpoint files (where the files the bucket holds may still be on this machine); each once."""

    staging: tuple[str, ...] = ()
    checkpoints: tuple[str, ...] = ()


def scan_run(roots: Iterable[str], depth: int = SCAN_DEPTH) -> RunFolders:
    staging: dict[str, str] = {}
    checkpoints: dict[str, None] = {}
    for root in roots:
        for folder, entries in _folders(root, depth):
            for entry in entries:
                if entry.name == STAGING_DIR and entry.is_dir(follow_symlinks=False):
                    staging.setdefault(os.path.realpath(entry.path), entry.path)
            if any(e.name.endswith(".ckpt") and e.is_file(follow_symlinks=False) for e in entries):
                checkpoints.setdefault(os.path.realpath(folder))
    return RunFolders(tuple(staging.values()), tuple(checkpoints))


def checkpoint_dirs(roots: Iterable[str], depth: int = SCAN_DEPTH) -> list[str]:
    """The folders under ``roots`` that hold checkpoint files (``*.ckpt``)."""
    return list(scan_run(roots, depth).checkpoints)


def _folders(root: str, depth: int) -> Iterator[tuple[str, list[os.DirEntry[str]]]]:
    """``root`` and the folders below it with their entries, not following links, at most ``depth`` levels down.

    Hidden folders and folders this process cannot write (a read-only dataset mount) are not
    entered: no staging folder or checkpoint can have been created there.
    """
    try:
        with os.scandir(root) as listing:
            entries = list(listing)
    except OSError:
        return
    yield root, entries
    if depth <= 0:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".") and entry.name not in _SKIP_DIRS \
                and os.access(entry.path, os.W_OK):
            yield from _folders(entry.path, depth - 1)


def sweep(staging: str) -> list[StagedCheckpoint]:
    """The readable entries in one staging folder; debris (a link without an entry, a bad entry) is removed."""
    try:
        names = set(os.listdir(staging))
    except OSError:
        return []
    found: list[StagedCheckpoint] = []
    claimed: set[str] = set()
    for name in sorted(n for n in names if n.endswith(ENTRY_SUFFIX)):
        staged = load(os.path.join(staging, name))
        if staged is None:
            os.unlink(os.path.join(staging, name))
            continue
        found.append(staged)
        claimed.add(name[: -len(ENTRY_SUFFIX)])  # its snapshot, present or not yet made
    for name in names - claimed:
        if not name.endswith(ENTRY_SUFFIX):
            try:
                os.unlink(os.path.join(staging, name))  # a snapshot whose entry was never written
            except OSError:
                pass
    return found


def find_staged(roots: Iterable[str], depth: int = SCAN_DEPTH, folders: RunFolders | None = None
                ) -> list[StagedCheckpoint]:
    """Every journal entry under ``roots`` (each staging folder once), oldest staged first; ``folders``: the walk
    of those roots made already."""
    found: list[StagedCheckpoint] = []
    for staging in (folders if folders is not None else scan_run(roots, depth)).staging:
        found.extend(sweep(staging))
    return sorted(found, key=lambda s: s.staged_at)


def usable_file(staged: StagedCheckpoint) -> str | None:
    """The file holding the staged checkpoint, checked: its snapshot, else its unchanged source.

    The source stands in only when it was not written again after staging (``last.ckpt`` is),
    since its bytes would then belong to a later step than the entry's metadata says. For an
    intent (no snapshot: killed while the file was written), the source counts only when it was
    written after the intent and is a whole checkpoint.
    """
    source = staged.source
    if not staged.snapshot:
        fresh = source and os.path.isfile(source) and os.path.getmtime(source) >= staged.staged_at - 1.0
        return source if fresh and looks_like_checkpoint(source) else None
    snapshot = staged.snapshot
    if os.path.isfile(snapshot) and (not staged.size or os.path.getsize(snapshot) == staged.size):
        return snapshot if looks_like_checkpoint(snapshot) else None
    if source and os.path.isfile(source) and os.path.getmtime(source) <= staged.staged_at + 1.0:
        return source if looks_like_checkpoint(source) else None
    return None
