"""Fixtures the end-to-end tests share: a RunPod-like pod (an sshd without Docker on its PATH), and an
operator's folder for each runtime, native on that pod and compose on the session's sshd with Docker.

Module-scoped fixtures are made once per test file, as before they moved here.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.deploys import DEMO_TRAIN_COMMAND
from tests.harness.fab import run_fab
from tests.harness.pod import pids_in, pod_bin
from tests.harness.servers import SshServer
from tests.harness.waiting import write_dotenv


@pytest.fixture(scope="module")
def pod(tmp_path_factory, ssh_server) -> Iterator[SshServer]:  # ssh_server: skips (or fails in CI) without sshd
    """A RunPod-like host: an sshd of this machine whose sessions have no docker, compose or containerd."""
    work = tmp_path_factory.mktemp("pod")
    server = SshServer(work / "sshd", path=f"{pod_bin(work / 'bin')}:/usr/sbin:/sbin").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def native_bucket_env(s3_server, s3_bucket: str) -> dict[str, str]:
    return s3_server.environ(s3_bucket, prefix=f"native-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def native_workspace(tmp_path: Path, native_bucket_env: dict[str, str], pod: SshServer):
    """An operator's project folder (code, ignore files, requirements, .env) and a fresh REMOTE_DIR on the pod."""
    remote_root = f"/tmp/gpu-deploy-native-{uuid.uuid4().hex[:8]}"
    remote_dir = f"{remote_root}/run"
    values = {
        **native_bucket_env,
        "RUNPOD_HOST": "127.0.0.1", "RUNPOD_PORT": str(pod.port), "RUNPOD_USER": pod.user,
        "RUNPOD_SSH_KEY": str(pod.client_key), "SSH_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
        "REMOTE_DIR": remote_dir, "TRAIN_COMMAND": DEMO_TRAIN_COMMAND, "NATIVE_PYTHON": sys.executable,
        "S3_SYNC_FLUSH_TIMEOUT": "30", "RUNPOD_API_KEY": "rp-operator-only-secret",
    }
    project = tmp_path / "project"
    (project / "mytrain").mkdir(parents=True)
    (project / "mytrain" / "__init__.py").write_text("VERSION = 1\n")
    (project / "requirements.txt").write_text("python-dotenv>=1.0\n")  # already there: pip installs nothing
    (project / ".gitignore").write_text("outputs/\n*.log\n")
    (project / ".deployignore").write_text("notes.txt\n")
    (project / "notes.txt").write_text("stays here\n")
    (project / "outputs").mkdir()
    (project / "outputs" / "big.bin").write_bytes(bytes(4096))
    write_dotenv(project / ".env", values)
    yield project, remote_dir, values
    supervisor = Path(remote_dir, ".gpu-deploy", "supervisor.pid")
    if supervisor.exists():  # a failed test may leave the run going: end what this test started
        run_fab("stop", "--timeout=5", cwd=project)
    for pid in pids_in(remote_dir, "deploy.training"):
        os.kill(pid, signal.SIGKILL)
    os.system(f"rm -rf {shlex.quote(remote_root)}")


@pytest.fixture(scope="module")
def compose_bucket_env(s3_server, s3_bucket: str, training_image: str, tmp_path_factory) -> dict[str, str]:
    """One corner of the bucket for this module, holding the training image (pushed once)."""
    env = s3_server.environ(s3_bucket, prefix=f"e2e-{uuid.uuid4().hex[:8]}")
    folder = tmp_path_factory.mktemp("push")
    write_dotenv(folder / ".env", {**env, "IMAGE": training_image})
    result = run_fab("image-to-s3", cwd=folder)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return env


@pytest.fixture
def compose_workspace(tmp_path: Path, compose_bucket_env: dict[str, str], ssh_server: SshServer, training_image: str,
                      ssh_connection):
    """An operator's folder with a .env for the session's sshd host (Docker, Compose), and a fresh REMOTE_DIR."""
    remote_root = f"/tmp/gpu-deploy-e2e-{uuid.uuid4().hex[:8]}"
    remote_dir = f"{remote_root}/run-{uuid.uuid4().hex[:6]}"
    values = {
        **compose_bucket_env,
        "RUNPOD_HOST": "127.0.0.1", "RUNPOD_PORT": str(ssh_server.port), "RUNPOD_USER": ssh_server.user,
        "RUNPOD_SSH_KEY": str(ssh_server.client_key), "SSH_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
        "REMOTE_DIR": remote_dir, "IMAGE": training_image, "TRAIN_COMMAND": DEMO_TRAIN_COMMAND,
        "RUNPOD_API_KEY": "rp-operator-only-secret",
    }
    operator = tmp_path / "operator"
    operator.mkdir()
    write_dotenv(operator / ".env", values)
    yield operator, remote_dir, values
    project = "gpu-deploy-" + Path(remote_dir).name
    ssh_connection.run(f"docker ps -aq --filter label=com.docker.compose.project={project} | xargs -r docker rm -f; "
                       f"rm -rf {shlex.quote(remote_root)}", warn=True)
