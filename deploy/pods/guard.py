"""Before a pod's volume goes: is its newest checkpoint in S3?

Terminating a pod deletes its volume, and with it any checkpoint the training side has not uploaded
yet. Two facts from the pod, read over SSH with one ``find``, are compared with the bucket's newest
checkpoint (:func:`deploy.storage.checkpoints.latest_checkpoint`):

- the upload journal (:mod:`deploy.training.journal`): a ``.s3-sync/*.json`` entry is a finished
  checkpoint staged for upload and not yet confirmed in the bucket;
- the steps in the pod's checkpoint file names (``epoch=3-step=1200.ckpt``): a step above the
  bucket's newest is a checkpoint the bucket lacks (a run without S3 sync, or one that died before
  staging).

The decision itself is :func:`deploy.pods.plan.judge_termination` (pure).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from datetime import datetime, timezone

from deploy.errors import HostError
from deploy.hosts import HostOptions, HostSpec, connect
from deploy.hosts.remote import command, run_line
from deploy.pods.plan import CheckpointVerdict, judge_termination
from deploy.storage import Storage
from deploy.storage.checkpoints import latest_checkpoint, parse_checkpoint_name
from deploy.training.journal import ENTRY_SUFFIX, STAGING_DIR

_SEPARATOR = "--- staged"


def parse_listing(text: str) -> tuple[list[int], int]:
    """``find``'s output -> (steps of the checkpoint files, number of journal entries).

    >>> parse_listing("/w/a/epoch=0-step=5.ckpt\\n/w/a/last.ckpt\\n--- staged\\n/w/a/.s3-sync/x.ckpt.json\\n")
    ([5], 1)
    """
    files, _, staged = text.partition(_SEPARATOR)
    steps = [step for line in files.splitlines() if line.strip()
             if (step := parse_checkpoint_name(posixpath.basename(line.strip())).step) is not None]
    return steps, len([line for line in staged.splitlines() if line.strip()])


def listing_command(remote_dir: str) -> str:
    """One shell line: checkpoint files outside the staging folders, a separator, the journal entries."""
    files = command(["find", remote_dir, "-name", "*.ckpt", "-not", "-path", f"*/{STAGING_DIR}/*", "-type", "f"])
    staged = command(["find", remote_dir, "-path", f"*/{STAGING_DIR}/*{ENTRY_SUFFIX}", "-type", "f"])
    return f"{files} 2>/dev/null; echo {_SEPARATOR}; {staged} 2>/dev/null; true"


def pod_listing(spec: HostSpec, options: HostOptions, remote_dir: str) -> tuple[list[int], int]:
    with connect(spec, options) as conn:
        result = run_line(conn, listing_command(remote_dir), f"Listing the checkpoints in {remote_dir}", warn=True)
    if _SEPARATOR not in result.stdout:
        raise HostError(f"Listing the checkpoints in {remote_dir} failed on {spec}: {result.stderr.strip()[-200:]}")
    return parse_listing(result.stdout)


def _age(uploaded: datetime | None, now: datetime) -> str:
    if uploaded is None:
        return "at an unknown time"
    minutes = int((now - uploaded).total_seconds() // 60)
    if minutes < 1:
        return "less than a minute ago"
    if minutes < 120:
        return f"{minutes} min ago"
    return f"{minutes // 60} h {minutes % 60} min ago"


def check_termination(storage: Storage, listing: Callable[[], tuple[list[int], int]] | None,
                      unreachable: str = "", now: datetime | None = None) -> CheckpointVerdict:
    """Compare the pod's checkpoints (``listing()``; None when the pod cannot be reached) with the bucket's newest."""
    latest = latest_checkpoint(storage)
    now = now or datetime.now(timezone.utc)
    found = listing() if listing is not None else None
    return judge_termination(found, latest.step if latest else None, _age(latest.uploaded, now) if latest else None,
                             unreachable)
