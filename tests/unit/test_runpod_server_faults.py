"""The local control plane's pod-scoped keys, faults and bills, without Docker (pods that run no container).

A planted pod is EXITED, so answering about it never asks Docker for its container's state.
"""

from __future__ import annotations

import pytest
from runpod.api.mutations.pods import (
    generate_pod_deployment_mutation,
    generate_pod_resume_mutation,
    generate_pod_stop_mutation,
    generate_pod_terminate_mutation,
)
from runpod.api.queries.gpus import QUERY_GPU_TYPES
from runpod.api.queries.pods import QUERY_POD, generate_pod_query

from deploy.dev.runpod_server import (
    INTERNAL_ERROR,
    NOT_AUTHORISED,
    OPERATOR,
    Bill,
    KeyScope,
    RunPodServer,
    ServerPod,
)


def server() -> RunPodServer:
    return RunPodServer(docker_client=None, pod_image="unused", pull_delay=2.0)


def plant(plane: RunPodServer, pod_id: str) -> ServerPod:
    """A stopped pod in the plane's books (no container), with its own key."""
    pod = ServerPod(id=pod_id, name=f"gpu-deploy-{pod_id}", image="runpod/pytorch", gpu=plane.gpus["NVIDIA L40S"],
                    gpu_count=1, cloud_type="ALL", volume_gb=20, container_disk_gb=10, mount="/workspace", env={},
                    api_key=f"rp-pod-key-of-{pod_id}", status="EXITED")
    plane.pods[pod_id] = pod
    return pod


def refused(answer: dict) -> str:
    assert "data" not in answer, answer
    return answer["errors"][0]["message"]


def test_keys_are_the_operators_a_pods_own_or_unknown() -> None:
    plane = server()
    pod = plant(plane, "pod-a")
    assert plane.scope(f"Bearer {plane.api_key}") == OPERATOR
    assert plane.scope(f"Bearer {pod.api_key}") == KeyScope("pod-a")
    assert plane.scope("Bearer rp-pod-key-of-nobody") is None and plane.scope(None) is None
    del plane.pods["pod-a"]  # terminated: RunPod revokes the pod's key with the pod
    assert plane.scope(f"Bearer {pod.api_key}") is None


def test_a_pod_key_reads_only_its_own_pod() -> None:
    plane = server()
    plant(plane, "pod-a")
    plant(plane, "pod-b")
    own = KeyScope("pod-a")
    assert plane.answer(generate_pod_query("pod-a"), own)["data"]["pod"]["id"] == "pod-a"
    assert refused(plane.answer(generate_pod_query("pod-b"), own)) == NOT_AUTHORISED
    assert refused(plane.answer(generate_pod_stop_mutation("pod-b"), own)) == NOT_AUTHORISED
    assert refused(plane.answer(generate_pod_terminate_mutation("pod-b"), own)) == NOT_AUTHORISED
    assert plane.answer(generate_pod_query("pod-b"), OPERATOR)["data"]["pod"]["id"] == "pod-b"


def test_a_pod_key_may_not_list_create_resume_or_read_gpu_types() -> None:
    plane = server()
    plant(plane, "pod-a")
    create = generate_pod_deployment_mutation("x", "runpod/pytorch", "NVIDIA L40S", env={"PUBLIC_KEY": "k"})
    for query in (QUERY_POD, QUERY_GPU_TYPES, create, generate_pod_resume_mutation("pod-a", 1)):
        assert refused(plane.answer(query, KeyScope("pod-a"))) == NOT_AUTHORISED
    assert plane.operations == ["myself", "gpuTypes", "podFindAndDeployOnDemand", "podResume"]
    assert list(plane.pods) == ["pod-a"] and plane.pods["pod-a"].status == "EXITED"


def test_fail_terminate_answers_runpods_internal_error_for_that_pod_and_counts_down() -> None:
    plane = server()
    plant(plane, "pod-a")
    plane.fail_terminate("pod-a", times=2)
    assert refused(plane.answer(generate_pod_terminate_mutation("nope"))) == "Pod not found: nope"  # not pod-a's
    assert refused(plane.answer(generate_pod_terminate_mutation("pod-a"))) == INTERNAL_ERROR
    assert refused(plane.answer(generate_pod_terminate_mutation("pod-a"), KeyScope("pod-a"))) == INTERNAL_ERROR
    assert "pod-a" in plane.pods and plane.operations == ["podTerminate"] * 3


def test_fail_terminate_without_a_pod_fails_the_next_calls_for_any_pod() -> None:
    plane = server()
    plane.fail_terminate(times=1)
    assert refused(plane.answer(generate_pod_terminate_mutation("pod-x"))) == INTERNAL_ERROR
    assert refused(plane.answer(generate_pod_terminate_mutation("pod-x"))) == "Pod not found: pod-x"


@pytest.mark.parametrize("fault", ["fail_terminate", "drop_next_create"])
def test_a_negative_count_is_refused_naming_it(fault: str) -> None:
    with pytest.raises(ValueError, match="times must be 0 or more, got -1"):
        getattr(server(), fault)(times=-1)


def test_cleanup_resets_every_fault_and_control_without_docker() -> None:
    plane = server()
    plane.refuse_capacity("NVIDIA L40S")
    plane.public_ip = False
    plane.set_pull_delay(9.0)
    plane.drop_next_create(times=3)
    plane.fail_terminate(times=5)
    plane.fail_terminate("pod-a", times=5)
    plane.cleanup()
    assert plane._refused == set() and plane.public_ip is True and plane.pull_delay == 2.0
    assert plane._dropped_creates == 0
    assert refused(plane.answer(generate_pod_terminate_mutation("pod-a"))) == "Pod not found: pod-a"


def test_a_bill_charges_its_price_from_creation_to_termination_or_until() -> None:
    running = Bill("pod-a", "gpu-deploy-a", cost_per_hr=0.79, created_at=1000.0)
    ended = Bill("pod-b", "gpu-deploy-b", cost_per_hr=0.33, created_at=1000.0, ended_at=1000.0 + 1800)
    assert running.dollars(until=1000.0 + 3600) == pytest.approx(0.79)
    assert ended.dollars(until=1000.0 + 7200) == pytest.approx(0.33 / 2)  # nothing after termination
    assert ended.dollars(until=1000.0 + 900) == pytest.approx(0.33 / 4)  # nor after ``until``
    assert running.dollars(until=500.0) == 0.0


def test_controls_set_the_faults_and_bills_answers_with_the_bills() -> None:
    plane = server()
    assert plane.control({"action": "fail_terminate", "pod": None, "times": 1}) == {"pods": {}}
    assert refused(plane.answer(generate_pod_terminate_mutation("pod-x"))) == INTERNAL_ERROR
    plane.control({"action": "drop_next_create", "times": 2})
    assert plane._dropped_creates == 2
    plane.control({"action": "reset_faults"})
    assert plane._dropped_creates == 0
    answer = plane.control({"action": "bills"})
    assert answer["bills"] == [] and answer["spend"] == 0.0 and answer["now"] > 0
    with pytest.raises(KeyError):
        plane.control({"action": "kill_sshd", "pod": "nope"})
