"""The watcher's state in the bucket: ``runs/<run-id>/watch/state.json``, beside the run's record.

The state (:class:`deploy.watch.decide.WatchState`) is saved after every change, so a watcher that
is killed, or whose laptop lost its connection, is restarted with ``fab train.watch RUN`` and
resumes where the last one was. Only one watcher drives a run: each save is conditional on the
ETag the watcher last saw (``If-Match``), so when a second watcher attaches (it takes over), the first
one's next save fails and it stops with one sentence instead of fighting over the pod. The run
ledger's readers skip this object (it is not an event or a heartbeat).

Example::

    state, etag = load(storage, "20261130-060215-a1b2")
    etag = save(storage, state, etag)
"""

from __future__ import annotations

from deploy.errors import DeployError
from deploy.ledger.store import ConditionFailed, get_json, put_json
from deploy.storage import Storage
from deploy.watch.decide import WatchState

STATE = ("watch", "state.json")


class WatchError(DeployError):
    """The managed run cannot be watched (no such run, another watcher took it over ...)."""


def state_key(storage: Storage, run_id: str) -> str:
    return storage.key("runs", run_id, *STATE)


def load(storage: Storage, run_id: str) -> tuple[WatchState, str]:
    """The run's saved state and its ETag; one sentence when the run was never started by ``fab train``."""
    found = get_json(storage, state_key(storage, run_id))
    if found is None or not isinstance(found[0], dict):
        raise WatchError(f"Run {run_id} has no watcher state in s3://{storage.bucket}/{state_key(storage, run_id)}; "
                         "fab train starts a managed run, and fab runs lists the runs.")
    try:
        return WatchState.from_dict(found[0]), found[1]
    except (TypeError, ValueError) as exc:
        raise WatchError(f"The watcher state of run {run_id} is not readable ({exc}); start a new run with "
                         "fab train.") from None


def save(storage: Storage, state: WatchState, etag: str | None) -> str:
    """Write ``state`` if nobody else wrote since ``etag`` (None: it must not exist yet); the new ETag."""
    key = state_key(storage, state.run_id)
    try:
        return put_json(storage, key, state.to_dict(), if_none_match=etag is None, if_match=etag)
    except ConditionFailed:
        raise WatchError(f"Another watcher took over run {state.run_id} (its state changed in the bucket); this one "
                         "stops. fab train.watch attaches again.") from None
