"""`fab stop` while a start is still restoring from S3, on a native host over the real sshd and a real bucket.

The issue's case: the run was stopped before (its train.log still ends with that stop's ``saved step 500
on stop`` line), deployed again, and stopped while its entrypoint was downloading the checkpoint. The
training never launched, so nothing new was saved: the stop must say so and name the newest checkpoint
in S3 (what the next start resumes from), not print ``stopped`` alone or the earlier stop's step.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from deploy.runtimes.code.layout import LOG
from deploy.runtimes.native.service import NativeService
from deploy.settings import load_settings
from deploy.storage import Storage
from deploy.training.stop import SAVED_ON_STOP
from tests.harness.fab import run_fab
from tests.harness.pod import install_supervisor
from tests.harness.waiting import wait_until

EARLIER = ("entrypoint: running python -m piper.train fit --ckpt_path=.resume/last.ckpt\n"
           + SAVED_ON_STOP.format(step=500) + ", uploaded to s3://b/p/checkpoints/stop-epoch=3-step=500.ckpt\n")


def restoring(tag: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", tag], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found if int(pid) != os.getpid()]


@pytest.fixture
def run_dir(ssh_connection):
    """A native deploy whose start prints what the entrypoint prints before its download, then downloads."""
    root = Path(f"/tmp/gpu-deploy-restore-{uuid.uuid4().hex[:8]}")
    tag = f"gpu-deploy-restore-test-{uuid.uuid4().hex}"
    install_supervisor(root / ".gpu-deploy")
    command = ["python3", "-c", "import time; print('entrypoint: run r1, attempt 2 claimed on gpu-a', flush=True); "
               "time.sleep(600)", tag]  # SIGTERM ends it as it ends the entrypoint mid-download
    (root / ".gpu-deploy" / "run.json").write_text(json.dumps({"command": command, "backoff": 0.1}))
    (root / LOG).write_text(EARLIER)
    yield root, tag
    NativeService(str(root)).stop(ssh_connection, timeout=5)
    for pid in restoring(tag):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


def test_a_stop_during_the_restore_says_nothing_new_was_saved_and_names_the_newest_checkpoint(
        ssh_server, ssh_connection, run_dir, s3_env: dict[str, str]) -> None:
    root, tag = run_dir
    storage = Storage.from_settings(load_settings(environ=s3_env))
    for step in (480, 500):
        storage.upload_stream(io.BytesIO(b"weights"), storage.key("checkpoints", f"stop-epoch=3-step={step}.ckpt"))
    service = NativeService(str(root))
    service.start(ssh_connection)
    wait_until(lambda: "attempt 2 claimed" in (root / LOG).read_text() and restoring(tag), 20, "the start to restore")

    env = {**s3_env, "RUNPOD_HOST": "127.0.0.1", "RUNPOD_PORT": str(ssh_server.port), "RUNPOD_USER": ssh_server.user,
           "RUNPOD_SSH_KEY": str(ssh_server.client_key), "SSH_KNOWN_HOSTS": str(ssh_server.known_hosts),
           "REMOTE_DIR": str(root), "ENV_FILE": ""}
    stopped = run_fab("stop", "--timeout=10", env=env, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert stopped.stdout.splitlines()[0].endswith(
        ": stopped before the training started (it was restoring from S3); nothing new was saved; the newest "
        "checkpoint in S3 is step 500 (stop-epoch=3-step=500.ckpt)"), stopped.stdout
    assert restoring(tag) == []
