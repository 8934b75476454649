"""The watcher: observe, decide, save, act; every event to the run ledger and the console.

Every ``api_every`` seconds the run's pods are listed through RunPod's API (the fast signal: a
reclaimed pod is ``EXITED`` there at once); every ``ssh_every`` seconds, and every ``api_every`` while
SSH is failing, the run is read over SSH (the runtime's look: the training's state, heartbeat step, GPU use).
:func:`deploy.watch.decide.decide` turns that into a new state and actions. The state is saved in the
bucket before any action is carried out, so the intent to create a pod is on record before the create
call, and a watcher started again with ``fab train.watch RUN`` goes on from there.

Ctrl-C detaches: the state is saved, a ``note`` says so, and the caller lists every pod still billing.
A run whose pods cannot all be confirmed ended within ``end_patience`` seconds stops the loop with
``exit_code`` 3 (the obligations stay in the state for the next watcher).

Example::

    watcher = Watcher(hands, ledger, rails, state, store, etag)
    final = watcher.run()
    print(final.outcome)                 # finished: training exited 0
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from deploy.errors import ConfigError, DeployError
from deploy.hosts.text import printable
from deploy.ledger.model import now as utc_now
from deploy.ledger.store import RunLedger, read_run
from deploy.pods.models import ApiUnreachable, PodError
from deploy.watch.act import STOP_TIMEOUT, Hands
from deploy.watch.decide import (ARM, CREATE, DEPLOY, END, RECORD, WRAP, Action, Guardrails, Observation, decide,
                                 deploy_failed, deployed, end_refused, pod_deadline, wrapped)
from deploy.watch.observe import run_fact
from deploy.watch.record import StateStore
from deploy.watch.state import DONE, ENDING, PROVISIONING, WATCHING, WatchState

Log = Callable[[str], None]
GAVE_UP = 3
"""Exit code when pods of the run could not be confirmed ended."""
WRAP_SECONDS = 300.0
"""How long the pod's backstop is postponed while a living watcher stops, syncs and ends it."""


@dataclasses.dataclass
class Watcher:
    """One run's watcher. ``clock``/``sleep`` are passed in so tests and the benchmark can drive it."""

    hands: Hands
    ledger: RunLedger
    rails: Guardrails
    state: WatchState
    store: StateStore
    etag: str | None
    api_every: float = 5.0
    ssh_every: float = 30.0
    retry_every: float = 30.0
    end_patience: float = 600.0
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    say: Log = print
    _last_ssh: float = dataclasses.field(default=0.0, repr=False)
    _ending_since: float | None = dataclasses.field(default=None, repr=False)

    # ----------------------------------------------------------------- bookkeeping

    def save(self, state: WatchState) -> None:
        """Keep ``state`` and write it to the bucket when it changed (conditional, signed)."""
        if state != self.state or self.etag is None:
            self.etag = self.store.save(state, self.etag)
        self.state = state

    def event(self, kind: str, host: str = "", message: str = "", **data: Any) -> None:
        """One ledger event and one console line; a ledger failure is said, never fatal to the watch."""
        at = data.pop("at", None)
        moment = datetime.fromtimestamp(at, timezone.utc) if isinstance(at, (int, float)) else utc_now()
        stamp = datetime.now(timezone.utc).strftime("%H:%M:%S")
        lines = [printable(f"[{stamp}] {kind:<11} {host + ': ' if host else ''}{message}").rstrip()]
        try:
            self.ledger.event(kind, host=host, message=message or None, at=moment, **data)
        except DeployError as exc:
            lines.append(f"run ledger: could not record {kind}: {exc}")
        try:
            for line in lines:
                self.say(line)
        except OSError:  # the terminal went away (an SSH session dropped): the ledger has the event
            pass

    # ----------------------------------------------------------------- the loop

    def observe(self) -> Observation:
        now = self.clock()
        state = self.state
        try:
            tracked = {p.id for p in state.pods if p.id}
            pods = self.hands.run_pods(state.run_id, tracked)
        except ConfigError:
            raise
        except PodError:  # a network blip is no reason to replace a pod
            pods = None
        cur = state.current_pod
        if pods is not None and cur is not None and cur.id and state.phase == PROVISIONING:
            pods = tuple(dataclasses.replace(p, answers=self.hands.answers(p.host)) if p.id == cur.id and p.host
                         else p for p in pods)
        run = None
        every = self.api_every if state.ssh_down_since is not None else self.ssh_every
        listed = {p.id: p for p in pods or ()}
        seen = listed.get(cur.id) if cur is not None and cur.id else None
        usable = seen is None or (seen.status == "RUNNING" and seen.has_runtime)
        if state.phase == WATCHING and cur is not None and cur.host and usable and now - self._last_ssh >= every:
            run = run_fact(self.hands.spec(cur.host), self.hands.options, self.hands.remote_dir(cur.host))
            self._last_ssh = now
        return Observation(at=self.clock(), pods=pods, run=run, ends=self._own_ends(pods))

    def _own_ends(self, pods: tuple[Any, ...] | None) -> dict[str, float]:
        """When pods found gone without a terminate of ours ended themselves (their backstop's ledger event)."""
        if pods is None:
            return {}
        listed = {p.id for p in pods}
        vanished = {p.id for p in self.state.pods if p.id and p.open and p.end_called_at is None and p.id not in listed}
        if not vanished:
            return {}
        try:
            data = read_run(self.hands.storage, self.state.run_id)
        except DeployError:
            return {}
        events = data.events if data is not None else ()
        return {str(e.data["pod"]): e.at.timestamp() for e in events
                if e.kind == "terminated" and e.data.get("pod") in vanished}

    def step(self) -> list[Action]:
        """One observation, its decision (saved first), then the actions carried out; returns the actions."""
        if not self.store.conditional:
            self.store.hold_lease()  # a store without conditional writes: the lease says who drives the run
        seen = self.observe()
        state, actions = decide(self.state, seen, self.rails)
        self.save(state)
        for action in actions:
            self.carry_out(action)
        return actions

    def run(self) -> WatchState:
        """Watch until nothing of the run bills (or ending them takes longer than ``end_patience``).

        Ctrl-C detaches: the state is saved, the pods keep running; the caller says what bills."""
        try:
            while True:
                self.step()
                if self.state.phase == DONE and not self.state.owed():
                    break
                if self._gave_up():
                    break
                self.sleep(self.api_every)
        except KeyboardInterrupt:
            self.event("note", self.state.host, "watcher detached; pods keep running: "
                       + (", ".join(p.label for p in self.state.billing()) or "none"))
            raise
        finally:
            self.store.release_lease()
        return self.state

    def _gave_up(self) -> bool:
        if self.state.phase != ENDING or not self.state.owed():
            self._ending_since = None
            return False
        now = self.clock()
        self._ending_since = self._ending_since or now
        if now - self._ending_since < self.end_patience:
            return False
        self.save(dataclasses.replace(self.state, exit_code=GAVE_UP))
        return True

    # ----------------------------------------------------------------- actions

    def carry_out(self, action: Action) -> None:
        handlers = {RECORD: self.record, CREATE: self.create, ARM: self.arm, DEPLOY: self.deploy, END: self.end,
                    WRAP: self.wrap}
        handlers[action.kind](action)

    def _apply(self, outcome: tuple[WatchState, list[Action]]) -> None:
        state, actions = outcome
        self.save(state)
        for action in actions:
            self.carry_out(action)

    def record(self, action: Action) -> None:
        data = dict(action.data)
        kind = data.pop("kind")
        pod = self.state.pod(action.pod) if action.pod else None
        self.event(kind, pod.host if pod else "", action.reason, pod=(pod.id or None) if pod else None, **data)

    def create(self, action: Action) -> None:
        """Ask for the pod the state names; its intent is saved before the call, its id right after."""
        name, now = action.pod, self.clock()
        self.save(self.state.update(name, unknown_since=now))  # the answer may never come: look the name up then
        try:
            created = self.hands.create(name, self.state.run_id)
        except ConfigError:
            raise
        except ApiUnreachable as exc:
            self.event("note", message=f"the create of {name} got no answer ({exc}); its name is looked up before "
                                       "asking again")
            return
        except PodError as exc:  # no capacity anywhere, or refused: RunPod may have room later
            self.save(self.state.update(name, unknown_since=None, retry_at=now + self.retry_every))
            self.event("note", message=f"no pod yet: {exc} Trying again in {self.retry_every:.0f} s.")
            return
        record = self.state.pod(name)
        assert record is not None
        price = max(created.price, 0.0)
        deadline = pod_deadline(self.state, now, self.rails, name, price) if self.rails.limited else None
        self.save(self.state.update(name, id=created.pod_id, unknown_since=None, price=price, deadline=deadline))
        self.event("provisioned", "", f"pod {created.pod_id} ({name}), {created.what} at ${price:.2f}/h",
                   pod=created.pod_id, price_per_hour=price or None, at=record.asked_at)

    def arm(self, action: Action) -> None:
        pod = self.state.pod(action.pod)
        if pod is None or pod.deadline is None or not pod.host:
            return
        why = " and ".join(k for k, v in (("MAX_HOURS", self.rails.max_hours), ("MAX_SPEND", self.rails.max_spend)) if v)
        try:
            message = self.hands.arm(pod.host, pod.deadline, why)
        except DeployError as exc:
            message = f"could not arm the pod's backstop: {exc}"
        self.event("note", pod.host, message, pod=pod.id)

    def deploy(self, action: Action) -> None:
        pod = self.state.current_pod
        if pod is None or not pod.host or pod.name != action.pod:
            return
        restart = bool(action.data.get("restart"))
        try:
            what = self.hands.deploy(pod.host, self.state.run_id, restart=restart)
        except DeployError as exc:
            reachable = self.hands.reachable(pod.host)
            self._apply(deploy_failed(self.state, self.clock(), reachable, self.rails, str(exc)))
            return
        self.save(deployed(self.state, self.clock()))
        self._last_ssh = self.clock()  # the deploy just saw training start; look again after ssh_every
        self.event("restarted" if restart else "deployed", pod.host, what, pod=pod.id)

    def end(self, action: Action) -> None:
        pod = self.state.pod(action.pod)
        if pod is None or not pod.owed:
            return
        now = self.clock()
        if not pod.id:  # asked for, never made: nothing to end
            self.save(self.state.update(pod.name, never_made=True))
            return
        try:
            ended = self.hands.end_pod(pod.id, pod.how, force=pod.force, host=pod.host)
        except ConfigError:
            raise
        except DeployError as exc:
            self.save(self.state.with_record(pod.end_failed(now)))
            wait = self.state.pod(pod.name).next_end_at - now  # type: ignore[union-attr]
            self.event("note", pod.host, f"could not {pod.how} pod {pod.id} (try {pod.end_tries + 1}): {exc}; trying "
                                         f"again in {wait:.0f} s", pod=pod.id)
            return
        if not ended.done:
            self._apply(end_refused(self.state, pod.name, now, ended.message))
            return
        # Billing stops when RunPod took the call, after the checkpoint guard (an SSH look that can take a while on a
        # lost pod): counting from before it would record less than RunPod bills.
        self.save(self.state.update(pod.name, end_called_at=self.clock()))

    def wrap(self, action: Action) -> None:
        """The run is over: postpone the pod's backstop, stop the training (when a limit ended it), sync."""
        pod = self.state.pod(action.pod)
        if pod is None or not pod.host:
            self.save(wrapped(self.state))
            return
        notes = []
        if pod.deadline is not None:
            try:
                self.hands.arm(pod.host, self.clock() + WRAP_SECONDS, "postponed while the watcher ends the run")
            except DeployError:
                pass
        steps = (("stop", self.hands.stop_training if action.data.get("stop") else None),
                 ("sync", self.hands.sync_results))
        for what, work in steps:
            if work is None:
                continue
            try:
                notes.append(work(pod.host))
            except DeployError as exc:
                notes.append(f"{what} failed: {exc}")
                if what == "stop":
                    break  # a pod that cannot be reached for the stop cannot be synced either
        self.save(wrapped(self.state))
        self.event("note", pod.host, "; ".join(notes), pod=pod.id)


__all__ = ["GAVE_UP", "STOP_TIMEOUT", "Watcher"]
