"""A managed run from the operator's side: plan it, start (or continue) it, attach to it again, say what bills.

``fab train`` = :func:`plan_train` (printed; ``--dry-run`` stops here) -> :func:`start` (the run's
record, the store's promises checked, the watcher's first state in the bucket) ->
:meth:`deploy.watch.loop.Watcher.run`. ``fab train.watch RUN`` = :func:`attach` -> the same loop, from
the state the last watcher saved. Running ``fab train`` again on a run a limit halted continues it:
its spend and hours so far count against the limits.

Example::

    plan = plan_train(settings)
    print("\\n".join(plan.lines()))
    watcher = start(settings, Path("."), storage, plan)
    watcher.run()
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.errors import ConfigError, DeployError
from deploy.ledger.identity import make_record, resolve_run_id
from deploy.ledger.store import RunLedger, writer_name
from deploy.pods.api import PodApi
from deploy.pods.lifecycle import plan_pod, project_of
from deploy.pods.plan import UpPlan
from deploy.settings import Settings
from deploy.storage import Storage
from deploy.storage.conditions import probe_conditional_writes
from deploy.watch.act import Hands
from deploy.watch.decide import decide
from deploy.watch.facts import RECORD, Guardrails
from deploy.watch.loop import GAVE_UP, Watcher
from deploy.watch.record import StateStore, WatchError
from deploy.watch.state import DONE, PROVISIONING, WATCHING, WatchState

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
                   "of this run in S3 (CHECKPOINT=s3)"]
                + self.rails.lines()
                + [f"watch     RunPod's API every {self.api_every:g} s, the run over SSH every {self.ssh_every:g} s; "
                   "state in the bucket (runs/<run>/watch/state.json, signed): Ctrl-C detaches, "
                   "fab train.watch RUN attaches again"])


def plan_train(settings: Settings, api: PodApi | None = None, api_every: float = 5.0, ssh_every: float = 30.0,
               ssh_timeout: float = 900.0) -> TrainPlan:
    """Asks the API for GPU types and prices (no pod is created); refuses an unknown price under MAX_SPEND."""
    api = api or PodApi(settings.runpod_api_key)
    up = plan_pod(settings, api, name="planned")
    if settings.max_spend and any(price <= 0 for price in up.prices):
        raise ConfigError("MAX_SPEND is set but RunPod gives no price for a GPU type in POD_GPU_TYPES, so spend "
                          "could not be counted; name only GPU types with a price (fab pods.gpus).")
    rails = Guardrails.from_settings(settings, pod_price=max(up.prices), ssh_timeout=ssh_timeout)
    return TrainPlan(up=up, rails=rails, api_every=api_every, ssh_every=ssh_every)


def _conditional(storage: Storage, log: Log) -> bool:
    """Whether the store honours conditional writes (probed); when not (or unknown), say what that means."""
    found = probe_conditional_writes(storage)
    if found.honoured:
        return True
    log(f"store     {found.describe()}: only one watcher may run per run; this one holds a lease object")
    return False


def _watcher(settings: Settings, folder: Path, storage: Storage, state: WatchState, store: StateStore,
             etag: str | None, plan: TrainPlan, log: Log, **tuning: Any) -> Watcher:
    api = PodApi(settings.runpod_api_key)
    hands = Hands(settings, folder=folder, storage=storage, api=api, log=log,
                  results_dest=str(tuning.pop("results", folder)))
    ledger = RunLedger(storage, state.run_id, writer_name("watch"))
    return Watcher(hands, ledger, plan.rails, state, store, etag, say=log, api_every=plan.api_every,
                   ssh_every=plan.ssh_every, **tuning)


def _store(settings: Settings, storage: Storage, run_id: str, log: Log) -> StateStore:
    return StateStore(storage, run_id, settings.runpod_api_key, conditional=_conditional(storage, log))


def continued(previous: WatchState, at: float, rails: Guardrails) -> WatchState:
    """A new session of a halted run: its pods, spend and hours carry on; counters and warnings start again."""
    if rails.max_spend and previous.spend(at) >= rails.max_spend:
        raise WatchError(f"Run {previous.run_id} has spent ${previous.spend(at):.2f} of MAX_SPEND=${rails.max_spend:.2f}; "
                         "raise MAX_SPEND to continue it, or set RUN_ID to start another run.")
    if rails.max_hours and previous.hours(at) >= rails.max_hours:
        raise WatchError(f"Run {previous.run_id} has run {previous.hours(at):.3g} h of MAX_HOURS={rails.max_hours:g} h; "
                         "raise MAX_HOURS to continue it, or set RUN_ID to start another run.")
    return dataclasses.replace(previous, started_at=at, phase=PROVISIONING, current="", restarts=0, warned=(),
                               hours_before=previous.hours(at), ending="", wrapped=False, outcome="", exit_code=0,
                               ssh_down_since=None, no_runtime_since=None, idle_since=None, next_deploy_at=0.0)


def start(settings: Settings, folder: Path, storage: Storage, plan: TrainPlan, log: Log = print,
          **tuning: Any) -> Watcher:
    """The run this ``fab train`` belongs to (RUN_ID, else the newest unfinished run, else a new one), its
    record, and the watcher's first state; a halted run is continued; a run another watcher drives is refused."""
    settings.require(*REQUIRED)
    run_id, _ = resolve_run_id(storage, settings)
    store = _store(settings, storage, run_id, log)
    previous, etag = None, None
    if store.exists():
        previous, etag = store.load()
    now = time.time()
    if previous is not None and previous.phase != DONE:
        raise WatchError(f"Run {run_id} is already managed (its watcher is {previous.phase}); attach with "
                         f"fab train.watch {run_id}, or set RUN_ID to start another run.")
    if previous is not None:
        state = continued(previous, now, plan.rails)
        log(f"continue  run {run_id}: ${previous.spend(now):.2f} spent and {previous.hours(now):.2f} h so far count "
            "against the limits")
    else:
        RunLedger(storage, run_id, writer_name("watch")).create(make_record(run_id, settings, storage,
                                                                             image=settings.image))
        state = WatchState(run_id=run_id, started_at=now, project=project_of(settings))
    watcher = _watcher(settings, folder, storage, state, store, etag, plan, log, **tuning)
    watcher.etag = store.save(state, etag)
    return watcher


def attach(settings: Settings, folder: Path, storage: Storage, run_id: str, plan: TrainPlan, log: Log = print,
           **tuning: Any) -> Watcher:
    """A watcher for ``run_id`` from the state the last one saved (it takes the run over)."""
    settings.require(*REQUIRED)
    store = _store(settings, storage, run_id, log)
    state, etag = store.load()
    if state.project and state.project != project_of(settings):
        raise WatchError(f"Run {run_id} belongs to another project (its pods carry id {state.project}, this bucket and "
                         f"prefix make {project_of(settings)}); check S3_BUCKET and S3_PREFIX.")
    return _watcher(settings, folder, storage, state, store, etag, plan, log, **tuning)


def preview(settings: Settings, folder: Path, storage: Storage, run_id: str, plan: TrainPlan,
            **tuning: Any) -> list[str]:
    """``fab train.watch --dry-run``: what a watcher attached to ``run_id`` would do next, from the state the
    last one saved and one look at the pods and the run; nothing is written, nothing is created or ended."""
    settings.require(*REQUIRED)
    store = StateStore(storage, run_id, settings.runpod_api_key, conditional=True)  # no probe objects: read only
    state, etag = store.load()
    if state.project and state.project != project_of(settings):
        raise WatchError(f"Run {run_id} belongs to another project (its pods carry id {state.project}, this bucket and "
                         f"prefix make {project_of(settings)}); check S3_BUCKET and S3_PREFIX.")
    watcher = _watcher(settings, folder, storage, state, store, etag, plan, lambda line: None, **tuning)
    _, actions = decide(state, watcher.observe(), plan.rails)
    lines = [f"run       {run_id}: {state.phase}, pod {state.pod_id or 'none'} {state.host}".rstrip()]
    lines += [f"next      {a.data.get('kind', a.kind) if a.kind == RECORD else a.kind}"
              + (f" {a.pod}" if a.pod else "") + (f": {a.reason}" if a.reason else "") for a in actions]
    return lines + ([] if actions else ["next      nothing: the run is as the state wants it"])


def billing_lines(state: WatchState, at: float) -> list[str]:
    """One line per pod that may still bill, with its $/h and why it is there."""
    lines = []
    for pod in state.billing():
        if pod.end:
            role = f"being ended: {pod.end}"
        else:
            role = "training" if pod.name == state.current and state.phase == WATCHING else "starting"
        lines.append(f"  {pod.label} (${pod.price:.2f}/h, {role})")
    return lines


def detached_message(state: WatchState, at: float | None = None) -> str:
    """What Ctrl-C says: every pod still billing, and the two ways on."""
    at = time.time() if at is None else at
    lines = billing_lines(state, at)
    if not lines:
        return f"Watcher detached from run {state.run_id}; no pod of it bills. Attach again: fab train.watch {state.run_id}"
    ids = [p.id for p in state.billing() if p.id]
    down = "; take them down: " + ", ".join(f"fab pods.down --pod {i}" for i in ids) if ids else ""
    return (f"Watcher detached from run {state.run_id}. Still billing:\n" + "\n".join(lines)
            + f"\nAttach again: fab train.watch {state.run_id}{down}")


def final_message(state: WatchState, at: float | None = None) -> str:
    """What the watcher says when it stops: the outcome, the spend, and every pod still billing."""
    at = time.time() if at is None else at
    text = (f"Run {state.run_id}: {state.outcome or state.phase}. Pods used: {', '.join(state.pod_ids) or 'none'}; "
            f"spend ${state.spend(at):.2f} (fab runs.show --run {state.run_id}).")
    lines = billing_lines(state, at)
    if lines:
        text += ("\nStill billing (RunPod did not confirm their end):\n" + "\n".join(lines)
                 + f"\nfab train.watch {state.run_id} keeps trying; fab pods.down --pod ID --force ends one by hand.")
    return text


def exit_code(state: WatchState) -> int:
    """0: nothing bills and the run finished or a limit stopped it; 1: the training kept failing; 3: pods bill."""
    if state.billing():
        return GAVE_UP
    return state.exit_code if state.exit_code != GAVE_UP else 0


def run_id_of(value: str) -> str:
    """A run id given on the command line, checked as the ledger checks one."""
    from deploy.ledger.store import check_run_id

    try:
        return check_run_id(value)
    except DeployError as exc:
        raise WatchError(str(exc)) from None
