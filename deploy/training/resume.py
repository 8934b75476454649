"""Which checkpoint to resume from: the ``CHECKPOINT`` setting turned into a verified local file.

- ``s3``: the checkpoint with the highest global step in the bucket's ``checkpoints/``; when its
  download is corrupt or truncated (sha256 or size do not match its metadata, or it is not a
  checkpoint archive), the next newest, and so on. None at all: start fresh. A verified local
  checkpoint that a killed run staged but had not uploaded (``local``, from
  :mod:`deploy.training.recovery`) wins over every object with a lower or equal step.
  With ``RUN_ID`` set, only this run's checkpoints (``run`` metadata), those of ``FROM_RUN`` and
  unlabelled ones (older scripts wrote no ``run``) are candidates: another run's checkpoints are
  skipped, and when nothing else is left training starts fresh and says whose they were.
  The chosen object is read from this machine when a file of its name, size and sha256 is still in a
  folder under the run that holds checkpoint files (``near``: a redeploy or a reload on the same host
  resumes from the step its stop saved without downloading it back); otherwise it is downloaded.
- ``s3://bucket/key``: that object (verified the same way; no fallback: you named it).
- a local path: that file. Empty: start fresh.

Every outcome says what it did in :attr:`ResumePlan.message`, so the entrypoint can print it.

Example::

    plan = resolve_checkpoint("s3", lambda: Storage.from_settings(settings), Path(".resume"))
    print(plan.message)     # resuming from s3://bucket/checkpoints/last.ckpt (step 120)
    trainer.fit(model, ckpt_path=plan.path)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from deploy.storage.checkpoints import CheckpointInfo, HeadCache, RunCandidates, list_checkpoints, run_candidates
from deploy.errors import StorageError, TrainingError
from deploy.storage import Storage
from deploy.storage.bucket import hash_file
from deploy.training.journal import looks_like_checkpoint
from deploy.training.recovery import LocalCheckpoint, keep_for_resume

S3_LATEST = "s3"
HEADS_FILE = "checkpoint-heads.json"  # in the resume folder: see deploy.storage.checkpoints.HeadCache
STOP_RECORD_ENV = "GPU_DEPLOY_STOP_RECORD"
"""Where a training writes :class:`StopRecord` when its stop checkpoint is uploaded (the entrypoint sets it)."""


@dataclass(frozen=True)
class StopRecord:
    """The checkpoint a graceful stop saved and uploaded: its step, its key in the bucket, the file on this machine.

    A reload resumes from exactly this checkpoint (the step saved on stop is the step resumed), so it needs
    no listing of the bucket: one head checks that the object is there with this step and this run, and
    the file is used when its size and sha256 are the object's (:func:`local_copy`).
    """

    step: int
    key: str
    path: str

    def write(self, target: str | os.PathLike[str]) -> None:
        """Best effort, atomically: a record that cannot be written only costs the reload its listing."""
        part = Path(f"{target}.part")
        try:
            part.write_text(json.dumps({"step": self.step, "key": self.key, "path": self.path}))
            os.replace(part, target)
        except OSError:
            pass

    @classmethod
    def take(cls, source: str | os.PathLike[str]) -> StopRecord | None:
        """The record at ``source``, removed (one reload uses it); None when there is none or it is not one."""
        try:
            data = json.loads(Path(source).read_text())
            Path(source).unlink()
            return cls(int(data["step"]), str(data["key"]), str(data["path"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class ResumePlan:
    """Where training resumes from (``path`` None: from scratch) and why."""

    requested: str
    path: str | None
    source: str | None = None
    step: int | None = None
    skipped: tuple[str, ...] = field(default_factory=tuple)
    message: str = ""


__all__ = ["S3_LATEST", "ResumePlan", "StopRecord", "from_stop", "looks_like_checkpoint", "resolve_checkpoint",
           "resume_from_latest"]


def _fetch(storage: Storage, key: str, dest_dir: Path) -> str:
    """Download ``key`` into ``dest_dir`` (verified by :meth:`Storage.download_file`) and sanity-check it."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / os.path.basename(key)
    for old in dest_dir.glob("*.ckpt"):
        if old != dest:
            old.unlink()  # an earlier resume's download: checkpoints are large, keep only one
    storage.download_file(key, dest)
    if not looks_like_checkpoint(dest):
        dest.unlink(missing_ok=True)
        raise StorageError(f"{storage.url(key)} is corrupt: it is not a checkpoint archive.")
    return str(dest)


def local_copy(info: CheckpointInfo, near: Sequence[str]) -> str | None:
    """A file in ``near`` that is the object ``info`` byte for byte (its name, its size, the sha256 the
    uploader recorded) and a whole checkpoint archive; None when there is none or the object has no sha256."""
    if not info.sha256:
        return None
    for folder in near:
        path = os.path.join(folder, info.name)
        try:
            if not os.path.isfile(path) or os.path.getsize(path) != info.size:
                continue
            if hash_file(path)[0] == info.sha256 and looks_like_checkpoint(path):
                return path
        except OSError:
            continue  # gone or unreadable: the bucket's copy serves
    return None


def _obtain(storage: Storage, info: CheckpointInfo, dest_dir: Path, near: Sequence[str]) -> tuple[str, str]:
    """The resume file for ``info`` and how it was had: from this machine's identical copy, else downloaded."""
    copy = local_copy(info, near)
    if copy is not None:
        return keep_for_resume(copy, info.name, dest_dir), "; read from this machine's copy (its sha256 matches)"
    return _fetch(storage, info.key, dest_dir), ""


def _is_damage(exc: StorageError) -> bool:
    text = str(exc)
    return "is corrupt" in text or "truncated" in text


def _from_local(local: LocalCheckpoint, skipped: list[str], note: str = "") -> ResumePlan:
    if skipped:
        note += f"; skipped {len(skipped)} newer one(s) in S3 that failed verification: {'; '.join(skipped)}"
    return ResumePlan(S3_LATEST, local.path, local.path, local.step, tuple(skipped),
                      f"resuming from {local.name} (step {local.step}) on this machine, where a killed run "
                      f"left it unsent; nothing newer is in S3{note}")


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _foreign(folder: str, scope: RunCandidates) -> str:
    """Starting fresh because every checkpoint in the bucket belongs to another run: say whose, and how to continue it."""
    newest = scope.newest_other
    assert newest is not None
    count = len(scope.others)
    step = f", step {newest.step}" if newest.step is not None else ""
    return (f"starting fresh: the {_plural(count, 'checkpoint', 'checkpoints')} in {folder}/ "
            f"{'belongs' if count == 1 else 'belong'} to other runs (newest: run {newest.run}{step}); "
            f"to continue that run set FROM_RUN={newest.run} or pass --from-run {newest.run}")


def _whose(info: CheckpointInfo, run_id: str, from_run: str, scope: RunCandidates) -> str:
    """What the message adds about the chosen checkpoint's run, when runs matter (RUN_ID set)."""
    if not run_id:
        return ""
    if from_run and info.run == from_run:
        note = f" of run {from_run}, as FROM_RUN asks"
    elif from_run:
        theirs = [c for c in scope.candidates if c.run == from_run]
        newest = f" (newest step {theirs[-1].step})" if theirs and theirs[-1].step is not None else ""
        owner = f"run {info.run}" if info.run else "no recorded run"
        note = f" ({owner}), newer than every checkpoint of FROM_RUN={from_run}{newest}"
    elif info.run is None:
        note = " (uploaded without a run id)"
    else:
        note = ""
    later = [c for c in scope.others if (c.step or 0) > (info.step or 0)]
    if later:
        note += (f"; skipped {_plural(len(later), 'newer checkpoint', 'newer checkpoints')} of other runs "
                 f"(newest: run {later[-1].run}, step {later[-1].step})")
    return note


def resume_from_latest(storage: Storage, dest_dir: Path, candidates: list[CheckpointInfo] | None = None,
                       local: LocalCheckpoint | None = None, run_id: str = "", from_run: str = "",
                       near: Sequence[str] = ()) -> ResumePlan:
    """Newest checkpoint first; skip the ones that do not verify, saying which and why.

    ``local`` (a verified file on this machine) is used when no object in the bucket has a higher step.
    With ``run_id``, only that run's checkpoints, ``from_run``'s and unlabelled ones are candidates
    (:func:`deploy.storage.checkpoints.run_candidates`). ``near``: folders where an identical copy of the
    chosen object may be (:func:`local_copy`).
    """
    folder = storage.url(storage.key("checkpoints"))
    if candidates is None:  # heads kept beside the resume file: a reload or a restart here heads only what is new
        candidates = list_checkpoints(storage, heads=HeadCache(dest_dir / HEADS_FILE))
    scope = run_candidates(candidates, run_id, (from_run,) if from_run else ())
    note = ""
    if local is not None and run_id and local.run and local.run not in (run_id, from_run):
        note = f"; left {local.name} on this machine aside: run {local.run} staged it"
        local = None
    ordered = list(reversed(scope.candidates))
    if from_run and run_id and not any(c.run == from_run for c in ordered):
        if not ordered and local is None:
            raise TrainingError(f"FROM_RUN={from_run} has no checkpoint in {folder}/ (fab runs lists the runs); "
                                "correct it, or unset FROM_RUN to start fresh.")
        note += f"; FROM_RUN={from_run} has no checkpoint in {folder}/"
    if not ordered and local is None:
        if scope.others:
            return ResumePlan(S3_LATEST, None, message=_foreign(folder, scope) + note)
        return ResumePlan(S3_LATEST, None, message=f"no checkpoint in {folder}/; starting fresh{note}")
    skipped: list[str] = []
    for info in ordered:
        if local is not None and (info.step is None or info.step <= local.step):
            return _from_local(local, skipped, note)
        try:
            path, how = _obtain(storage, info, dest_dir, near)
        except StorageError as exc:
            if not _is_damage(exc):
                # The bucket is unreachable: falling back would silently resume from an older step.
                raise TrainingError(f"Cannot fetch {storage.url(info.key)} to resume from: {exc}") from exc
            skipped.append(f"{info.name}: {exc}")
            continue
        step = f" (step {info.step})" if info.step is not None else ""
        whose = _whose(info, run_id, from_run, scope)
        bad = f"; skipped {len(skipped)} newer one(s) that failed verification: {'; '.join(skipped)}" if skipped else ""
        return ResumePlan(S3_LATEST, path, storage.url(info.key), info.step, tuple(skipped),
                          f"resuming from {storage.url(info.key)}{step}{whose}{how}{bad}{note}")
    if local is not None:
        return _from_local(local, skipped, note)
    which = f" that run {run_id} may resume from" if run_id else ""
    raise TrainingError(f"Every checkpoint in {folder}/{which} failed verification: " + "; ".join(skipped)
                        + ". Set CHECKPOINT= (empty) to start fresh.")


def from_stop(storage: Storage, stopped: StopRecord, dest_dir: Path, run_id: str = "") -> ResumePlan | None:
    """The plan for a reload: resume from the checkpoint its stop saved, checked by one head and its sha256; None
    when anything about it does not hold (then the bucket is listed as for any start)."""
    try:
        found = storage.head(stopped.key)
    except StorageError:
        return None
    if found is None:
        return None
    info = CheckpointInfo.from_object(found)
    if info.step != stopped.step or (run_id and info.run != run_id):
        return None
    copy = local_copy(info, [os.path.dirname(stopped.path)])
    if copy is None:
        return None
    path = keep_for_resume(copy, info.name, dest_dir)
    return ResumePlan(S3_LATEST, path, storage.url(info.key), info.step,
                      message=f"resuming from {storage.url(info.key)} (step {info.step}), which the stop before this "
                              "reload saved; read from this machine's copy (its sha256 matches)")


def resolve_checkpoint(value: str, storage: Callable[[], Storage], dest_dir: Path,
                       local: LocalCheckpoint | None = None, run_id: str = "", from_run: str = "",
                       near: Sequence[str] = (), stopped: StopRecord | None = None) -> ResumePlan:
    """Turn a ``CHECKPOINT`` value into a :class:`ResumePlan`. ``storage`` is only called when needed.

    ``local``, ``run_id`` (``RUN_ID``), ``from_run`` (``FROM_RUN``) and ``near`` only matter for ``s3``: see
    :func:`resume_from_latest`. ``stopped``: a reload's stop checkpoint, used for ``s3`` when it checks out and
    nothing staged is left to send (:func:`from_stop`).
    """
    value = (value or "").strip()
    if not value:
        return ResumePlan("", None, message="CHECKPOINT is empty; starting fresh")
    dest_dir.mkdir(parents=True, exist_ok=True)
    if value.lower() == S3_LATEST:
        store = storage()
        plan = from_stop(store, stopped, dest_dir, run_id) if stopped is not None and local is None else None
        return plan or resume_from_latest(store, dest_dir, local=local, run_id=run_id, from_run=from_run, near=near)
    if value.startswith("s3://"):
        parts = urlparse(value)
        store = storage()
        if parts.netloc != store.bucket:
            raise TrainingError(f"CHECKPOINT={value} is in bucket {parts.netloc!r}, but S3_BUCKET is "
                                f"{store.bucket!r}; use a URI in S3_BUCKET.")
        key = parts.path.lstrip("/")
        info = store.head(key)
        if info is None:
            raise TrainingError(f"CHECKPOINT={value} does not exist; check the URI (fab s3 lists checkpoints).")
        try:
            path = _fetch(store, key, dest_dir)
        except StorageError as exc:
            raise TrainingError(f"CHECKPOINT={value} cannot be used: {exc}") from exc
        return ResumePlan(value, path, value, None, message=f"resuming from {value}")
    local = Path(value).expanduser()
    if not local.is_file():
        raise TrainingError(f"CHECKPOINT={value} is not a file here; give a path to a .ckpt, an s3:// URI or s3.")
    return ResumePlan(value, str(local), str(local), message=f"resuming from {local}")
