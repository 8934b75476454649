"""The watcher's decisions, pure: the run's state and one observation in, the next state and actions out.

Nothing here talks to RunPod, SSH or S3. The loop (:mod:`deploy.watch.loop`) observes the pod through
the API every few seconds and the run over SSH less often, hands both to :func:`decide`, carries out
the actions it returns and saves the new :class:`WatchState` in the bucket, so a restarted watcher
decides exactly as the one before it would have. Times are epoch seconds (``time.time()``), which
survive a restart of the watcher (a monotonic clock would not).

The rules, in order:

1. the pod is gone, stopped (RunPod reclaimed it: ``EXITED``) or terminated -> ``replace`` at once
   (also while a deploy to it is pending);
   running without a runtime (its machine failed) or unreachable over SSH for ``lost_after`` seconds
   -> ``replace``;
2. the training exited 0 -> ``finish`` (sync the results, then terminate or stop the pod per
   ON_SUCCESS); stopped on the host (``fab stop``) -> ``finish`` too, as the operator asked;
3. the training failed (its supervisor gave up), died, or is not there -> ``restart`` (redeploy,
   resuming from S3) while fewer than MAX_RESTARTS were made, else ``halt``;
4. MAX_HOURS or MAX_SPEND: ``warn`` once at 80%, ``halt`` at 100% (graceful stop: SIGTERM saves a
   checkpoint, the uploads flush, the results sync, the pod is terminated);
5. idle (GPU utilisation known and under IDLE_GPU_PERCENT, and no new step) for IDLE_MINUTES ->
   ``warn``; for twice as long -> ``halt``. Unknown utilisation (no ``nvidia-smi``) is never idle.

Example::

    state, actions = decide(state, Observation(at=time.time(), pod=PodFact("RUNNING", True, 0.79)), rails)
    for action in actions:
        print(action.kind, action.reason)      # replace  pod abc123 is EXITED (RunPod stopped it)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from deploy.settings import Settings

# Phases of a managed run. ``provisioning``/``deploying`` are saved before the slow part starts, so a
# watcher that dies half way through redoes that part when it is restarted.
PROVISIONING, DEPLOYING, WATCHING, DONE = "provisioning", "deploying", "watching", "done"
PHASES = (PROVISIONING, DEPLOYING, WATCHING, DONE)

# Actions.
REPLACE, RESTART, FINISH, HALT, WARN, PROVISION, DEPLOY = (
    "replace", "restart", "finish", "halt", "warn", "provision", "deploy")

# Supervisor states (deploy.runtimes.native.service) and what they mean to the watcher.
RUNNING_STATES = frozenset({"starting", "running", "restarting", "orphaned"})
FAILED_STATES = frozenset({"failed", "dead", "absent"})
WARN_AT = 0.8


@dataclass(frozen=True)
class Guardrails:
    """The limits of one managed run (from settings; ``None`` and 0 mean no limit)."""

    max_restarts: int = 3
    max_hours: float | None = None
    max_spend: float | None = None
    idle_minutes: int = 0
    idle_gpu_percent: int = 5
    lost_after: float = 30.0
    on_success: str = "terminate"

    @classmethod
    def from_settings(cls, settings: Settings) -> "Guardrails":
        return cls(max_restarts=settings.max_restarts, max_hours=settings.max_hours, max_spend=settings.max_spend,
                   idle_minutes=settings.idle_minutes, idle_gpu_percent=settings.idle_gpu_percent,
                   lost_after=float(settings.lost_after_seconds), on_success=settings.on_success)

    def lines(self) -> list[str]:
        """What ``fab train --dry-run`` prints about the limits."""
        return [
            f"restarts  up to {self.max_restarts} redeploys after the training fails (MAX_RESTARTS)",
            "hours     " + (f"stop after {self.max_hours:g} h, warn at {self.max_hours * WARN_AT:g} h (MAX_HOURS)"
                            if self.max_hours else "no limit (MAX_HOURS unset)"),
            "spend     " + (f"stop at ${self.max_spend:.2f}, warn at ${self.max_spend * WARN_AT:.2f} (MAX_SPEND)"
                            if self.max_spend else "no limit (MAX_SPEND unset)"),
            "idle      " + (f"GPUs under {self.idle_gpu_percent}% and no new step: warn after {self.idle_minutes} min, "
                            f"stop after {2 * self.idle_minutes} min" if self.idle_minutes else
                            "never stopped for idling (IDLE_MINUTES=0)"),
            f"lost pod  EXITED or gone: replaced at once; no runtime or no SSH for {self.lost_after:.0f} s: replaced "
            "(LOST_AFTER_SECONDS); the replacement resumes from the newest checkpoint in S3",
            f"success   sync lightning_logs back, then {self.on_success} the pod (ON_SUCCESS)",
        ]


@dataclass(frozen=True)
class PodFact:
    """The pod as the API reports it now; ``status`` is ``""`` when RunPod no longer knows the pod."""

    status: str
    has_runtime: bool = False
    cost_per_hr: float = 0.0

    @property
    def gone(self) -> bool:
        return self.status in ("", "EXITED", "TERMINATED")


@dataclass(frozen=True)
class RunFact:
    """The run as read over SSH: ``reachable`` False when SSH failed; ``service`` the supervisor's status."""

    reachable: bool
    service: str = ""
    step: int | None = None
    gpu_percent: float | None = None


@dataclass(frozen=True)
class Observation:
    at: float
    pod: PodFact | None = None
    """None: the API was not asked (or could not be reached) this time."""
    run: RunFact | None = None
    """None: SSH was not asked this time."""


@dataclass(frozen=True)
class Action:
    kind: str
    reason: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WatchState:
    """Everything the watcher must remember, kept in the bucket (``runs/<run-id>/watch/state.json``)."""

    run_id: str
    started_at: float
    phase: str = PROVISIONING
    pod_id: str = ""
    host: str = ""
    price_per_hour: float = 0.0
    pod_since: float = 0.0
    """When the current pod began billing for the run."""
    spent_before: float = 0.0
    """Dollars of the run's earlier pods (closed when each was replaced or ended)."""
    restarts: int = 0
    replacements: int = 0
    suspect_since: float | None = None
    """When the pod was first seen without a runtime or unreachable (None: all well)."""
    last_step: int | None = None
    idle_since: float | None = None
    warned: tuple[str, ...] = ()
    outcome: str = ""
    pods: tuple[str, ...] = ()

    def spend(self, at: float) -> float:
        current = self.price_per_hour * max(0.0, at - self.pod_since) / 3600 if self.pod_id else 0.0
        return self.spent_before + current

    def hours(self, at: float) -> float:
        return max(0.0, at - self.started_at) / 3600

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["warned"], data["pods"] = list(self.warned), list(self.pods)
        return {"format": 1, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WatchState":
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["warned"] = tuple(values.get("warned") or ())
        values["pods"] = tuple(values.get("pods") or ())
        return cls(**values)

    def with_pod(self, pod_id: str, host: str, price: float, at: float) -> "WatchState":
        """The run moved to a new pod: the old one's spend is closed, the new one bills from ``at``."""
        return dataclasses.replace(self, spent_before=self.spend(at), pod_id=pod_id, host=host, price_per_hour=price,
                                   pod_since=at, suspect_since=None, idle_since=None,
                                   pods=self.pods + ((pod_id,) if pod_id and pod_id not in self.pods else ()))

    def without_pod(self, at: float) -> "WatchState":
        return dataclasses.replace(self, spent_before=self.spend(at), pod_id="", host="", price_per_hour=0.0,
                                   pod_since=at)


def decide(state: WatchState, seen: Observation, rails: Guardrails) -> tuple[WatchState, list[Action]]:
    """The next state and what to do, from one observation. Pure: the same inputs give the same answer."""
    if state.phase == DONE:
        return state, []
    if state.phase == PROVISIONING:
        return state, [Action(PROVISION, "the run has no pod yet" if not state.pods else "a replacement was due")]
    if state.phase == DEPLOYING:
        if seen.pod is not None and seen.pod.gone:  # lost before training started there
            state, lost = _pod_lost(state, seen, rails)
            return state, [lost] if lost else []
        return state, [Action(DEPLOY, f"pod {state.pod_id} is up; the deploy was not confirmed")]
    state, lost = _pod_lost(state, seen, rails)
    if lost:
        return state, [lost]
    if seen.pod is not None and seen.pod.cost_per_hr and seen.pod.cost_per_hr != state.price_per_hour:
        state = dataclasses.replace(state, spent_before=state.spend(seen.at), pod_since=seen.at,
                                    price_per_hour=seen.pod.cost_per_hr)
    ended = _run_ended(state, seen.run, rails)
    if ended:
        return state, [ended]
    state, actions = _limits(state, seen.at, rails)
    if any(a.kind == HALT for a in actions):
        return state, actions
    state, idle = _idle(state, seen, rails)
    return state, actions + idle


def _pod_lost(state: WatchState, seen: Observation, rails: Guardrails) -> tuple[WatchState, Action | None]:
    pod, run = seen.pod, seen.run
    if pod is not None and pod.gone:
        what = "is no longer known to RunPod" if not pod.status else (
            "was stopped (RunPod reclaimed it)" if pod.status == "EXITED" else "was terminated")
        return state, Action(REPLACE, f"pod {state.pod_id} {what}", {"kind": "preempted" if pod.status else "lost"})
    trouble = ""
    if pod is not None and not pod.has_runtime:
        trouble = "has no runtime (its machine is down)"
    elif run is not None and not run.reachable:
        trouble = "does not answer over SSH"
    if not trouble:
        return (dataclasses.replace(state, suspect_since=None) if state.suspect_since is not None else state), None
    since = state.suspect_since if state.suspect_since is not None else seen.at
    state = dataclasses.replace(state, suspect_since=since)
    if seen.at - since >= rails.lost_after:
        return state, Action(REPLACE, f"pod {state.pod_id} {trouble} for {seen.at - since:.0f} s", {"kind": "lost"})
    return state, None


def _run_ended(state: WatchState, run: RunFact | None, rails: Guardrails) -> Action | None:
    if run is None or not run.reachable or run.service in RUNNING_STATES:
        return None
    if run.service == "exited":
        return Action(FINISH, "training exited 0", {"kind": "finished"})
    if run.service == "stopped":
        return Action(FINISH, "training was stopped on the host", {"kind": "stopped"})
    what = {"failed": "training failed (its supervisor gave up restarting it)", "absent": "training is not running",
            "dead": "the training's supervisor died"}.get(run.service, f"training is {run.service}")
    if state.restarts < rails.max_restarts:
        return Action(RESTART, f"{what}; restart {state.restarts + 1} of {rails.max_restarts}")
    return Action(HALT, f"{what} and MAX_RESTARTS={rails.max_restarts} restarts are used up")


def _limits(state: WatchState, at: float, rails: Guardrails) -> tuple[WatchState, list[Action]]:
    """MAX_HOURS and MAX_SPEND: warn once at 80%, halt at 100%."""
    actions: list[Action] = []
    checks = (("hours", rails.max_hours, state.hours(at), lambda v: f"{v:.3g} h", "MAX_HOURS"),
              ("spend", rails.max_spend, state.spend(at), lambda v: f"${v:.2f}", "MAX_SPEND"))
    for name, limit, value, show, key in checks:
        if not limit:
            continue
        if value >= limit:
            actions.append(Action(HALT, f"{key}={show(limit)} reached ({show(value)})", {"limit": name}))
        elif value >= WARN_AT * limit and name not in state.warned:
            state = dataclasses.replace(state, warned=state.warned + (name,))
            actions.append(Action(WARN, f"{show(value)} of {key}={show(limit)} used (80%); the run stops at "
                                        f"{show(limit)}", {"limit": name}))
    return state, actions


def _idle(state: WatchState, seen: Observation, rails: Guardrails) -> tuple[WatchState, list[Action]]:
    """GPUs under the threshold and no new step: the idle clock runs; anything else resets it."""
    run = seen.run
    if run is None or not run.reachable:
        return state, []
    stepped = run.step is not None and run.step != state.last_step
    if run.step is not None:
        state = dataclasses.replace(state, last_step=run.step)
    low = run.gpu_percent is not None and run.gpu_percent < rails.idle_gpu_percent
    if not rails.idle_minutes or stepped or not low:
        if state.idle_since is not None or "idle" in state.warned:
            state = dataclasses.replace(state, idle_since=None, warned=tuple(w for w in state.warned if w != "idle"))
        return state, []
    since = state.idle_since if state.idle_since is not None else seen.at
    state = dataclasses.replace(state, idle_since=since)
    idle_for = seen.at - since
    limit = rails.idle_minutes * 60
    what = f"GPUs at {run.gpu_percent:.0f}% (under IDLE_GPU_PERCENT={rails.idle_gpu_percent}) with no new step"
    if idle_for >= 2 * limit:
        return state, [Action(HALT, f"{what} for {idle_for / 60:.0f} min", {"limit": "idle"})]
    if idle_for >= limit and "idle" not in state.warned:
        return dataclasses.replace(state, warned=state.warned + ("idle",)), [
            Action(WARN, f"{what} for {idle_for / 60:.0f} min; the run stops after {2 * rails.idle_minutes} min",
                   {"limit": "idle"})]
    return state, []
