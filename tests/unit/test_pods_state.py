"""The API's pod shapes as records, and the project's pod file that deploy reads when RUNPOD_HOST is unset."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.errors import ConfigError
from deploy.pods import state
from deploy.pods.models import GpuType, Pod

# As RunPod documents `pod(input: {podId})` (the SDK's get_pod fields), once the pod runs.
POD = {
    "id": "o019t372yrbcfp", "name": "gpu-deploy-p-1a2b3c", "desiredStatus": "RUNNING", "costPerHr": 0.79,
    "gpuCount": 1, "imageName": "runpod/pytorch", "uptimeSeconds": 120, "volumeInGb": 50, "containerDiskInGb": 20,
    "machine": {"gpuDisplayName": "L40S"},
    "runtime": {"ports": [
        {"ip": "100.65.0.2", "isIpPublic": False, "privatePort": 8888, "publicPort": 60000, "type": "http"},
        {"ip": "203.0.113.7", "isIpPublic": True, "privatePort": 22, "publicPort": 40122, "type": "tcp"}]},
}


def test_pod_record_reads_the_documented_shape() -> None:
    pod = Pod.from_api(POD)
    assert (pod.id, pod.status, pod.gpu, pod.cost_per_hr, pod.uptime_seconds) == (
        "o019t372yrbcfp", "RUNNING", "L40S", 0.79, 120)
    assert pod.ssh is not None and pod.ssh.host_spec() == "root@203.0.113.7:40122"
    assert pod.to_dict()["ssh"] == "root@203.0.113.7:40122"


def test_runtime_null_means_the_image_is_still_pulling() -> None:
    pod = Pod.from_api({**POD, "runtime": None, "machine": None})
    assert pod.ssh is None and not pod.has_runtime and pod.stage == "starting (pulling the image)"


def test_gpu_type_prices_are_none_where_not_offered() -> None:
    gpu = GpuType.from_api({"id": "NVIDIA H100 80GB HBM3", "displayName": "H100 SXM", "memoryInGb": 80,
                            "secureCloud": True, "communityCloud": False, "securePrice": 2.99, "communityPrice": 1.5})
    assert (gpu.secure_price, gpu.community_price, gpu.price("ALL")) == (2.99, None, 2.99)


def test_the_state_file_gives_deploy_the_running_pods_hosts(tmp_path: Path) -> None:
    assert state.known_hosts(tmp_path) == []
    state.record_pod(tmp_path, Pod.from_api(POD))
    state.record_pod(tmp_path, Pod(id="zz", name="gpu-deploy-p-2", status="RUNNING"))  # no port yet
    assert state.known_hosts(tmp_path) == ["root@203.0.113.7:40122"]
    assert (tmp_path / ".gpu-deploy" / ".gitignore").read_text().endswith("*\n")  # git never offers to commit it
    state.forget_pod(tmp_path, "o019t372yrbcfp")
    assert state.known_hosts(tmp_path) == [] and list(state.load(tmp_path)) == ["zz"]


def test_refresh_drops_pods_the_api_no_longer_knows(tmp_path: Path) -> None:
    state.record_pod(tmp_path, Pod(id="gone", name="gpu-deploy-p-9", status="RUNNING"))
    state.refresh(tmp_path, [Pod.from_api({**POD, "desiredStatus": "EXITED", "runtime": None})])
    assert list(state.load(tmp_path)) == ["o019t372yrbcfp"] and state.known_hosts(tmp_path) == []


def test_a_broken_state_file_is_one_sentence(tmp_path: Path) -> None:
    path = state.state_path(tmp_path)
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"pods.json is not readable JSON .*remove it and run fab pods"):
        state.known_hosts(tmp_path)


def test_deploy_targets_only_this_projects_pods_of_this_run_or_made_by_hand(tmp_path: Path) -> None:
    def running(pod_id: str, port: int) -> Pod:
        return Pod.from_api({**POD, "id": pod_id, "runtime": {"ports": [
            {"ip": "203.0.113.7", "isIpPublic": True, "privatePort": 22, "publicPort": port, "type": "tcp"}]}})

    state.record_pod(tmp_path, running("mine-run", 40001), project="3f2a9c1b", run="r1", made_by="train")
    state.record_pod(tmp_path, running("mine-other-run", 40002), project="3f2a9c1b", run="r0", made_by="train")
    state.record_pod(tmp_path, running("by-hand", 40003), project="3f2a9c1b", made_by="up")
    state.record_pod(tmp_path, running("other-project", 40004), project="0badc0de", run="r1", made_by="train")
    state.record_pod(tmp_path, running("by-hand", 40003))  # a refresh keeps who made it
    hosts = state.known_hosts(tmp_path, project="3f2a9c1b", run="r1")
    assert hosts == ["root@203.0.113.7:40003", "root@203.0.113.7:40001"]
    assert "root@203.0.113.7:40004" not in state.known_hosts(tmp_path, project="3f2a9c1b")
    assert state.recorded_ids(tmp_path, "3f2a9c1b") == {"mine-run", "mine-other-run", "by-hand"}
