"""What the managed-run end-to-end tests share: the control plane with host-network pods, an operator's folder
and settings, a `fab train` process whose output is read as it comes, and the checks every such test ends
with: nothing left billing (API list and containers) and a recorded spend that matches the bills.

Import the fixtures into a test module (``from tests.harness.managed import managed_plane, operator``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from deploy.dev.runpod_server import LABEL, RunPodServer
from deploy.ledger.cost import run_cost
from deploy.ledger.store import read_run
from deploy.settings import Secret, load_settings
from deploy.storage import Storage
from deploy.watch.record import StateStore
from tests.harness.fab import FAB, REPO
from tests.harness.runpod import API_KEY, ssh_key_pair
from tests.harness.waiting import wait_until

MAX_STEPS = 120
TRAIN_COMMAND = (f"python -m deploy.training.demo fit --trainer.max_steps={MAX_STEPS} --trainer.max_epochs=1000 "
                 "--trainer.enable_progress_bar=false --checkpoint.every_n_train_steps=10 "
                 "--checkpoint.save_top_k=-1 --checkpoint.monitor=null --model.step_delay=0.25")
SPEND_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def managed_plane(docker_client, pod_image: str) -> Iterator[RunPodServer]:
    """The control plane; its pods run on the host's network so they reach the S3 server on 127.0.0.1."""
    server = RunPodServer(docker_client, pod_image, api_key=API_KEY, host_network=True, pull_delay=1.0).start()
    yield server
    server.stop()


@pytest.fixture
def operator(tmp_path: Path, managed_plane: RunPodServer, s3_server, s3_bucket: str):
    """The operator's folder and settings: the S3 server, the control plane, a key pair, a short demo run."""
    env = {
        **s3_server.environ(s3_bucket, prefix=f"managed-{uuid.uuid4().hex[:8]}"),
        "RUNPOD_API_BASE_URL": managed_plane.url, "RUNPOD_API_KEY": API_KEY,
        "RUNPOD_SSH_KEY": str(ssh_key_pair(tmp_path)), "SSH_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
        "POD_GPU_TYPES": "NVIDIA L40S,NVIDIA RTX A6000", "POD_VOLUME_GB": "20", "REMOTE_DIR": "/workspace/train",
        "TRAIN_COMMAND": TRAIN_COMMAND, "S3_SYNC_FLUSH_TIMEOUT": "30", "LOST_AFTER_SECONDS": "20",
    }
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("the operator's project\n")
    # No reload comes in a managed run's tests: the pod's training keeps no standby import beside it (a torch
    # import per pod, on the cores every other test shares). The key ships from .env, as a user's would.
    (project / ".env").write_text("WARM_STANDBY=off\n")
    yield project, env
    managed_plane.cleanup()


def storage_for(env: Mapping[str, str]) -> Storage:
    return Storage.from_settings(load_settings(overrides={k: v for k, v in env.items() if k.startswith(("AWS_", "S3_"))}))


class Train:
    """`fab train` (or `fab train.watch RUN`) as a process whose output goes to a file, read as it comes."""

    def __init__(self, project: Path, env: Mapping[str, str], log: Path, *args: str) -> None:
        self.log = log
        self._out = open(log, "w")
        self.proc = subprocess.Popen([FAB, "--search-root", str(REPO), *args], cwd=project, stdout=self._out,
                                     stderr=subprocess.STDOUT, env={**os.environ, **env}, stdin=subprocess.DEVNULL)

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, pattern: str, timeout: float = 420) -> re.Match[str]:
        """The first match of ``pattern`` in the output; fails early when the process ended without it."""
        def found() -> re.Match[str] | None:
            match = re.search(pattern, self.output, re.M)
            if match is None and self.proc.poll() is not None:
                raise AssertionError(f"fab ended (exit {self.proc.returncode}) before {pattern!r}:\n{self.output}")
            return match

        return wait_until(found, timeout=timeout, what=f"{pattern!r} in fab's output", interval=0.5)

    @property
    def run_id(self) -> str:
        return self.wait_for(r"^run       (\S+) ").group(1)

    def interrupt(self, signum: int = signal.SIGINT) -> int:
        self.proc.send_signal(signum)
        return self.wait(60)

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._out.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


def nothing_billing(plane: RunPodServer, docker_client) -> None:
    """No pod in the API's list and no pod container on the machine."""
    assert plane.pods == {}, f"pods left billing: {plane.pods}"
    left = docker_client.containers.list(all=True, filters={"label": f"{LABEL}"})
    mine = [c.name for c in left if c.labels.get(LABEL) == plane._instance]  # noqa: SLF001 - this plane's only
    assert mine == [], f"pod containers left: {mine}"


def recorded_spend(env: Mapping[str, str], run_id: str) -> tuple[float, float]:
    """(the watcher state's spend, the run ledger's cost) for ``run_id``, once the run is over."""
    storage = storage_for(env)
    state, _ = StateStore(storage, run_id, Secret(env["RUNPOD_API_KEY"])).load()
    data = read_run(storage, run_id)
    assert data is not None
    ledger = run_cost(data.events, data.heartbeats).dollars or 0.0
    return state.spend(time.time()), ledger


def spend_matches(plane: RunPodServer, env: Mapping[str, str], run_id: str) -> float:
    """The recorded spend (state and ledger) within 5 % of what RunPod billed for every pod; returns the bill."""
    billed = plane.spend()
    state, ledger = recorded_spend(env, run_id)
    for name, value in (("watcher state", state), ("run ledger", ledger)):
        assert abs(value - billed) <= SPEND_TOLERANCE * billed, (
            f"{name} spend ${value:.5f} vs billed ${billed:.5f}: {plane.bills()}")
    return billed
