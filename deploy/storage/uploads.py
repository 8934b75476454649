"""Unfinished multipart uploads: find the stale ones under a prefix, and abort them.

A killed upload (a push, a checkpoint upload, a log sync) can leave a multipart upload open; S3
keeps and bills its parts until it is aborted. ``fab s3.abort-uploads`` lists those under the whole
``S3_PREFIX`` (``checkpoints/``, ``logs/``, ``docker-images/`` ...) and aborts them. Uploads younger
than a grace period are left alone: a transfer may be running right now.

Example::

    stale = stale_uploads(storage, storage.key(""), older_than=timedelta(hours=1))
    abort_uploads(storage, stale)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from deploy.storage.bucket import Storage

DEFAULT_GRACE = timedelta(hours=1)


@dataclass(frozen=True)
class StaleUpload:
    """One unfinished multipart upload: its key, its id and when it started (None: unknown)."""

    key: str
    upload_id: str
    initiated: datetime | None

    def describe(self) -> str:
        started = f"{self.initiated:%Y-%m-%d %H:%M} UTC" if self.initiated else "at an unknown time"
        return f"  {self.key}  started {started}  {self.upload_id[:16]}"


def stale_uploads(storage: Storage, prefix: str, older_than: timedelta = DEFAULT_GRACE,
                  now: datetime | None = None) -> list[StaleUpload]:
    """Unfinished multipart uploads under the key ``prefix`` started at least ``older_than`` ago."""
    now = now or datetime.now(timezone.utc)
    base = prefix.rstrip("/") + "/" if prefix else ""
    return [StaleUpload(u["key"], u["upload_id"], u["initiated"]) for u in storage.multipart_uploads(base)
            if u["initiated"] is None or now - u["initiated"] >= older_than]


def abort_uploads(storage: Storage, uploads: Sequence[StaleUpload]) -> int:
    """Abort each upload (S3 drops its parts); an upload that finished meanwhile is no error."""
    for upload in uploads:
        storage.abort_multipart(upload.key, upload.upload_id)
    return len(uploads)
