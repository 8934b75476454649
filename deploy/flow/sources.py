"""Where a deploy's inputs come from before any host is touched: the image in the bucket, a local dataset."""

from __future__ import annotations

import os
from typing import Any

from deploy.errors import HostError
from deploy.images import ImageRef, pull
from deploy.images.store import ImageStore
from deploy.runtimes.base import Log
from deploy.storage import DATASETS, Storage
from deploy.storage.sync import cache_for, plan_upload
from deploy.storage.sync import execute as execute_sync


class BucketImages:
    """The image comes from the bucket's layer store (``fab image-to-s3`` put it there)."""

    def __init__(self, storage: Storage, log: Log = lambda s: None) -> None:
        self.storage = storage
        self.log = log

    def image_id(self, ref: str) -> tuple[str, int]:
        """The image id and uncompressed size the bucket holds for ``ref``."""
        parsed = ImageRef.parse(ref)
        manifest = ImageStore(self.storage).read_manifest(parsed.name, parsed.tag)
        if manifest is None:
            raise HostError(f"The bucket has no image {ref} under {self.storage.url()}; push it first with "
                            f"`fab image-to-s3 --image={ref}`.")
        return manifest.image_id, sum(layer.size for layer in manifest.layers)

    def load_on_host(self, conn: Any, ref: str) -> str:
        result = pull(conn, self.storage, ref, where=f"{conn.host}:{conn.port}")
        self.log(result.summary())
        return result.image_id or ""


def resolve_image(images: Any, ref: str, runtime: str) -> tuple[str, int, str | None]:
    """The image id and size in the bucket, and a problem for compose hosts when it is missing.

    Native hosts need no image, so ``native`` skips the lookup and ``auto`` defers a missing image
    to the hosts that turn out to run compose.
    """
    if runtime == "native":
        return "", 0, None
    try:
        image_id, size = images.image_id(ref)
    except HostError as exc:
        if runtime == "compose":
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
