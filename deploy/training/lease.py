"""One writer per run: a lease in the bucket, granted per deploy, claimed by the training, checked before writes.

A zombie training (a replaced pod still running, a leaked pod, a second host deployed with the same
run) would otherwise write the same ``checkpoints/`` keys as its successor. The lease is a fencing
token, as in ZooKeeper/etcd recipes: every deploy that (re)starts training takes a new *attempt*
number, the training claims it when it starts, and every write checks that no newer attempt has
claimed the run since. A writer holding an older attempt stops without writing.

The object, ``runs/<run-id>/lease.json`` (the run ledger's folder; the ledger's readers skip it)::

    {"format": 1, "run": "20261130-0602-a1b2",
     "granted": 4, "granted_at": "2026-11-30T06:10:00.000000Z", "granted_to": "root@203.0.113.7:40022",
     "claimed": 3, "claimed_at": "2026-11-30T06:02:31.000000Z", "claimed_by": "root@203.0.113.5:40022"}

- ``granted``: the highest attempt any deploy was given (:func:`grant`, by the deploy flow's
  ``take-lease`` step, which writes it to the host as ``REMOTE_DIR/.gpu-deploy/attempt.json``);
- ``claimed``: the attempt of the newest training that started (:func:`claim`, by the entrypoint),
  with the host that claimed it (``RUN_HOST``) and when.

Every change is a conditional write (``If-None-Match: *`` for the first, ``If-Match`` on the ETag
read), retried after a lost race; on stores without conditional writes it falls back as
:func:`deploy.storage.objects.put_json` does (a race between two writers can then slip through).
The rules themselves are pure functions of (lease, request, time): :func:`next_grant`,
:func:`next_claim`.

Before every write under ``checkpoints/`` and ``logs/`` the training's upload helper checks the
lease (:func:`fence`: a boto3 hook on the client, so even a multipart upload that began before the
claim moved cannot complete). The check and the write are two requests, and S3 has no condition
on another object: a write checked just before a claim can still land just after it (at most the
one request each upload helper has in flight then, and its metadata names the older attempt).
This module imports no torch: the deploy flow and the watcher use it.

Example::

    lease = grant(storage, "20261130-0602-a1b2", to="root@203.0.113.7:40022")   # a deploy: attempt 4
    outcome = claim(storage, "20261130-0602-a1b2", 4, host="root@203.0.113.7:40022")
    if outcome.superseded:
        print(outcome.message)
    fence(storage, "20261130-0602-a1b2", 4)     # every PutObject under checkpoints/ checks the lease
    read_lease(storage, "20261130-0602-a1b2").holder   # 'attempt 4 on root@203.0.113.7:40022'
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deploy.errors import StorageError
from deploy.storage import CHECKPOINTS, LOGS, Storage
from deploy.storage.objects import ConditionFailed, get_json, put_json

FORMAT = 1
RUNS = "runs"  # the run ledger's folder (deploy.ledger.store.RUNS)
LEASE = "lease.json"
ATTEMPT_FILE = ".gpu-deploy/attempt.json"
"""Where the deploy writes the attempt, relative to REMOTE_DIR (the training's working directory in
both runtimes: compose mounts REMOTE_DIR at /workspace)."""
ATTEMPT_ENV = "RUN_ATTEMPT"
"""The attempt the entrypoint claimed, in the training command's environment (with ``RUN_ID``)."""
RUN_ENV = "RUN_ID"
SUPERSEDED = "gpu-deploy: superseded by attempt {attempt} on {host}; this training stops without writing to S3"
"""The line a training prints when a newer attempt took the run while it trained."""
RETRIES = 8
FENCED_OPERATIONS = ("PutObject", "CreateMultipartUpload", "CompleteMultipartUpload", "DeleteObject")
"""The S3 calls that write a key: each one under ``checkpoints/`` or ``logs/`` checks the lease first."""
_KEY = "gpu_deploy_key"  # where the fence's first hook leaves the call's key for the second


def iso(moment: datetime) -> str:
    """UTC ISO 8601 with microseconds and a ``Z``, as the run ledger writes times."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Lease:
    """The run's lease as stored; ``etag`` is the version it was read at (empty: not read from the bucket)."""

    run: str
    granted: int = 0
    granted_at: str = ""
    granted_to: str = ""
    claimed: int = 0
    claimed_at: str = ""
    claimed_by: str = ""
    etag: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "run": self.run, "granted": self.granted, "granted_at": self.granted_at,
                "granted_to": self.granted_to, "claimed": self.claimed, "claimed_at": self.claimed_at,
                "claimed_by": self.claimed_by}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], run: str = "", etag: str = "") -> "Lease":
        def number(name: str) -> int:
            try:
                return max(0, int(data.get(name) or 0))
            except (TypeError, ValueError):
                return 0

        return cls(run=str(data.get("run") or run), granted=number("granted"), claimed=number("claimed"),
                   granted_at=str(data.get("granted_at") or ""), granted_to=str(data.get("granted_to") or ""),
                   claimed_at=str(data.get("claimed_at") or ""), claimed_by=str(data.get("claimed_by") or ""),
                   etag=etag)

    def supersedes(self, attempt: int) -> bool:
        """A newer attempt than ``attempt`` has claimed the run: ``attempt`` must not write."""
        return self.claimed > attempt

    @property
    def holder(self) -> str:
        """``attempt 4 on root@203.0.113.7:40022``: who trains the run now (``nobody`` before a claim)."""
        if not self.claimed:
            return "nobody"
        return f"attempt {self.claimed} on {self.claimed_by or 'an unnamed host'}"


# --------------------------------------------------------------------------- the rules (pure)


def next_grant(lease: Lease | None, run_id: str, to: str, now: datetime) -> Lease:
    """The lease after a deploy takes the next attempt: one above every attempt granted or claimed."""
    base = lease or Lease(run=run_id)
    return replace(base, run=run_id, granted=max(base.granted, base.claimed) + 1, granted_at=iso(now),
                   granted_to=to)


def next_claim(lease: Lease | None, run_id: str, attempt: int, host: str, now: datetime) -> Lease | None:
    """The lease after a training of ``attempt`` starts, or None when nothing needs writing.

    Nothing is written when a newer attempt holds the run (the training is superseded: see
    :meth:`Lease.supersedes`) or when this attempt holds it already (a restart after a crash, or
    another node of a multi-node group).
    """
    if attempt < 1:
        raise ValueError(f"an attempt is a number from 1, got {attempt}")
    base = lease or Lease(run=run_id)
    if base.claimed >= attempt:
        return None
    return replace(base, run=run_id, granted=max(base.granted, attempt), claimed=attempt, claimed_at=iso(now),
                   claimed_by=host)


# --------------------------------------------------------------------------- the bucket


def lease_key(storage: Storage, run_id: str) -> str:
    """``<prefix>/runs/<run-id>/lease.json``."""
    return storage.key(RUNS, run_id, LEASE)


def read_lease(storage: Storage, run_id: str) -> Lease | None:
    """The run's lease as it is now (with its ETag), or None when no deploy has taken one."""
    key = lease_key(storage, run_id)
    found = get_json(storage, key)
    if found is None:
        if storage.head(key) is None:
            return None
        data = None  # there, but not JSON
    else:
        data = found[0]
    if not isinstance(data, dict):
        raise StorageError(f"{storage.url(key)} is not a lease (not a JSON object); delete it and deploy again.")
    assert found is not None
    return Lease.from_dict(data, run_id, etag=found[1])


def update_lease(storage: Storage, run_id: str, change: Callable[[Lease | None], Lease | None],
                 retries: int = RETRIES) -> Lease | None:
    """Read, ``change`` (None: keep it as it is), write conditionally; again after a lost race.

    Returns the lease as it is after the call (what was written, or what was read when nothing was).
    """
    key = lease_key(storage, run_id)
    for _ in range(retries):
        found = read_lease(storage, run_id)
        wanted = change(found)
        if wanted is None:
            return found
        try:
            etag = put_json(storage, key, wanted.to_dict(), if_none_match=found is None,
                            if_match=found.etag if found is not None else None)
        except ConditionFailed:
            continue  # another writer won: build on what it wrote
        return replace(wanted, etag=etag)
    raise StorageError(f"{storage.url(key)} kept changing while {retries} writers raced for it; try again.")


def grant(storage: Storage, run_id: str, to: str = "", now: datetime | None = None) -> Lease:
    """A deploy takes the next attempt of ``run_id`` (``granted + 1``); ``to`` names the host(s) it deploys."""
    lease = update_lease(storage, run_id, lambda found: next_grant(found, run_id, to, now or _now()))
    assert lease is not None
    return lease


@dataclass(frozen=True)
class Claim:
    """What a training found when it claimed its attempt: the lease now, and whether it may train."""

    run_id: str
    attempt: int
    lease: Lease
    wrote: bool

    @property
    def superseded(self) -> bool:
        return self.lease.supersedes(self.attempt)

    @property
    def message(self) -> str:
        if self.superseded:
            return (f"run {self.run_id} is held by {self.lease.holder}; this training (attempt {self.attempt}) is "
                    "superseded: it starts nothing and writes nothing")
        return f"attempt {self.attempt} of run {self.run_id} holds the lease; an older attempt stops without writing"


def claim(storage: Storage, run_id: str, attempt: int, host: str = "", now: datetime | None = None) -> Claim:
    """A training of ``attempt`` claims ``run_id``; ``Claim.superseded`` says a newer attempt holds it."""
    wrote: list[bool] = []

    def change(found: Lease | None) -> Lease | None:
        wanted = next_claim(found, run_id, attempt, host, now or _now())
        wrote[:] = [wanted is not None]
        return wanted

    lease = update_lease(storage, run_id, change)
    assert lease is not None
    return Claim(run_id, attempt, lease, wrote=bool(wrote and wrote[0]))


class LeaseLost(StorageError):
    """A write refused because a newer attempt holds the run (permanent: never retried)."""

    def __init__(self, lease: Lease, attempt: int, key: str = "", message: str = "") -> None:
        self.lease = lease
        self.attempt = attempt
        self.key = key
        super().__init__(message or (f"{key or 'the write'} refused: run {lease.run} is held by {lease.holder}; "
                                     f"this training is attempt {attempt}"))

    @property
    def line(self) -> str:
        """The one line the training prints (:data:`SUPERSEDED`)."""
        return SUPERSEDED.format(attempt=self.lease.claimed, host=self.lease.claimed_by or "an unnamed host")


def check(storage: Storage, run_id: str, attempt: int, key: str = "") -> Lease | None:
    """Raise :class:`LeaseLost` when a newer attempt than ``attempt`` holds ``run_id``; else the lease."""
    lease = read_lease(storage, run_id)
    if lease is not None and lease.supersedes(attempt):
        raise LeaseLost(lease, attempt, key)
    return lease


def fence(storage: Storage, run_id: str, attempt: int, folders: Iterable[str] = (CHECKPOINTS, LOGS)) -> None:
    """Make every write of ``storage``'s client under ``folders`` check the lease first (:func:`check`).

    Two boto3 hooks per operation in :data:`FENCED_OPERATIONS`: ``before-parameter-build`` notes the
    key, ``before-call`` (the last moment before the request goes out, after the parts of a multipart
    upload were sent) reads the lease and raises :class:`LeaseLost`. Other keys (the run ledger,
    the lease itself) pass unchecked. Registered once per client: a second call changes nothing.
    """
    prefixes = tuple(storage.key(folder) + "/" for folder in folders)

    def note(params: Mapping[str, Any], context: dict[str, Any], **_: Any) -> None:
        context[_KEY] = params.get("Key", "")

    def guard(context: Mapping[str, Any], **_: Any) -> None:
        key = str(context.get(_KEY) or "")
        if key.startswith(prefixes):
            check(storage, run_id, attempt, storage.url(key))

    # A task's storage moves files with a client of its own: both are fenced.
    for client in {id(c): c for c in (storage.client, storage.transfer_client)}.values():
        events = client.meta.events
        for operation in FENCED_OPERATIONS:
            events.register(f"before-parameter-build.s3.{operation}", note,
                            unique_id=f"gpu-deploy-lease-key-{operation}")
            events.register(f"before-call.s3.{operation}", guard, unique_id=f"gpu-deploy-lease-{operation}")


def attempt_from_environment(environ: Mapping[str, str] | None = None) -> tuple[str, int] | None:
    """(run id, attempt) from ``RUN_ID`` and ``RUN_ATTEMPT`` (the entrypoint sets both), or None."""
    environ = os.environ if environ is None else environ
    run_id, raw = environ.get(RUN_ENV, "").strip(), environ.get(ATTEMPT_ENV, "").strip()
    if not run_id or not raw.isdigit() or int(raw) < 1:
        return None
    return run_id, int(raw)


def fence_from_environment(storage: Storage, environ: Mapping[str, str] | None = None) -> bool:
    """:func:`fence` ``storage`` for the attempt in the environment; False (nothing done) without one."""
    found = attempt_from_environment(environ)
    if found is None:
        return False
    fence(storage, *found)
    return True


# --------------------------------------------------------------------------- the attempt on the host


def attempt_document(run_id: str, attempt: int) -> bytes:
    """The body of ``.gpu-deploy/attempt.json``: ``{"attempt": 4, "run": "..."}``."""
    return json.dumps({"run": run_id, "attempt": int(attempt)}, sort_keys=True).encode() + b"\n"


def read_attempt(path: str | os.PathLike[str] = ATTEMPT_FILE) -> tuple[str, int] | None:
    """(run id, attempt) the deploy wrote to ``path``, or None when there is no usable file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    run_id, attempt = data.get("run"), data.get("attempt")
    if not isinstance(run_id, str) or not run_id or not isinstance(attempt, int) or isinstance(attempt, bool) \
            or attempt < 1:
        return None
    return run_id, attempt
