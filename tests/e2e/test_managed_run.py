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
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from deploy.dev.runpod_server import RunPodServer
from deploy.ledger.cost import run_cost
from deploy.ledger.store import read_run
from deploy.settings import load_settings
from deploy.storage import Storage
from deploy.storage.checkpoints import latest_checkpoint, list_checkpoints
from deploy.watch import record
from tests.harness.fab import FAB, REPO, run_fab
from tests.harness.runpod import API_KEY, pod_image, ssh_key_pair  # noqa: F401 - fixture
from tests.harness.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.docker]

MAX_STEPS = 120
TRAIN_COMMAND = (f"python -m deploy.training.demo fit --trainer.max_steps={MAX_STEPS} --trainer.max_epochs=1000 "
                 "--trainer.enable_progress_bar=false --checkpoint.every_n_train_steps=10 "
                 "--checkpoint.save_top_k=-1 --checkpoint.monitor=null --model.step_delay=0.25")


@pytest.fixture(scope="module")
def control_plane(docker_client, pod_image: str):  # noqa: F811 - the fixture
    server = RunPodServer(docker_client, pod_image, api_key=API_KEY, host_network=True, pull_delay=1.0).start()
    yield server
    server.stop()


@pytest.fixture
def operator(tmp_path: Path, control_plane: RunPodServer, s3_server, s3_bucket: str):
    """The operator's folder and settings: the S3 server, the control plane, a key pair, a short demo run."""
    env = {
        **s3_server.environ(s3_bucket, prefix=f"managed-{uuid.uuid4().hex[:8]}"),
        "RUNPOD_API_BASE_URL": control_plane.url, "RUNPOD_API_KEY": API_KEY,
        "RUNPOD_SSH_KEY": str(ssh_key_pair(tmp_path)), "SSH_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
        "POD_GPU_TYPES": "NVIDIA L40S,NVIDIA RTX A6000", "POD_VOLUME_GB": "20", "REMOTE_DIR": "/workspace/train",
        "TRAIN_COMMAND": TRAIN_COMMAND, "S3_SYNC_FLUSH_TIMEOUT": "30", "LOST_AFTER_SECONDS": "20",
    }
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("the operator's project\n")
    yield project, env
    control_plane.cleanup()


def storage_for(env: dict[str, str]) -> Storage:
    return Storage.from_settings(load_settings(overrides={k: v for k, v in env.items() if k.startswith(("AWS_", "S3_"))}))


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
    state, _ = record.load(storage, run_id)
    assert state.phase == "done" and len(state.pods) == 2 and state.outcome.startswith("finished")


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
    assert (f"Watcher detached from run {run_id}. Pod {pod_id} keeps running and billing ($0.79/h). Attach again: "
            f"fab train.watch {run_id}; take it down: fab pods.down --pod {pod_id}") in output
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
    assert re.search(r"\] stopped +root@127\.0\.0\.1:\d+: MAX_HOURS=0\.03 h reached \(0\.0[34]\d* h\); training stopped "
                     r"gracefully; ", output), output
    assert control_plane.pods == {}, "the pod was left billing"
    assert re.search(r"Run \S+: stopped: MAX_HOURS=0\.03 h reached", output)
    assert (latest_checkpoint(storage_for(env)).step or 0) > 0  # SIGTERM saved the step it reached
    assert any((tmp_path / "results").glob("lightning_logs/version_*/*"))
