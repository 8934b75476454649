"""Where a deploy's inputs come from before any host is touched: the image in the bucket, a local dataset.

The image holds the training project's dependencies (deploy.images.build); when the one in the bucket
was built for other requirements than the project has now, deploy says so in one line naming the
command, or (``--build``) builds and pushes it first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

from deploy.errors import HostError
from deploy.flow.choose import needs_image
from deploy.images import ImageRef, pull
from deploy.images.build import image_deps
from deploy.images.store import ImageStore
from deploy.project import TrainProject, train_requirements
from deploy.runtimes.base import Log
from deploy.storage import DATASETS, Storage
from deploy.storage.sync import cache_for, plan_upload
from deploy.storage.sync import execute as execute_sync

if TYPE_CHECKING:
    from fabric import Connection


class BucketImages:
    """The image comes from the bucket's layer store (``fab image-to-s3`` put it there)."""

    def __init__(self, storage: Storage, log: Log = lambda s: None, deps: str | None = None) -> None:
        self.storage = storage
        self.log = log
        self.deps = deps  # the dependency digest the training project needs now (None: do not compare)

    def image_id(self, ref: str) -> tuple[str, int]:
        """The image id and uncompressed size the bucket holds for ``ref``; says when it is stale."""
        parsed = ImageRef.parse(ref)
        manifest = ImageStore(self.storage).read_manifest(parsed.name, parsed.tag)
        if manifest is None:
            raise HostError(f"The bucket has no image {ref} under {self.storage.url()}; push it first: "
                            f"`fab image-build --push` builds and pushes it, `fab image-to-s3 --image={ref}` pushes "
                            "a local one.")
        line = stale_line(ref, image_deps(manifest.config), self.deps)
        if line:
            self.log(line)
        return manifest.image_id, sum(layer.size for layer in manifest.layers)

    def load_on_host(self, conn: Connection, ref: str) -> str:
        result = pull(conn, self.storage, ref, where=f"{conn.host}:{conn.port}")
        self.log(result.summary())
        return result.image_id or ""


def stale_line(ref: str, stored: str | None, wanted: str | None) -> str:
    """One line when the image was built for other dependencies than the project needs; else ""."""
    if not stored or not wanted or stored == wanted:
        return ""
    return (f"image     {ref} in the bucket holds older requirements (deps-{stored}; the training project now "
            f"needs deps-{wanted}): run `fab image-build --push`, or deploy with `fab deploy-runpod --build`")


def bucket_images(storage: Storage, settings: Any, log: Log = lambda s: None) -> BucketImages:
    """The bucket's images, compared with what TRAIN_PROJECT's requirements need now."""
    project = TrainProject.from_settings(settings)
    return BucketImages(storage, log=log, deps=project.deps_digest(train_requirements(), settings.base_image))


def build_and_push(settings: Any, storage: Storage, dry_run: bool = False, log: Log = print) -> str:
    """``deploy-runpod --build``: the image for TRAIN_PROJECT's requirements, built unless the engine has it,
    pushed (only the layers the bucket lacks) and tagged IMAGE; returns IMAGE."""
    from deploy.images import docker_client, push
    from deploy.images.build import build, plan_build

    client = docker_client()
    plan = plan_build(client, TrainProject.from_settings(settings), settings.image, settings.base_image)
    for line in plan.describe():
        log(line)
    if dry_run:
        return settings.image
    log(build(client, plan).summary())
    for ref in dict.fromkeys((plan.ref, settings.image)):
        log(push(client, storage, ref).summary())
    return settings.image


def resolve_image(images: Any, ref: str, runtime: str) -> tuple[str, int, str | None]:
    """The image id and size in the bucket, and a problem for hosts whose runtime needs it when it is missing.

    A runtime asked for that needs no image (``native``) skips the lookup; ``auto`` defers a missing
    image to the hosts whose runtime turns out to need one (compose).
    """
    needed = needs_image(runtime)
    if needed is False:
        return "", 0, None
    try:
        image_id, size = images.image_id(ref)
    except HostError as exc:
        if needed:
            raise
        return "", 0, str(exc)
    return image_id, size, None


def stage_local_dataset(storage: Storage, folder: str, dry_run: bool = False) -> tuple[str, str]:
    """A local dataset folder goes to ``datasets/<folder name>/`` first; returns (name, what happened)."""
    name = os.path.basename(os.path.normpath(folder))
    prefix = storage.key(DATASETS, name)
    cache = cache_for(storage, prefix, folder)
    plan = plan_upload(storage, folder, prefix, cache=cache)
    if dry_run:
        return name, plan.headline()
    return name, execute_sync(storage, plan, cache=cache).summary()


@dataclass(frozen=True)
class Sources:
    """What a deploy takes from the bucket: the image's id and size (or why compose hosts cannot have it)
    and the dataset's name under ``datasets/``."""

    images: BucketImages
    image_id: str
    image_bytes: int
    image_problem: str | None
    dataset: str | None


def gather_sources(storage: Storage, settings: Any, dry_run: bool = False, log: Log = print) -> Sources:
    """The image a deploy runs and its dataset, for ``deploy-runpod`` and the managed run's watcher alike: the
    image looked up in the bucket (saying when it is stale), a local dataset folder uploaded first."""
    images = bucket_images(storage, settings, log=log)
    image_id, image_bytes, problem = resolve_image(images, settings.image, settings.runtime)
    dataset = settings.dataset
    if dataset and os.path.isdir(dataset):
        dataset, what = stage_local_dataset(storage, dataset, dry_run=dry_run)
        log(f"dataset   {what}")
    return Sources(images, image_id, image_bytes, problem, dataset or None)
