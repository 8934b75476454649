"""The run ledger through the real operator loop: a native deploy over real SSH with a real S3 server.

deploy -> a record with the run id, RUN_ID on the host, training's ``started`` event, a heartbeat on
the host and in the bucket, ``fab status`` with run, spend and progress -> kill -9 (the supervisor
restarts training) -> stop -> redeploy: the same run id, every event in order, cost from HOST_PRICE_PER_HOUR.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
from pathlib import Path

import pytest

from deploy.ledger.index import list_runs
from deploy.ledger.store import read_run
from deploy.settings import load_settings
from deploy.storage import Storage
from tests.harness.pod import pids_in
from tests.harness.fab import run_fab
from tests.harness.waiting import wait_until

pytestmark = [pytest.mark.slow]


def kinds(storage: Storage, run_id: str) -> list[str]:
    run = read_run(storage, run_id)
    return [e.kind for e in run.events] if run else []


def test_deploy_records_the_run_and_a_kill_and_redeploy_keep_its_id(native_workspace) -> None:
    project, remote_dir, values = native_workspace
    with open(project / ".env", "a") as env:
        env.write("HOST_PRICE_PER_HOUR=2.50\n")
    storage = Storage.from_settings(load_settings(environ=values))

    def fab(*args: str):
        result = run_fab(*args, cwd=project)
        assert result.returncode == 0, f"fab {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    dry = fab("deploy-runpod", "--dry-run")
    assert "(a new run: none unfinished in the bucket;" in dry.stdout and not list_runs(storage)

    first = fab("deploy-runpod")
    (run_id,) = [r["run_id"] for r in list_runs(storage)]
    assert f"run       {run_id} (a new run" in first.stdout
    host_env = Path(remote_dir, ".env").read_text()
    assert f"RUN_ID='{run_id}'" in host_env and "RUN_HOST=" in host_env
    run = read_run(storage, run_id)
    assert run is not None and run.record.settings_digest.startswith("sha256:")
    assert run.record.command.startswith("fab ") and "deploy-runpod" in run.record.command and "AWS_SECRET" not in json.dumps(run.record.to_dict())
    wait_until(lambda: {"deployed", "started"} <= set(kinds(storage, run_id)), 60, "deployed and started events")
    beat_file = Path(remote_dir, "lightning_logs", "heartbeat.json")
    wait_until(lambda: beat_file.exists() and json.loads(beat_file.read_text()).get("step", 0) > 0, 90,
               "a heartbeat with a step on the host")

    status = fab("status")
    assert f"run         {run_id}: running" in status.stdout
    assert "progress    step " in status.stdout and "steps/s" in status.stdout
    assert "\x1b[" not in status.stdout and "up ?" not in status.stdout

    [entrypoint] = pids_in(remote_dir, "deploy.training.entrypoint")
    os.kill(entrypoint, signal.SIGKILL)  # a crash: the supervisor restarts training, which records it
    wait_until(lambda: kinds(storage, run_id).count("started") >= 2, 90, "a second started event")
    fab("stop")
    wait_until(lambda: "stopped" in kinds(storage, run_id), 30, "the stopped event")

    again = fab("deploy-runpod")
    assert f"run       {run_id} (continuing the newest unfinished run" in again.stdout
    wait_until(lambda: kinds(storage, run_id).count("started") >= 3, 90, "the redeployed run's start")
    fab("stop")
    events = kinds(storage, run_id)
    assert events.count("deployed") == 2 and "stopped" in events
    assert [r["run_id"] for r in list_runs(storage)] == [run_id]

    shown = fab("runs.show", "--run", run_id, "--json")
    data = json.loads(shown.stdout)
    (host,) = data["cost"]["hosts"]
    assert host["price_per_hour"] == 2.5 and host["intervals"] == 2 and data["cost"]["dollars"] > 0
    assert data["summary"]["restarts"] >= 2
    newest = storage.head(storage.key("checkpoints", "last.ckpt"))
    assert newest is not None and newest.metadata.get("run") == run_id  # a checkpoint names its run
    assert "last.ckpt" in fab("runs.show", "--run", run_id).stdout
    table = fab("runs")
    assert run_id in table.stdout and "stopped" in table.stdout


def test_a_run_that_moves_to_another_host_records_both_and_sums_their_cost(native_workspace, pod) -> None:
    """A run stopped on one host and deployed to another (the pod by two names, each with its own folder:
    `user@host:port/dir`), priced per host; deploying it to both at once is refused (one writer per run)."""
    project, remote_dir, values = native_workspace
    hosts = [f"{pod.user}@{name}:{pod.port}{remote_dir}-{name}" for name in ("127.0.0.1", "localhost")]
    prices = "127.0.0.1=2.00"  # the first host by its name; the other falls back to the default price
    run_id = f"two-hosts-{os.getpid()}"  # RUN_ID picks the run: this module's other run may be unfinished
    with open(project / ".env", "a") as env:
        env.write(f"HOST_PRICE_PER_HOUR='0.50,{prices}'\nRUN_ID={run_id}\n")
    storage = Storage.from_settings(load_settings(environ=values))

    def fab(*args: str):
        result = run_fab(*args, cwd=project)
        assert result.returncode == 0, f"fab {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    both = run_fab("deploy-runpod", f"--hosts={','.join(hosts)}", cwd=project)
    assert both.returncode == 1 and "would be 2 writers of one run's checkpoints; set NUM_NODES" in both.stderr
    assert not kinds(storage, run_id), "a refused deploy recorded something"
    try:
        for n, host in enumerate(hosts, start=1):
            assert f"run       {run_id} (RUN_ID;" in fab("deploy-runpod", f"--hosts={host}").stdout
            wait_until(lambda: kinds(storage, run_id).count("started") >= n, 120, f"training started on {host}")
            fab("stop", f"--hosts={host}", "--timeout=30")
    finally:
        for host in hosts:
            folder = host.split(f":{pod.port}", 1)[1]
            for pid in pids_in(folder, "deploy.training"):
                os.kill(pid, signal.SIGKILL)
            os.system(f"rm -rf {shlex.quote(folder)}")
    data = json.loads(fab("runs.show", "--run", run_id, "--json").stdout)
    by_host = {h["host"]: h for h in data["cost"]["hosts"]}
    assert sorted(by_host) == sorted(hosts)
    assert by_host[hosts[0]]["price_per_hour"] == 2.0 and by_host[hosts[1]]["price_per_hour"] == 0.5
    total = sum(h["hours"] * h["price_per_hour"] for h in by_host.values())
    assert data["cost"]["complete"] and data["cost"]["dollars"] == pytest.approx(total) and total > 0
