"""Training images through the bucket.

- :mod:`~deploy.images.ref`: the ``name:tag`` reference, the progress observer, how plans print;
- :mod:`~deploy.images.engine`: the local Docker engine (client, inspect, ``docker save`` stream);
- :mod:`~deploy.images.pushing`: engine -> bucket, only the layers the bucket lacks;
- :mod:`~deploy.images.pulling` and :mod:`~deploy.images.hostrun`: bucket -> a host's engine, through
  :mod:`deploy.remote.hostload` run on the host;
- :mod:`~deploy.images.catalog`: list, delete, gc;
- :mod:`~deploy.images.store` (bucket layout, codecs) and :mod:`~deploy.images.archive` (reading
  ``docker save`` streams).

``from deploy import images`` then ``images.push(...)``, ``images.pull(...)``: the names below.
"""

from deploy.images.catalog import (
    GC_GRACE,
    DeletePlan,
    GcPlan,
    StoredImage,
    execute_deletes,
    list_images,
    plan_delete,
    plan_gc,
    stale_uploads,
)
from deploy.images.engine import docker_client, git_commit, inspect_local
from deploy.images.hostrun import host_facts, run_host_script
from deploy.images.pulling import PRESIGN_SECONDS, PullPlan, PullResult, plan_from_archive, plan_from_manifest, \
    plan_pull, pull
from deploy.images.pushing import FORMATS, PushPlan, PushResult, decide_archive, decide_layers, plan_push, push
from deploy.images.ref import ImageProgress, ImageRef, short_id
from deploy.images.store import CODECS
from deploy.storage.uploads import StaleUpload, abort_uploads

__all__ = [
    "CODECS", "FORMATS", "GC_GRACE", "PRESIGN_SECONDS", "DeletePlan", "GcPlan", "ImageProgress", "ImageRef",
    "PullPlan", "PullResult", "PushPlan", "PushResult", "StaleUpload", "StoredImage", "abort_uploads",
    "decide_archive", "decide_layers", "docker_client", "execute_deletes", "git_commit", "host_facts",
    "inspect_local", "list_images", "plan_delete", "plan_from_archive", "plan_from_manifest", "plan_gc",
    "plan_pull", "plan_push", "pull", "push", "run_host_script", "short_id", "stale_uploads",
]
