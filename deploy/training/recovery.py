"""On start: send the checkpoints a killed run staged but never confirmed, and offer the newest to resume.

A run killed with SIGKILL, by the OOM killer or by a preemption leaves its unsent checkpoints in the
upload journal (:mod:`deploy.training.journal`). :func:`recover_staged` finds them under the given
roots, checks each is a whole checkpoint, aborts any multipart upload the killed helper left open
for its key, uploads it with its epoch and step metadata, and removes the entry once it is in the
bucket. The newest verified one is hard-linked into the resume folder first, so the resume step can
use the local file (:func:`deploy.training.resume.resolve_checkpoint` prefers it over an older
object in the bucket) instead of downloading it again, even when its upload failed.

Example::

    recovery = recover_staged(lambda: storage, ["."], Path(".resume"))
    print(recovery.message)          # sent 1 checkpoint a stopped run left unsent: epoch=3-step=120.ckpt
    plan = resolve_checkpoint("s3", lambda: storage, Path(".resume"), local=recovery.newest)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.errors import DeployError
from deploy.training.journal import RunFolders, StagedCheckpoint, discard, find_staged, usable_file
from deploy.training.transfer import abort_open_uploads


@dataclass(frozen=True)
class LocalCheckpoint:
    """A verified checkpoint file on this machine, with the step its journal entry recorded."""

    path: str
    step: int
    name: str
    key: str
    run: str = ""
    """The run that staged it (its ``run`` metadata); empty when it was trained without RUN_ID."""


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover_staged` did: names sent, names that failed (kept for the next start), names
    that were unusable (removed), and the newest verified local checkpoint."""

    uploaded: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    unusable: tuple[str, ...] = ()
    newest: LocalCheckpoint | None = None
    details: tuple[str, ...] = field(default_factory=tuple)

    @property
    def message(self) -> str:
        parts = []
        if self.uploaded:
            parts.append(f"sent {len(self.uploaded)} checkpoint(s) a stopped run left unsent: {', '.join(self.uploaded)}")
        if self.failed:
            parts.append(f"{len(self.failed)} could not be sent and stay staged for the next start: "
                         + "; ".join(self.details))
        if self.unusable:
            parts.append(f"removed {len(self.unusable)} staged file(s) that were not whole checkpoints: "
                         f"{', '.join(self.unusable)}")
        return "; ".join(parts) if parts else "no unsent checkpoints from an earlier run"


def keep_for_resume(path: str, name: str, dest_dir: Path) -> str:
    """Hard-link (else copy) ``path`` into ``dest_dir`` as ``name``, the only checkpoint there (``path`` may be
    that file already: an earlier resume's file found again)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / name
    if os.path.realpath(path) == os.path.realpath(dest):
        for old in dest_dir.glob("*.ckpt"):
            if old.name != name:
                old.unlink()
        return str(dest)
    for old in dest_dir.glob("*.ckpt"):
        old.unlink()  # an earlier resume's file: checkpoints are large, keep only one
    try:
        os.link(path, dest)
    except OSError:
        shutil.copyfile(path, dest)
    return str(dest)


def _newest(usable: list[tuple[StagedCheckpoint, str]]) -> tuple[StagedCheckpoint, str] | None:
    with_step = [(s, f) for s, f in usable if s.step is not None]
    return max(with_step, key=lambda sf: (sf[0].step, sf[0].staged_at)) if with_step else None


def recover_staged(storage: Callable[[], Any], roots: Iterable[str], dest_dir: Path,
                   folders: RunFolders | None = None) -> Recovery:
    """Upload every staged, unconfirmed checkpoint under ``roots`` (oldest first); see the module doc.

    ``storage`` is only called when there is something to send; ``folders``: the walk of ``roots`` made already.
    """
    usable: list[tuple[StagedCheckpoint, str]] = []
    unusable: list[str] = []
    for staged in find_staged(roots, folders=folders):
        path = usable_file(staged)
        if path is None:
            unusable.append(staged.name)
            discard(staged)
        else:
            usable.append((staged, path))
    newest_pair = _newest(usable)
    newest = None
    if newest_pair is not None:
        staged, path = newest_pair
        assert staged.step is not None
        newest = LocalCheckpoint(keep_for_resume(path, staged.name, dest_dir), staged.step, staged.name, staged.key,
                                 run=str(staged.metadata.get("run", "")))
    uploaded: list[str] = []
    failed: list[str] = []
    details: list[str] = []
    for staged, path in usable:
        try:
            store = storage()
            abort_open_uploads(store, [staged.key])  # what the killed helper left open for this key
            store.upload_file(path, staged.key, metadata=dict(staged.metadata))
        except DeployError as exc:
            failed.append(staged.name)
            details.append(f"{staged.name}: {exc}")
            continue
        discard(staged)
        uploaded.append(staged.name)
    return Recovery(tuple(uploaded), tuple(failed), tuple(unusable), newest, tuple(details))
