"""Sync plans: for every file, ``upload``/``download`` or ``skip`` and why. Plain data, nothing moves.

"Unchanged" means same size and same content: the local sha256 against the object's ``sha256``
metadata, or, for objects written by older scripts without metadata, the local md5 against the
ETag (single-part objects, and multipart ETags for the usual part sizes). Undecidable means
"changed": transferring is the safe side. The facts come from :mod:`deploy.storage.scan`;
:mod:`deploy.storage.transfer` carries a plan out.

Example::

    cache = cache_for(storage, storage.key("logs"), "logs")
    plan = plan_upload(storage, "logs", storage.key("logs"), cache=cache)
    print(plan.headline())
    for line in plan.lines():
        print(line)
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.filesize import decimal

from deploy.errors import StorageError
from deploy.storage.bucket import MB, ObjectInfo, Storage
from deploy.storage.cache import LocalFacts, RemoteFacts, SyncCache, multipart_etag
from deploy.storage.scan import LocalFile, hash_locals, head, list_remote, remote_facts, scan_local

UPLOAD = "upload"
DOWNLOAD = "download"
SKIP = "skip"
UP = "up"
DOWN = "down"

# Part sizes older uploaders use (aws cli and boto3: 8 MB; this project: 16 MB; 5 MB minimum).
COMMON_PART_SIZES = (8 * MB, 16 * MB, 5 * MB, 64 * MB, 100 * MB)

_MULTIPART_ETAG = re.compile(r"^[0-9a-f]{32}-(\d+)$")


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class SyncItem:
    """One file of a plan: where it is, where it goes, and what will happen to it."""

    rel: str
    """Path relative to the local directory, which is also the key relative to the prefix."""
    key: str
    path: str
    size: int
    action: str
    reason: str
    sha256: str | None = None
    """Upload: the local file's sha256 (written as metadata). Download: the object's, when known."""
    etag: str = ""
    mtime_ns: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "key": self.key, "size": self.size, "action": self.action,
                "reason": self.reason, "sha256": self.sha256}


@dataclass(frozen=True)
class SyncPlan:
    """What a sync would do. Plain data: print it, test it, or hand it to :func:`~deploy.storage.transfer.execute`."""

    direction: str
    local: str
    remote: str
    items: tuple[SyncItem, ...]

    @property
    def transfers(self) -> tuple[SyncItem, ...]:
        return tuple(i for i in self.items if i.action != SKIP)

    @property
    def skipped(self) -> tuple[SyncItem, ...]:
        return tuple(i for i in self.items if i.action == SKIP)

    @property
    def bytes_to_move(self) -> int:
        return sum(i.size for i in self.transfers)

    @property
    def verb(self) -> str:
        return UPLOAD if self.direction == UP else DOWNLOAD

    def headline(self, checked_in: float | None = None) -> str:
        """One line: what would move where, and what is already in place (and how long checking took)."""
        source, target = (self.local, self.remote) if self.direction == UP else (self.remote, self.local)
        moving, skipped = self.transfers, self.skipped
        if not moving:
            took = f"; checked in {checked_in:.1f} s" if checked_in is not None else ""
            return (f"Nothing to {self.verb}: {files(len(skipped))} ({decimal(sum(i.size for i in skipped))}) "
                    f"already in {target}{took}.")
        return (f"{self.verb.capitalize()} {files(len(moving))} ({decimal(self.bytes_to_move)}) "
                f"from {source} to {target}; {len(skipped)} unchanged.")

    def lines(self) -> list[str]:
        """One line per file that would move."""
        return [f"  {i.action:<8} {decimal(i.size):>10}  {i.rel}  ({i.reason})" for i in self.transfers]

    def to_dict(self) -> dict[str, Any]:
        return {"direction": self.direction, "local": self.local, "remote": self.remote,
                "files": len(self.items), "transfers": len(self.transfers), "skipped": len(self.skipped),
                "bytes_to_move": self.bytes_to_move, "items": [i.to_dict() for i in self.items]}


def files(n: int) -> str:
    """``1 file``, ``3 files``."""
    return f"{n} file" if n == 1 else f"{n} files"


# --------------------------------------------------------------------------- comparing


def compare(local: LocalFacts, remote: RemoteFacts, path: str | None = None) -> tuple[bool, str]:
    """Whether a local file and an object hold the same bytes, and how that was decided.

    sha256 metadata decides when present; otherwise the md5 of the file against the ETag (a plain
    md5 for single-part objects, the md5 of part md5s for multipart ones, tried at the usual part
    sizes when ``path`` is given). Undecidable means "changed": transferring is the safe side.
    """
    if local.size != remote.size:
        return False, "size differs"
    if remote.sha256:
        return (local.sha256 == remote.sha256, "unchanged" if local.sha256 == remote.sha256 else "content differs")
    if remote.md5:
        return (local.md5 == remote.md5, "unchanged (md5)" if local.md5 == remote.md5 else "content differs")
    parts = _MULTIPART_ETAG.match(remote.etag)
    if parts and path is not None:
        count = int(parts.group(1))
        for part_size in COMMON_PART_SIZES:
            if math.ceil(local.size / part_size) == count and multipart_etag(path, part_size) == remote.etag:
                return True, "unchanged (multipart ETag)"
        return False, "content differs (no sha256 metadata, ETag does not match)"
    return False, "cannot compare (no sha256 metadata)"


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _Sides:
    """Both sides of a sync, as scanned: local files and objects by relative path."""

    direction: str
    local_root: str
    remote_url: str
    locals_: Mapping[str, LocalFile]
    objects: Mapping[str, ObjectInfo]
    target: Mapping[str, str]
    """Upload: the key for each local file. Download: the local path for each object."""


class _Planner:
    """Decides each file of a plan; hashes only the pairs whose content must be compared."""

    def __init__(self, storage: Storage, cache: SyncCache, sides: _Sides, metadata: Mapping[str, str],
                 headed: bool) -> None:
        self.cache, self.sides, self.metadata, self.headed = cache, sides, dict(metadata), headed
        locals_, objects = sides.locals_, sides.objects
        # Which pairs need their content compared: both sides present with the same size.
        self.same_size = {rel for rel, f in locals_.items() if rel in objects and objects[rel].size == f.size}
        self.remote = remote_facts(storage, cache, {rel: objects[rel] for rel in self.same_size}, headed)
        md5_for = {rel for rel in self.same_size if not self.remote[rel].sha256 and self.remote[rel].md5}
        # Only pairs to compare are hashed now; a new file's sha256 (its upload metadata) is computed
        # while other files are already moving (see transfer.py), so a first upload does not wait for it.
        self.hashes = hash_locals([locals_[rel] for rel in self.same_size], cache, md5_for)

    def plan(self) -> SyncPlan:
        sides = self.sides
        if sides.direction == UP:
            items = [self._upload(rel) for rel in sorted(sides.locals_)]
        else:
            items = [self._download(rel) for rel in sorted(sides.objects)]
        return SyncPlan(sides.direction, sides.local_root, sides.remote_url, tuple(items))

    def _upload(self, rel: str) -> SyncItem:
        local, obj = self.sides.locals_[rel], self.sides.objects.get(rel)
        action, reason = UPLOAD, "new" if obj is None else "size differs"
        if obj is not None and rel in self.same_size:
            same, reason = compare(self.hashes[rel], self.remote[rel], local.path)
            action = SKIP if same else UPLOAD
            if same:
                self.cache.remember_remote(rel, replace(self.remote[rel], sha256=self.hashes[rel].sha256))
            if same and self.headed and any(obj.metadata.get(k) != v for k, v in self.metadata.items()):
                # Same bytes, but asked to record other facts (a checkpoint's step): write again.
                action, reason = UPLOAD, "metadata differs"
        return SyncItem(rel=rel, key=self.sides.target[rel], path=local.path, size=local.size, action=action,
                        reason=reason, sha256=self._local_sha(rel, local), etag=obj.etag if obj else "",
                        mtime_ns=local.mtime_ns, metadata=dict(self.metadata))

    def _local_sha(self, rel: str, local: LocalFile) -> str | None:
        if rel in self.hashes:
            return self.hashes[rel].sha256
        facts = self.cache.local(rel, local.size, local.mtime_ns)
        return facts.sha256 if facts else None

    def _download(self, rel: str) -> SyncItem:
        local, obj = self.sides.locals_.get(rel), self.sides.objects[rel]
        action, reason, known = DOWNLOAD, "new", None
        if rel in self.same_size:
            same, reason = compare(self.hashes[rel], self.remote[rel], local.path if local else None)
            action = SKIP if same else DOWNLOAD
            known = self.remote[rel].sha256
        elif local is not None:
            reason = "size differs"
        else:
            cached = self.cache.remote(rel, obj.etag, obj.size)
            known = cached.sha256 if cached else obj.sha256
        return SyncItem(rel=rel, key=obj.key, path=self.sides.target[rel], size=obj.size, action=action,
                        reason=reason, sha256=known, etag=obj.etag)


def plan_upload(storage: Storage, local_dir: str | os.PathLike[str], prefix: str,
                cache: SyncCache | None = None, metadata: Mapping[str, str] | None = None) -> SyncPlan:
    """Plan uploading every file under ``local_dir`` to the key ``prefix`` (one listing, cached hashes)."""
    locals_ = scan_local(local_dir)
    objects = list_remote(storage, prefix)
    keys = {rel: f"{prefix.rstrip('/')}/{rel}" if prefix else rel for rel in locals_}
    sides = _Sides(UP, str(local_dir), storage.url(prefix), locals_, objects, keys)
    return _Planner(storage, _or_memory(cache), sides, metadata or {}, headed=False).plan()


def plan_download(storage: Storage, prefix: str, local_dir: str | os.PathLike[str],
                  cache: SyncCache | None = None) -> SyncPlan:
    """Plan downloading every object under the key ``prefix`` into ``local_dir``."""
    objects = list_remote(storage, prefix)
    if not objects:
        raise StorageError(f"Nothing under {storage.url(prefix)} at {storage.endpoint}; check the name and S3_PREFIX.")
    root = Path(local_dir)
    locals_ = {rel: f for rel, f in scan_local(root, must_exist=False).items() if rel in objects}
    dest = {rel: str(root / rel) for rel in objects}
    sides = _Sides(DOWN, str(local_dir), storage.url(prefix), locals_, objects, dest)
    return _Planner(storage, _or_memory(cache), sides, {}, headed=False).plan()


def plan_upload_file(storage: Storage, path: str | os.PathLike[str], key: str,
                     metadata: Mapping[str, str] | None = None) -> SyncPlan:
    """Plan uploading one file to ``key``; skipped when the object already holds the same bytes."""
    path = Path(path)
    if not path.is_file():
        raise StorageError(f"The local file {path} does not exist; check the path.")
    name = path.name
    info = head(storage, key)
    objects = {name: info} if info is not None else {}
    sides = _Sides(UP, str(path), storage.url(key), {name: LocalFile.stat(name, path)}, objects, {name: key})
    return _Planner(storage, SyncCache(), sides, metadata or {}, headed=True).plan()


def plan_download_file(storage: Storage, key: str, dest: str | os.PathLike[str]) -> SyncPlan:
    """Plan downloading the object ``key`` to the file ``dest``; skipped when ``dest`` already matches."""
    info = head(storage, key)
    if info is None:
        raise StorageError(f"No object {storage.url(key)} at {storage.endpoint}; check the name.")
    dest = Path(dest)
    name = dest.name
    locals_ = {name: LocalFile.stat(name, dest)} if dest.is_file() else {}
    sides = _Sides(DOWN, str(dest), storage.url(key), locals_, {name: info}, {name: str(dest)})
    return _Planner(storage, SyncCache(), sides, {}, headed=True).plan()


def cache_for(storage: Storage, prefix: str, local_dir: str | os.PathLike[str]) -> SyncCache:
    """The persistent hash cache for syncing ``local_dir`` with ``prefix`` in this bucket."""
    return SyncCache.for_pair(storage.endpoint, storage.bucket, prefix, local_dir)


def _or_memory(cache: SyncCache | None) -> SyncCache:
    return cache if cache is not None else SyncCache()
