"""A managed run end to end: `fab train` on the local RunPod control plane, whose pods are real containers.

fab train -> the first pod comes up, the deploy starts training (native runtime), checkpoints reach
the S3 server -> the control plane loses the pod (RunPod reclaiming it) -> the watcher sees it through
the API, asks for a replacement at once, deploys there, and training resumes from the newest S3
checkpoint (no checkpoint after the loss has a lower step) -> training finishes -> lightning_logs come
back -> the pod is terminated (none is left) -> the run record lists both pods and their cost. And:
Ctrl-C detaches (the pod keeps running), ``fab train.watch RUN`` attaches from the state in the bucket.

The pods run on the host's network so they reach the S3 server on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from deploy.dev.runpod_server import RunPodServer
from deploy.ledger.cost import run_cost
from deploy.ledger.store import read_run
from deploy.settings import Secret
from deploy.storage.checkpoints import latest_checkpoint, list_checkpoints
from deploy.watch.record import StateStore
from tests.harness.fab import FAB, REPO, run_fab
from tests.harness.managed import MAX_STEPS, TRAIN_COMMAND, storage_for
from tests.harness.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.docker]


@pytest.fixture
def control_plane(managed_plane: RunPodServer) -> RunPodServer:
    """The plane the operator's settings point at (the operator fixture asks for it as managed_plane)."""
    return managed_plane


def test_train_dry_run_prints_the_plan_and_creates_nothing(operator, control_plane: RunPodServer) -> None:
    project, env = operator
    result = run_fab("train", "--dry-run", env={**env, "MAX_SPEND": "20", "MAX_PRICE_PER_HOUR": "0.50"}, cwd=project)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "try 1: 1 x NVIDIA RTX A6000 (all cloud) at $0.33/h" in result.stdout
    assert "skip: NVIDIA L40S costs $0.79/h, above MAX_PRICE_PER_HOUR=$0.50" in result.stdout
    assert "stop at $20.00, warn at $16.00 (MAX_SPEND)" in result.stdout
    assert "EXITED or gone: replaced at once" in result.stdout and "Dry run: no pod was created." in result.stdout
    assert control_plane.pods == {}


def test_watch_names_a_run_that_was_never_managed(operator) -> None:
    project, env = operator
    result = run_fab("train.watch", "20260101-000000-abcd", env=env, cwd=project)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: Run 20260101-000000-abcd has no watcher state in s3://")
    assert "fab train starts a managed run" in result.stderr and "Traceback" not in result.stderr


def test_a_managed_run_survives_a_lost_pod_and_ends_with_nothing_billing(operator, control_plane: RunPodServer,
                                                                         tmp_path: Path) -> None:
    project, env = operator
    storage = storage_for(env)
    log = tmp_path / "train.out"
    results = tmp_path / "results"
    with open(log, "w") as out:
        proc = subprocess.Popen([FAB, "--search-root", str(REPO), "train", "--api-every", "1", "--ssh-every", "3",
                                 "--timeout", "180", "--results", str(results)], cwd=project, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **env}, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: proc.poll() is not None or ((c := latest_checkpoint(storage)) and (c.step or 0) >= 20),
                   timeout=420, interval=1.0, what="a checkpoint of step 20 in S3")
        assert proc.poll() is None, log.read_text()
        (first,) = control_plane.pods
        lost_step = latest_checkpoint(storage).step
        lost_at = datetime.now(timezone.utc)
        control_plane.lose_pod(first, how="exited")  # RunPod reclaims the pod: EXITED, the container killed
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert proc.returncode == 0, output

    assert "preempted" in output and f"pod {first} was stopped (RunPod reclaimed it)" in output
    assert output.count("provisioned") == 2 and "finished" in output
    assert control_plane.pods == {}, f"a pod is left billing: {control_plane.pods}\n{output}"

    after = [c for c in list_checkpoints(storage) if c.uploaded and c.uploaded > lost_at and c.step is not None]
    assert after and min(c.step for c in after) > lost_step, "the replacement started over instead of resuming"
    assert latest_checkpoint(storage).step == MAX_STEPS
    assert any(results.glob("lightning_logs/version_*/*")), "lightning_logs did not come back"

    run_id = re.search(r"^run       (\S+) ", output, re.M).group(1)
    data = read_run(storage, run_id)
    kinds = [e.kind for e in data.events]
    assert kinds.count("provisioned") == 2 and "preempted" in kinds and "finished" in kinds
    cost = run_cost(data.events, data.heartbeats)
    assert len(cost.hosts) == 2 and all(h.price_per_hour == 0.79 and h.dollars and h.dollars > 0 for h in cost.hosts)
    state, _ = StateStore(storage, run_id, Secret(env["RUNPOD_API_KEY"])).load()
    assert state.phase == "done" and len(state.pod_ids) == 2 and state.outcome.startswith("finished")
    assert not state.billing()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "ssh-session-dropped"])
def test_ctrl_c_detaches_and_train_watch_resumes_from_the_state_in_the_bucket(operator, control_plane: RunPodServer,
                                                                              tmp_path: Path, signum: int) -> None:
    project, env = operator
    log = tmp_path / "train.out"
    with open(log, "w") as out:
        proc = subprocess.Popen([FAB, "--search-root", str(REPO), "train", "--api-every", "1", "--ssh-every", "3",
                                 "--results", str(tmp_path / "results")], cwd=project, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **env}, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: proc.poll() is not None or " deployed " in log.read_text(), timeout=420,
                   what="the first deploy")
        proc.send_signal(signum)  # the operator's Ctrl-C, or the terminal's SSH session dropping
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    (pod_id,) = control_plane.pods
    run_id = re.search(r"^run       (\S+) ", output, re.M).group(1)
    assert proc.returncode == 0, output
    assert (f"Watcher detached from run {run_id}. Still billing:\n  {pod_id} ($0.79/h, training)\nAttach again: "
            f"fab train.watch {run_id}; take them down: fab pods.down --pod {pod_id}") in output
    assert control_plane.pods[pod_id].status == "RUNNING"

    again = run_fab("train.watch", run_id, "--api-every", "1", "--ssh-every", "3", "--results", str(tmp_path / "results"),
                    env=env, cwd=project, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"run       {run_id}: watching, pod {pod_id} root@127.0.0.1:" in again.stdout
    assert "provisioned" not in again.stdout and " finished " in again.stdout  # the same pod, watched to the end
    assert control_plane.pods == {}
    kinds = [e.kind for e in read_run(storage_for(env), run_id).events]
    assert kinds.count("provisioned") == 1 and "note" in kinds and kinds[-1] == "terminated"


def test_max_hours_warns_then_stops_gracefully_syncs_and_terminates(operator, control_plane: RunPodServer,
                                                                   tmp_path: Path) -> None:
    project, env = operator
    env = {**env, "MAX_HOURS": "0.03", "TRAIN_COMMAND": TRAIN_COMMAND.replace(f"max_steps={MAX_STEPS}", "max_steps=-1")}
    result = run_fab("train", "--api-every", "1", "--ssh-every", "3", "--results", str(tmp_path / "results"),
                     env=env, cwd=project, timeout=600)
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    assert re.search(r"warning: 0\.0[23]\d* h of MAX_HOURS=0\.03 h used \(80%\); the run stops at 0\.03 h", output)
    assert re.search(r"\] stopped +root@127\.0\.0\.1:\d+: MAX_HOURS=0\.03 h reached \(0\.0[34]\d* h\)$", output, re.M), output
    saved = re.search(r"\] note +root@127\.0\.0\.1:\d+: training stopped; saved step (\d+)", output)  # as fab stop says
    assert saved, output
    assert control_plane.pods == {}, "the pod was left billing"
    assert re.search(r"Run \S+: stopped: MAX_HOURS=0\.03 h reached", output)
    assert latest_checkpoint(storage_for(env)).step == int(saved.group(1))  # SIGTERM saved the step it reached
    assert any((tmp_path / "results").glob("lightning_logs/version_*/*"))
