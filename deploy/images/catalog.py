"""What the bucket's image store holds, and cleaning it: list, delete a tag, gc unused layers.

Deleting a tag removes its manifest (or archive); the layers stay, because other tags may share
them, until ``gc`` removes the ones no manifest references and that are older than
:data:`GC_GRACE` (a push running right now has uploaded layers but not yet its manifest).
Unfinished multipart uploads are :mod:`deploy.storage.uploads`' concern; :func:`stale_uploads`
here narrows it to ``docker-images/``.

Example::

    plan = plan_gc(storage)
    print("\\n".join(plan.describe()))
    execute_deletes(storage, [key for key, _ in plan.delete])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from rich.filesize import decimal

from deploy.images.pulling import archive_candidates
from deploy.images.ref import ImageRef, PlanText, plan_row
from deploy.images.store import ImageStore, archive_codec
from deploy.storage.bucket import ObjectInfo, Storage
from deploy.storage.uploads import DEFAULT_GRACE, StaleUpload
from deploy.storage.uploads import stale_uploads as _stale_uploads_under

GC_GRACE = timedelta(hours=1)
_ARCHIVE_SUFFIXES = (".tar.zst", ".tar.gz", ".tgz", ".tar")


@dataclass(frozen=True)
class StoredImage:
    """One image in the bucket: a layer-store tag or an archive object (ours or an older script's)."""

    name: str
    tag: str
    image_id: str | None
    layers: int | None
    stored_size: int
    codec: str
    date: str
    commit: str | None
    format: str
    key: str


def list_images(storage: Storage) -> list[StoredImage]:
    """Every image in the store: layer-store tags and archive objects (ours and older scripts')."""
    store = ImageStore(storage)
    out = [StoredImage(m.name, m.tag, m.image_id, len(m.layers), m.stored_size, m.codec, m.created, m.commit,
                       "layers", store.manifest_key(m.name, m.tag)) for m in store.manifests()]
    out += [_archive_entry(store, obj, record or {}) for obj, record in store.archives()]
    return out


def _archive_entry(store: ImageStore, obj: ObjectInfo, record: dict) -> StoredImage:
    """An archive object as a listed image: name and tag from its record when it is ours, else its file name."""
    stem = obj.name
    for suffix in _ARCHIVE_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    name, _, tag = stem.rpartition("-") if "-" in stem else (stem, "", "")
    tags = record.get("repo_tags") or []
    if tags:
        parsed = ImageRef.parse(tags[0])
        if store.archive_key(parsed.name, parsed.tag, archive_codec(obj.key) or "none") == obj.key:
            name, tag = parsed.name, parsed.tag
    date = record.get("created") or (obj.last_modified.strftime("%Y-%m-%dT%H:%M:%SZ") if obj.last_modified else "")
    return StoredImage(name or stem, tag or "?", record.get("image_id"), None, obj.size,
                       archive_codec(obj.key) or "?", date, record.get("commit"), "archive", obj.key)


@dataclass
class DeletePlan(PlanText):
    """The objects deleting one tag removes (its manifest, or its archive and record)."""

    ref: str
    keys: list[str]

    def headline(self) -> str:
        if not self.keys:
            return f"{self.ref}: nothing to delete (not in the bucket)."
        return (f"{self.ref}: delete {len(self.keys)} object(s); its layers stay until `fab images.gc` removes "
                "the ones no image uses.")

    def rows(self) -> list[str]:
        return [plan_row("delete", key) for key in self.keys]


def plan_delete(storage: Storage, image: str) -> DeletePlan:
    """What deleting the tag ``image`` would remove (heads only)."""
    ref = ImageRef.parse(image)
    store = ImageStore(storage)
    candidates = [store.manifest_key(ref.name, ref.tag)]
    for archive, _ in archive_candidates(store, ref):
        candidates += [archive, archive + ".json"]
    return DeletePlan(str(ref), [key for key in candidates if storage.head(key) is not None])


@dataclass
class GcPlan(PlanText):
    """Objects no manifest references, and how many layers are in use or too young to judge."""

    keep: int
    delete: list[tuple[str, int]]          # (key, size)
    young: int = 0

    def headline(self) -> str:
        total = sum(size for _, size in self.delete)
        young = (f"; {self.young} unreferenced but younger than {GC_GRACE} kept (a push may be running)"
                 if self.young else "")
        return (f"{len(self.delete)} object(s), {decimal(total)}, referenced by no image; "
                f"{self.keep} layer(s) in use{young}.")

    def rows(self) -> list[str]:
        return [plan_row("delete", key, size) for key, size in self.delete]


def plan_gc(storage: Storage, now: datetime | None = None) -> GcPlan:
    """Layers (and temp objects) no manifest references, older than the grace period."""
    store = ImageStore(storage)
    now = now or datetime.now(timezone.utc)
    used = {record.key for m in store.manifests() for record in m.layers}
    delete: list[tuple[str, int]] = []
    young = 0
    for obj in [*storage.list(f"{store.root}/layers/"), *storage.list(f"{store.root}/tmp/")]:
        layer_key = obj.key[: -len(".json")] if obj.key.endswith(".json") else obj.key
        if layer_key in used:
            continue
        if obj.last_modified is not None and now - obj.last_modified < GC_GRACE:
            young += 1
            continue
        delete.append((obj.key, obj.size))
    return GcPlan(keep=len(used), delete=delete, young=young)


def execute_deletes(storage: Storage, keys: Sequence[str]) -> int:
    """Delete ``keys``: records first, then objects, so a half-finished delete leaves a layer
    without a record (pushed again), never a record without its layer."""
    for key in sorted(keys, key=lambda k: not k.endswith(".json")):
        storage.delete(key)
    return len(keys)


def stale_uploads(storage: Storage, older_than: timedelta = DEFAULT_GRACE,
                  now: datetime | None = None) -> list[StaleUpload]:
    """Unfinished multipart uploads under docker-images/ started more than ``older_than`` ago."""
    return _stale_uploads_under(storage, ImageStore(storage).root, older_than, now)
