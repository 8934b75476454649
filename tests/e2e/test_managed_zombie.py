"""A zombie: SSH dead in a pod the API still calls RUNNING, end to end on the local control plane.

The watcher replaces the pod within LOST_AFTER_SECONDS; the old pod, whose terminate keeps failing, trains
on as a zombie. Once the replacement claims the run's lease, the zombie's writes are refused and it stops;
every checkpoint written after the claim is the replacement's. Nothing is left billing and the recorded
spend matches the bills.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from deploy.dev.runpod_server import RunPodServer
from deploy.storage.checkpoints import latest_checkpoint, list_checkpoints
from tests.harness.managed import MAX_STEPS, Train, nothing_billing, spend_matches, storage_for
from tests.harness.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.docker]

FAST = ("--api-every", "1", "--ssh-every", "3", "--timeout", "180")


def checkpoint_at_least(storage, step: int) -> bool:
    newest = latest_checkpoint(storage)
    return bool(newest and (newest.step or 0) >= step)


def test_ssh_dead_in_a_running_pod_is_replaced_and_the_zombie_it_leaves_cannot_write(
        operator, managed_plane: RunPodServer, docker_client, tmp_path: Path) -> None:
    project, env = operator
    env = {**env, "LOST_AFTER_SECONDS": "10"}
    storage = storage_for(env)
    train = Train(project, env, tmp_path / "train.out", "train", *FAST, "--results", str(tmp_path / "results"))
    try:
        run_id = train.run_id
        wait_until(lambda: checkpoint_at_least(storage, 20), timeout=420, what="a checkpoint of step 20 in S3")
        (first,) = managed_plane.pods
        managed_plane.fail_terminate(first, times=10_000)  # the lost pod cannot be ended: it trains on, a zombie
        killed = time.monotonic()
        managed_plane.kill_sshd(first)
        lost = train.wait_for(rf"lost .*pod {first} does not answer over SSH for (\d+) s")
        detected = time.monotonic() - killed
        assert int(lost.group(1)) <= 12 and detected <= 10 + 3 + 8, f"replaced {detected:.0f} s after SSH died"
        zombie = managed_plane.container(first)
        wait_until(lambda: b"superseded" in zombie.exec_run(["cat", "/workspace/train/train.log"]).output,
                   timeout=300, what="the zombie to find its writes refused")
        managed_plane.fail_terminate(first, times=0)        # RunPod takes the terminate again
        code = train.wait(600)
    finally:
        train.kill()
    assert code == 0, train.output
    nothing_billing(managed_plane, docker_client)
    spend_matches(managed_plane, env, run_id)
    lease = json.loads(storage.client.get_object(Bucket=storage.bucket,
                                                 Key=storage.key("runs", run_id, "lease.json"))["Body"].read())
    claimed = lease["claimed"]
    newest = latest_checkpoint(storage)
    assert newest.step == MAX_STEPS
    written = [c for c in list_checkpoints(storage) if c.uploaded and c.uploaded.timestamp() > lease_time(lease)]
    assert written and all(attempt_of(storage, c.key) == claimed for c in written), (
        "a checkpoint written after the replacement's claim came from another attempt")


def lease_time(lease: dict) -> float:
    from deploy.ledger.model import parse_time

    moment = parse_time(lease.get("claimed_at"))
    return moment.timestamp() if moment else 0.0


def attempt_of(storage, key: str) -> int | None:
    info = storage.head(key)
    value = (info.metadata or {}).get("attempt") if info else None
    return int(value) if value else None
