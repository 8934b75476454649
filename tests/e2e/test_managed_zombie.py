"""A zombie: SSH dead in a pod the API still calls RUNNING, end to end on the local control plane.

The watcher replaces the pod within LOST_AFTER_SECONDS; the old pod, whose terminate keeps failing, trains
on as a zombie. Once the replacement claims the run's lease, the zombie's writes are refused and it stops;
every checkpoint written after the claim is the replacement's. Nothing is left billing and the recorded
spend matches the bills.

The zombie's training is held (SIGSTOP) from the moment SSH dies until the replacement has claimed the
run, so on a loaded machine it cannot finish every step before the claim (the replacement would then
resume at the last step and write nothing for the test to check). Its upload helper is a separate
process and is not held: a request it has in flight completes as it would.
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
        zombie = managed_plane.container(first)
        held = signal_training(zombie, "SIGSTOP")
        zombie_attempt = claimed_attempt(storage, run_id)  # read before the lost verdict (10 s) can come
        lost = train.wait_for(rf"lost .*pod {first} does not answer over SSH for (\d+) s")
        detected = time.monotonic() - killed
        assert int(lost.group(1)) <= 12 and detected <= 10 + 3 + 8, f"replaced {detected:.0f} s after SSH died"
        wait_until(lambda: claimed_attempt(storage, run_id) > zombie_attempt,
                   timeout=420, what="the replacement to claim the run")
        signal_training(zombie, "SIGCONT", held)
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


HOLD = """
import os, signal, sys
name, pids = sys.argv[1], [int(p) for p in sys.argv[2:]]
if not pids:  # the training: the parent of every upload helper (python -m deploy.training.transfer)
    for entry in os.listdir("/proc"):
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\\0")
            status = open(f"/proc/{entry}/status").read()
        except OSError:
            continue
        if b"deploy.training.transfer" in cmdline:
            pids.append(int(status.split("PPid:")[1].split()[0]))
for pid in sorted(set(pids)):
    os.kill(pid, getattr(signal, name))
print(" ".join(str(p) for p in sorted(set(pids))))
"""


def signal_training(container, name: str, pids: list[int] = ()) -> list[int]:
    """Send ``name`` to the pod's training processes (``pids``, or the parents of its upload helpers)."""
    result = container.exec_run(["python3", "-c", HOLD, name, *map(str, pids)])
    found = [int(p) for p in result.output.split()] if result.exit_code == 0 else []
    assert found, f"no training to send {name} to: {result.output.decode(errors='replace')}"
    return found


def claimed_attempt(storage, run_id: str) -> int:
    lease = json.loads(storage.client.get_object(Bucket=storage.bucket,
                                                 Key=storage.key("runs", run_id, "lease.json"))["Body"].read())
    return int(lease.get("claimed") or 0)


def lease_time(lease: dict) -> float:
    from deploy.ledger.model import parse_time

    moment = parse_time(lease.get("claimed_at"))
    return moment.timestamp() if moment else 0.0


def attempt_of(storage, key: str) -> int | None:
    info = storage.head(key)
    value = (info.metadata or {}).get("attempt") if info else None
    return int(value) if value else None
