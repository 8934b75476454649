"""Who owns each of the project's pods: a live managed run, the operator (``fab pods.up``), or nobody.

A pod named for a managed run (:mod:`deploy.pods.naming`) belongs to that run while the run's watcher
state (checked: :class:`deploy.watch.record.StateStore`) is not done and tracks the pod as still
wanted or still being ended. A pod of this project that no live run owns and that was not made by
hand is an orphan: a run that finished with a terminate RunPod never confirmed, a create whose answer
was lost after its watcher died, a run whose state was refused. ``fab pods`` marks them with their
$/h and age, and ``fab pods.down --orphans`` ends them (with the checkpoint guard unless ``--force``).

Example::

    for row in owned_pods(settings, Path("."), storage):
        print(row.pod.id, row.owner, row.orphan)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from deploy.errors import DeployError
from deploy.pods.api import PodApi
from deploy.pods.lifecycle import list_project
from deploy.pods.models import Pod
from deploy.pods.naming import MANAGED, parse_pod_name
from deploy.settings import Settings
from deploy.storage import Storage
from deploy.watch.record import StateStore, WatchError
from deploy.watch.state import DONE, WatchState


@dataclass(frozen=True)
class OwnedPod:
    pod: Pod
    owner: str
    """``run <id>``, ``run <id> (ending)``, ``made by hand`` or why it is an orphan."""
    orphan: bool


def _states(storage: Storage, settings: Settings, run_ids: set[str]) -> dict[str, WatchState | str]:
    """Each run's checked state, or the sentence saying why it cannot be used."""
    found: dict[str, WatchState | str] = {}
    for run_id in sorted(run_ids):
        store = StateStore(storage, run_id, settings.runpod_api_key)
        try:
            found[run_id] = store.load()[0]
        except (WatchError, DeployError) as exc:
            found[run_id] = str(exc)
    return found


def owner_of(pod: Pod, states: dict[str, WatchState | str]) -> tuple[str, bool]:
    """(owner, orphan) for one pod of the project."""
    parsed = parse_pod_name(pod.name)
    if parsed is None:
        return "recorded by an older version (fab pods.down --pod ID ends it)", False
    if parsed.kind != MANAGED:
        return "made by hand (fab pods.up)", False
    state = states.get(parsed.run_id)
    if not isinstance(state, WatchState):
        return f"orphan: run {parsed.run_id} has no usable watcher state", True
    record = next((p for p in state.pods if p.id == pod.id), None)
    if state.phase == DONE or record is None or not record.open:
        why = "is done" if state.phase == DONE else "does not track it"
        return f"orphan: run {parsed.run_id} {why}", True
    return f"run {parsed.run_id}" + (" (ending)" if record.end else ""), False


def owned_pods(settings: Settings, folder: str | os.PathLike[str], storage: Storage | None,
               api: PodApi | None = None) -> list[OwnedPod]:
    """The project's pods with their owners; without a bucket every managed pod's owner is unknown."""
    pods = list_project(settings, folder, api)
    runs = {parsed.run_id for p in pods if (parsed := parse_pod_name(p.name)) and parsed.kind == MANAGED}
    states = _states(storage, settings, runs) if storage is not None else {}
    rows = []
    for pod in pods:
        owner, orphan = owner_of(pod, states)
        rows.append(OwnedPod(pod, owner, orphan))
    return rows

