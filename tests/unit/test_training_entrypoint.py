"""The entrypoint's launch plan: resume flag, sync callbacks, multi-node trainer flags."""

from __future__ import annotations

from deploy.settings import load_settings
from deploy.training.entrypoint import SYNC_CALLBACKS, plan_launch
from deploy.training.resume import ResumePlan

FIT = ["python", "-m", "piper.train", "fit", "--config", "c.yaml"]


def test_single_node_fit_gets_resume_and_callbacks() -> None:
    settings = load_settings(environ={"ENABLE_S3_SYNC": "1"})
    launch = plan_launch(FIT, ResumePlan("s3", "/tmp/last.ckpt", step=40), settings)
    assert "--ckpt_path=/tmp/last.ckpt" in launch.command
    assert all(f"--trainer.callbacks+={c}" in launch.command for c in SYNC_CALLBACKS)
    assert not any(a.startswith("--trainer.num_nodes") for a in launch.command)


def test_multi_node_fit_gets_num_nodes_devices_and_ddp() -> None:
    settings = load_settings(environ={"NUM_NODES": "2", "DEVICES": "4", "NODE_RANK": "1"})
    launch = plan_launch(FIT, ResumePlan("s3", None), settings)
    assert launch.command[-3:] == ("--trainer.num_nodes=2", "--trainer.devices=4", "--trainer.strategy=ddp")


def test_flags_the_user_gave_win() -> None:
    settings = load_settings(environ={"NUM_NODES": "2"})
    launch = plan_launch([*FIT, "--trainer.strategy=ddp_find_unused_parameters_true"], ResumePlan("", None), settings)
    assert launch.command.count("--trainer.strategy=ddp_find_unused_parameters_true") == 1
    assert "--trainer.strategy=ddp" not in launch.command
    assert "--trainer.devices=auto" in launch.command


def test_staged_checkpoints_are_only_looked_for_with_s3_sync_on(tmp_path, monkeypatch) -> None:
    from deploy.training import entrypoint
    from deploy.training.recovery import Recovery

    calls = []
    monkeypatch.setattr(entrypoint, "recover_staged", lambda storage, roots, dest, folders=None: calls.append(roots) or Recovery())

    def no_storage():
        raise AssertionError("S3 must not be touched")

    assert entrypoint.recover(load_settings(environ={}), no_storage, ["."], tmp_path) is None
    assert calls == []
    assert entrypoint.recover(load_settings(environ={"ENABLE_S3_SYNC": "1"}), no_storage, ["/runs"], tmp_path) is None
    assert calls == [["/runs"]]
