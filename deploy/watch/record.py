"""The watcher's state in the bucket: ``runs/<run-id>/watch/state.json``, beside the run's record.

The state (:class:`deploy.watch.state.WatchState`) is saved after every change, so a watcher that is
killed, or whose laptop lost its connection, is restarted with ``fab train.watch RUN`` and resumes
where the last one was.

Two promises are checked here rather than assumed:

- **Only a watcher wrote it.** Every host of the run holds the S3 key, so any of them could rewrite
  the state and switch its own guardrails off. The state carries an HMAC over its content, keyed
  with a key derived from RUNPOD_API_KEY, which stays on the operator's side (pods get their own
  pod-scoped key). An object without the right digest is refused in one sentence.
- **One watcher drives a run.** Where the store honours conditional writes, each save is
  conditional on the ETag the watcher last saw (``If-Match``), so when a second watcher attaches
  (it takes over), the first one's next save fails and it stops. Where the store does not
  (:func:`deploy.storage.conditions.probe_conditional_writes` says so), the watcher holds a lease object
  (``runs/<run-id>/watch/lease.json``, an owner and an expiry it renews) and a second watcher is
  refused while the lease is live.

Example::

    store = StateStore(storage, "20261130-060215-a1b2", secret=settings.runpod_api_key)
    state, etag = store.load()
    etag = store.save(state, etag)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from deploy.errors import DeployError
from deploy.storage.objects import ConditionFailed, get_json, put_json
from deploy.settings import Secret
from deploy.storage import Storage
from deploy.watch.state import WatchState

STATE = ("watch", "state.json")
LEASE = ("watch", "lease.json")
LEASE_SECONDS = 600.0
"""How long a watcher's lease holds without a renewal (a loop step renews it; a deploy can take minutes)."""
_CONTEXT = b"gpu-deploy watch state v2\n"


class WatchError(DeployError):
    """The managed run cannot be watched (no such run, another watcher took it over, a state it cannot trust ...)."""


def state_key(storage: Storage, run_id: str) -> str:
    return storage.key("runs", run_id, *STATE)


def _signing_key(secret: Secret | None) -> bytes:
    if not secret:
        raise WatchError("RUNPOD_API_KEY is not set; the watcher needs it (it also signs the run's state).")
    return hashlib.sha256(_CONTEXT + secret.reveal().encode()).digest()


def digest(data: dict[str, Any], key: bytes) -> str:
    body = json.dumps({k: v for k, v in data.items() if k != "digest"}, sort_keys=True, separators=(",", ":"))
    return "hmac-sha256:" + hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


@dataclass
class StateStore:
    """Load and save one run's watcher state, checked; ``conditional`` False: hold a lease instead."""

    storage: Storage
    run_id: str
    secret: Secret | None
    conditional: bool = True
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}-{secrets.token_hex(4)}")
    clock: Any = time.time
    _lease_until: float = 0.0

    @property
    def key(self) -> str:
        return state_key(self.storage, self.run_id)

    @property
    def url(self) -> str:
        return self.storage.url(self.key)

    def exists(self) -> bool:
        return self.storage.head(self.key) is not None

    def load(self) -> tuple[WatchState, str]:
        """The run's saved state and its ETag; one sentence for a missing, unreadable or foreign object."""
        found = get_json(self.storage, self.key)
        if found is None:
            raise WatchError(f"Run {self.run_id} has no watcher state in {self.url}; fab train starts a managed run, "
                             "and fab runs lists the runs.")
        return self.verify(found[0]), found[1]

    def verify(self, data: Any) -> WatchState:
        """The state in ``data`` if this watcher's key signed it; else one sentence naming the object."""
        if not isinstance(data, dict):
            raise WatchError(f"The watcher state {self.url} is not a JSON object; it was not written by a watcher. "
                             "Nothing was done with it; fab pods lists the run's pods.")
        given = data.get("digest")
        if not isinstance(given, str) or not hmac.compare_digest(given, digest(data, _signing_key(self.secret))):
            raise WatchError(f"The watcher state {self.url} was not written by a watcher holding this RUNPOD_API_KEY "
                             "(its digest does not match: written by an older version, a host with the S3 key, or "
                             "another RunPod key); it is refused and nothing was done with it. fab pods lists the "
                             "run's pods; fab train with another RUN_ID starts a new run.")
        try:
            return WatchState.from_dict(data)
        except (TypeError, ValueError, KeyError) as exc:
            raise WatchError(f"The watcher state {self.url} is not readable ({exc}); nothing was done with it.") \
                from None

    def save(self, state: WatchState, etag: str | None) -> str:
        """Write ``state`` signed: conditional on ``etag`` (None: it must not exist yet), or under the lease."""
        data = state.to_dict()
        data["digest"] = digest(data, _signing_key(self.secret))
        if not self.conditional:
            self.hold_lease()
            return put_json(self.storage, self.key, data)
        try:
            return put_json(self.storage, self.key, data, if_none_match=etag is None, if_match=etag)
        except ConditionFailed:
            raise WatchError(f"Another watcher took over run {state.run_id} (its state changed in the bucket); this "
                             "one stops. fab train.watch attaches again.") from None

    # ----------------------------------------------------------------- the lease (stores without conditions)

    @property
    def lease_key(self) -> str:
        return self.storage.key("runs", self.run_id, *LEASE)

    def hold_lease(self) -> None:
        """Take or renew the lease; refuse while another watcher's lease is live."""
        now = self.clock()
        if now < self._lease_until - LEASE_SECONDS / 2:
            return
        found = get_json(self.storage, self.lease_key)
        lease = found[0] if found and isinstance(found[0], dict) else {}
        owner, until = lease.get("owner"), lease.get("until")
        if owner not in (None, self.owner) and isinstance(until, (int, float)) and until > now:
            stamp = datetime.fromtimestamp(until, timezone.utc).strftime("%H:%M:%S UTC")
            raise WatchError(f"Another watcher ({owner}) holds run {self.run_id} until {stamp}: this store does not "
                             "honour conditional writes, so only one watcher may run; stop the other one, or wait "
                             f"until its lease ({self.storage.url(self.lease_key)}) expires.")
        self._lease_until = now + LEASE_SECONDS
        put_json(self.storage, self.lease_key, {"owner": self.owner, "until": self._lease_until})

    def release_lease(self) -> None:
        if self.conditional or not self._lease_until:
            return
        try:
            put_json(self.storage, self.lease_key, {"owner": self.owner, "until": 0})
        except DeployError:
            pass  # it expires on its own
        self._lease_until = 0.0
