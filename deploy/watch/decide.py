"""The watcher's decisions, pure: the run's state and one observation in, the next state and actions out.

Nothing here talks to RunPod, SSH or S3, and time is a parameter: the loop (:mod:`deploy.watch.loop`)
lists the run's pods through the API every few seconds and looks at the run over SSH less often,
hands both to :func:`decide`, saves the state it returns in the bucket and then carries out the
actions, so a restarted watcher decides exactly as the one before it would have. The rules are
level-triggered: each look compares what the state wants with what RunPod reports now, so a missed
look or a restart changes nothing.

1. **Accounting** (:func:`reconcile`): a pod the API no longer lists is gone (its billing ends at the
   accepted terminate, else at that look); a pod whose create answer was lost is found by its name; a
   pod of this run that no record knows (a create that timed out twice, another watcher's) is written
   down and must end.
2. **Obligations**: every pod that must end is ended, retried with backoff until the API confirms it.
3. **Lost**: the current pod gone, stopped by RunPod (EXITED) -> replaced at once; running without a
   runtime, or not answering SSH, for ``lost_after`` seconds (API looks and SSH looks are kept apart:
   an API look never clears what SSH found) -> replaced, in every phase after it came up. A pod that
   shows no answering SSH port within ``ssh_timeout`` seconds is ended and replaced.
4. **The run**: exit 0 -> finish (sync, then ON_SUCCESS); stopped on the host -> finish; failed ->
   restart while fewer than MAX_RESTARTS were made, else halt.
5. **Limits** (hard caps): MAX_HOURS, MAX_SPEND (warn once at 80%), idle GPUs (warn after IDLE_MINUTES,
   halt after twice that) -> halt: stop the training (SIGTERM saves a checkpoint), sync, then end
   every pod whatever the checkpoint guard says. A new pod is only asked for when the budget left,
   after what the run's other pods may still cost until their own deadlines, covers it.

Example::

    state, actions = decide(state, Observation(at=time.time(), pods=(seen,)), rails)
    for action in actions:
        print(action.kind, action.reason)      # create  the run has no pod yet
"""

from __future__ import annotations

import dataclasses
from typing import Any

from deploy.watch.facts import (ARM, CREATE, DEPLOY, END, RECORD, WARN_AT, WRAP, Action, Guardrails, Observation,
                                PodSeen, RunFact, record)
from deploy.watch.state import DEPLOYING, DONE, ENDING, PROVISIONING, STOP, TERMINATE, WATCHING, PodRecord, WatchState

__all__ = ["ARM", "CREATE", "DEPLOY", "END", "RECORD", "WRAP", "Action", "Guardrails", "Observation", "PodSeen",
           "RunFact", "decide", "deploy_failed", "deployed", "end_refused", "pod_deadline", "reconcile", "replace",
           "wrapped"]

# The training words of a look (deploy.runtimes.base.Look: the native supervisor's, to which compose maps its
# container's states) and what they mean to the watcher.
RUNNING_STATES = frozenset({"starting", "running", "restarting", "orphaned"})
CREATE_SETTLE = 30.0
"""Seconds a pod whose create answer was lost may take to show up under its name before it is asked for again."""
MIN_POD_SECONDS = 60.0
"""A new pod is only asked for when the budget left pays for at least this long."""
GUARD_TRIES = 4
"""Checkpoint-guard refusals (about 75 s of backoff) after which a finished run's pod is stopped, not terminated."""


# --------------------------------------------------------------------------- the decision


def decide(state: WatchState, seen: Observation, rails: Guardrails) -> tuple[WatchState, list[Action]]:
    """The next state and what to do, from one observation. Pure: the same inputs give the same answer."""
    if state.phase == DONE and not state.owed():
        return state, []
    state, actions = reconcile(state, seen)
    if state.phase in (ENDING, DONE):
        state, more = _ending(state, seen, rails)
        return state, actions + more
    state, more = _limits(state, seen.at, rails)
    actions += more
    if state.phase == ENDING:
        state, more = _ending(state, seen, rails)
        return state, actions + more
    for rule in (_current_lost, _bring_up, _deploy, _run_ended, _idle):
        state, more = rule(state, seen, rails)
        actions += more
        if state.phase == ENDING:
            state, more = _ending(state, seen, rails)
            return state, actions + more
        if more and more[-1].kind in (CREATE, DEPLOY):
            break
    return state, _due_ends(state, seen.at) + actions


def _due_ends(state: WatchState, at: float) -> list[Action]:
    return [Action(END, p.end, p.name, {"how": p.how, "force": p.force}) for p in state.owed()
            if p.next_end_at <= at and (p.id or p.unknown_since is None)]


# --------------------------------------------------------------------------- 1. accounting


def reconcile(state: WatchState, seen: Observation) -> tuple[WatchState, list[Action]]:
    """Bring every record in line with the API's list (nothing happens when the API was not asked)."""
    if seen.pods is None:
        return state, []
    listed = {p.id: p for p in seen.pods}
    known = {p.id for p in state.pods if p.id}
    actions: list[Action] = []
    for rec in state.pods:
        if not rec.open:
            continue
        if rec.id:
            state, more = _match_made(state, rec, listed.get(rec.id), seen.ends.get(rec.id, seen.at))
        else:
            state, more = _match_asked(state, rec, seen, known)
        actions += more
    for pod in seen.pods:
        if pod.id not in {p.id for p in state.pods if p.id} and pod.status != "TERMINATED":
            stray = PodRecord(name=pod.name, attempt=0, asked_at=seen.at - pod.uptime, price=pod.price, id=pod.id,
                              host=pod.host, end=f"pod {pod.id} of this run was in no record (a create whose answer "
                              "was lost, or another watcher's)", next_end_at=seen.at)
            state = state.with_record(dataclasses.replace(stray, name=f"{pod.name}#{pod.id}"))
            actions.append(record("provisioned", stray.end, stray.name, price_per_hour=pod.price or None,
                                  at=stray.asked_at))
    return state, actions


def _match_made(state: WatchState, rec: PodRecord, pod: PodSeen | None,
                at: float) -> tuple[WatchState, list[Action]]:
    if pod is None or pod.status == "TERMINATED":
        gone = rec.confirmed_gone(at)
        state = state.with_record(gone)
        if rec.end:
            return state, [record("terminated", f"pod {rec.id} is gone ({rec.end})", rec.name, at=gone.ended_at)]
        return state, []
    updated = rec.repriced(pod.price, at)
    if rec.end and rec.how == STOP and pod.status == "EXITED" and rec.end_called_at is not None:
        updated = dataclasses.replace(updated.confirmed_gone(at), gone=True)
        state = state.with_record(updated)
        return state, [record("note", f"pod {rec.id} is stopped; its volume is kept and bills until "
                                      f"fab pods.down --pod {rec.id}", rec.name)]
    return state.with_record(updated), []


def _match_asked(state: WatchState, rec: PodRecord, seen: Observation,
                 known: set[str]) -> tuple[WatchState, list[Action]]:
    """A pod asked for without a known id: found by its name, or (after a lost answer) asked for again."""
    found = [p for p in seen.pods or () if p.name == rec.name and p.id not in known]
    if found:
        pod = found[0]
        state = state.update(rec.name, id=pod.id, unknown_since=None, price=max(pod.price, rec.price))
        return state, [record("provisioned", f"pod {pod.id} ({rec.name}) found under its name: its create answer "
                              "was lost", rec.name, price_per_hour=max(pod.price, rec.price) or None,
                              at=rec.asked_at)]
    if rec.unknown_since is not None and seen.at - rec.unknown_since >= CREATE_SETTLE:
        if rec.end:  # nobody wants it: there is no such pod
            return state.update(rec.name, never_made=True, unknown_since=None), []
        return state.update(rec.name, unknown_since=None, asked_at=seen.at, retry_at=seen.at), [
            record("note", f"no pod named {rec.name} appeared after its create answer was lost; asking again")]
    return state, []


# --------------------------------------------------------------------------- 3. lost pods and bringing one up


def _looked(state: WatchState, seen: Observation, pod: PodSeen | None) -> WatchState:
    """The suspicion clocks: API looks own ``no_runtime_since``, SSH looks own ``ssh_down_since``."""
    changes: dict[str, Any] = {}
    if pod is not None:
        changes["no_runtime_since"] = None if pod.has_runtime else (
            state.no_runtime_since if state.no_runtime_since is not None else seen.at)
    if seen.run is not None:
        changes["ssh_down_since"] = None if seen.run.reachable else (
            state.ssh_down_since if state.ssh_down_since is not None else seen.at)
    return dataclasses.replace(state, **changes) if changes else state


def _seen_current(state: WatchState, seen: Observation) -> PodSeen | None:
    cur = state.current_pod
    if cur is None or not cur.id or seen.pods is None:
        return None
    return next((p for p in seen.pods if p.id == cur.id), None)


def _current_lost(state: WatchState, seen: Observation, rails: Guardrails) -> tuple[WatchState, list[Action]]:
    cur = state.current_pod
    if cur is None or not cur.id:
        return state, []
    pod = _seen_current(state, seen)
    if cur.gone:
        return replace(state, seen.at, rails, f"pod {cur.id} is no longer known to RunPod", "lost")
    if pod is not None and pod.status == "EXITED":
        return replace(state, seen.at, rails, f"pod {cur.id} was stopped (RunPod reclaimed it)", "preempted")
    if state.phase == PROVISIONING:
        return state, []
    state = _looked(state, seen, pod)
    for since, trouble in ((state.no_runtime_since, "has no runtime (its machine is down)"),
                           (state.ssh_down_since, "does not answer over SSH")):
        if since is not None and seen.at - since >= rails.lost_after:
            return replace(state, seen.at, rails, f"pod {cur.id} {trouble} for {seen.at - since:.0f} s", "lost")
    return state, []


def replace(state: WatchState, at: float, rails: Guardrails, why: str, kind: str) -> tuple[WatchState, list[Action]]:
    """The current pod must end (forced: a lost pod's volume cannot be read anyway); a new one is asked for."""
    cur = state.current_pod
    assert cur is not None
    state = state.with_record(cur.ending(f"{kind}: {why}", at))
    state = dataclasses.replace(state, current="", phase=PROVISIONING, replacements=state.replacements + 1)
    actions = [record(kind, why, cur.name)]
    state, more = _bring_up(state, Observation(at=at), rails)
    return state, actions + more


def budget_left(state: WatchState, at: float, rails: Guardrails, besides: str = "",
                reserve: bool = True) -> float | None:
    """Seconds a pod at ``rails.pod_price`` may bill before a limit, after what the other pods may cost until
    their deadlines (``reserve``); None: no limit."""
    spans = []
    if rails.max_hours:
        spans.append((rails.max_hours - state.hours(at)) * 3600)
    if rails.max_spend and rails.pod_price > 0:
        money = rails.max_spend - state.spend(at) - (state.reserved(at, besides) if reserve else 0.0)
        spans.append(money / rails.pod_price * 3600)
    return min(spans) if spans else None


def pod_deadline(state: WatchState, at: float, rails: Guardrails, name: str, price: float) -> float | None:
    """The backstop deadline of pod ``name`` created now at ``price``: when the run's budget would be gone."""
    left = budget_left(state, at, dataclasses.replace(rails, pod_price=price), besides=name)
    return None if left is None else at + max(0.0, left)


def _bring_up(state: WatchState, seen: Observation, rails: Guardrails) -> tuple[WatchState, list[Action]]:
    if state.phase != PROVISIONING:
        return state, []
    cur = state.current_pod
    if cur is None:
        left = budget_left(state, seen.at, rails)
        if left is not None and left < MIN_POD_SECONDS:
            free = budget_left(state, seen.at, rails, reserve=False)
            if free is not None and free < MIN_POD_SECONDS:
                return halt(state, seen.at, "the budget left does not pay for another pod (MAX_HOURS/MAX_SPEND)")
            return state, []  # a pod being ended may still bill until its deadline: wait for its end
        state = state.ask_for_pod(seen.at, rails.pod_price)
        reason = "the run has no pod yet" if len(state.pods) == 1 else "a replacement is due"
        return state, [Action(CREATE, reason, state.current)]
    if not cur.id:
        if cur.unknown_since is None and cur.retry_at <= seen.at:
            return state, [Action(CREATE, "asking for the pod again", cur.name)]
        return state, []
    pod = _seen_current(state, seen)
    if pod is not None and pod.answers and pod.host:
        state = dataclasses.replace(state.update(cur.name, host=pod.host), phase=DEPLOYING, next_deploy_at=seen.at,
                                    ssh_down_since=None, no_runtime_since=None)
        return state, [Action(ARM, f"pod {cur.id} answers over SSH", cur.name),
                       Action(DEPLOY, f"pod {cur.id} is up", cur.name)]
    if seen.at - cur.asked_at >= rails.ssh_timeout:
        return replace(state, seen.at, rails, f"pod {cur.id} has no answering SSH port after "
                       f"{seen.at - cur.asked_at:.0f} s", "lost")
    return state, []


def _deploy(state: WatchState, seen: Observation, rails: Guardrails) -> tuple[WatchState, list[Action]]:
    if state.phase != DEPLOYING or state.next_deploy_at > seen.at:
        return state, []
    return state, [Action(DEPLOY, f"pod {state.pod_id} is up; the deploy was not confirmed", state.current,
                          {"restart": state.restarts > 0})]


# --------------------------------------------------------------------------- 4. the run


def _run_ended(state: WatchState, seen: Observation, rails: Guardrails) -> tuple[WatchState, list[Action]]:
    run = seen.run
    if state.phase != WATCHING or run is None or not run.reachable or run.service in RUNNING_STATES:
        return state, []
    if run.service in ("exited", "stopped"):
        why = "training exited 0" if run.service == "exited" else "training was stopped on the host"
        return finish(state, seen.at, rails, why, "finished" if run.service == "exited" else "stopped")
    what = {"failed": "training failed (its supervisor gave up restarting it)", "absent": "training is not running",
            "dead": "the training's supervisor died"}.get(run.service, f"training is {run.service}")
    if state.restarts < rails.max_restarts:
        state = dataclasses.replace(state, restarts=state.restarts + 1, phase=DEPLOYING, next_deploy_at=seen.at)
        return state, [record("exited", f"{what}; restart {state.restarts} of {rails.max_restarts}", state.current),
                       Action(DEPLOY, what, state.current, {"restart": True})]
    return halt(state, seen.at, f"{what} and MAX_RESTARTS={rails.max_restarts} restarts are used up", code=1)


def deploy_failed(state: WatchState, at: float, reachable: bool, rails: Guardrails,
                  why: str) -> tuple[WatchState, list[Action]]:
    """The loop's report of a failed deploy: an unreachable pod is a lost-pod matter, not a restart."""
    if not reachable:
        since = state.ssh_down_since if state.ssh_down_since is not None else at
        return dataclasses.replace(state, ssh_down_since=since, next_deploy_at=at + 5.0), [
            record("note", f"deploy to pod {state.pod_id} could not reach it: {why}", state.current)]
    tries = state.restarts + 1
    state = dataclasses.replace(state, restarts=tries, next_deploy_at=at + min(60.0, 5.0 * 2 ** (tries - 1)))
    note = record("note", f"deploy failed ({tries} of {rails.max_restarts}): {why}", state.current)
    if tries > rails.max_restarts:
        state, more = halt(state, at, f"the deploy failed {tries} times", code=1)
        return state, [note, *more]
    return state, [note]


def deployed(state: WatchState, at: float) -> WatchState:
    return dataclasses.replace(state, phase=WATCHING, ssh_down_since=None, next_deploy_at=0.0)


# --------------------------------------------------------------------------- 5. limits


def _limits(state: WatchState, at: float, rails: Guardrails) -> tuple[WatchState, list[Action]]:
    """MAX_HOURS and MAX_SPEND: warn once at 80%, halt at 100%."""
    actions: list[Action] = []
    checks = (("hours", rails.max_hours, state.hours(at), lambda v: f"{v:.3g} h", "MAX_HOURS"),
              ("spend", rails.max_spend, state.spend(at), lambda v: f"${v:.2f}", "MAX_SPEND"))
    for name, limit, value, show, key in checks:
        if not limit:
            continue
        if value >= limit:
            state, more = halt(state, at, f"{key}={show(limit)} reached ({show(value)})", limit=name)
            return state, actions + more
        if value >= WARN_AT * limit and name not in state.warned:
            state = dataclasses.replace(state, warned=state.warned + (name,))
            actions.append(record("note", f"warning: {show(value)} of {key}={show(limit)} used (80%); the run stops "
                                          f"at {show(limit)}", state.current, limit=name))
    return state, actions


def _idle(state: WatchState, seen: Observation, rails: Guardrails) -> tuple[WatchState, list[Action]]:
    """GPUs under the threshold and no new step: the idle clock runs; anything else resets it."""
    run = seen.run
    if state.phase != WATCHING or run is None or not run.reachable:
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
    what = f"GPUs at {run.gpu_percent:.0f}% (under IDLE_GPU_PERCENT={rails.idle_gpu_percent}) with no new step"
    if idle_for >= 2 * rails.idle_minutes * 60:
        return halt(state, seen.at, f"{what} for {idle_for / 60:.0f} min", limit="idle")
    if idle_for >= rails.idle_minutes * 60 and "idle" not in state.warned:
        return dataclasses.replace(state, warned=state.warned + ("idle",)), [
            record("note", f"warning: {what} for {idle_for / 60:.0f} min; the run stops after "
                           f"{2 * rails.idle_minutes} min", state.current, limit="idle")]
    return state, []


# --------------------------------------------------------------------------- the end of a run


def halt(state: WatchState, at: float, why: str, code: int = 0, **data: Any) -> tuple[WatchState, list[Action]]:
    """A limit (or the restarts) ends the run: stop, sync, then every pod ends, forced."""
    state = dataclasses.replace(state, phase=ENDING, ending="stopped", outcome=f"stopped: {why}", exit_code=code)
    return state, [record("stopped", why, state.current, **data)]


def finish(state: WatchState, at: float, rails: Guardrails, why: str, kind: str) -> tuple[WatchState, list[Action]]:
    """The training ended on its own: sync, then ON_SUCCESS for its pod (terminate only if the guard agrees)."""
    state = dataclasses.replace(state, phase=ENDING, ending="finished", outcome=f"{kind}: {why}", exit_code=0)
    return state, [record(kind, why, state.current)]


def _ending(state: WatchState, seen: Observation, rails: Guardrails) -> tuple[WatchState, list[Action]]:
    if state.phase == ENDING and not state.wrapped:
        cur = state.current_pod
        if cur is not None and cur.host and cur.open and not cur.end:
            return state, [Action(WRAP, state.outcome, cur.name, {"stop": state.ending == "stopped"})]
        state = dataclasses.replace(state, wrapped=True)
    for pod in state.billing():
        if pod.name == state.current and state.ending == "finished":
            state = state.with_record(pod.ending(state.outcome, seen.at, how=rails.on_success, force=False))
        else:
            state = state.with_record(pod.ending(state.outcome, seen.at))
    if not state.billing():
        return dataclasses.replace(state, phase=DONE), []
    return state, _due_ends(state, seen.at)


def wrapped(state: WatchState) -> WatchState:
    return dataclasses.replace(state, wrapped=True)


def end_refused(state: WatchState, name: str, at: float, why: str) -> tuple[WatchState, list[Action]]:
    """The checkpoint guard refused to terminate a finished run's pod: retry, then stop it (the volume stays)."""
    rec = state.pod(name)
    assert rec is not None
    rec = rec.end_failed(at)
    if rec.end_tries >= GUARD_TRIES and rec.how == TERMINATE:
        rec = dataclasses.replace(rec, how=STOP, force=True, next_end_at=at)
        state = state.with_record(rec)
        return state, [record("note", f"pod {rec.id}: {why}; stopping it instead of terminating, so its volume keeps "
                                      f"the checkpoint (fab pods.down --pod {rec.id} once it is safe)", name)]
    return state.with_record(rec), [record("note", f"pod {rec.id}: {why}; trying again", name)]
