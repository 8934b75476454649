"""Managed runs on the unhappy paths, end to end on the local control plane whose pods are real containers.

Each test ends with nothing billing (the API's list and the machine's containers) and with the spend the
run recorded (the watcher's state and the run ledger) within 5 % of what RunPod billed for every pod from
its create to its termination:

- a replace whose old pod's terminate fails twice, whose new pod's create answer is lost (RunPod made the
  pod), and which Ctrl-C interrupts while the new pod boots; ``fab train.watch`` finishes it;
- MAX_SPEND reached while the pod cannot be reached over SSH: it is terminated anyway;
- the watcher killed with kill -9: the pod stops its training with a checkpoint and ends itself at its
  deadline; ``fab train.watch`` then closes the run.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from deploy.dev.runpod_server import RunPodServer
from deploy.ledger.store import read_run
from deploy.settings import Secret
from deploy.storage.checkpoints import latest_checkpoint, list_checkpoints
from deploy.watch.loop import WRAP_SECONDS
from deploy.watch.record import StateStore
from tests.harness.managed import MAX_STEPS, TRAIN_COMMAND, Train, nothing_billing, spend_matches, storage_for
from tests.harness.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.docker]

FAST = ("--api-every", "1", "--ssh-every", "3", "--timeout", "180")
ENDLESS = TRAIN_COMMAND.replace(f"max_steps={MAX_STEPS}", "max_steps=-1")


def checkpoint_at_least(storage, step: int) -> bool:
    newest = latest_checkpoint(storage)
    return bool(newest and (newest.step or 0) >= step)


def armed_deadline(plane: RunPodServer, pod: str, remote_dir: str) -> float:
    """The deadline the pod's backstop holds now (``.gpu-deploy/backstop.json`` in the pod)."""
    code, out = plane.container(pod).exec_run(["cat", f"{remote_dir}/.gpu-deploy/backstop.json"])
    assert code == 0, out
    return float(json.loads(out)["deadline"])


def the_other(plane: RunPodServer, known: str) -> str | None:
    return next((pod_id for pod_id in plane.pods if pod_id != known), None)


def test_a_replace_survives_a_failing_terminate_a_lost_create_answer_and_ctrl_c_while_the_new_pod_boots(
        operator, managed_plane: RunPodServer, docker_client, tmp_path: Path) -> None:
    project, env = operator
    storage = storage_for(env)
    results = str(tmp_path / "results")
    train = Train(project, env, tmp_path / "train.out", "train", *FAST, "--results", results)
    try:
        run_id = train.run_id
        wait_until(lambda: checkpoint_at_least(storage, 20), timeout=420, what="a checkpoint of step 20 in S3")
        (first,) = managed_plane.pods
        lost_step = latest_checkpoint(storage).step
        managed_plane.fail_terminate(first, times=2)   # the old pod's terminate fails twice
        managed_plane.drop_next_create()               # the replacement is made, its create answer lost
        managed_plane.set_pull_delay(20)               # and it boots slowly: Ctrl-C lands in its boot
        managed_plane.lose_pod(first, how="exited")
        train.wait_for(r"found under its name: its create answer was lost")
        second = the_other(managed_plane, first)
        assert second is not None
        code = train.interrupt(signal.SIGINT)
    finally:
        train.kill()
    output = train.output
    assert code == 0, output
    assert len(managed_plane.bills()) == 2, f"a second replacement was made: {managed_plane.bills()}"
    assert f"Watcher detached from run {run_id}. Still billing:\n" in output
    assert f"  {second} ($0.79/h, starting)" in output
    assert f"  {first} ($0.79/h, being ended: preempted: pod {first} was stopped (RunPod reclaimed it))" in output \
        or f"pod {first} is gone" in output

    again = Train(project, env, tmp_path / "watch.out", "train.watch", run_id, *FAST, "--results", results)
    try:
        assert again.wait(600) == 0, again.output
    finally:
        again.kill()
    assert "Still billing" not in again.output and " finished " in again.output
    nothing_billing(managed_plane, docker_client)
    assert len(managed_plane.bills()) == 2
    spend_matches(managed_plane, env, run_id)
    tries = [line for line in (output + again.output).splitlines() if f"could not terminate pod {first}" in line]
    assert len(tries) == 2, "the old pod's terminate was not retried until RunPod took it"
    newest = latest_checkpoint(storage)
    assert newest.step == MAX_STEPS and min(c.step for c in list_checkpoints(storage)
                                            if c.uploaded and c.step and c.step > lost_step) > lost_step


def test_max_spend_reached_while_the_pod_is_unreachable_still_ends_it(
        operator, managed_plane: RunPodServer, docker_client, tmp_path: Path) -> None:
    project, env = operator
    env = {**env, "MAX_SPEND": "0.02", "LOST_AFTER_SECONDS": "600", "TRAIN_COMMAND": ENDLESS}  # $0.02: 91 s of L40S
    train = Train(project, env, tmp_path / "train.out", "train", *FAST, "--results", str(tmp_path / "results"))
    try:
        run_id = train.run_id
        train.wait_for(r"\] deployed ")
        (pod,) = managed_plane.pods
        managed_plane.kill_sshd(pod)
        train.wait_for(r"\] stopped .*MAX_SPEND=\$0\.02 reached", timeout=300)
        code = train.wait(300)
    finally:
        train.kill()
    assert code == 0, train.output
    nothing_billing(managed_plane, docker_client)
    billed = spend_matches(managed_plane, env, run_id)
    over = max(0.0, billed - 0.02)
    assert over / 0.79 * 3600 <= 30, f"${over:.4f} past MAX_SPEND ({over / 0.79 * 3600:.0f} s of the pod)"


def test_a_watcher_killed_with_kill_9_leaves_a_pod_that_ends_itself_at_its_deadline(
        operator, managed_plane: RunPodServer, docker_client, tmp_path: Path) -> None:
    project, env = operator
    env = {**env, "MAX_HOURS": "0.03", "TRAIN_COMMAND": ENDLESS}  # 108 s
    storage = storage_for(env)
    train = Train(project, env, tmp_path / "train.out", "train", *FAST, "--results", str(tmp_path / "results"))
    try:
        run_id = train.run_id
        train.wait_for(r"the pod ends itself after")
        train.wait_for(r"\] deployed ")
        wait_until(lambda: checkpoint_at_least(storage, 10), timeout=300, what="a checkpoint in S3")
        train.proc.kill()                                   # kill -9: nothing of the watcher runs any more
        train.wait(30)
    finally:
        train.kill()
    (pod,) = managed_plane.pods
    state, _ = StateStore(storage, run_id, Secret(env["RUNPOD_API_KEY"])).load()
    deadline = state.pods[0].deadline
    armed = armed_deadline(managed_plane, pod, env["REMOTE_DIR"])
    # The run's deadline; or, when the watcher reached the limit before the kill (a slow first checkpoint on a
    # loaded machine), WRAP_SECONDS after the moment it did, as it postpones the backstop to wrap the run up.
    postponed = deadline < armed <= time.time() + WRAP_SECONDS
    assert armed == pytest.approx(deadline, abs=1) or postponed, (armed, deadline)
    wait_until(lambda: not managed_plane.pods, timeout=400 + armed - deadline, what="the pod to end itself")
    (bill,) = managed_plane.bills()
    assert armed <= bill.ended_at <= armed + 30 + 120 + 30, "the pod did not end itself at its deadline"
    newest = latest_checkpoint(storage)
    assert newest.name.startswith("stop-"), f"the pod ended without saving its step: newest is {newest.name}"
    events = read_run(storage, run_id).events
    assert any(e.kind == "terminated" and e.data.get("pod") == pod and "ended itself" in (e.data.get("message") or "")
               for e in events)

    again = Train(project, env, tmp_path / "watch.out", "train.watch", run_id, *FAST)
    try:
        assert again.wait(300) == 0, again.output
    finally:
        again.kill()
    assert "MAX_HOURS=0.03 h reached" in again.output and "Still billing" not in again.output
    nothing_billing(managed_plane, docker_client)
    spend_matches(managed_plane, env, run_id)


def test_a_pod_lost_in_the_middle_of_its_deploy_is_replaced_and_the_run_finishes(
        operator, managed_plane: RunPodServer, docker_client, tmp_path: Path) -> None:
    """The machine dies while the deploy runs on it (RunPod: RUNNING, runtime null, SSH gone): the watcher
    survives the deploy's SSH error, counts it as a lost pod (not a restart), and replaces the pod."""
    project, env = operator
    env = {**env, "LOST_AFTER_SECONDS": "10", "MAX_RESTARTS": "1"}
    train = Train(project, env, tmp_path / "train.out", "train", *FAST, "--results", str(tmp_path / "results"))
    try:
        run_id = train.run_id
        train.wait_for(r"127\.0\.0\.1: (create-venv|install-requirements|create-dir|write-env|sync-code): ")
        (first,) = managed_plane.pods
        managed_plane.lose_pod(first, how="vanished")
        train.wait_for(rf"\] lost +.*pod {first} (has no runtime|does not answer over SSH)")
        code = train.wait(600)
    finally:
        train.kill()
    output = train.output
    assert code == 0, output
    assert "Traceback" not in output and output.count("] provisioned") == 2 and " finished " in output
    assert "stopped" not in [line.split()[1] for line in output.splitlines() if line.startswith("[")]
    nothing_billing(managed_plane, docker_client)
    spend_matches(managed_plane, env, run_id)
