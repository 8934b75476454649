"""Stage a dataset from the bucket onto a host, incrementally, before training starts.

The host needs only python3's standard library: the operator's machine lists ``datasets/<name>/``,
compares it with the marker the host kept from the last sync (:func:`plan_stage`, pure), and hands
the host short-lived presigned URLs for just the files that changed, in a 0600 file (never on a
command line). The host program (deploy/remote/fetch_dataset.py) downloads them in parallel into
``.part`` files, checks size and sha256, renames, removes files the bucket no longer has, and writes
the marker last: an interrupted stage is simply redone.
"""

from __future__ import annotations

import json
import posixpath
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from deploy.errors import StorageError
from deploy.hosts.paths import checked_relative
from deploy.hosts.remote import python_program, run, write_atomic
from deploy.storage import DATASETS, Storage

if TYPE_CHECKING:
    from fabric import Connection

MARKER = ".gpu-deploy-dataset.json"
URL_LIFETIME = 3600

@dataclass(frozen=True)
class RemoteFile:
    path: str
    key: str
    size: int
    etag: str
    sha256: str | None = None


@dataclass(frozen=True)
class StagePlan:
    """What a stage would do: files to fetch and delete; ``unchanged`` counts the rest."""

    dataset: str
    dest: str
    fetch: tuple[RemoteFile, ...]
    delete: tuple[str, ...]
    unchanged: int
    marker: dict = field(default_factory=dict, compare=False)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.fetch)

    @property
    def noop(self) -> bool:
        return not self.fetch and not self.delete

    def describe(self) -> str:
        if self.noop:
            return f"dataset {self.dataset}: {self.unchanged} files already staged at {self.dest}"
        return (f"dataset {self.dataset}: fetch {len(self.fetch)} files ({self.bytes / 1e6:.1f} MB), "
                f"delete {len(self.delete)}, keep {self.unchanged} at {self.dest}")


@dataclass(frozen=True)
class StageResult:
    plan: StagePlan
    seconds: float


def list_dataset(storage: Storage, name: str) -> list[RemoteFile]:
    """The files of ``datasets/<name>/`` in the bucket (sha256 when this project uploaded them)."""
    prefix = storage.key(DATASETS, name) + "/"
    files: dict[str, RemoteFile] = {}
    for obj in storage.list(prefix):
        if obj.key.endswith("/"):
            continue  # a folder marker some tools create, not a file
        # The key decides where the file lands under DATA_DIR: one checked function, as for sync downloads.
        path = checked_relative(obj.key[len(prefix):], f"The key {obj.key!r} of dataset {name}: the file")
        if path in files:
            raise StorageError(f"The keys {files[path].key!r} and {obj.key!r} of dataset {name} both land at "
                               f"{path!r}; remove one from the bucket.")
        files[path] = RemoteFile(path=path, key=obj.key, size=obj.size, etag=obj.etag)
    if not files:
        raise StorageError(f"No dataset {name!r} in {storage.url(prefix)}; upload it first "
                           "(fab s3.upload-dataset) or set DATASET to a local folder.")
    return list(files.values())


def _staged(marker: dict, dataset: str) -> dict:
    """The files the host's marker says were staged, minus any entry that is not a safe path.

    The marker lives on the host, so it is untrusted: an entry such as ``../../etc/x`` would
    otherwise end up in the next stage's delete list.
    """
    files = marker.get("files") if isinstance(marker, dict) and marker.get("dataset") == dataset else None
    safe: dict = {}
    for path, info in (files.items() if isinstance(files, dict) else ()):
        try:
            if isinstance(path, str) and checked_relative(path) == path:
                safe[path] = info
        except StorageError:
            continue
    return safe


def plan_stage(files: list[RemoteFile], marker: dict, dataset: str, dest: str) -> StagePlan:
    """Compare the bucket's files with the host's marker: fetch what is new or changed."""
    synced = _staged(marker, dataset)
    fetch = tuple(f for f in files
                  if synced.get(f.path) != {"etag": f.etag, "size": f.size})
    present = {f.path for f in files}
    delete = tuple(sorted(p for p in synced if p not in present))
    new_marker = {"dataset": dataset, "files": {f.path: {"etag": f.etag, "size": f.size} for f in files}}
    return StagePlan(dataset=dataset, dest=dest, fetch=fetch, delete=delete,
                     unchanged=len(files) - len(fetch), marker=new_marker)


def read_marker(conn: Connection, dest: str) -> dict:
    """The marker the host kept from its last stage into ``dest`` (empty when there is none)."""
    result = run(conn, ["cat", posixpath.join(dest, MARKER)], "Reading the dataset marker", warn=True)
    try:
        found = json.loads(result.stdout) if result.ok else {}
    except json.JSONDecodeError:
        return {}
    return found if isinstance(found, dict) else {}


def plan_for_host(conn: Connection, storage: Storage, dataset: str, dest: str) -> StagePlan:
    """List the dataset in the bucket, read the host's marker, and plan (read-only on both sides)."""
    files = list_dataset(storage, dataset)
    for i, f in enumerate(files):  # sha256 lets the host verify what it fetched, when we know it
        info = storage.head(f.key) if f.size else None
        if info is not None and info.sha256:
            files[i] = RemoteFile(f.path, f.key, f.size, f.etag, info.sha256)
    return plan_stage(files, read_marker(conn, dest), dataset, dest)


def execute_stage(conn: Connection, storage: Storage, plan: StagePlan) -> StageResult:
    """Run the host script on ``plan`` (a no-op plan does nothing)."""
    started = time.monotonic()
    if plan.noop:
        return StageResult(plan, 0.0)
    items = [{"path": f.path, "size": f.size, "sha256": f.sha256,
              "url": storage.client.generate_presigned_url(
                  "get_object", Params={"Bucket": storage.bucket, "Key": f.key}, ExpiresIn=URL_LIFETIME)}
             for f in plan.fetch]
    payload = json.dumps({"dest": plan.dest, "fetch": items, "delete": list(plan.delete),
                          "marker": plan.marker, "marker_name": MARKER}).encode()
    job = f"/tmp/gpu-deploy-stage-{uuid.uuid4().hex}.json"  # presigned URLs: 0600, removed once read
    write_atomic(conn, job, payload, mode=0o600)
    try:
        run(conn, python_program("python3", "fetch_dataset.py", job),
            f"Staging dataset {plan.dataset} into {plan.dest}")
    finally:
        run(conn, ["rm", "-f", job], "Removing the staging plan", warn=True)
    return StageResult(plan, time.monotonic() - started)
