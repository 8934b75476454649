"""The watcher's decisions over sequences of observations: pure, no RunPod, SSH or bucket."""

from __future__ import annotations

import dataclasses

import pytest

from deploy.watch.decide import (DEPLOY, DEPLOYING, DONE, FINISH, HALT, PROVISION, PROVISIONING, REPLACE, RESTART,
                                 WARN, WATCHING, Guardrails, Observation, PodFact, RunFact, WatchState, decide)

T0 = 1_800_000_000.0
UP = PodFact("RUNNING", has_runtime=True, cost_per_hr=0.79)


def watching(**changes) -> WatchState:
    state = WatchState(run_id="r1", started_at=T0, phase=WATCHING)
    state = state.with_pod("pod-a", "root@127.0.0.1:40022", 0.79, T0)
    return dataclasses.replace(state, **changes)


def run(service="running", step=None, gpu=None, reachable=True) -> RunFact:
    return RunFact(reachable=reachable, service=service, step=step, gpu_percent=gpu)


def play(state, rails, *observations):
    """Feed observations in order; return the final state and every (time offset, kind) decided."""
    seen = []
    for obs in observations:
        state, actions = decide(state, obs, rails)
        seen += [(obs.at - T0, a.kind) for a in actions]
    return state, seen


def at(seconds: float, pod=UP, run_fact=None) -> Observation:
    return Observation(at=T0 + seconds, pod=pod, run=run_fact)


def test_a_healthy_run_needs_nothing() -> None:
    state, seen = play(watching(), Guardrails(), at(5), at(10, run_fact=run(step=3)), at(15))
    assert seen == [] and state.last_step == 3


@pytest.mark.parametrize("pod, kind", [(PodFact("EXITED"), "preempted"), (PodFact(""), "lost"),
                                       (PodFact("TERMINATED"), "preempted")])
def test_a_stopped_or_vanished_pod_is_replaced_at_once(pod, kind) -> None:
    state, actions = decide(watching(), at(5, pod=pod), Guardrails())
    assert [(a.kind, a.data["kind"]) for a in actions] == [(REPLACE, kind)]
    assert "pod-a" in actions[0].reason


def test_a_pod_without_runtime_is_replaced_after_lost_after_seconds() -> None:
    rails = Guardrails(lost_after=30)
    no_runtime = PodFact("RUNNING", has_runtime=False, cost_per_hr=0.79)
    _, seen = play(watching(), rails, at(5, no_runtime), at(20, no_runtime), at(34, no_runtime), at(35, no_runtime))
    assert seen == [(35, REPLACE)]


def test_a_pod_that_comes_back_resets_the_lost_clock() -> None:
    rails = Guardrails(lost_after=30)
    no_runtime = PodFact("RUNNING", has_runtime=False)
    state, seen = play(watching(), rails, at(5, no_runtime), at(20), at(40, no_runtime), at(60, no_runtime))
    assert seen == [] and state.suspect_since == T0 + 40


def test_ssh_unreachable_for_lost_after_seconds_is_a_lost_pod() -> None:
    rails = Guardrails(lost_after=30)
    down = run(reachable=False)
    _, seen = play(watching(), rails, at(0, run_fact=down), at(29, run_fact=down), at(31, run_fact=down))
    assert seen == [(31, REPLACE)]


def test_exit_1_restarts_until_max_restarts_then_halts() -> None:
    rails = Guardrails(max_restarts=2)
    state = watching()
    kinds = []
    for i in range(3):
        state, actions = decide(state, at(10 * i, run_fact=run("failed")), rails)
        kinds += [a.kind for a in actions]
        if actions[0].kind == RESTART:  # the loop counts a restart once it is done
            state = dataclasses.replace(state, restarts=state.restarts + 1)
    assert kinds == [RESTART, RESTART, HALT]
    assert "MAX_RESTARTS=2" in actions[0].reason


def test_exit_0_finishes_and_on_success_is_the_loops_to_apply() -> None:
    _, actions = decide(watching(), at(5, run_fact=run("exited")), Guardrails(on_success="stop"))
    assert [(a.kind, a.data["kind"]) for a in actions] == [(FINISH, "finished")]


def test_a_training_stopped_on_the_host_finishes_as_stopped() -> None:
    _, actions = decide(watching(), at(5, run_fact=run("stopped")), Guardrails())
    assert [(a.kind, a.data["kind"]) for a in actions] == [(FINISH, "stopped")]


def test_spend_warns_once_at_80_percent_and_halts_at_100() -> None:
    rails = Guardrails(max_spend=0.79)  # one hour of a $0.79/h pod
    _, seen = play(watching(), rails, at(2000), at(2900), at(3000), at(3500), at(3600))
    assert seen == [(2900, WARN), (3600, HALT)]


def test_spend_counts_every_pod_of_the_run() -> None:
    state = watching().with_pod("pod-b", "root@127.0.0.1:40023", 1.0, T0 + 1800)  # pod-a: half an hour
    assert state.spend(T0 + 3600) == pytest.approx(0.79 / 2 + 0.5)
    assert state.pods == ("pod-a", "pod-b")


def test_hours_warn_at_80_percent_and_halt_at_100() -> None:
    rails = Guardrails(max_hours=1)
    state, seen = play(watching(), rails, at(2800), at(2900), at(3000), at(3600))
    assert seen == [(2900, WARN), (3600, HALT)] and state.warned == ("hours",)


def test_idle_warns_then_halts_and_a_step_resets_it() -> None:
    rails = Guardrails(idle_minutes=10, idle_gpu_percent=5)
    idle = lambda s, step=7: at(s, run_fact=run(step=step, gpu=1))  # noqa: E731
    state, seen = play(watching(last_step=7), rails, idle(0), idle(599), idle(600), idle(900))
    assert seen == [(600, WARN)]
    state, seen = play(state, rails, idle(1000, step=8), idle(1100, step=8), idle(1700, step=8))
    assert seen == [(1700, WARN)]  # the new step reset the clock (and the warning)
    _, seen = play(state, rails, idle(2300, step=8))
    assert seen == [(2300, HALT)]


def test_unknown_gpu_utilisation_is_never_idle() -> None:
    rails = Guardrails(idle_minutes=1)
    _, seen = play(watching(last_step=7), rails, *(at(s, run_fact=run(step=7, gpu=None)) for s in range(0, 600, 60)))
    assert seen == []


def test_busy_gpus_without_steps_are_not_idle() -> None:
    rails = Guardrails(idle_minutes=1, idle_gpu_percent=5)
    _, seen = play(watching(last_step=7), rails, *(at(s, run_fact=run(step=7, gpu=80)) for s in range(0, 600, 60)))
    assert seen == []


def test_phases_redo_what_a_dead_watcher_left_half_done() -> None:
    fresh = WatchState(run_id="r1", started_at=T0)
    assert [a.kind for a in decide(fresh, at(0), Guardrails())[1]] == [PROVISION]
    deploying = dataclasses.replace(watching(), phase=DEPLOYING)
    assert [a.kind for a in decide(deploying, at(0), Guardrails())[1]] == [DEPLOY]
    assert decide(dataclasses.replace(watching(), phase=DONE), at(0, pod=PodFact("EXITED")), Guardrails())[1] == []
    assert fresh.phase == PROVISIONING


def test_a_pod_lost_while_deploying_is_replaced_not_deployed_again() -> None:
    deploying = dataclasses.replace(watching(), phase=DEPLOYING)
    assert [a.kind for a in decide(deploying, at(0, pod=PodFact("EXITED")), Guardrails())[1]] == [REPLACE]
    assert [a.kind for a in decide(deploying, at(0, pod=UP), Guardrails())[1]] == [DEPLOY]


def test_state_restored_from_its_record_decides_the_same() -> None:
    rails = Guardrails(max_spend=0.79, idle_minutes=10, lost_after=30)
    observations = [at(100, run_fact=run(step=1, gpu=1)), at(200, run_fact=run(step=1, gpu=1)),
                    at(800, run_fact=run(step=1, gpu=1)),
                    at(2900, PodFact("RUNNING", False, 0.79)), at(2920, run_fact=run(step=2, gpu=50)),
                    at(3600, run_fact=run(step=3, gpu=50))]
    straight, seen_straight = play(watching(), rails, *observations)

    state, seen_restored = watching(), []
    for obs in observations:  # a watcher restarted before every observation: only the saved dict survives
        state = WatchState.from_dict(state.to_dict())
        state, actions = decide(state, obs, rails)
        seen_restored += [(obs.at - T0, a.kind) for a in actions]
    assert seen_restored == seen_straight == [(800, WARN), (2900, WARN), (3600, HALT)]
    assert WatchState.from_dict(straight.to_dict()) == straight


def test_the_api_price_replaces_the_recorded_one_from_then_on() -> None:
    state, _ = decide(watching(), at(1800, pod=PodFact("RUNNING", True, 1.0)), Guardrails())
    assert state.price_per_hour == 1.0 and state.spend(T0 + 3600) == pytest.approx(0.79 / 2 + 0.5)


def test_guardrail_lines_say_what_each_limit_does() -> None:
    lines = "\n".join(Guardrails(max_hours=10, max_spend=20, idle_minutes=15).lines())
    assert "stop after 10 h, warn at 8 h" in lines and "stop at $20.00, warn at $16.00" in lines
    assert "warn after 15 min, stop after 30 min" in lines
