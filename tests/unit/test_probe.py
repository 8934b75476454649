"""Parsing what the probe printed, and deciding what is missing."""

from __future__ import annotations

from deploy.hosts.probe import Gpu, compose_problems, parse_facts

GPU_HOST = """\
os=Ubuntu 22.04.4 LTS
kernel=5.15.0-105-generic
arch=x86_64
uid=0
cpus=32
mem_kb=263856000
shm_kb=131928000
gpu=NVIDIA A100-SXM4-80GB, 81920, 550.54.15, 3, 1024
gpu=NVIDIA A100-SXM4-80GB, 81920, 550.54.15, [N/A], [N/A]
docker_client=1
docker=26.1.3
compose_v2=2.27.0
runtimes=io.containerd.runc.v2 nvidia runc
compose_v1=
python3=3.10.12
tool=zstd
tool=curl
disk_dir=/workspace
disk_free_kb=524288000
remote_dir_exists=1
"""

POD = """\
os=Ubuntu 22.04.3 LTS
uid=0
gpu=NVIDIA GeForce RTX 4090, 24564, 550.127.05, 0, 1
python3=3.10.12
disk_dir=/workspace
disk_free_kb=20971520
remote_dir_exists=0
"""


def test_parse_a_gpu_host_with_compose_v2() -> None:
    facts = parse_facts(GPU_HOST)
    assert facts.gpus[0] == Gpu("NVIDIA A100-SXM4-80GB", 81920, "550.54.15", 3, 1024)
    assert facts.gpus[1].utilization is None
    assert facts.compose_command == "docker compose"
    assert facts.nvidia_runtime and facts.is_root
    assert facts.tools == {"zstd", "curl"}
    assert compose_problems(facts, image_bytes=12 * 10**9, need_gpu=True) == []
    assert any("A100" in line for line in facts.report())


def test_compose_v1_is_accepted_when_v2_is_missing() -> None:
    facts = parse_facts("docker=20.10.24\ncompose_v1=1.29.2\n")
    assert facts.compose_command == "docker-compose"
    assert "compose   docker-compose 1.29.2" in parse_facts("docker=20.10.24\ncompose_v1=1.29.2\n").report()


def test_a_standalone_docker_compose_v2_is_reported_by_its_command_not_as_v1() -> None:
    """Debian trixie's docker-compose package is Compose 2.26 as a standalone command."""
    facts = parse_facts("docker=26.1.5\ncompose_v1=2.26.1\n")
    assert facts.compose_command == "docker-compose"
    assert "compose   docker-compose 2.26.1" in facts.report() and "v1" not in " ".join(facts.report())


def test_a_pod_without_docker_is_told_plainly() -> None:
    problems = compose_problems(parse_facts(POD))
    assert len(problems) == 1 and "no Docker engine (RunPod pods cannot run Docker)" in problems[0]


def test_gpus_without_the_nvidia_runtime_are_a_problem() -> None:
    facts = parse_facts(GPU_HOST.replace(" nvidia", ""))
    assert any("nvidia-container-toolkit" in p for p in compose_problems(facts, need_gpu=True))


def test_too_little_disk_for_the_image() -> None:
    facts = parse_facts(GPU_HOST.replace("disk_free_kb=524288000", "disk_free_kb=10485760"))
    [problem] = compose_problems(facts, image_bytes=12 * 10**9)
    assert "10.0 GB free at /workspace" in problem
