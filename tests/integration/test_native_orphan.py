"""A native run whose supervisor was killed (kill -9) on the real sshd host: `fab status` says orphaned,
a redeploy's start and `fab stop` stop the orphan, and there is never a second training beside it.

REMOTE_DIR holds a space and a ';' on purpose: every command must quote it, none may run part of it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from deploy.runtimes.native.service import NativeService
from tests.harness.fab import run_fab
from tests.harness.pod import install_supervisor
from tests.harness.waiting import wait_until


def trainings(tag: str) -> list[int]:
    """Pids of the test's training processes (their command line carries ``tag``)."""
    found = subprocess.run(["pgrep", "-f", tag], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found if int(pid) != os.getpid()]


@pytest.fixture
def run_dir(ssh_connection, tmp_path: Path):
    canary = tmp_path / "canary"
    root = Path(f"/tmp/gpu-deploy orphan;touch {canary};{uuid.uuid4().hex[:8]}")
    tag = f"gpu-deploy-orphan-test-{uuid.uuid4().hex}"
    install_supervisor(root / ".gpu-deploy")
    command = ["python3", "-c", "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
               "print('training', flush=True); time.sleep(600)", tag]
    (root / ".gpu-deploy" / "run.json").write_text(json.dumps({"command": command, "backoff": 0.1}))
    yield root, tag, canary
    NativeService(str(root)).stop(ssh_connection, timeout=5)
    for pid in trainings(tag):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


def fab_env(ssh_server, root: Path) -> dict[str, str]:
    return {"RUNPOD_HOST": "127.0.0.1", "RUNPOD_PORT": str(ssh_server.port), "RUNPOD_USER": ssh_server.user,
            "RUNPOD_SSH_KEY": str(ssh_server.client_key), "SSH_KNOWN_HOSTS": str(ssh_server.known_hosts),
            "REMOTE_DIR": str(root)}


def orphan_a_training(conn, root: Path, tag: str) -> int:
    service = NativeService(str(root))
    service.start(conn)
    wait_until(lambda: len(trainings(tag)) == 1 and service.state(conn).running, 20, "the training to start")
    supervisor_pid = int((root / ".gpu-deploy" / "supervisor.pid").read_text())
    os.kill(supervisor_pid, signal.SIGKILL)
    wait_until(lambda: service.state(conn).status == "orphaned", 20, "the state to say orphaned")
    return trainings(tag)[0]


def test_status_says_orphaned_and_a_redeploy_start_replaces_the_orphan(ssh_server, ssh_connection, run_dir) -> None:
    root, tag, canary = run_dir
    orphan = orphan_a_training(ssh_connection, root, tag)
    shown = run_fab("status", env=fab_env(ssh_server, root), timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "orphaned" in shown.stdout and "Traceback" not in shown.stderr

    NativeService(str(root)).start(ssh_connection)  # what a redeploy's start (or --restart) does
    wait_until(lambda: len(trainings(tag)) == 1 and orphan not in trainings(tag), 30, "one new training")
    assert NativeService(str(root)).state(ssh_connection).running
    assert not canary.exists()  # the ';' in REMOTE_DIR was quoted everywhere, never run


def test_fab_stop_stops_an_orphaned_training(ssh_server, ssh_connection, run_dir) -> None:
    root, tag, canary = run_dir
    orphan_a_training(ssh_connection, root, tag)
    stopped = run_fab("stop", "--timeout=10", env=fab_env(ssh_server, root), timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped a training whose supervisor was gone" in stopped.stdout
    assert trainings(tag) == []
    assert NativeService(str(root)).state(ssh_connection).status == "stopped"
    assert not canary.exists()
    assert shlex.quote(str(root)) != str(root)  # the folder really needs quoting
