"""The pure pod decisions: fallback order, price cap, names, cost, whether a pod's volume may go."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.errors import ConfigError
from deploy.pods.models import EXITED, RUNNING, GpuType, Pod, PodError
from deploy.pods.naming import belongs, parse_pod_name, pod_name, project_id
from deploy.pods.plan import (PodOptions, choose_pod, find_gpu, is_capacity_error, judge_termination,
                              plan_up, project_pods, read_public_key, spend_so_far,
                              stopped_volume_per_day)
from deploy.settings import load_settings

GPUS = [
    GpuType("NVIDIA L40S", "L40S", 48, secure_price=0.86, community_price=0.79),
    GpuType("NVIDIA RTX A6000", "RTX A6000", 48, secure_price=0.49, community_price=0.33),
    GpuType("NVIDIA H100 80GB HBM3", "H100 SXM", 80, secure_price=2.99, community_price=None),
]
KEY = "ssh-ed25519 bm90LWEtcmVhbC1rZXk= operator@laptop"  # the shape of a public key line, not a key


def options(**kw) -> PodOptions:
    return PodOptions(**{"gpu_types": ("NVIDIA L40S", "NVIDIA RTX A6000"), "image": "img", **kw})


def test_attempts_follow_the_gpu_list_then_the_data_centers() -> None:
    plan = plan_up(options(data_centers=("EU-RO-1", "US-TX-3")), GPUS, "gpu-deploy-p-1", KEY)
    assert [(a.gpu_type, a.data_center) for a in plan.attempts] == [
        ("NVIDIA L40S", "EU-RO-1"), ("NVIDIA L40S", "US-TX-3"),
        ("NVIDIA RTX A6000", "EU-RO-1"), ("NVIDIA RTX A6000", "US-TX-3")]
    assert all(a.ports == "22/tcp" and a.public_key == KEY and a.volume_mount_path == "/workspace"
               for a in plan.attempts)


def test_any_data_center_when_none_is_named() -> None:
    plan = plan_up(options(), GPUS, "n", KEY)
    assert [a.data_center for a in plan.attempts] == [None, None]


def test_gpu_types_match_by_id_or_display_name_ignoring_case() -> None:
    assert find_gpu(GPUS, "rtx a6000").id == "NVIDIA RTX A6000"
    assert find_gpu(GPUS, "nvidia l40s").id == "NVIDIA L40S"
    assert find_gpu(GPUS, "A40") is None


def test_unknown_gpu_type_is_one_sentence_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"Unknown GPU type in POD_GPU_TYPES: NVIDIA A40; fab pods.gpus"):
        plan_up(options(gpu_types=("NVIDIA A40", "NVIDIA L40S")), GPUS, "n", KEY)


def test_price_cap_skips_types_above_it_and_says_which() -> None:
    plan = plan_up(options(max_price_per_hour=0.50, cloud_type="SECURE"), GPUS, "n", KEY)
    assert [a.gpu_type for a in plan.attempts] == ["NVIDIA RTX A6000"]
    assert plan.refused == ("NVIDIA L40S costs $0.86/h, above MAX_PRICE_PER_HOUR=$0.50",)
    assert "skip: NVIDIA L40S costs $0.86/h" in "\n".join(plan.lines())


def test_price_cap_counts_every_gpu_of_the_pod() -> None:
    with pytest.raises(PodError, match=r"NVIDIA RTX A6000 costs \$1.32/h, above MAX_PRICE_PER_HOUR=\$1.00"):
        plan_up(options(gpu_types=("NVIDIA RTX A6000",), gpu_count=4, cloud_type="COMMUNITY",
                        max_price_per_hour=1.0), GPUS, "n", KEY)


def test_type_not_offered_on_the_cloud_is_skipped() -> None:
    with pytest.raises(PodError, match="NVIDIA H100 80GB HBM3 is not offered on the community cloud"):
        plan_up(options(gpu_types=("NVIDIA H100 80GB HBM3",), cloud_type="COMMUNITY"), GPUS, "n", KEY)


def test_all_cloud_takes_the_cheaper_price() -> None:
    assert plan_up(options(), GPUS, "n", KEY).prices == (0.79, 0.33)


def test_options_from_settings_split_the_lists() -> None:
    settings = load_settings(overrides={"POD_GPU_TYPES": "NVIDIA L40S, NVIDIA RTX A6000,", "POD_DATA_CENTERS": "EU-RO-1",
                                        "MAX_PRICE_PER_HOUR": "$1.20"}, environ={})
    opts = PodOptions.from_settings(settings)
    assert opts.gpu_types == ("NVIDIA L40S", "NVIDIA RTX A6000") and opts.data_centers == ("EU-RO-1",)
    assert opts.max_price_per_hour == 1.2 and opts.volume_gb == 50 and opts.gpu_count == 1


def test_bad_price_setting_names_the_key() -> None:
    with pytest.raises(ConfigError, match="MAX_PRICE_PER_HOUR from flag must be a price in dollars"):
        load_settings(overrides={"MAX_PRICE_PER_HOUR": "cheap"}, environ={})


def test_capacity_errors_are_told_from_other_refusals() -> None:
    assert is_capacity_error("There are no longer any instances available with the requested specifications. "
                             "Please refresh and try again.")
    assert is_capacity_error("There are no longer any instances available with enough disk space.")
    assert is_capacity_error("This machine does not have the resources to deploy your pod.")
    assert not is_capacity_error("Invalid GPU type: NVIDIA A40")


def test_the_project_id_is_the_bucket_and_prefix_exactly() -> None:
    from deploy.settings import load_settings

    piper = project_id(load_settings(overrides={"S3_BUCKET": "bucket-1", "S3_PREFIX": "piper"}, environ={}))
    piper_v2 = project_id(load_settings(overrides={"S3_BUCKET": "bucket-1", "S3_PREFIX": "piper-v2"}, environ={}))
    other_bucket = project_id(load_settings(overrides={"S3_BUCKET": "bucket-2", "S3_PREFIX": "piper"}, environ={}))
    assert len({piper, piper_v2, other_bucket}) == 3 and len(piper) == 8
    assert piper == project_id(load_settings(overrides={"S3_BUCKET": "bucket-1", "S3_PREFIX": "piper"}, environ={}))


def test_pod_names_parse_back_exactly_and_never_by_prefix() -> None:
    name = pod_name("3f2a9c1b", "20261130-060215-a1b2", 12)
    assert name == "gpu-deploy-3f2a9c1b-run-20261130-060215-a1b2-12"
    parsed = parse_pod_name(name)
    assert (parsed.project, parsed.kind, parsed.run_id, parsed.attempt) == ("3f2a9c1b", "run", "20261130-060215-a1b2", 12)
    assert belongs(name, "3f2a9c1b") and belongs(name, "3f2a9c1b", "20261130-060215-a1b2")
    assert not belongs(name, "3f2a9c1c") and not belongs(name, "3f2a9c1b", "20261130-060215-a1b")
    for stranger in ("gpu-deploy-piper-v2-ab12cd", "gpu-deploy-3f2a9c1b-", "gpu-deploy-3f2a9c1bb-run-r-1",
                     "gpu-deploy-3f2a9c1b-run-r", "xgpu-deploy-3f2a9c1b-up-12345678", "gpu-deploy-3f2a9c1b-up-1234"):
        assert not belongs(stranger, "3f2a9c1b"), stranger


def pod(pod_id: str, name: str, status: str = RUNNING, **kw) -> Pod:
    return Pod(id=pod_id, name=name, status=status, **kw)


P = "3f2a9c1b"


def test_only_the_projects_pods_are_listed() -> None:
    pods = [pod("b", f"gpu-deploy-{P}-run-r1-2"), pod("x", "someone-else"), pod("a", f"gpu-deploy-{P}-up-0a1b2c3d"),
            pod("c", "gpu-deploy-3f2a9c1c-run-r1-1"), pod("d", f"gpu-deploy-{P}x-run-r1-1"),
            pod("e", "an-old-name-recorded-at-create")]
    assert {p.id for p in project_pods(pods, P)} == {"a", "b"}
    assert {p.id for p in project_pods(pods, P, recorded={"e"})} == {"a", "b", "e"}


def test_spend_is_uptime_times_price_and_stopped_pods_bill_their_volume() -> None:
    running = pod("a", "n", uptime_seconds=5400, cost_per_hr=0.86, volume_gb=100)
    stopped = pod("b", "n", status=EXITED, cost_per_hr=0.86, volume_gb=150)
    assert spend_so_far(running) == pytest.approx(1.29)
    assert stopped_volume_per_day(running) == 0.0
    assert stopped_volume_per_day(stopped) == pytest.approx(1.0)  # 150 GB x $0.20/GB-month / 30 days


def test_down_picks_the_named_pod_or_the_only_one() -> None:
    pods = [pod("a", f"gpu-deploy-{P}-run-r-1"), pod("b", f"gpu-deploy-{P}-run-r-2"), pod("z", "other")]
    assert choose_pod(pods, "b", P).id == "b"
    assert choose_pod(pods, f"gpu-deploy-{P}-run-r-1", P).id == "a"
    assert choose_pod(pods[:1], None, P).id == "a"
    with pytest.raises(PodError, match=r"2 pods \(a, b\); name the one"):
        choose_pod(pods, None, P)
    with pytest.raises(PodError, match="no pods"):
        choose_pod(pods[2:], None, P)
    with pytest.raises(PodError, match="No pod q in this RunPod account"):
        choose_pod(pods, "q", P)


def test_termination_is_safe_when_s3_has_the_newest_step() -> None:
    verdict = judge_termination(([10, 20], 0), 20, "5 min ago")
    assert verdict.safe and verdict.reason == "the newest checkpoint in S3 is step 20, uploaded 5 min ago"


def test_termination_is_refused_for_a_newer_step_on_the_pod() -> None:
    verdict = judge_termination(([10, 30], 0), 20, "5 min ago")
    assert not verdict.safe
    assert verdict.reason == ("the newest checkpoint on the pod (step 30) is not in S3 (the newest checkpoint in S3 "
                              "is step 20, uploaded 5 min ago)")


def test_termination_is_refused_while_uploads_are_staged() -> None:
    assert "2 checkpoints are staged on the pod" in judge_termination(([], 2), 20, "1 min ago").reason
    assert not judge_termination(([5], 0), None, None).safe


def test_an_unreachable_pod_is_not_safe_to_terminate() -> None:
    verdict = judge_termination(None, 20, "3 h 0 min ago", unreachable="exited")
    assert not verdict.safe and verdict.reason.startswith("the pod is exited, so its checkpoints cannot be compared")


def test_a_pod_without_checkpoints_is_safe() -> None:
    assert judge_termination(([], 0), None, None).safe


def test_public_key_from_the_private_key_path(tmp_path: Path) -> None:
    (tmp_path / "id.pub").write_text(KEY + "\n")
    assert read_public_key(None, str(tmp_path / "id")) == KEY
    with pytest.raises(ConfigError, match="set POD_PUBLIC_KEY, or RUNPOD_SSH_KEY"):
        read_public_key(None, None)
    with pytest.raises(ConfigError, match=r"Cannot read the SSH public key .*nope.pub"):
        read_public_key(str(tmp_path / "nope.pub"), None)
    (tmp_path / "bad.pub").write_text("-----BEGIN OPENSSH " + "PRIVATE KEY-----\n")  # a header only, no key
    with pytest.raises(ConfigError, match="is not one OpenSSH public key line"):
        read_public_key(str(tmp_path / "bad.pub"), None)
