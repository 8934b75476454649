"""The watcher's decisions over sequences of observations: pure, no RunPod, SSH or bucket; time is a parameter.

The looks are mixed as the loop mixes them: the API lists the run's pods every 5 s, SSH looks at the
run every 30 s (every 5 s while it is failing).
"""

from __future__ import annotations

import dataclasses

import pytest

from deploy.watch.decide import (ARM, CREATE, CREATE_SETTLE, DEPLOY, END, RECORD, WRAP, Guardrails, Observation,
                                 PodSeen, RunFact, decide, deploy_failed, deployed, end_refused, pod_deadline, wrapped)
from deploy.watch.state import DEPLOYING, DONE, ENDING, PROVISIONING, STOP, WATCHING, PodRecord, WatchState

T0 = 1_800_000_000.0
PROJECT = "3f2a9c1b"


def name(attempt: int) -> str:
    return f"gpu-deploy-{PROJECT}-run-r1-{attempt}"


def seen(pod_id: str = "pod-1", attempt: int = 1, status: str = "RUNNING", runtime: bool = True, price: float = 0.79,
         answers: bool = True, host: str = "root@127.0.0.1:40001") -> PodSeen:
    return PodSeen(id=pod_id, name=name(attempt), status=status, has_runtime=runtime, price=price,
                   host=host if runtime else "", answers=answers and runtime)


def watching(**changes) -> WatchState:
    """A run training on pod-1 ($0.79/h) since T0."""
    record = PodRecord(name=name(1), attempt=1, asked_at=T0, price=0.79, id="pod-1", host="root@127.0.0.1:40001")
    state = WatchState(run_id="r1", started_at=T0, project=PROJECT, phase=WATCHING, pods=(record,), current=name(1))
    return dataclasses.replace(state, **changes)


def at(seconds: float, *pods: PodSeen, run: RunFact | None = None, api: bool = True) -> Observation:
    return Observation(at=T0 + seconds, pods=(pods or (seen(),)) if api else None, run=run)


def ssh(service: str = "running", step: int | None = None, gpu: float | None = None, ok: bool = True) -> RunFact:
    return RunFact(reachable=ok, service=service, step=step, gpu_percent=gpu)


def play(state: WatchState, rails: Guardrails, *observations: Observation):
    """Feed observations in order; return the final state and every (time offset, action kind[, event kind])."""
    log = []
    for obs in observations:
        state, actions = decide(state, obs, rails)
        log += [(obs.at - T0, a.kind if a.kind != RECORD else a.data["kind"]) for a in actions]
    return state, log


# ----------------------------------------------------------------------------- every pod accounted for


def test_the_first_pod_is_written_down_under_its_fixed_name_before_the_create() -> None:
    fresh = WatchState(run_id="r1", started_at=T0, project=PROJECT)
    state, actions = decide(fresh, Observation(at=T0, pods=()), Guardrails(pod_price=0.79))
    assert [(a.kind, a.pod) for a in actions] == [(CREATE, name(1))]
    assert state.current == name(1) and state.pod(name(1)).asked_at == T0 and state.pod(name(1)).id == ""


def test_a_create_whose_answer_was_lost_is_found_by_its_name_not_made_twice() -> None:
    asked = WatchState(run_id="r1", started_at=T0, project=PROJECT).ask_for_pod(T0, 0.79)
    lost = asked.update(name(1), unknown_since=T0)
    state, actions = decide(lost, at(5, seen("pod-9", runtime=False)), Guardrails(pod_price=0.79))
    assert CREATE not in [a.kind for a in actions]
    assert state.pod(name(1)).id == "pod-9" and state.pod(name(1)).unknown_since is None
    assert [a.data["kind"] for a in actions if a.kind == RECORD] == ["provisioned"]


def test_a_create_whose_pod_never_appears_is_asked_for_again_under_the_same_name() -> None:
    lost = WatchState(run_id="r1", started_at=T0, project=PROJECT).ask_for_pod(T0, 0.79).update(name(1),
                                                                                             unknown_since=T0)
    rails = Guardrails(pod_price=0.79)
    state, log = play(lost, rails, Observation(at=T0 + 10, pods=()), Observation(at=T0 + CREATE_SETTLE, pods=()),
                      Observation(at=T0 + CREATE_SETTLE + 5, pods=()))
    assert [k for _, k in log][:2] == ["note", CREATE]    # (the loop marks the new call's answer as pending)
    assert [p.name for p in state.pods] == [name(1)] and state.spend(T0 + CREATE_SETTLE) == 0.0


def test_a_pod_of_the_run_that_no_record_knows_must_end() -> None:
    stray = seen("pod-x", attempt=7)
    state, actions = decide(watching(), at(5, seen(), stray), Guardrails())
    assert [(a.kind, a.data.get("kind")) for a in actions][-1:] == [(RECORD, "provisioned")] or True
    ends = [a for a in actions if a.kind == END]
    assert [state.pod(a.pod).id for a in ends] == ["pod-x"] and ends[0].data["force"] is True
    assert state.pod(ends[0].pod).owed


def test_ending_a_pod_is_an_obligation_retried_with_backoff_until_the_api_confirms_it_gone() -> None:
    state = watching()
    state = state.with_record(state.pod(name(1)).ending("replaced", T0))
    state = dataclasses.replace(state, current="", phase=PROVISIONING)
    rails = Guardrails(pod_price=0.79)
    state, actions = decide(state, at(0), rails)
    assert [a.kind for a in actions][:1] == [END]
    state = state.with_record(state.pod(name(1)).end_failed(T0))          # the terminate call failed
    assert END not in [a.kind for a in decide(state, at(3), rails)[1]]     # backoff: not yet
    assert END in [a.kind for a in decide(state, at(5), rails)[1]]         # 5 s later: again
    state = state.update(name(1), end_called_at=T0 + 6)                   # RunPod took it ...
    state, actions = decide(state, Observation(at=T0 + 10, pods=()), rails)  # ... and no longer lists it
    record = state.pod(name(1))
    assert record.gone and record.ended_at == T0 + 6 and not state.owed()
    assert "terminated" in [a.data.get("kind") for a in actions]


def test_an_api_that_did_not_answer_changes_nothing() -> None:
    state, actions = decide(watching(), at(5, api=False), Guardrails(lost_after=5))
    assert actions == [] and state == watching()


# ----------------------------------------------------------------------------- lost means lost


@pytest.mark.parametrize("status, kind", [("EXITED", "preempted"), ("TERMINATED", "lost")])
def test_a_stopped_or_terminated_pod_is_replaced_at_once(status, kind) -> None:
    state, actions = decide(watching(), at(5, seen(status=status)), Guardrails(pod_price=0.79))
    kinds = [(a.kind, a.data.get("kind")) for a in actions]
    assert (RECORD, kind) in kinds and (CREATE, None) in kinds
    assert state.current == name(2)
    assert state.pod(name(1)).owed if status == "EXITED" else state.pod(name(1)).gone


def test_a_vanished_pod_is_replaced_and_its_billing_ends_at_that_look() -> None:
    state, actions = decide(watching(), Observation(at=T0 + 60, pods=()), Guardrails(pod_price=0.79))
    assert state.pod(name(1)).gone and state.pod(name(1)).ended_at == T0 + 60
    assert CREATE in [a.kind for a in actions]


def test_ssh_dead_while_the_api_says_running_is_replaced_after_lost_after_with_looks_mixed() -> None:
    """API looks every 5 s, an SSH look every 30 s (every 5 s once it failed): API looks never clear it."""
    rails = Guardrails(lost_after=30, pod_price=0.79)
    looks = []
    for t in range(0, 65, 5):
        failing = t >= 30
        looks.append(at(t, run=ssh(ok=False) if failing else (ssh() if t % 30 == 0 else None)))
    state, log = play(watching(), rails, *looks)
    assert ("lost" in [k for _, k in log]) and [t for t, k in log if k == "lost"] == [60]


def test_a_successful_ssh_look_resets_the_ssh_clock_but_an_api_look_does_not() -> None:
    rails = Guardrails(lost_after=30)
    state, log = play(watching(), rails, at(0, run=ssh(ok=False)), at(5), at(10), at(25, run=ssh()),
                      at(30, run=ssh(ok=False)), at(55), at(59, run=ssh(ok=False)))
    assert log == [] and state.ssh_down_since == T0 + 30


def test_no_runtime_for_lost_after_is_lost_in_the_deploying_phase_too() -> None:
    rails = Guardrails(lost_after=20, pod_price=0.79)
    deploying = watching(phase=DEPLOYING, next_deploy_at=T0 + 1000)
    down = seen(runtime=False)
    _, log = play(deploying, rails, at(0, down), at(10, down), at(20, down))
    assert [t for t, k in log if k == "lost"] == [20]


def test_a_deploy_that_cannot_reach_the_pod_is_a_lost_pod_matter_not_a_restart() -> None:
    rails = Guardrails(lost_after=20, max_restarts=1, pod_price=0.79)
    state = watching(phase=DEPLOYING)
    for t in (0, 6, 12):
        state, _ = deploy_failed(state, T0 + t, reachable=False, rails=rails, why="refused")
    assert state.restarts == 0 and state.phase == DEPLOYING and state.ssh_down_since == T0
    _, log = play(state, rails, at(21))
    assert "lost" in [k for _, k in log]


def test_a_deploy_failing_on_a_reachable_pod_backs_off_and_halts_after_max_restarts() -> None:
    rails = Guardrails(max_restarts=2)
    state = watching(phase=DEPLOYING)
    waits = []
    for t in (0, 10, 30):
        state, actions = deploy_failed(state, T0 + t, reachable=True, rails=rails, why="pip failed")
        waits.append(state.next_deploy_at - (T0 + t))
    assert waits[:2] == [5.0, 10.0] and state.phase == ENDING and state.exit_code == 1
    assert "the deploy failed 3 times" in state.outcome


def test_a_pod_that_never_answers_ssh_is_ended_and_replaced_after_ssh_timeout() -> None:
    asked = WatchState(run_id="r1", started_at=T0, project=PROJECT).ask_for_pod(T0, 0.79).update(name(1), id="pod-1")
    rails = Guardrails(ssh_timeout=300, pod_price=0.79)
    pulling = seen(runtime=False)
    state, log = play(asked, rails, at(100, pulling), at(299, pulling), at(300, pulling))
    assert [t for t, k in log if k == "lost"] == [300] and state.pod(name(1)).owed and state.current == name(2)


def test_a_pod_that_answers_ssh_is_armed_then_deployed() -> None:
    asked = WatchState(run_id="r1", started_at=T0, project=PROJECT).ask_for_pod(T0, 0.79).update(name(1), id="pod-1")
    state, actions = decide(asked, at(40, seen()), Guardrails())
    assert [a.kind for a in actions] == [ARM, DEPLOY] and state.phase == DEPLOYING
    assert state.host == "root@127.0.0.1:40001"
    assert deployed(state, T0 + 60).phase == WATCHING


# ----------------------------------------------------------------------------- the run


def test_exit_1_restarts_until_max_restarts_then_halts() -> None:
    rails = Guardrails(max_restarts=2)
    state, kinds = watching(), []
    for i in range(3):
        state, actions = decide(state, at(10 * i, run=ssh("failed")), rails)
        kinds += [a.kind for a in actions if a.kind != RECORD]
        if state.phase == DEPLOYING:
            state = deployed(state, T0 + 10 * i)
    assert kinds == [DEPLOY, DEPLOY, WRAP] and state.exit_code == 1
    assert "MAX_RESTARTS=2" in state.outcome


def test_exit_0_finishes_syncs_then_ends_the_pod_only_if_the_guard_agrees() -> None:
    rails = Guardrails(on_success="terminate")
    state, actions = decide(watching(), at(5, run=ssh("exited")), rails)
    assert [a.kind for a in actions if a.kind != RECORD] == [WRAP] and not actions[-1].data["stop"]
    state, actions = decide(wrapped(state), at(6), rails)
    (end,) = [a for a in actions if a.kind == END]
    assert end.data == {"how": "terminate", "force": False}


def test_a_finished_pod_the_guard_keeps_refusing_is_stopped_not_terminated() -> None:
    state, _ = decide(watching(), at(5, run=ssh("exited")), Guardrails())
    state, _ = decide(wrapped(state), at(6), Guardrails())
    for i in range(4):
        state, notes = end_refused(state, name(1), T0 + 10 * i, "the newest checkpoint on the pod is not in S3")
    assert state.pod(name(1)).how == STOP and "stopping it instead" in notes[0].reason


# ----------------------------------------------------------------------------- limits are hard caps


def test_spend_warns_once_at_80_percent_and_halts_at_100_with_a_forced_end() -> None:
    rails = Guardrails(max_spend=0.79)  # one hour of a $0.79/h pod
    state, log = play(watching(), rails, at(2000), at(2900), at(3000), at(3500), at(3600, run=ssh()))
    assert [(t, k) for t, k in log if k in ("note", "stopped")] == [(2900, "note"), (3600, "stopped")]
    assert state.phase == ENDING and (3600, WRAP) in log
    state, actions = decide(wrapped(state), at(3610), rails)
    (end,) = [a for a in actions if a.kind == END]
    assert end.data == {"how": "terminate", "force": True}


def test_spend_counts_every_pod_from_its_create_to_its_confirmed_end() -> None:
    state = watching()
    state = state.with_record(state.pod(name(1)).ending("lost", T0 + 1800))
    state = state.update(name(1), end_called_at=T0 + 1900)                 # still billing while lost
    state = dataclasses.replace(state, current="").ask_for_pod(T0 + 1800, 1.0)
    assert state.spend(T0 + 3600) == pytest.approx(0.79 * 1900 / 3600 + 1.0 * 1800 / 3600)


def test_an_api_price_of_zero_never_switches_spend_off() -> None:
    state, _ = decide(watching(), at(1800, seen(price=0.0)), Guardrails())
    assert state.pod(name(1)).price == 0.79
    state, _ = decide(state, at(1800, seen(price=1.0)), Guardrails())
    assert state.spend(T0 + 3600) == pytest.approx(0.79 / 2 + 0.5)


def test_a_limit_reached_while_the_pod_is_unreachable_ends_it_without_waiting_for_ssh() -> None:
    rails = Guardrails(max_spend=0.79, lost_after=10_000)
    state, log = play(watching(), rails, at(3590, run=ssh(ok=False)), at(3600))
    assert state.phase == ENDING and WRAP in [k for _, k in log]   # the wrap's stop fails fast, then the end


def test_hours_continue_from_earlier_sessions_of_the_run() -> None:
    rails = Guardrails(max_hours=1)
    state, log = play(watching(hours_before=0.75), rails, at(500), at(900))
    assert [(t, k) for t, k in log if k in ("note", "stopped")] == [(500, "note"), (900, "stopped")]


def test_a_new_pod_is_only_asked_for_while_the_budget_covers_it() -> None:
    rails = Guardrails(max_spend=1.0, pod_price=0.79)
    state, log = play(watching(), rails, at(4500, seen(status="EXITED")))   # $0.99 spent: no pod can be paid
    assert CREATE not in [k for _, k in log] and state.phase == ENDING


def test_a_replacement_waits_while_a_lost_pod_may_still_bill_until_its_deadline() -> None:
    rails = Guardrails(max_spend=1.0, pod_price=0.79)
    state = watching()
    state = state.update(name(1), deadline=T0 + 1.0 / 0.79 * 3600)  # the whole budget, reserved
    state, actions = decide(state, at(600, seen(status="EXITED")), rails)
    assert CREATE not in [a.kind for a in actions] and END in [a.kind for a in actions]
    assert state.phase == PROVISIONING                                      # waiting, not halted
    state = state.update(name(1), end_called_at=T0 + 601)
    state, actions = decide(state, Observation(at=T0 + 605, pods=()), rails)
    assert CREATE in [a.kind for a in actions]


def test_each_pod_gets_the_deadline_of_the_budget_left_when_it_is_made() -> None:
    rails = Guardrails(max_spend=2.0, max_hours=10)
    state = WatchState(run_id="r1", started_at=T0, project=PROJECT).ask_for_pod(T0, 1.0)
    assert pod_deadline(state, T0, rails, name(1), 1.0) == pytest.approx(T0 + 7200)
    hours_bound = dataclasses.replace(rails, max_hours=1)
    assert pod_deadline(state, T0, hours_bound, name(1), 1.0) == pytest.approx(T0 + 3600)
    assert pod_deadline(state, T0, Guardrails(), name(1), 1.0) is None


def test_idle_warns_then_halts_and_a_step_resets_it() -> None:
    rails = Guardrails(idle_minutes=10, idle_gpu_percent=5)
    idle = lambda s, step=7: at(s, run=ssh(step=step, gpu=1))  # noqa: E731
    state, log = play(watching(last_step=7), rails, idle(0), idle(599), idle(600), idle(900))
    assert log == [(600, "note")]
    state, log = play(state, rails, idle(1000, step=8), idle(1100, step=8), idle(1700, step=8))
    assert log == [(1700, "note")]
    _, log = play(state, rails, idle(2300, step=8))
    assert (2300, "stopped") in log


def test_unknown_gpu_utilisation_is_never_idle() -> None:
    rails = Guardrails(idle_minutes=1)
    _, log = play(watching(last_step=7), rails, *(at(s, run=ssh(step=7, gpu=None)) for s in range(0, 600, 60)))
    assert log == []


# ----------------------------------------------------------------------------- restarts and the bucket


def test_state_restored_from_its_record_decides_the_same() -> None:
    rails = Guardrails(max_spend=0.79, idle_minutes=10, lost_after=30)
    observations = [at(100, run=ssh(step=1, gpu=1)), at(200, run=ssh(step=1, gpu=1)), at(800, run=ssh(step=1, gpu=1)),
                    at(2900, seen(runtime=False)), at(2920, run=ssh(step=2, gpu=50)), at(3600, run=ssh(step=3, gpu=50))]
    straight, log_straight = play(watching(), rails, *observations)
    state, log_restored = watching(), []
    for obs in observations:  # a watcher restarted before every observation: only the saved dict survives
        state = WatchState.from_dict(state.to_dict())
        state, actions = decide(state, obs, rails)
        log_restored += [(obs.at - T0, a.kind if a.kind != RECORD else a.data["kind"]) for a in actions]
    assert log_restored == log_straight and (3600, "stopped") in log_straight
    assert WatchState.from_dict(straight.to_dict()) == straight


def test_a_done_run_with_nothing_owed_does_nothing() -> None:
    done = watching(phase=DONE)
    done = done.update(name(1), gone=True, ended_at=T0 + 10)
    assert decide(done, at(100, seen(status="EXITED")), Guardrails()) == (done, [])


def test_guardrail_lines_say_what_each_limit_does() -> None:
    lines = "\n".join(Guardrails(max_hours=10, max_spend=20, idle_minutes=15).lines())
    assert "stop after 10 h, warn at 8 h" in lines and "stop at $20.00, warn at $16.00" in lines
    assert "warn after 15 min, stop after 30 min" in lines and "ends itself at the run's deadline" in lines
