"""fab pods.* against the local RunPod control plane, whose pods are real containers with sshd and torch.

The runpod SDK talks to the control plane over HTTP (RUNPOD_API_BASE_URL); pods are reached over SSH
on their published port, as on RunPod.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from deploy.dev.runpod_server import RunPodServer
from deploy.hosts import HostOptions, HostSpec, connect
from deploy.pods import state
from deploy.pods.api import PodApi
from deploy.pods.lifecycle import bring_up
from deploy.settings import load_settings
from deploy.storage import Storage
from tests.harness.fab import run_fab

pytestmark = pytest.mark.docker


def fab(*args: str, **env: str):
    return run_fab(*args, env=env, timeout=300)


def up(*args: str, **env: str) -> tuple[str, str]:
    """fab pods.up; returns (pod id, RUNPOD_HOST value)."""
    result = fab("pods.up", "--timeout", "90", *args, **env)
    assert result.returncode == 0, result.stderr + result.stdout
    pod_id = re.search(r"Pod (\w+) is up", result.stdout).group(1)
    host = re.search(r"^RUNPOD_HOST=(\S+)$", result.stdout, re.M).group(1)
    return pod_id, host


def test_up_creates_a_pod_whose_ssh_runs_torch_and_deploy_can_find_it(
        runpod_server: RunPodServer, runpod_env: dict[str, str], tmp_path: Path) -> None:
    runpod_server.set_pull_delay(3.0)
    result = fab("pods.up", "--timeout", "90")
    assert result.returncode == 0, result.stderr + result.stdout
    assert re.search(r"^\s+0 s  \w+: starting \(pulling the image\)$", result.stdout, re.M)
    assert re.search(r"^\s+\d+ s  \w+: running, SSH at 127\.0\.0\.1:\d+$", result.stdout, re.M)
    host = re.search(r"^RUNPOD_HOST=(root@127\.0\.0\.1:\d+)$", result.stdout, re.M).group(1)
    assert state.known_hosts(tmp_path) == [host]

    options = HostOptions(key_file=runpod_env["RUNPOD_SSH_KEY"], known_hosts=runpod_env["SSH_KNOWN_HOSTS"])
    with connect(HostSpec.parse(host), options) as conn:
        torch = conn.run("python3 -c 'import torch; print(torch.__version__)'", hide=True, warn=True)
        docker = conn.run("command -v docker || echo none", hide=True, warn=True)
    assert torch.ok and torch.stdout.startswith("2."), torch.stderr
    assert docker.stdout.strip() == "none"
    pod = next(iter(runpod_server.pods.values()))
    assert re.fullmatch(r"gpu-deploy-[0-9a-f]{8}-up-[0-9a-f]{8}", pod.name), pod.name  # this project's id, exactly
    assert pod.mount == "/workspace" and pod.gpu.id == "NVIDIA L40S"


def test_up_falls_back_to_the_next_gpu_type_without_capacity(runpod_server: RunPodServer,
                                                             runpod_env: dict[str, str]) -> None:
    runpod_server.refuse_capacity("NVIDIA L40S")
    result = fab("pods.up", "--timeout", "90")
    assert result.returncode == 0, result.stderr
    assert "no capacity for 1 x NVIDIA L40S (all cloud)" in result.stdout
    assert "1 x RTX A6000, $0.33/h" in result.stdout
    assert [p.gpu.id for p in runpod_server.pods.values()] == ["NVIDIA RTX A6000"]


def test_dry_run_plans_and_creates_nothing(runpod_server: RunPodServer, runpod_env: dict[str, str]) -> None:
    result = fab("pods.up", "--dry-run", MAX_PRICE_PER_HOUR="0.50")
    assert result.returncode == 0, result.stderr
    assert "try 1: 1 x NVIDIA RTX A6000 (all cloud) at $0.33/h" in result.stdout
    assert "skip: NVIDIA L40S costs $0.79/h, above MAX_PRICE_PER_HOUR=$0.50" in result.stdout
    assert runpod_server.pods == {} and "podFindAndDeployOnDemand" not in runpod_server.operations


def test_pods_lists_the_projects_pods_with_cost_and_stopped_volume_billing(
        runpod_server: RunPodServer, runpod_env: dict[str, str]) -> None:
    pod_id, host = up()
    listed = json.loads(fab("pods", "--json").stdout)
    assert [(p["id"], p["status"], p["gpu"], p["cost_per_hour"], p["ssh"]) for p in listed] == [
        (pod_id, "RUNNING", "L40S", 0.79, host)]
    assert listed[0]["spend_so_far"] == pytest.approx(listed[0]["uptime_seconds"] / 3600 * 0.79, abs=1e-3)
    other = fab("pods", "--json", S3_PREFIX="another-project")
    assert json.loads(other.stdout) == []

    stopped = fab("pods.down", "--stop", "--pod", pod_id)
    assert stopped.returncode == 0 and f"Pod {pod_id} stopped." in stopped.stdout
    table = fab("pods").stdout
    assert re.search(rf"{pod_id}\s+\S+\s+made by hand \(fab pods\.up\)\s+stopped\s", table), table
    assert f"1 stopped pod(s) still bill their volume: $0.13/day ({pod_id})" in table  # 20 GB x $0.20 / 30


def test_gpus_lists_types_with_memory_and_prices(runpod_server: RunPodServer, runpod_env: dict[str, str]) -> None:
    gpus = {g["id"]: g for g in json.loads(fab("pods.gpus", "--json").stdout)}
    assert gpus["NVIDIA L40S"] == {"id": "NVIDIA L40S", "name": "L40S", "memory_gb": 48, "secure_per_hour": 0.86,
                                   "community_per_hour": 0.79}
    assert gpus["NVIDIA H100 80GB HBM3"]["community_per_hour"] is None


def test_down_terminates_a_pod_whose_checkpoints_are_in_s3(runpod_server: RunPodServer, runpod_env: dict[str, str],
                                                            s3_env: dict[str, str], tmp_path: Path) -> None:
    pod_id, _ = up()
    container_id = runpod_server.pods[pod_id].container_id
    result = fab("pods.down")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "checkpoints: there is no checkpoint in S3" in result.stdout and f"Pod {pod_id} terminated." in result.stdout
    assert runpod_server.pods == {} and state.known_hosts(tmp_path) == []
    assert container_id not in {c.id for c in runpod_server.docker.containers.list(all=True)}


def test_down_refuses_while_the_pods_newest_checkpoint_is_not_in_s3(
        runpod_server: RunPodServer, runpod_env: dict[str, str], s3_env: dict[str, str], tmp_path: Path) -> None:
    storage = Storage.from_settings(load_settings())
    local = tmp_path / "epoch=0-step=10.ckpt"
    local.write_bytes(b"checkpoint")
    storage.upload_file(local, storage.key("checkpoints", local.name), metadata={"epoch": "0", "step": "10"})
    pod_id, _ = up()
    folder = "/workspace/train/lightning_logs/version_0/checkpoints"
    runpod_server.container(pod_id).exec_run(["sh", "-c", f"mkdir -p {folder} && echo x > '{folder}/epoch=1-step=20.ckpt'"])

    dry = fab("pods.down", "--dry-run")
    assert dry.returncode == 0 and "Dry run: Not terminating" in dry.stdout
    refused = fab("pods.down")
    assert refused.returncode == 1 and runpod_server.pods
    assert re.fullmatch(
        rf"Error: Not terminating pod {pod_id}: the newest checkpoint on the pod \(step 20\) is not in S3 \(the newest "
        r"checkpoint in S3 is step 10, uploaded (less than a minute|\d+ min) ago\); wait for the upload, or pass "
        r"--force to terminate it anyway\.\n", refused.stderr)
    forced = fab("pods.down", "--force")
    assert forced.returncode == 0 and runpod_server.pods == {}


def test_down_refuses_a_stopped_pod_whose_checkpoints_cannot_be_read(
        runpod_server: RunPodServer, runpod_env: dict[str, str], s3_env: dict[str, str]) -> None:
    pod_id, _ = up()
    assert fab("pods.down", "--stop").returncode == 0
    message = one_sentence(fab("pods.down"))
    assert message == (f"Error: Not terminating pod {pod_id}: the pod is stopped, so its checkpoints cannot be compared "
                       "with S3 (there is no checkpoint in S3); resume it in RunPod's console to check, or pass --force "
                       "to terminate it anyway.")
    assert fab("pods.down", "--force").returncode == 0 and runpod_server.pods == {}


def test_lost_pods_look_as_runpod_reports_them(runpod_server: RunPodServer, runpod_env: dict[str, str],
                                              tmp_path: Path) -> None:
    # What a watcher sees: a reclaimed pod is stopped (EXITED, no runtime); a failed machine leaves it RUNNING
    # without a runtime.
    settings = load_settings()
    api = PodApi(settings.runpod_api_key)
    reclaimed = bring_up(settings, tmp_path, timeout=60, progress=lambda line: None).pod
    failed = bring_up(settings, tmp_path, timeout=60, progress=lambda line: None).pod
    runpod_server.lose_pod(reclaimed.id, how="exited")
    runpod_server.lose_pod(failed.id, how="vanished")
    after = {pod.id: pod for pod in api.pods()}
    assert (after[reclaimed.id].status, after[reclaimed.id].has_runtime, after[reclaimed.id].stage) == (
        "EXITED", False, "stopped")
    assert (after[failed.id].status, after[failed.id].has_runtime, after[failed.id].ssh) == ("RUNNING", False, None)
    assert runpod_server.container(failed.id).status != "running"
    table = fab("pods").stdout
    assert re.search(rf"{failed.id}\s+\S+\s+made by hand \(fab pods\.up\)\s+no runtime \(starting, or its machine "
                     r"is down\)", table), table


# ----------------------------------------------------------------------------- bad input: one sentence each


def one_sentence(result) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    return result.stderr.strip()


def test_missing_api_key(runpod_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNPOD_API_KEY")
    assert one_sentence(fab("pods")).startswith("Error: Missing settings: RUNPOD_API_KEY (no .env file at .env); set "
                                                "them in the .env file, the environment or with flags (RUNPOD_API_KEY: "
                                                "create one in RunPod's console under Settings > API Keys).")


def test_wrong_api_key_is_refused_without_showing_it(runpod_env: dict[str, str]) -> None:
    message = one_sentence(fab("pods.gpus", RUNPOD_API_KEY="rp-wrong-key-123"))
    assert message.startswith("Error: RunPod refused the API key (401 from http://127.0.0.1:")
    assert message.endswith("; check RUNPOD_API_KEY (from the environment) in RunPod's console under Settings > "
                            "API Keys.")
    assert "rp-wrong-key-123" not in message


def test_unknown_gpu_type(runpod_env: dict[str, str]) -> None:
    message = one_sentence(fab("pods.up", POD_GPU_TYPES="NVIDIA L40S,NVIDIA A40"))
    assert message == "Error: Unknown GPU type in POD_GPU_TYPES: NVIDIA A40; fab pods.gpus lists the types RunPod offers."


def test_no_capacity_anywhere(runpod_server: RunPodServer, runpod_env: dict[str, str]) -> None:
    runpod_server.refuse_capacity("NVIDIA L40S")
    runpod_server.refuse_capacity("NVIDIA RTX A6000")
    message = one_sentence(fab("pods.up", POD_DATA_CENTERS="EU-RO-1"))
    assert message.startswith("Error: RunPod has no capacity for any GPU type tried: 1 x NVIDIA L40S (all cloud in "
                              "EU-RO-1); 1 x NVIDIA RTX A6000 (all cloud in EU-RO-1); add types to POD_GPU_TYPES")
    assert runpod_server.pods == {}


def test_a_pod_that_never_gets_a_public_port_times_out(runpod_server: RunPodServer, runpod_env: dict[str, str]) -> None:
    runpod_server.public_ip = False
    result = fab("pods.up", "--timeout", "4")
    message = one_sentence(result)
    assert re.fullmatch(r"Error: Pod (\w+) has no public SSH port after 4 s \(it is running, no public SSH port "
                        r"yet\); wait longer with --timeout, or remove it with fab pods.down --pod \1\.", message)
    assert "running, no public SSH port yet" in result.stdout


def test_pods_on_the_host_network_reach_loopback_servers(docker_client, pod_image: str, runpod_env: dict[str, str],
                                                          s3_server, monkeypatch: pytest.MonkeyPatch) -> None:
    # The managed-run tests train on a pod against the test S3 server, which listens on 127.0.0.1 only.
    server = RunPodServer(docker_client, pod_image, api_key=runpod_env["RUNPOD_API_KEY"], host_network=True).start()
    try:
        monkeypatch.setenv("RUNPOD_API_BASE_URL", server.url)
        _, host = up()
        options = HostOptions(key_file=runpod_env["RUNPOD_SSH_KEY"], known_hosts=runpod_env["SSH_KNOWN_HOSTS"])
        probe = f"import urllib.request; print(urllib.request.urlopen('{s3_server.endpoint_url}/moto-api/').status)"
        with connect(HostSpec.parse(host), options) as conn:
            result = conn.run(f'python3 -c "{probe}"', hide=True, warn=True)
        assert result.stdout.strip() == "200", result.stderr
    finally:
        server.stop()
