"""The local control plane understands the SDK's actual query text (no Docker: queries that make no pod)."""

from __future__ import annotations

from runpod.api.mutations.pods import generate_pod_deployment_mutation, generate_pod_stop_mutation
from runpod.api.queries.gpus import QUERY_GPU_TYPES, generate_gpu_query
from runpod.api.queries.pods import QUERY_POD, generate_pod_query

from deploy.dev.runpod_server import RunPodServer, _input_fields
from deploy.pods.api import GPU_PRICES_QUERY


def server() -> RunPodServer:
    return RunPodServer(docker_client=None, pod_image="unused")


def test_create_mutation_fields_and_env_are_read_from_the_sdk_text() -> None:
    text = generate_pod_deployment_mutation(
        "gpu-deploy-p-1", "runpod/pytorch:2.4.0", "NVIDIA RTX A6000", "SECURE", True, True, "EU-RO-1", None, 2, 50, 20,
        ports="22/tcp", volume_mount_path="/workspace", env={"PUBLIC_KEY": "ssh-ed25519 AAAA op@laptop"})
    fields, env = _input_fields(text)
    assert fields["gpuTypeId"] == "NVIDIA RTX A6000" and fields["cloudType"] == "SECURE"
    assert fields["gpuCount"] == "2" and fields["dataCenterId"] == "EU-RO-1" and fields["ports"] == "22/tcp"
    assert fields["supportPublicIp"] == "true" and fields["volumeMountPath"] == "/workspace"
    assert env == {"PUBLIC_KEY": "ssh-ed25519 AAAA op@laptop"}


def test_gpu_queries_answer_in_runpods_shape() -> None:
    plane = server()
    listed = plane.answer(QUERY_GPU_TYPES)["data"]["gpuTypes"]
    assert {"id": "NVIDIA L40S", "displayName": "L40S", "memoryInGb": 48}.items() <= listed[1].items()
    one = plane.answer(generate_gpu_query("NVIDIA L40S", 2))["data"]["gpuTypes"]
    assert len(one) == 1 and one[0]["lowestPrice"]["uninterruptablePrice"] == 2 * 0.79
    assert plane.answer(generate_gpu_query("NVIDIA A40"))["data"]["gpuTypes"] == []
    assert plane.answer(GPU_PRICES_QUERY)["data"]["gpuTypes"][0]["securePrice"] == 0.49


def test_pod_queries_answer_null_and_empty_for_unknown_pods() -> None:
    plane = server()
    assert plane.answer(generate_pod_query("nope")) == {"data": {"pod": None}}
    assert plane.answer(QUERY_POD) == {"data": {"myself": {"pods": []}}}
    assert plane.answer(generate_pod_stop_mutation("nope")) == {"errors": [{"message": "Pod not found: nope"}]}
    assert plane.operations == ["pod", "myself", "podStop"]


def test_an_unknown_operation_is_an_error_and_recorded() -> None:
    plane = server()
    answer = plane.answer("query { myself { endpoints { id } } }")
    assert "errors" in answer and plane.mismatches == ["query { myself { endpoints { id } } }"]

