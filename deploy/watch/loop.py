"""The watcher: observe, decide, act, save; every event to the run ledger and the console.

Every ``api_every`` seconds the pod is read from RunPod's API (the fast signal: a reclaimed pod is
``EXITED`` there at once); every ``ssh_every`` seconds the run is read over SSH (supervisor status,
heartbeat step, GPU utilisation). :func:`deploy.watch.decide.decide` turns that into actions, which
:class:`Watcher` carries out with :class:`deploy.watch.act.Hands`, writing one ledger event per thing
that happened (``provisioned`` with the pod's $/h from the API, ``deployed``, ``restarted``,
``preempted``/``lost``, ``exited``, ``finished``, ``stopped``, ``terminated``, ``note`` for a warning).
The state is saved in the bucket after each change (:mod:`deploy.watch.record`), so a watcher started
again with ``fab train.watch RUN`` goes on from there.

Ctrl-C detaches: the state is saved, a ``note`` says so, the pod keeps running (and billing) and
the caller says how to attach again or take the pod down.

Example::

    watcher = Watcher(hands, RunLedger(storage, run_id, writer_name("watch")), Guardrails.from_settings(s), state, etag)
    final = watcher.run()
    print(final.outcome)                 # finished: training exited 0; pod abc123 terminated
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from deploy.errors import ConfigError, DeployError
from deploy.ledger.store import RunLedger
from deploy.pods.models import PodError
from deploy.watch import record
from deploy.watch.act import Ended, Hands
from deploy.watch.decide import (DEPLOY, DEPLOYING, DONE, FINISH, HALT, PROVISION, PROVISIONING, REPLACE, RESTART,
                                 WARN, WATCHING, Action, Guardrails, Observation, WatchState, decide)
from deploy.watch.observe import pod_fact, run_fact

Log = Callable[[str], None]


@dataclasses.dataclass
class Watcher:
    """One run's watcher. ``clock``/``sleep`` are passed in so tests and the benchmark can drive it."""

    hands: Hands
    ledger: RunLedger
    rails: Guardrails
    state: WatchState
    etag: str | None
    api_every: float = 5.0
    ssh_every: float = 30.0
    retry_every: float = 30.0
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    say: Log = print
    _last_ssh: float = dataclasses.field(default=0.0, repr=False)

    # ----------------------------------------------------------------- bookkeeping

    def save(self, state: WatchState) -> None:
        """Keep ``state`` and write it to the bucket when it changed (conditional on our last ETag)."""
        if state != self.state or self.etag is None:
            self.etag = record.save(self.hands.storage, state, self.etag)
        self.state = state

    def event(self, kind: str, host: str = "", message: str = "", **data: Any) -> None:
        """One ledger event and one console line; a ledger failure is said, never fatal to the watch."""
        stamp = datetime.now(timezone.utc).strftime("%H:%M:%S")
        lines = [f"[{stamp}] {kind:<11} {host + ': ' if host else ''}{message}".rstrip()]
        try:
            self.ledger.event(kind, host=host, message=message or None, **data)
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
        if self.state.phase not in (WATCHING, DEPLOYING) or not self.state.pod_id:
            return Observation(at=now)
        pod = pod_fact(self.hands.api, self.state.pod_id)
        run = None
        if self.state.phase == WATCHING and now - self._last_ssh >= self.ssh_every and (pod is None or (not pod.gone and pod.has_runtime)):
            run = run_fact(self.hands.spec(self.state.host), self.hands.options, self.hands.remote_dir(self.state.host))
            self._last_ssh = now
        return Observation(at=self.clock(), pod=pod, run=run)

    def step(self) -> list[Action]:
        """One observation, its decision and the actions carried out; returns the actions."""
        seen = self.observe()
        state, actions = decide(self.state, seen, self.rails)
        self.save(state)
        for action in actions:
            self.carry_out(action)
        return actions

    def run(self) -> WatchState:
        """Watch until the run is done; Ctrl-C detaches (the state is saved, the pod keeps running)."""
        try:
            while self.state.phase != DONE:
                actions = self.step()
                if self.state.phase == DONE:
                    break
                waiting = self.state.phase == PROVISIONING and any(a.kind == PROVISION for a in actions)
                self.sleep(self.retry_every if waiting else self.api_every)
        except KeyboardInterrupt:
            self.event("note", self.state.host, "watcher detached (Ctrl-C); the pod keeps running",
                       pod=self.state.pod_id or None)
            raise
        return self.state

    # ----------------------------------------------------------------- actions

    def carry_out(self, action: Action) -> None:
        handlers = {PROVISION: self.provision, DEPLOY: self.deploy, REPLACE: self.replace, RESTART: self.restart,
                    FINISH: self.finish, HALT: self.halt, WARN: self.warn}
        handlers[action.kind](action)

    def provision(self, action: Action) -> None:
        """A new pod (or the one a dead watcher created but never saw up), then the deploy."""
        hands = self.hands
        try:
            if not self.state.pod_id:
                hands.create_pod(lambda pod_id: self.save(dataclasses.replace(self.state, pod_id=pod_id)))
        except ConfigError:
            raise
        except PodError as exc:  # no capacity anywhere, or the API refused: RunPod may have room later
            self.event("note", message=f"no pod yet: {exc} Trying again in {self.retry_every:.0f} s.")
            return
        try:
            pod = hands.wait_for_pod(self.state.pod_id)
        except PodError as exc:  # it stopped, vanished or never got a public port: drop it, make another
            self.event("note", message=f"pod {self.state.pod_id} did not come up: {exc}", pod=self.state.pod_id)
            self._drop_unready_pod()
            return
        host = pod.ssh.host_spec(hands.settings.runpod_user) if pod.ssh else ""
        moved = self.state.with_pod(pod.id, host, pod.cost_per_hr, self.clock())
        self.save(dataclasses.replace(moved, phase=DEPLOYING))
        self.event("provisioned", host, f"pod {pod.id}, {pod.gpu_count} x {pod.gpu or '?'} at "
                                        f"${pod.cost_per_hr:.2f}/h", pod=pod.id, price_per_hour=pod.cost_per_hr or None,
                   gpu=pod.gpu or None, gpus=pod.gpu_count or None)
        self.deploy(action)

    def _drop_unready_pod(self) -> None:
        pod_id = self.state.pod_id
        try:
            message = self.hands.end_pod(pod_id, "terminate", force=True).message  # it never trained: nothing to keep
        except DeployError as exc:
            message = f"could not terminate pod {pod_id}: {exc}"
        self.event("note", message=message, pod=pod_id)
        self.save(dataclasses.replace(self.state, pod_id=""))

    def deploy(self, action: Action, restart: bool = False) -> None:
        host = self.state.host
        try:
            what = self.hands.deploy(host, self.state.run_id, restart=restart)
        except DeployError as exc:
            tries = self.state.restarts + 1
            self.save(dataclasses.replace(self.state, restarts=tries))
            self.event("note", host, f"deploy failed ({tries} of {self.rails.max_restarts}): {exc}")
            if tries > self.rails.max_restarts:
                self.halt(Action(HALT, f"the deploy failed {tries} times"))
            return
        self.save(dataclasses.replace(self.state, phase=WATCHING))
        self._last_ssh = self.clock()  # the deploy just saw training start; look again after ssh_every
        self.event("restarted" if restart else "deployed", host, what, pod=self.state.pod_id)

    def replace(self, action: Action) -> None:
        """Record the loss, ask for the replacement at once, then end the old pod and deploy to the new one."""
        old_pod, old_host = self.state.pod_id, self.state.host
        self.event(action.data.get("kind", "lost"), old_host, action.reason, pod=old_pod)
        lost = self.state.without_pod(self.clock())
        self.save(dataclasses.replace(lost, phase=PROVISIONING, replacements=lost.replacements + 1))
        self.provision(action)
        if old_pod:  # the replacement resumes from S3; a lost pod's volume cannot be read anyway
            try:
                self.event("terminated", old_host, self.hands.end_pod(old_pod, "terminate", force=True).message,
                           pod=old_pod)
            except DeployError as exc:
                self.event("note", old_host, f"could not terminate the lost pod {old_pod}: {exc}")

    def restart(self, action: Action) -> None:
        self.event("exited", self.state.host, action.reason, pod=self.state.pod_id)
        self.save(dataclasses.replace(self.state, restarts=self.state.restarts + 1, phase=DEPLOYING))
        self.deploy(action, restart=True)

    def warn(self, action: Action) -> None:
        self.event("note", self.state.host, f"warning: {action.reason}", limit=action.data.get("limit"))

    def _wrap_up(self, kind: str, reason: str, pod_action: str, stop_first: bool) -> None:
        """Stop (when asked), bring the results back, record ``kind``, end the pod; the run is done."""
        host, pod_id = self.state.host, self.state.pod_id
        notes = []
        for what, work in (("stop", self.hands.stop_training if stop_first else None),
                           ("sync", self.hands.sync_results)):
            if work is None or not host:
                continue
            try:
                notes.append(work(host))
            except DeployError as exc:
                notes.append(f"{what} failed: {exc}")
        self.event(kind, host, "; ".join([reason, *notes]), pod=pod_id or None)
        ended = Ended(False, "")
        if pod_id:
            try:
                ended = self.hands.end_pod(pod_id, pod_action)
            except DeployError as exc:
                ended = Ended(False, f"pod {pod_id} not ended: {exc}")
            self.event("terminated" if ended.done and pod_action == "terminate" else "note", host, ended.message,
                       pod=pod_id)
        final = self.state.without_pod(self.clock()) if ended.done else self.state
        outcome = "; ".join(part for part in (f"{kind}: {reason}", ended.message) if part)
        self.save(dataclasses.replace(final, phase=DONE, outcome=outcome))

    def finish(self, action: Action) -> None:
        self._wrap_up(action.data.get("kind", "finished"), action.reason, self.rails.on_success, stop_first=False)

    def halt(self, action: Action) -> None:
        self._wrap_up("stopped", action.reason, "terminate", stop_first=True)

