"""Fixtures for the pod tests: the pod image, the local RunPod control plane, an operator's pod settings.

Import them into a test module (``from tests.harness.runpod import pod_image, runpod_server, runpod_env``).
Every pod container a test made is removed after the test, its bills are forgotten and every control and
fault of the server is reset (:meth:`RunPodServer.cleanup`), so no test's fault reaches the next.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.dev.runpod_server import RunPodServer

API_KEY = "rp-test-" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def pod_image(docker_client, base_image: str) -> str:
    """The test pod image (base image + sshd), built once and cached by recipe hash."""
    from deploy.dev.podimage import ensure_pod_image

    return ensure_pod_image(docker_client).tag


@pytest.fixture(scope="session")
def runpod_server(docker_client, pod_image: str) -> Iterator[RunPodServer]:
    """The local control plane for the whole session; stopping it removes every pod container."""
    server = RunPodServer(docker_client, pod_image, api_key=API_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def runpod_host_server(docker_client, pod_image: str) -> Iterator[RunPodServer]:
    """A control plane whose pods run on the host's network: they reach loopback servers (S3, this plane).

    A test that uses it calls ``cleanup()`` when done (``runpod_env`` does that for ``runpod_server`` only).
    """
    server = RunPodServer(docker_client, pod_image, api_key=API_KEY, host_network=True).start()
    yield server
    server.stop()


def ssh_key_pair(folder: Path) -> Path:
    """A fresh ed25519 key pair without a passphrase; returns the private key's path."""
    key = folder / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "operator@test", "-f", str(key)], check=True)
    return key


@pytest.fixture
def runpod_env(runpod_server: RunPodServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """An operator's pod settings pointed at the control plane, exported to the environment (fab sees them)."""
    env = {
        "RUNPOD_API_BASE_URL": runpod_server.url,
        "RUNPOD_API_KEY": API_KEY,
        "RUNPOD_SSH_KEY": str(ssh_key_pair(tmp_path)),
        "SSH_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
        "POD_GPU_TYPES": "NVIDIA L40S,NVIDIA RTX A6000",
        "POD_VOLUME_GB": "20",
        "S3_PREFIX": f"pods-{uuid.uuid4().hex[:8]}",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runpod_server.operations.clear()
    yield env
    runpod_server.cleanup()  # the test's pods and bills, and every fault and control it set
