"""The training image and the compose files, on the real Docker engine and docker-compose here."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from deploy.training.callbacks import DEFAULT_FLUSH_TIMEOUT
from tests.conftest import need
from tests.harness.badnet import Blackhole
from tests.harness.training_runs import REPO, local_checkpoints, object_sha256, sha256_file, storage_for
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.docker
COMPOSE_FILES = ("docker-compose.runpod.yml", "docker-compose.train.yml", "docker-compose.gpu.yml")


def compose_bin() -> str:
    found = shutil.which("docker-compose")
    need(found is not None, "docker-compose")
    return str(found)


def project_dir(tmp_path: Path, env: dict[str, str]) -> Path:
    """REMOTE_DIR as deploy leaves it: the compose files and a .env (mode 0600)."""
    for name in COMPOSE_FILES:
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "docker").mkdir(exist_ok=True)
    dotenv = tmp_path / ".env"
    dotenv.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    dotenv.chmod(0o600)
    return tmp_path


def config(directory: Path, *files: str) -> dict:
    args = [compose_bin()] + [a for f in files for a in ("-f", f)] + ["config"]
    proc = subprocess.run(args, cwd=directory, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_compose_files_are_valid_and_add_the_gpu_only_on_request(tmp_path: Path) -> None:
    directory = project_dir(tmp_path, {"IMAGE": "example/train:1"})
    for main in ("docker-compose.runpod.yml", "docker-compose.train.yml"):
        plain = config(directory, main)["services"]["train"]
        assert plain["image"] == "example/train:1"
        assert "deploy" not in plain  # runs on a host without a GPU
        gpu = config(directory, main, "docker-compose.gpu.yml")["services"]["train"]
        devices = gpu["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
        grace = plain["stop_grace_period"]
        assert grace.endswith("s") and int(grace[:-1]) > DEFAULT_FLUSH_TIMEOUT
        mounts = _volumes(plain)
        # The remote service runs REMOTE_DIR itself (code, lightning_logs); the local file mounts lightning_logs.
        workspace = "" if main == "docker-compose.runpod.yml" else "/lightning_logs"
        assert f"{directory}{workspace}:/workspace{workspace}:rw" in mounts
        assert f"{directory}/data:/workspace/data:ro" in mounts
    remote = config(directory, "docker-compose.runpod.yml")["services"]["train"]
    assert remote["environment"]["ENABLE_S3_SYNC"] == "1" and remote["environment"]["CHECKPOINT"] == "s3"
    assert remote["restart"] and remote["shm_size"] and remote["network_mode"] == "host"


def _volumes(service: dict) -> list[str]:
    """Mounts as ``source:target:mode`` (1.29 prints strings; Compose v2 prints mappings)."""
    return [v if isinstance(v, str) else f"{v['source']}:{v['target']}:" + ("ro" if v.get("read_only") else "rw")
            for v in service.get("volumes", [])]


@pytest.mark.slow
def test_image_trains_under_the_runpod_compose_file_without_a_gpu_and_syncs_to_s3(
        training_image: str, s3_env: dict[str, str], tmp_path: Path) -> None:
    # training_image (conftest): docker/Dockerfile built on the test base image with no network.
    command = ("python -m deploy.training.demo fit --trainer.max_epochs=2 --trainer.enable_progress_bar=false "
               "--checkpoint.every_n_train_steps=5 --checkpoint.save_top_k=-1 --checkpoint.monitor=null")
    directory = project_dir(tmp_path, {**s3_env, "IMAGE": training_image, "TRAIN_COMMAND": command})
    project = f"gpu-deploy-test-train-{uuid.uuid4().hex[:8]}"
    base = [compose_bin(), "-p", project, "-f", "docker-compose.runpod.yml"]
    try:
        # `up` stays attached until the service exits: a finished run exits 0 and is not restarted.
        up = subprocess.run([*base, "up", "--no-color"], cwd=directory, capture_output=True, text=True, timeout=300)
        code = subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}}", f"{project}_train_1"],
                              capture_output=True, text=True).stdout.strip()
    finally:
        subprocess.run([*base, "down", "-v", "--remove-orphans"], cwd=directory, capture_output=True, timeout=120)
    assert code == "0", up.stdout[-3000:] + up.stderr[-2000:]
    assert "no checkpoint in" in up.stdout and "starting fresh" in up.stdout  # CHECKPOINT=s3, empty bucket

    storage = storage_for()
    local = local_checkpoints(directory / "lightning_logs")
    stored = {o.name: o for o in storage.list(storage.key("checkpoints") + "/", with_metadata=True)}
    assert local and set(stored) == set(local)
    for name, path in local.items():
        assert object_sha256(storage, stored[name].key) == sha256_file(path) == stored[name].sha256
    assert any(o.name == "hparams.yaml" for o in storage.list(storage.key("logs") + "/"))


@pytest.mark.slow
def test_a_stop_while_the_entrypoint_waits_on_s3_ends_it_at_once_with_sigterm(
        training_image: str, s3_env: dict[str, str], tmp_path: Path, docker_client) -> None:
    """The entrypoint is process 1 in the container, which ignores a signal it has no handler for: a stop before the
    training runs (the resume's download here, from an endpoint that never answers) must still end it with SIGTERM,
    not after the 120 s grace period with SIGKILL (exit 137)."""
    project = f"gpu-deploy-test-stop-{uuid.uuid4().hex[:8]}"
    base = [compose_bin(), "-p", project, "-f", "docker-compose.runpod.yml"]
    with Blackhole() as stuck:
        directory = project_dir(tmp_path, {**s3_env, "AWS_ENDPOINT_URL": stuck.url, "IMAGE": training_image})
        try:
            subprocess.run([*base, "up", "-d", "--no-color"], cwd=directory, check=True, capture_output=True,
                           timeout=120)
            wait_until(lambda: stuck.accepted, 60, "the entrypoint to wait on S3")  # its handler is in place by then
            stop = subprocess.run([*base, "stop"], cwd=directory, capture_output=True, text=True, timeout=300)
            label = f"com.docker.compose.project={project}"
            (container,) = docker_client.containers.list(all=True, filters={"label": label})
            state, logs = container.attrs["State"], container.logs().decode()
        finally:
            subprocess.run([*base, "down", "-v", "--remove-orphans"], cwd=directory, capture_output=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert state["ExitCode"] == 143 and not state["OOMKilled"], (state, logs[-2000:])
    assert "entrypoint: stopped (SIGTERM) while no training was running" in logs
