"""Incremental transfers between local files and the bucket: compute a plan, then carry it out.

The facade the tasks and the deploy flow import; the work lives in three small modules:

- :mod:`deploy.storage.scan`: the facts (local files, one listing, hashes and heads, cached in a
  :class:`~deploy.storage.cache.SyncCache` so a run with nothing changed costs one listing);
- :mod:`deploy.storage.plan`: the decision per file (upload, download or skip, and why): plain data;
- :mod:`deploy.storage.transfer`: carrying a plan out through one s3transfer manager, verified and
  atomic, with progress going to a :class:`SyncObserver`.

Example::

    storage = Storage.from_settings(load_settings())
    cache = cache_for(storage, storage.key("logs"), "logs")
    plan = plan_upload(storage, "logs", storage.key("logs"), cache=cache)
    print(plan.headline())
    result = execute(storage, plan, cache=cache)
    print(result.summary())
"""

from deploy.storage.cache import SyncCache
from deploy.storage.plan import (
    DOWN,
    DOWNLOAD,
    SKIP,
    UP,
    UPLOAD,
    SyncItem,
    SyncPlan,
    cache_for,
    compare,
    plan_download,
    plan_download_file,
    plan_upload,
    plan_upload_file,
)
from deploy.storage.scan import head, list_remote, scan_local
from deploy.storage.transfer import MAX_ROUNDS, SyncObserver, SyncResult, execute

__all__ = [
    "DOWN", "DOWNLOAD", "MAX_ROUNDS", "SKIP", "UP", "UPLOAD", "SyncCache", "SyncItem", "SyncObserver", "SyncPlan",
    "SyncResult", "cache_for", "compare", "execute", "head", "list_remote", "plan_download", "plan_download_file",
    "plan_upload", "plan_upload_file", "scan_local",
]
