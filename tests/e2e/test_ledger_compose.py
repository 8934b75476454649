"""The run ledger with the compose runtime: the container's training records its start and exit, and writes
its heartbeat to REMOTE_DIR/lightning_logs on the host and to the bucket, as the native runtime does."""

from __future__ import annotations

import json

import pytest

from deploy.ledger.index import list_runs
from deploy.ledger.store import read_run
from tests.harness.deploys import storage_of
from tests.harness.fab import run_fab
from tests.harness.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_compose_training_records_start_heartbeat_and_exit(compose_workspace, ssh_connection) -> None:
    operator, remote_dir, values = compose_workspace
    storage = storage_of(values)

    def fab(*args: str):
        result = run_fab(*args, cwd=operator)
        assert result.returncode == 0, f"fab {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    fab("deploy-runpod")
    (run_id,) = [r["run_id"] for r in list_runs(storage)]

    def recorded() -> bool:
        run = read_run(storage, run_id)
        return bool(run and {"deployed", "started"} <= {e.kind for e in run.events} and run.heartbeats)

    wait_until(recorded, 180, "the container's started event and heartbeat in the bucket")
    beat = wait_until(lambda: json.loads(ssh_connection.run(
        f"cat {remote_dir}/lightning_logs/heartbeat.json 2>/dev/null || echo '{{}}'", hide=True).stdout or "{}")
        .get("step"), 120, "a heartbeat with a step on the host")
    assert beat > 0
    status = fab("status")
    assert f"run         {run_id}: running" in status.stdout and "progress    step " in status.stdout
    fab("stop")
    run = read_run(storage, run_id)
    kinds = [e.kind for e in run.events]
    assert sorted(kinds[-2:]) == ["exited", "stopped"]  # the training's exit and fab stop's event, either order
    exited = [e for e in run.events if e.kind == "exited"]
    assert exited[-1].data["code"] == 143 and exited[-1].host == run.events[0].host
