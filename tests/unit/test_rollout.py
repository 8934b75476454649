"""The compose runtime's plan: what changes on a host, decided from what the host has."""

from __future__ import annotations

from deploy.hosts import HostSpec
from deploy.hosts.envfile import EnvShipment
from deploy.hosts.probe import Gpu, HostFacts
from deploy.runtimes.base import ServiceState
from deploy.runtimes.compose import (GPU_FILE, SERVICE_FILE, DesiredRun, HostState, compose_files, file_digest,
                                     plan_deploy)
from deploy.settings import Secret

SPEC = HostSpec("203.0.113.10", 40022)
ENV = EnvShipment(keys=("AWS_SECRET_ACCESS_KEY", "S3_BUCKET"), _content=Secret("S3_BUCKET=b\nAWS_SECRET_ACCESS_KEY=x\n"))
DESIRED = DesiredRun(image_ref="train:v1", image_id="sha256:" + "a" * 64, remote_dir="/workspace/train", env=ENV)
FACTS = HostFacts(os="Ubuntu", is_root=True, docker="26.1", compose_v2="2.27", tools=frozenset({"zstd", "curl"}),
                  remote_dir_exists=True, disk_free_kb=10**9)


def healthy(facts: HostFacts = FACTS, gpu: bool = False) -> HostState:
    files = {n: file_digest(b) for n, b in compose_files(gpu).items()}
    return HostState(facts=facts, host_image_id=DESIRED.image_id, env_digest=ENV.digest, file_digests=files,
                     service=ServiceState(exists=True, running=True, status="running", image_id=DESIRED.image_id))


def test_a_healthy_host_needs_nothing() -> None:
    plan = plan_deploy(SPEC, DESIRED, healthy())
    assert plan.noop and not plan.problems
    assert any("changes   none" in line for line in plan.describe())


def test_a_fresh_host_gets_every_step_in_order() -> None:
    facts = HostFacts(is_root=True, docker="20.10", compose_v1="1.29.2", tools=frozenset({"apt-get"}),
                      disk_free_kb=10**9)
    state = HostState(facts=facts, host_image_id="", env_digest=None, file_digests={},
                      service=ServiceState(exists=False))
    plan = plan_deploy(SPEC, DESIRED, state)
    assert [s.name for s in plan.steps] == ["create-dir", "install-tools", "write-env", "load-image",
                                            "upload-compose", "start"]
    assert plan.project.command == "docker-compose" and plan.project.files == (SERVICE_FILE,)


def test_plan_shows_key_names_never_values() -> None:
    text = "\n".join(plan_deploy(SPEC, DESIRED, healthy()).describe())
    assert "AWS_SECRET_ACCESS_KEY" in text and "x\n" not in text and "S3_BUCKET=b" not in text


def test_a_gpu_host_adds_the_gpu_file() -> None:
    facts = HostFacts(**{**FACTS.__dict__, "gpus": (Gpu("A100", 81920, "550"),), "runtimes": ("nvidia",)})
    plan = plan_deploy(SPEC, DESIRED, healthy(facts, gpu=False))
    assert plan.project.files == (SERVICE_FILE, GPU_FILE)
    assert [s.name for s in plan.steps] == ["upload-compose", "start"]


def test_a_new_image_is_loaded_and_the_service_recreated() -> None:
    state = healthy()
    state = HostState(**{**state.__dict__, "host_image_id": "sha256:old"})
    assert [s.name for s in plan_deploy(SPEC, DESIRED, state).steps] == ["load-image", "start"]


def test_restart_recreates_even_when_healthy() -> None:
    restart = DesiredRun(**{**DESIRED.__dict__, "restart": True})
    assert [s.name for s in plan_deploy(SPEC, restart, healthy()).steps] == ["restart"]


def test_a_stopped_service_is_started() -> None:
    state = healthy()
    state = HostState(**{**state.__dict__, "service": ServiceState(exists=True, running=False, status="exited")})
    assert [s.name for s in plan_deploy(SPEC, DESIRED, state).steps] == ["start"]


def test_a_pod_without_docker_is_a_problem_not_a_step() -> None:
    facts = HostFacts(is_root=True, python3="3.10", remote_dir_exists=True, tools=frozenset({"zstd", "curl"}))
    state = HostState(facts=facts, host_image_id="", env_digest=None, file_digests={},
                      service=ServiceState(exists=False))
    plan = plan_deploy(SPEC, DESIRED, state)
    assert plan.problems and "RunPod pods cannot run Docker" in plan.problems[0]


def test_a_missing_image_is_a_problem_of_the_compose_plan() -> None:
    missing = DesiredRun(**{**DESIRED.__dict__, "image_problem": "The bucket has no image train:v1; push it first."})
    assert plan_deploy(SPEC, missing, healthy()).problems[0].endswith("push it first.")


def test_too_little_disk_for_a_new_image_is_named() -> None:
    big = DesiredRun(**{**DESIRED.__dict__, "image_bytes": 10**12})
    state = HostState(**{**healthy().__dict__, "host_image_id": ""})
    assert any("GB free" in p for p in plan_deploy(SPEC, big, state).problems)
