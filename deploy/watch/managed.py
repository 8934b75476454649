"""A managed run from the operator's side: plan it, start it, attach to it again.

``fab train`` = :func:`plan_train` (printed; ``--dry-run`` stops here) -> :func:`start` (the run's
record and the watcher's first state in the bucket) -> :meth:`deploy.watch.loop.Watcher.run` (the
first pod, the deploy, then the watch). ``fab train.watch RUN`` = :func:`attach` -> the same loop,
from the state the last watcher saved.

Example::

    plan = plan_train(settings, Path("."))
    print("\\n".join(plan.lines()))
    watcher = start(settings, Path("."), storage)
    watcher.run()
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.errors import DeployError
from deploy.ledger.identity import make_record, resolve_run_id
from deploy.ledger.store import RunLedger, writer_name
from deploy.pods.api import PodApi
from deploy.pods.lifecycle import plan_pod
from deploy.pods.plan import UpPlan
from deploy.settings import Settings
from deploy.storage import Storage
from deploy.watch import record
from deploy.watch.act import Hands
from deploy.watch.decide import DONE, Guardrails, WatchState
from deploy.watch.loop import Watcher
from deploy.watch.record import WatchError

Log = Callable[[str], None]
REQUIRED = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET", "RUNPOD_API_KEY")


@dataclass(frozen=True)
class TrainPlan:
    """What ``fab train`` will do: the pod's create calls with prices, the limits, what happens when."""

    up: UpPlan
    rails: Guardrails
    api_every: float = 5.0
    ssh_every: float = 30.0

    def lines(self) -> list[str]:
        return (["pod       the first GPU type with capacity, in this order:"]
                + [f"          {line}" for line in self.up.lines()]
                + ["deploy    native runtime (pods have no Docker); training resumes from the newest checkpoint "
                   "in S3 (CHECKPOINT=s3)"]
                + self.rails.lines()
                + [f"watch     RunPod's API every {self.api_every:g} s, the run over SSH every {self.ssh_every:g} s; "
                   "state in the bucket (runs/<run>/watch/state.json): Ctrl-C detaches, fab train.watch RUN "
                   "attaches again"])


def plan_train(settings: Settings, folder: Path, api: PodApi | None = None, api_every: float = 5.0,
               ssh_every: float = 30.0) -> TrainPlan:
    """Asks the API for GPU types and prices (no pod is created)."""
    api = api or PodApi(settings.runpod_api_key)
    return TrainPlan(up=plan_pod(settings, folder, api), rails=Guardrails.from_settings(settings),
                     api_every=api_every, ssh_every=ssh_every)


def _watcher(settings: Settings, folder: Path, storage: Storage, state: WatchState, etag: str | None,
             log: Log, **tuning: Any) -> Watcher:
    api = PodApi(settings.runpod_api_key)
    hands = Hands(settings, folder=folder, storage=storage, api=api, log=log,
                  ssh_timeout=tuning.pop("ssh_timeout", 900.0), results_dest=str(tuning.pop("results", folder)))
    ledger = RunLedger(storage, state.run_id, writer_name("watch"))
    return Watcher(hands, ledger, Guardrails.from_settings(settings), state, etag, say=log, **tuning)


def start(settings: Settings, folder: Path, storage: Storage, log: Log = print, **tuning: Any) -> Watcher:
    """The run this ``fab train`` belongs to (RUN_ID, else the newest unfinished run, else a new one), its
    record, and the watcher's first state; refuses a run another watcher still drives."""
    settings.require(*REQUIRED)
    run_id, _ = resolve_run_id(storage, settings)
    ledger = RunLedger(storage, run_id, writer_name("watch"))
    ledger.create(make_record(run_id, settings, storage, image=settings.image))
    etag = None
    try:
        previous, etag = record.load(storage, run_id)
    except WatchError:
        previous = None
    if previous is not None and previous.phase != DONE:
        raise WatchError(f"Run {run_id} is already managed (its watcher is {previous.phase}); attach with "
                         f"fab train.watch {run_id}, or set RUN_ID to start another run.")
    state = WatchState(run_id=run_id, started_at=time.time())
    watcher = _watcher(settings, folder, storage, state, etag, log, **tuning)
    watcher.etag = record.save(storage, state, etag)  # a finished run's old state is replaced
    return watcher


def attach(settings: Settings, folder: Path, storage: Storage, run_id: str, log: Log = print,
           **tuning: Any) -> Watcher:
    """A watcher for ``run_id`` from the state the last one saved (it takes the run over)."""
    settings.require(*REQUIRED)
    state, etag = record.load(storage, run_id)
    return _watcher(settings, folder, storage, state, etag, log, **tuning)


def detached_message(state: WatchState) -> str:
    """What Ctrl-C says: what keeps running and billing, and the two ways on."""
    if not state.pod_id:
        return f"Watcher detached from run {state.run_id}; it has no pod now. Attach again: fab train.watch {state.run_id}"
    return (f"Watcher detached from run {state.run_id}. Pod {state.pod_id} keeps running and billing "
            f"(${state.price_per_hour:.2f}/h). Attach again: fab train.watch {state.run_id}; take it down: "
            f"fab pods.down --pod {state.pod_id}")


def run_id_of(value: str) -> str:
    """A run id given on the command line, checked as the ledger checks one."""
    from deploy.ledger.store import check_run_id

    try:
        return check_run_id(value)
    except DeployError as exc:
        raise WatchError(str(exc)) from None
