"""What the watcher knows and does, as plain data: its limits, one look at the run, the actions it decides.

:func:`deploy.watch.decide.decide` takes a :class:`WatchState`, one :class:`Observation` (the run's pods
from the API, the current pod over SSH) and the run's :class:`Guardrails`, and returns :class:`Action`
records for the loop to carry out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deploy.settings import Settings
from deploy.watch.state import TERMINATE

# Actions the loop carries out.
CREATE, ARM, DEPLOY, END, WRAP, RECORD = "create", "arm", "deploy", "end", "wrap", "record"
WARN_AT = 0.8
"""A limit warns once at this share of it."""


@dataclass(frozen=True)
class Guardrails:
    """The limits of one managed run (from settings; ``None`` and 0 mean no limit)."""

    max_restarts: int = 3
    max_hours: float | None = None
    max_spend: float | None = None
    idle_minutes: int = 0
    idle_gpu_percent: int = 5
    lost_after: float = 30.0
    on_success: str = TERMINATE
    ssh_timeout: float = 900.0
    pod_price: float = 0.0
    """The dearest $/h the plan may create at: what the budget must cover before a new pod is asked for."""

    @classmethod
    def from_settings(cls, settings: Settings, pod_price: float = 0.0, ssh_timeout: float = 900.0) -> "Guardrails":
        return cls(max_restarts=settings.max_restarts, max_hours=settings.max_hours, max_spend=settings.max_spend,
                   idle_minutes=settings.idle_minutes, idle_gpu_percent=settings.idle_gpu_percent,
                   lost_after=float(settings.lost_after_seconds), on_success=settings.on_success,
                   ssh_timeout=ssh_timeout, pod_price=pod_price)

    @property
    def limited(self) -> bool:
        return bool(self.max_hours or self.max_spend)

    def lines(self) -> list[str]:
        """What ``fab train --dry-run`` prints about the limits."""
        cap = ("SIGTERM saves a checkpoint, the results sync, then every pod is terminated whatever the "
               "checkpoint guard says")
        return [
            f"restarts  up to {self.max_restarts} redeploys after the training fails (MAX_RESTARTS)",
            "hours     " + (f"stop after {self.max_hours:g} h, warn at {self.max_hours * WARN_AT:g} h (MAX_HOURS)"
                            if self.max_hours else "no limit (MAX_HOURS unset)"),
            "spend     " + (f"stop at ${self.max_spend:.2f}, warn at ${self.max_spend * WARN_AT:.2f} (MAX_SPEND), "
                            "counted for every pod from its create to its confirmed end"
                            if self.max_spend else "no limit (MAX_SPEND unset)"),
            "idle      " + (f"GPUs under {self.idle_gpu_percent}% and no new step: warn after {self.idle_minutes} min, "
                            f"stop after {2 * self.idle_minutes} min" if self.idle_minutes else
                            "never stopped for idling (IDLE_MINUTES=0)"),
            f"at limit  {cap}" if self.limited or self.idle_minutes else
            "at limit  no hours or spend limit: only MAX_RESTARTS and idling stop the run",
            "backstop  " + ("each pod ends itself at the run's deadline even if this watcher is gone "
                            "(RunPod's pod-scoped key in the pod)" if self.limited else
                            "none (set MAX_HOURS or MAX_SPEND for pods that end themselves)"),
            f"lost pod  EXITED or gone: replaced at once; no runtime or no SSH for {self.lost_after:.0f} s: replaced "
            "(LOST_AFTER_SECONDS); the lost pod is terminated (retried until RunPod confirms) and the "
            "replacement resumes from the newest checkpoint in S3",
            f"success   sync lightning_logs back, then {self.on_success} the pod (ON_SUCCESS)",
        ]


@dataclass(frozen=True)
class PodSeen:
    """One pod of the run as the API lists it now."""

    id: str
    name: str
    status: str
    has_runtime: bool = False
    price: float = 0.0
    host: str = ""
    """``user@ip:port`` of its public SSH port, when it has one."""
    answers: bool = False
    """sshd sent its banner on that port (only asked while the pod is coming up)."""
    uptime: float = 0.0


@dataclass(frozen=True)
class RunFact:
    """The run as read over SSH: ``reachable`` False when SSH failed; ``service`` the training word of the look
    (deploy.runtimes.base.Look: the supervisor's words, whatever the runtime)."""

    reachable: bool
    service: str = ""
    step: int | None = None
    gpu_percent: float | None = None
    why: str = field(default="", compare=False)  # what failed when not reachable (for logs and tests)


@dataclass(frozen=True)
class Observation:
    at: float
    pods: tuple[PodSeen, ...] | None = None
    """Every pod of the run the API lists; None: the API was not asked (or did not answer) this time."""
    run: RunFact | None = None
    """The current pod over SSH; None: SSH was not asked this time."""
    ends: dict[str, float] = field(default_factory=dict)
    """When pods that are gone recorded their own end (a pod's backstop writes ``terminated``): pod id -> time."""


@dataclass(frozen=True)
class Action:
    kind: str
    reason: str = ""
    pod: str = ""
    """The pod's name in the state."""
    data: dict[str, Any] = field(default_factory=dict)


def record(kind: str, message: str, pod: str = "", **data: Any) -> Action:
    """An event for the run ledger and the console (``kind`` is a ledger event kind)."""
    return Action(RECORD, message, pod, {"kind": kind, **data})
