"""What a managed run's watcher remembers: every pod the run asked for, from the intent to the confirmed end.

A pod is written down (:class:`PodRecord`) before the create call is sent, under a name fixed for the
run and attempt (:func:`deploy.pods.naming.pod_name`), so a create that timed out is answered by
looking the name up, never by a second pod. Ending a pod is an obligation that stays in the state
(``end`` set, ``gone`` not yet) until the API confirms the pod gone; the loop retries it with
backoff, across watcher restarts. Spend is the sum over every pod, from the moment its create was
asked for until its end (the terminate call RunPod accepted, else the look that found it gone), at the
price RunPod gives for that pod: an upper bound of what RunPod bills, never a lower one.

Times are epoch seconds (``time.time()``), which survive a restart of the watcher.

Example::

    state = WatchState(run_id="r1", started_at=now, project="3f2a9c1b")
    state = state.ask_for_pod(now, price=0.79)          # the intent, saved before the create call
    print(state.spend(now + 3600), state.billing())     # 0.79 (pod ...-1,)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from deploy.pods.naming import pod_name

# Phases of a managed run. ``ending``: the run is over (finished, or a limit stopped it) and its pods
# are being ended; ``done``: nothing of the run bills any more (or the watcher gave up trying: see
# ``exit_code``).
PROVISIONING, DEPLOYING, WATCHING, ENDING, DONE = "provisioning", "deploying", "watching", "ending", "done"
PHASES = (PROVISIONING, DEPLOYING, WATCHING, ENDING, DONE)
FORMAT = 2

TERMINATE, STOP = "terminate", "stop"
END_BACKOFF = (5.0, 10.0, 20.0, 40.0, 60.0)
"""Seconds between two tries of ending a pod (the last one repeats)."""


@dataclass(frozen=True)
class PodRecord:
    """One pod of the run, from the intent to create it to the API's word that it is gone."""

    name: str
    attempt: int
    asked_at: float
    """When the create call was about to be sent: billing is counted from here (an upper bound)."""
    price: float = 0.0
    """Dollars per hour: the API's price for this pod, else the plan's for its GPU type."""
    id: str = ""
    """RunPod's id; empty while the create is only asked for (or its answer was lost)."""
    host: str = ""
    """``root@ip:port`` once the pod's SSH answered."""
    deadline: float | None = None
    """The pod's own backstop: past it, the pod stops its training and ends itself (MAX_HOURS/MAX_SPEND)."""
    unknown_since: float | None = None
    """The create's answer was lost (timeout, interrupt): the name is looked up before asking again."""
    retry_at: float = 0.0
    """No capacity anywhere: when to ask again (same name)."""
    end: str = ""
    """Why the pod must end; empty while the run wants it. Once set it stays until ``gone``."""
    how: str = TERMINATE
    force: bool = True
    """False: terminate only when the checkpoint guard agrees (else stop, keeping the volume)."""
    end_tries: int = 0
    next_end_at: float = 0.0
    end_called_at: float | None = None
    """When RunPod accepted the terminate (or stop) call: billing stops here."""
    ended_at: float | None = None
    """When billing stopped, once the API confirmed it (``gone``)."""
    gone: bool = False
    never_made: bool = False
    """The create was refused, or its name never appeared: there is no pod and nothing to pay."""
    spent_before: float = 0.0
    priced_at: float | None = None
    """A price change closes the dollars so far into ``spent_before``; the new price runs from here."""

    @property
    def label(self) -> str:
        return self.id or self.name

    @property
    def open(self) -> bool:
        """May still bill: made (or maybe made) and not confirmed gone."""
        return not (self.gone or self.never_made)

    @property
    def owed(self) -> bool:
        """An obligation to end it is pending."""
        return bool(self.end) and self.open

    def spend(self, at: float) -> float:
        if self.never_made:
            return 0.0
        stop = self.ended_at if self.ended_at is not None else (self.end_called_at or at)
        since = self.priced_at if self.priced_at is not None else self.asked_at
        return self.spent_before + self.price * max(0.0, stop - since) / 3600

    def repriced(self, price: float, at: float) -> "PodRecord":
        if price <= 0 or abs(price - self.price) < 1e-9:
            return self
        return dataclasses.replace(self, spent_before=self.spend(at), priced_at=at, price=price)

    def ending(self, why: str, at: float, how: str = TERMINATE, force: bool = True) -> "PodRecord":
        """The pod must end (kept if it already must: the first reason stands)."""
        if self.end or not self.open:
            return self
        return dataclasses.replace(self, end=why, how=how, force=force, next_end_at=at)

    def end_failed(self, at: float) -> "PodRecord":
        wait = END_BACKOFF[min(self.end_tries, len(END_BACKOFF) - 1)]
        return dataclasses.replace(self, end_tries=self.end_tries + 1, next_end_at=at + wait)

    def confirmed_gone(self, at: float) -> "PodRecord":
        if self.gone:
            return self
        return dataclasses.replace(self, gone=True, ended_at=self.end_called_at or at)


@dataclass(frozen=True)
class WatchState:
    """Everything the watcher must remember, kept in the bucket (``runs/<run-id>/watch/state.json``)."""

    run_id: str
    started_at: float
    """When this session of the run began (``fab train`` again on a halted run starts a new one)."""
    project: str = ""
    phase: str = PROVISIONING
    pods: tuple[PodRecord, ...] = ()
    current: str = ""
    """The name of the pod the run trains on (or is bringing up); empty between pods."""
    restarts: int = 0
    replacements: int = 0
    next_deploy_at: float = 0.0
    ssh_down_since: float | None = None
    """First failed SSH look (or deploy that could not connect) since the last one that worked."""
    no_runtime_since: float | None = None
    last_step: int | None = None
    idle_since: float | None = None
    warned: tuple[str, ...] = ()
    hours_before: float = 0.0
    """Hours of the run's earlier sessions (a halted run continued)."""
    ending: str = ""
    """``finished``/``stopped``: how the run ends; the pods are being ended."""
    wrapped: bool = False
    """The stop and the results sync of the ending are done (never redone by a restarted watcher)."""
    outcome: str = ""
    exit_code: int = 0

    # ----------------------------------------------------------------- pods

    def pod(self, name: str) -> PodRecord | None:
        return next((p for p in self.pods if p.name == name), None)

    @property
    def current_pod(self) -> PodRecord | None:
        return self.pod(self.current) if self.current else None

    @property
    def pod_id(self) -> str:
        pod = self.current_pod
        return pod.id if pod else ""

    @property
    def host(self) -> str:
        pod = self.current_pod
        return pod.host if pod else ""

    def with_record(self, record: PodRecord) -> "WatchState":
        pods = tuple(record if p.name == record.name else p for p in self.pods)
        if record.name not in {p.name for p in self.pods}:
            pods += (record,)
        return dataclasses.replace(self, pods=pods)

    def update(self, name: str, **changes: Any) -> "WatchState":
        record = self.pod(name)
        return self if record is None else self.with_record(dataclasses.replace(record, **changes))

    def next_attempt(self) -> int:
        return max((p.attempt for p in self.pods), default=0) + 1

    def ask_for_pod(self, at: float, price: float) -> "WatchState":
        """Write down the next pod (its fixed name) before any create call: it becomes the current one."""
        attempt = self.next_attempt()
        record = PodRecord(name=pod_name(self.project, self.run_id, attempt), attempt=attempt, asked_at=at,
                           price=price)
        return dataclasses.replace(self.with_record(record), current=record.name, ssh_down_since=None,
                                   no_runtime_since=None, idle_since=None)

    def billing(self) -> tuple[PodRecord, ...]:
        """Pods that may still bill: made (or maybe made) and not confirmed gone."""
        return tuple(p for p in self.pods if p.open)

    def owed(self) -> tuple[PodRecord, ...]:
        return tuple(p for p in self.pods if p.owed)

    @property
    def pod_ids(self) -> tuple[str, ...]:
        """Every pod the run made, in order (ids; names for pods whose id is not known)."""
        return tuple(p.label for p in self.pods if not p.never_made)

    # ----------------------------------------------------------------- money and time

    def spend(self, at: float) -> float:
        return sum(p.spend(at) for p in self.pods)

    def hours(self, at: float) -> float:
        if self.phase == DONE:
            return self.hours_before
        return self.hours_before + max(0.0, at - self.started_at) / 3600

    def reserved(self, at: float, besides: str = "") -> float:
        """Dollars the open pods other than ``besides`` may still cost until their own deadlines."""
        return sum(p.price * max(0.0, p.deadline - at) / 3600 for p in self.billing()
                   if p.name != besides and p.deadline is not None and p.end_called_at is None)

    # ----------------------------------------------------------------- the bucket

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["pods"] = [dataclasses.asdict(p) for p in self.pods]
        data["warned"] = list(self.warned)
        return {"format": FORMAT, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WatchState":
        """A state this version wrote; TypeError/ValueError for anything else (the caller names the object)."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format') if isinstance(data, dict) else '?'} is not {FORMAT}")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        pod_fields = {f.name for f in dataclasses.fields(PodRecord)}
        values["pods"] = tuple(PodRecord(**{k: v for k, v in p.items() if k in pod_fields})
                               for p in values.get("pods") or ())
        values["warned"] = tuple(values.get("warned") or ())
        state = cls(**values)
        if state.phase not in PHASES or not isinstance(state.run_id, str):
            raise ValueError(f"phase {state.phase!r} is not one of {', '.join(PHASES)}")
        return state
