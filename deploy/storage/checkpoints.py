"""Checkpoints and log versions in the bucket: names parsed, ordered by global step, never by string.

Lightning names checkpoints ``epoch=749-step=355500-val_loss=27.5963.ckpt`` (plus ``last.ckpt``
and ``-v1`` duplicates). A string sort puts ``step=9`` after ``step=14`` and ``version_9`` after
``version_14``; everything here orders by numbers.

Every other ``name=value`` pair in a name is a metric the listing shows (``val_loss``, Piper's
``val_mel`` ...), and an object whose size differs from the ``size`` its uploader recorded is flagged
(a truncated or replaced file: resume would skip it).

"Latest" is the highest global step, read from the object's ``step`` metadata (written by
:func:`checkpoint_metadata`), else from ``step=N`` in the name; a checkpoint with no known step
(``last.ckpt`` from an older script) ranks below every one with a step, and such checkpoints rank
among themselves by last-modified time.

Example::

    storage = Storage.from_settings(load_settings())
    newest = latest_checkpoint(storage)
    if newest is not None:
        storage.download_file(newest.key, newest.name)
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from deploy.storage import CHECKPOINTS, LOGS, ObjectInfo, Storage
from deploy.storage.scan import head  # names wrong credentials as such, not as "access denied"

CHECKPOINT_SUFFIX = ".ckpt"
EPOCH_KEY = "epoch"
STEP_KEY = "step"
SIZE_KEY = "size"  # metadata the training side's uploader records
RUN_METADATA = "run"
"""Metadata naming the run that uploaded a checkpoint (the training side sets it from ``RUN_ID``)."""
ATTEMPT_METADATA = "attempt"
"""Metadata naming the run's attempt (deploy.training.lease) whose training uploaded it."""
_EPOCH_ZERO = datetime(1970, 1, 1, tzinfo=timezone.utc)

# "-" starts a new "name=value" pair only when a name follows: values may be negative (val_loss=-0.5).
_PAIR_SPLIT = re.compile(r"-(?=[A-Za-z_][A-Za-z0-9_./]*=)")
_DUPLICATE_SUFFIX = re.compile(r"-v(\d+)$")
_NUMBER_RUNS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class CheckpointName:
    """What a checkpoint's file name says: ``epoch``, ``step`` and any other ``name=value`` metrics."""

    epoch: int | None = None
    step: int | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def val_loss(self) -> float | None:
        return self.metrics.get("val_loss")


def parse_checkpoint_name(name: str) -> CheckpointName:
    """Parse a Lightning checkpoint file name; parts that are not ``name=number`` are ignored.

    >>> parse_checkpoint_name("epoch=749-step=355500-val_loss=27.5963.ckpt")
    CheckpointName(epoch=749, step=355500, metrics={'val_loss': 27.5963})
    >>> parse_checkpoint_name("last.ckpt")
    CheckpointName(epoch=None, step=None, metrics={})
    """
    stem = name.rsplit("/", 1)[-1]
    if stem.endswith(CHECKPOINT_SUFFIX):
        stem = stem[: -len(CHECKPOINT_SUFFIX)]
    stem = _DUPLICATE_SUFFIX.sub("", stem)
    epoch = step = None
    metrics: dict[str, float] = {}
    for part in _PAIR_SPLIT.split(stem):
        key, sep, raw = part.partition("=")
        if not sep:
            continue
        if key in (EPOCH_KEY, STEP_KEY):
            if raw.isdigit():
                if key == EPOCH_KEY:
                    epoch = int(raw)
                else:
                    step = int(raw)
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        if math.isfinite(value):
            metrics[key] = value
    return CheckpointName(epoch=epoch, step=step, metrics=metrics)


def checkpoint_metadata(epoch: int | None, step: int, val_loss: float | None = None) -> dict[str, str]:
    """Object metadata for a checkpoint upload, so "latest" does not depend on the file name.

    >>> checkpoint_metadata(749, 355500)
    {'epoch': '749', 'step': '355500'}
    """
    if step < 0 or (epoch is not None and epoch < 0):
        raise ValueError(f"epoch and step must be >= 0, got epoch={epoch} step={step}")
    meta = {STEP_KEY: str(int(step))}
    if epoch is not None:
        meta = {EPOCH_KEY: str(int(epoch)), **meta}
    if val_loss is not None:
        meta["val_loss"] = repr(float(val_loss))
    return meta


def _int_or_none(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint in the bucket: a row of ``fab s3.checkpoints``."""

    name: str
    key: str
    size: int
    uploaded: datetime | None
    epoch: int | None
    step: int | None
    val_loss: float | None
    step_source: str
    """Where ``step`` came from: ``metadata``, ``name`` or ``none``."""
    sha256: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    """Every metric the name carries (``val_mel``, ``val_loss`` ...), plus ``val_loss`` metadata."""
    recorded_size: int | None = None
    """The ``size`` metadata the uploader wrote; None for objects older scripts uploaded."""
    run: str | None = None
    """The run that uploaded it (``run`` metadata); None for unlabelled ones (older scripts, no RUN_ID)."""
    attempt: int | None = None
    """The run's attempt whose training uploaded it (``attempt`` metadata), when known."""

    @property
    def size_mismatch(self) -> bool:
        """The object is not the size its uploader recorded (truncated, or replaced by something else)."""
        return self.recorded_size is not None and self.recorded_size != self.size

    @classmethod
    def from_object(cls, obj: ObjectInfo) -> "CheckpointInfo":
        parsed = parse_checkpoint_name(obj.name)
        meta = {k.lower(): v for k, v in obj.metadata.items()}
        meta_step = _int_or_none(meta.get(STEP_KEY))
        meta_epoch = _int_or_none(meta.get(EPOCH_KEY))
        val_loss = parsed.val_loss
        if val_loss is None and meta.get("val_loss"):
            try:
                val_loss = float(meta["val_loss"])
            except ValueError:
                val_loss = None
        metrics = dict(parsed.metrics)
        if val_loss is not None:
            metrics.setdefault("val_loss", val_loss)
        if meta_step is not None:
            step, source = meta_step, "metadata"
        elif parsed.step is not None:
            step, source = parsed.step, "name"
        else:
            step, source = None, "none"
        return cls(name=obj.name, key=obj.key, size=obj.size, uploaded=obj.last_modified,
                   epoch=meta_epoch if meta_epoch is not None else parsed.epoch, step=step,
                   val_loss=val_loss, step_source=source, sha256=obj.sha256, metrics=metrics,
                   recorded_size=_int_or_none(meta.get(SIZE_KEY)),
                   run=(meta.get(RUN_METADATA) or "").strip() or None, attempt=_int_or_none(meta.get(ATTEMPT_METADATA)))

    def sort_key(self) -> tuple[Any, ...]:
        """Known steps first by step, then last-modified, then name (so ties are deterministic)."""
        return (self.step is not None, self.step or 0, self.uploaded or _EPOCH_ZERO, natural_key(self.name))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "key": self.key, "size": self.size,
            "uploaded": self.uploaded.isoformat() if self.uploaded else None,
            "epoch": self.epoch, "step": self.step, "val_loss": self.val_loss,
            "step_source": self.step_source, "sha256": self.sha256, "metrics": dict(self.metrics),
            "recorded_size": self.recorded_size, "size_mismatch": self.size_mismatch,
            "run": self.run, "attempt": self.attempt,
        }


def metric_names(checkpoints: Iterable[CheckpointInfo]) -> list[str]:
    """The metrics any checkpoint carries, in first-seen order: a listing's metric columns.

    >>> metric_names([CheckpointInfo.from_object(ObjectInfo(key="c/epoch=1-step=9-val_mel=0.41.ckpt", size=1))])
    ['val_mel']
    """
    return list(dict.fromkeys(name for cp in checkpoints for name in cp.metrics))


def sort_checkpoints(checkpoints: Iterable[CheckpointInfo]) -> list[CheckpointInfo]:
    """Oldest first, newest (the one to resume from) last."""
    return sorted(checkpoints, key=CheckpointInfo.sort_key)


def list_checkpoints(storage: Storage, with_metadata: bool = True, heads: HeadCache | None = None
                     ) -> list[CheckpointInfo]:
    """Every ``*.ckpt`` under ``checkpoints/``, sorted by global step (newest last).

    ``with_metadata`` heads each checkpoint (in parallel) to read its ``step`` metadata; a bucket
    holds tens of checkpoints, not thousands, so this is a handful of small requests. ``heads``: what
    earlier listings on this machine headed; only the objects it does not know as listed are headed.
    """
    prefix = storage.key(CHECKPOINTS) + "/"
    objects = [o for o in storage.list(prefix) if o.key.endswith(CHECKPOINT_SUFFIX)]
    if with_metadata and objects:
        known = heads.known(objects) if heads is not None else {}
        unknown = [o for o in objects if o.key not in known]
        headed: dict[str, ObjectInfo | None] = {}
        if unknown:
            workers = max(1, min(16, len(unknown), getattr(storage.config, "max_request_concurrency", 10)))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                headed = dict(zip((o.key for o in unknown), pool.map(storage.head, [o.key for o in unknown])))
        found = {**known, **{key: info for key, info in headed.items() if info is not None}}
        if heads is not None:
            heads.keep(objects, found)
        # An object deleted between the listing and the head keeps its listed facts.
        objects = [found.get(o.key) or o for o in objects]
    return sort_checkpoints(CheckpointInfo.from_object(o) for o in objects)


class HeadCache:
    """The metadata of checkpoints headed before, in a JSON file on this machine, each under its listed identity.

    An object's metadata changes only when the object is written again, and a write gives it a new
    last-modified time (and, but for identical bytes, a new ETag); so an object listed with the key, size,
    ETag and last-modified time a head was kept under has that head's metadata. A file that is missing,
    unreadable or not this shape is an empty cache (everything is headed); it holds nothing secret.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._read: dict[str, Any] = {}  # what :meth:`known` read: an unchanged cache is not written again

    @staticmethod
    def _identity(obj: ObjectInfo) -> list[Any]:
        return [obj.size, obj.etag, obj.last_modified.isoformat() if obj.last_modified else None]

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def known(self, listed: Iterable[ObjectInfo]) -> dict[str, ObjectInfo]:
        """The listed objects this cache has heads for, as headed (listed facts, kept metadata)."""
        kept = self._read = self._load()
        found: dict[str, ObjectInfo] = {}
        for obj in listed:
            entry = kept.get(obj.key)
            if (isinstance(entry, dict) and entry.get("id") == self._identity(obj)
                    and isinstance(entry.get("metadata"), dict)):
                metadata = {str(k): str(v) for k, v in entry["metadata"].items()}
                found[obj.key] = ObjectInfo(obj.key, obj.size, obj.last_modified, obj.etag, metadata)
        return found

    def keep(self, listed: Iterable[ObjectInfo], headed: Mapping[str, ObjectInfo]) -> None:
        """Keep the heads of the ``listed`` objects (each under its identity as listed: a head's time has another
        precision), and only those (an object gone from the listing is forgotten); best effort."""
        data = {o.key: {"id": self._identity(o), "metadata": dict(headed[o.key].metadata)}
                for o in listed if o.key in headed}
        if json.loads(json.dumps(data)) == self._read:
            return  # nothing new was headed and nothing is gone
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(self.path.name + ".partial")
            partial.write_text(json.dumps(data))
            os.replace(partial, self.path)
        except OSError:
            pass  # a read-only or full disk: the next listing heads again


@dataclass(frozen=True)
class RunCandidates:
    """Checkpoints split by run: those a run may resume from, and those of other runs (both oldest first)."""

    candidates: tuple[CheckpointInfo, ...]
    others: tuple[CheckpointInfo, ...] = ()

    @property
    def newest_other(self) -> CheckpointInfo | None:
        return self.others[-1] if self.others else None


def run_candidates(checkpoints: Iterable[CheckpointInfo], run_id: str, also: Iterable[str] = ()) -> RunCandidates:
    """Which checkpoints run ``run_id`` may resume from: its own, those of the runs in ``also``
    (``FROM_RUN``), and unlabelled ones (no ``run`` metadata: buckets older scripts wrote). Without a
    ``run_id`` every checkpoint is a candidate, as before runs had ids.

    >>> mine = CheckpointInfo.from_object(ObjectInfo("c/a.ckpt", 1, metadata={"run": "r1", "step": "5"}))
    >>> other = CheckpointInfo.from_object(ObjectInfo("c/b.ckpt", 1, metadata={"run": "r0", "step": "9"}))
    >>> [c.name for c in run_candidates([mine, other], "r1").candidates]
    ['a.ckpt']
    """
    ordered = sort_checkpoints(checkpoints)
    if not run_id:
        return RunCandidates(tuple(ordered))
    wanted = {run_id, *(r for r in also if r)}
    return RunCandidates(tuple(c for c in ordered if c.run is None or c.run in wanted),
                         tuple(c for c in ordered if c.run is not None and c.run not in wanted))


def latest_checkpoint(storage: Storage) -> CheckpointInfo | None:
    """The checkpoint with the highest global step, or None when there is none."""
    found = list_checkpoints(storage)
    return found[-1] if found else None


def find_checkpoint(storage: Storage, name: str) -> CheckpointInfo | None:
    """The checkpoint called ``name`` (a file name under ``checkpoints/``), or None."""
    info = head(storage, storage.key(CHECKPOINTS, name))
    return CheckpointInfo.from_object(info) if info is not None else None


# --------------------------------------------------------------------------- natural order


def natural_key(text: str) -> tuple[Any, ...]:
    """A sort key that compares digit runs as numbers: ``version_9`` before ``version_14``.

    >>> sorted(["version_14", "version_9", "version_100"], key=natural_key)
    ['version_9', 'version_14', 'version_100']
    """
    parts = _NUMBER_RUNS.split(text)
    # Alternate (text, number) pairs so str and int are never compared with each other.
    return tuple((0, int(p), "") if i % 2 else (1, 0, p) for i, p in enumerate(parts) if p != "" or i == 0)


def natural_sorted(items: Iterable[str]) -> list[str]:
    return sorted(items, key=natural_key)


def list_log_versions(storage: Storage) -> list[str]:
    """The ``version_N`` folders under ``logs/``, in numeric order (newest last)."""
    prefix = storage.key(LOGS) + "/"
    try:
        pages = storage.client.get_paginator("list_objects_v2").paginate(
            Bucket=storage.bucket, Prefix=prefix, Delimiter="/")
        names = [p["Prefix"][len(prefix):].rstrip("/") for page in pages for p in page.get("CommonPrefixes", [])]
    except (ClientError, BotoCoreError) as exc:
        raise storage.explain(exc, prefix) from exc
    return natural_sorted(n for n in names if n)
