"""Pull an image from the bucket into a host's engine, fetching only the layers the host lacks.

``plan_pull`` asks the host what it has (:func:`~deploy.images.hostrun.host_facts`) and decides:
nothing to do, only a ``docker tag``, or which layers (or which archive) to fetch. The decision
itself is pure (:func:`plan_from_manifest`, :func:`plan_from_archive`) and unit-tested. ``pull``
then runs :mod:`deploy.remote.hostload` on the host with short-lived presigned URLs: the host
needs no AWS credentials. ``--dry-run`` stops after the plan.

Example::

    pull(Context(), storage, "team/train:v3")            # into the local engine
    pull(connection, storage, "team/train:v3", "gpu-1")  # onto a host over SSH
"""

from __future__ import annotations

import difflib
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.filesize import decimal

from deploy.errors import ImageError
from deploy.images.hostrun import host_facts, run_host_script
from deploy.images.ref import ImageProgress, ImageRef, PlanText, plan_row, short_id
from deploy.images.store import ImageManifest, ImageStore, LayerRecord
from deploy.storage.bucket import MB, Storage

PRESIGN_SECONDS = 3600
ARCHIVE_CODECS = ("zstd", "gzip", "none")
"""Archive objects are looked for in this order when the bucket has no layer manifest."""


@dataclass
class PullPlan(PlanText):
    """What a pull would do on one host: which objects to fetch, which layers the host has."""

    ref: str
    where: str
    format: str
    image_id: str | None
    key: str
    layers: list[tuple[LayerRecord, str]] = field(default_factory=list)   # (record, "fetch" | "skip")
    archive: dict[str, Any] | None = None
    action: str = "load"                  # "load" | "tag" | "noop"
    reason: str = ""

    @property
    def fetch_bytes(self) -> int:
        if self.action != "load":
            return 0
        if self.format == "archive":
            return int((self.archive or {}).get("stored_size") or 0)
        return sum(record.stored_size for record, action in self.layers if action == "fetch")

    def headline(self) -> str:
        subject = f"{self.ref} on {self.where}"
        if self.action == "noop":
            return f"{subject}: nothing to do ({self.reason})."
        if self.action == "tag":
            return f"{subject}: tag the image {short_id(self.image_id)} it already has."
        if self.format == "archive":
            return f"{subject}: load the archive {self.key} ({decimal(self.fetch_bytes)})."
        fetch = [r for r, a in self.layers if a == "fetch"]
        return (f"{subject}: fetch {len(fetch)} of {len(self.layers)} layers ({decimal(self.fetch_bytes)}) "
                "and docker load them.")

    def rows(self) -> list[str]:
        if self.action != "load" or self.format == "archive":
            return []
        return [plan_row(action, short_id(record.diff_id), record.stored_size) for record, action in self.layers]


@dataclass
class PullResult:
    """What :func:`pull` did on the host."""

    plan: PullPlan
    downloaded: int = 0
    seconds: float = 0.0
    image_id: str | None = None

    def summary(self) -> str:
        if self.plan.action != "load":
            return self.plan.headline()
        return (f"{self.plan.ref} on {self.plan.where}: loaded {short_id(self.image_id) or '?'}, "
                f"downloaded {decimal(self.downloaded)} in {self.seconds:.1f} s.")


# --------------------------------------------------------------------------- planning (pure)


def _already_there(plan: PullPlan, facts: Mapping[str, Any]) -> bool:
    """Mark ``plan`` noop (tagged already) or tag (image there, tag not) when the host has the image."""
    images, tags = facts.get("images", {}), facts.get("tags", {})
    if not plan.image_id or plan.image_id not in images:
        return False
    plan.action = "noop" if tags.get(plan.ref) == plan.image_id else "tag"
    plan.reason = f"the host already has {short_id(plan.image_id)}"
    return True


def plan_from_manifest(ref: ImageRef, where: str, manifest: ImageManifest, key: str,
                       facts: Mapping[str, Any]) -> PullPlan:
    """Pure: which layers of ``manifest`` the host (``facts`` from :func:`host_facts`) must fetch.

    ``docker load`` reuses a layer only when the host has its whole chain (every layer below it),
    so the host's longest common prefix with any of its images is skipped and the rest fetched.
    """
    plan = PullPlan(str(ref), where, "layers", manifest.image_id, key)
    if _already_there(plan, facts):
        plan.layers = [(record, "skip") for record in manifest.layers]
        return plan
    wanted = [record.diff_id for record in manifest.layers]
    have = max((_common_prefix(wanted, chain) for chain in facts.get("images", {}).values()), default=0)
    plan.layers = [(record, "skip" if i < have else "fetch") for i, record in enumerate(manifest.layers)]
    if any(r.codec == "zstd" for r, a in plan.layers if a == "fetch") and not facts.get("zstd"):
        raise ImageError(f"{where} has no zstd to unpack {ref}; install it (apt-get install zstd) "
                         "or push with --codec=gzip.")
    return plan


def plan_from_archive(ref: ImageRef, where: str, key: str, codec_name: str, stored_size: int,
                      record: Mapping[str, Any], facts: Mapping[str, Any]) -> PullPlan:
    """Pure: load the archive object ``key`` unless the host has the image its record names."""
    plan = PullPlan(str(ref), where, "archive", record.get("image_id"), key)
    plan.archive = {"key": key, "codec": codec_name, "stored_size": stored_size, "sha256": record.get("sha256")}
    _already_there(plan, facts)
    if codec_name == "zstd" and not facts.get("zstd") and plan.action == "load":
        raise ImageError(f"{where} has no zstd to unpack {key}; install it (apt-get install zstd).")
    return plan


def _common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def archive_candidates(store: ImageStore, ref: ImageRef) -> list[tuple[str, str]]:
    """``(key, codec)`` of every archive object ``ref`` may be stored as."""
    return [(store.archive_key(ref.name, ref.tag, name), name) for name in ARCHIVE_CODECS]


def plan_pull(runner: Any, storage: Storage, image: str, where: str = "this machine",
              facts: Mapping[str, Any] | None = None) -> PullPlan:
    """Decide what ``image`` needs on the host behind ``runner`` (asks the host, changes nothing)."""
    ref = ImageRef.parse(image)
    store = ImageStore(storage)
    manifest = store.read_manifest(ref.name, ref.tag)
    facts = facts if facts is not None else host_facts(runner, where)
    if manifest is not None:
        return plan_from_manifest(ref, where, manifest, store.manifest_key(ref.name, ref.tag), facts)
    for key, name in archive_candidates(store, ref):
        info = storage.head(key)
        if info is not None:
            record = store.get_json(key + ".json") or {}
            return plan_from_archive(ref, where, key, name, info.size, record, facts)
    known = [m.ref for m in store.manifests()]
    close = difflib.get_close_matches(str(ref), known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else (
        f"; it has {', '.join(known[:5])}." if known else "; push it first with `fab image-to-s3`.")
    raise ImageError(f"The bucket has no image {ref} under {storage.url(store.root)}{hint}")


# --------------------------------------------------------------------------- pulling


def pull(runner: Any, storage: Storage, image: str, where: str = "this machine",
         progress: ImageProgress | None = None, plan: PullPlan | None = None, parallel: int = 4,
         range_size: int = 64 * MB) -> PullResult:
    """Bring ``image`` from the bucket into the engine behind ``runner``; see the module doc."""
    progress = progress or ImageProgress()
    plan = plan or plan_pull(runner, storage, image, where)
    result = PullResult(plan, image_id=plan.image_id)
    started = time.monotonic()
    if plan.action == "noop":
        return result
    if plan.action == "tag":
        out = runner.run(f"docker tag {plan.image_id} {shlex.quote(str(ImageRef.parse(plan.ref)))}", hide=True,
                         warn=True, pty=False)
        if out.exited != 0:
            raise ImageError(f"docker tag on {where} failed: {out.stderr.strip()}")
        return result
    job: dict[str, Any] = {"mode": "load", "kind": plan.format, "tag": plan.ref, "image_id": plan.image_id,
                           "parallel": parallel, "range_size": range_size}
    if plan.format == "archive":
        job["archive"] = {**(plan.archive or {}), "url": storage.presigned_get(plan.key, PRESIGN_SECONDS)}
    else:
        job.update(_layers_job(storage, plan))
    progress.begin(f"pull {plan.ref}", plan.fetch_bytes)
    try:
        answer = run_host_script(runner, job, progress, where)
    finally:
        progress.end()
    result.downloaded = int(answer.get("downloaded", 0))
    result.image_id = answer.get("image_id")
    result.seconds = time.monotonic() - started
    return result


def _layers_job(storage: Storage, plan: PullPlan) -> dict[str, Any]:
    """The save tar's manifest and config, and a presigned URL for every layer the host must fetch."""
    ref = ImageRef.parse(plan.ref)
    manifest = ImageStore(storage).read_manifest(ref.name, ref.tag)
    if manifest is None or manifest.image_id != plan.image_id:
        raise ImageError(f"The manifest of {ref} changed since the plan; run the pull again.")
    # The names `docker save` itself uses: <config hex>.json and <diff id hex>/layer.tar.
    config_name = f"{manifest.image_id[len('sha256:'):]}.json"
    names = [f"{record.diff_id[len('sha256:'):]}/layer.tar" for record in manifest.layers]
    layers: list[dict[str, Any]] = []
    seen: set[str] = set()
    for (record, action), name in zip(plan.layers, names):
        entry = {"name": name, "diff_id": record.diff_id, "size": record.size, "key": record.key,
                 "codec": record.codec, "stored_size": record.stored_size, "sha256": record.sha256,
                 "skip": action == "skip" or name in seen}
        seen.add(name)
        if not entry["skip"]:
            entry["url"] = storage.presigned_get(record.key, PRESIGN_SECONDS)
        layers.append(entry)
    return {"manifest": [{"Config": config_name, "RepoTags": [plan.ref], "Layers": names}],
            "config_name": config_name, "config": manifest.config, "layers": layers}
