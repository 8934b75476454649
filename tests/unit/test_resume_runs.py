"""Resume reads only this run's checkpoints: its own, FROM_RUN's and unlabelled ones; other runs' are skipped."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from deploy.errors import TrainingError
from deploy.settings import load_settings
from deploy.storage import ObjectInfo
from deploy.storage.checkpoints import CheckpointInfo, run_candidates
from deploy.training.recovery import LocalCheckpoint
from deploy.training.resume import resolve_checkpoint, resume_from_latest
from tests.unit.test_training_resume import FakeStorage, archive

MINE, OLD, OTHER = "20261201-run-mine", "20261101-run-old", "20261115-run-other"


def cp(name: str, step: int, run: str | None) -> CheckpointInfo:
    return CheckpointInfo(name=name, key=f"p/checkpoints/{name}", size=1, step=step, epoch=0, val_loss=None,
                          step_source="metadata", uploaded=datetime(2026, 1, 1, tzinfo=timezone.utc), run=run)


def store_of(tmp_path: Path, *infos: CheckpointInfo) -> FakeStorage:
    return FakeStorage({i.key: archive(tmp_path, i.name) for i in infos})


def test_checkpoints_carry_their_run_and_attempt_from_metadata() -> None:
    info = CheckpointInfo.from_object(ObjectInfo("p/checkpoints/a.ckpt", 1,
                                                 metadata={"run": MINE, "attempt": "4", "step": "9"}))
    assert (info.run, info.attempt, info.step) == (MINE, 4, 9)
    bare = CheckpointInfo.from_object(ObjectInfo("p/checkpoints/epoch=0-step=3.ckpt", 1))
    assert (bare.run, bare.attempt) == (None, None)


def test_candidates_are_the_run_s_own_and_unlabelled_ones_never_another_run_s() -> None:
    found = run_candidates([cp("a.ckpt", 10, MINE), cp("b.ckpt", 50, OTHER), cp("c.ckpt", 5, None)], MINE)
    assert [c.name for c in found.candidates] == ["c.ckpt", "a.ckpt"]
    assert [c.name for c in found.others] == ["b.ckpt"]
    assert [c.name for c in run_candidates(found.candidates + found.others, "").candidates] == \
        ["c.ckpt", "a.ckpt", "b.ckpt"]  # no RUN_ID: every checkpoint, as before
    also = run_candidates([cp("a.ckpt", 10, MINE), cp("b.ckpt", 50, OTHER)], MINE, also=(OTHER,))
    assert [c.name for c in also.candidates] == ["a.ckpt", "b.ckpt"] and not also.others


def test_a_new_run_skips_a_newer_checkpoint_of_another_run(tmp_path: Path) -> None:
    infos = [cp("mine.ckpt", 10, MINE), cp("theirs.ckpt", 500, OTHER)]
    store = store_of(tmp_path, *infos)
    plan = resume_from_latest(store, tmp_path / "dl", infos, run_id=MINE)
    assert plan.step == 10 and store.fetched == ["p/checkpoints/mine.ckpt"]
    assert plan.message == ("resuming from s3://bucket/p/checkpoints/mine.ckpt (step 10); skipped 1 newer checkpoint "
                            f"of other runs (newest: run {OTHER}, step 500)")


def test_when_only_other_runs_have_checkpoints_training_starts_fresh_and_names_the_newest(tmp_path: Path) -> None:
    infos = [cp(f"s{i}.ckpt", i, OLD) for i in range(1, 12)] + [cp("new.ckpt", 40, OTHER)]
    store = store_of(tmp_path, *infos)
    plan = resume_from_latest(store, tmp_path / "dl", infos, run_id=MINE)
    assert plan.path is None and store.fetched == []
    assert plan.message == (f"starting fresh: the 12 checkpoints in s3://bucket/p/checkpoints/ belong to other runs "
                            f"(newest: run {OTHER}, step 40); to continue that run set FROM_RUN={OTHER} or pass "
                            f"--from-run {OTHER}")


def test_unlabelled_checkpoints_of_older_scripts_still_resume(tmp_path: Path) -> None:
    infos = [cp("old.ckpt", 30, None), cp("theirs.ckpt", 10, OTHER)]
    plan = resume_from_latest(store_of(tmp_path, *infos), tmp_path / "dl", infos, run_id=MINE)
    assert plan.step == 30 and plan.message.endswith("(step 30) (uploaded without a run id)")


def test_from_run_continues_that_run_s_newest_checkpoint_and_says_so(tmp_path: Path) -> None:
    infos = [cp("old-5.ckpt", 5, OLD), cp("old-90.ckpt", 90, OLD), cp("other.ckpt", 200, OTHER)]
    store = store_of(tmp_path, *infos)
    plan = resume_from_latest(store, tmp_path / "dl", infos, run_id=MINE, from_run=OLD)
    assert plan.step == 90 and store.fetched == ["p/checkpoints/old-90.ckpt"]
    assert f"(step 90) of run {OLD}, as FROM_RUN asks" in plan.message
    assert f"skipped 1 newer checkpoint of other runs (newest: run {OTHER}, step 200)" in plan.message


def test_the_run_s_own_newer_checkpoint_wins_over_from_run_and_the_message_says_why(tmp_path: Path) -> None:
    infos = [cp("old.ckpt", 90, OLD), cp("mine.ckpt", 120, MINE)]
    plan = resume_from_latest(store_of(tmp_path, *infos), tmp_path / "dl", infos, run_id=MINE, from_run=OLD)
    assert plan.step == 120
    assert f"(run {MINE}), newer than every checkpoint of FROM_RUN={OLD} (newest step 90)" in plan.message


def test_from_run_without_checkpoints_and_nothing_else_is_an_error_naming_it(tmp_path: Path) -> None:
    infos = [cp("other.ckpt", 20, OTHER)]
    with pytest.raises(TrainingError, match=rf"FROM_RUN={OLD} has no checkpoint in s3://bucket/p/checkpoints/"):
        resume_from_latest(store_of(tmp_path, *infos), tmp_path / "dl", infos, run_id=MINE, from_run=OLD)


def test_a_checkpoint_another_run_left_on_this_machine_is_set_aside(tmp_path: Path) -> None:
    local = LocalCheckpoint(path=str(tmp_path / "l.ckpt"), step=300, name="l.ckpt", key="p/checkpoints/l.ckpt",
                            run=OTHER)
    infos = [cp("mine.ckpt", 10, MINE)]
    plan = resume_from_latest(store_of(tmp_path, *infos), tmp_path / "dl", infos, local=local, run_id=MINE)
    assert plan.step == 10 and f"left l.ckpt on this machine aside: run {OTHER} staged it" in plan.message
    own = LocalCheckpoint(path=str(tmp_path / "l.ckpt"), step=300, name="l.ckpt", key="p/checkpoints/l.ckpt", run=MINE)
    assert resume_from_latest(store_of(tmp_path, *infos), tmp_path / "dl", infos, local=own, run_id=MINE).step == 300


def test_without_run_id_resume_takes_the_newest_whatever_its_run(tmp_path: Path) -> None:
    infos = [cp("mine.ckpt", 10, MINE), cp("theirs.ckpt", 500, OTHER)]
    plan = resume_from_latest(store_of(tmp_path, *infos), tmp_path / "dl", infos)
    assert plan.step == 500 and plan.message == "resuming from s3://bucket/p/checkpoints/theirs.ckpt (step 500)"


def test_resolve_passes_the_run_to_the_s3_resume(tmp_path: Path, moto_storage) -> None:
    for name, run in (("epoch=0-step=7.ckpt", OTHER),):
        moto_storage.client.put_object(Bucket=moto_storage.bucket, Key=moto_storage.key("checkpoints", name),
                                       Body=archive(tmp_path, name), Metadata={"run": run, "step": "7"})
    plan = resolve_checkpoint("s3", lambda: moto_storage, tmp_path / "dl", run_id=MINE)
    assert plan.path is None and plan.message.startswith("starting fresh: the 1 checkpoint in s3://unit-bucket/p/"
                                                         "checkpoints/ belongs to other runs")
    assert resolve_checkpoint("s3", lambda: moto_storage, tmp_path / "dl", run_id=MINE, from_run=OTHER).step == 7


def test_from_run_is_a_run_id_setting_shipped_to_the_host() -> None:
    from deploy.errors import ConfigError
    from deploy.flow.rollout import Rollout
    from deploy.hosts import HostSpec
    from deploy.hosts.probe import HostFacts

    settings = load_settings(overrides={"S3_BUCKET": "my-bucket", "FROM_RUN": OLD}, environ={})
    assert settings.from_run == OLD and settings.source("FROM_RUN") == "flag"
    run = Rollout(image_ref="t:v1", image_id="", image_bytes=0, remote_dir="/w", run_id=MINE).host_run(
        HostSpec("203.0.113.10", 22), settings, 0, HostFacts())
    text = run.env.content().decode()
    assert f"FROM_RUN='{OLD}'" in text and f"RUN_ID='{MINE}'" in text
    with pytest.raises(ConfigError, match=r"FROM_RUN from flag must be letters"):
        load_settings(overrides={"FROM_RUN": "../x"}, environ={})


def test_deploy_runpod_takes_from_run_as_a_flag_checked_like_run_id() -> None:
    from tests.harness.fab import run_fab

    help_text = run_fab("deploy-runpod", "--help", timeout=120).stdout
    assert "--from-run=STRING" in help_text
    refused = run_fab("deploy-runpod", "--from-run", "../escape", timeout=120)
    assert refused.returncode == 1
    assert "FROM_RUN from flag must be letters, digits, '.', '_' and '-'" in refused.stdout + refused.stderr


def test_train_takes_from_run_as_deploy_runpod_does() -> None:
    from tests.harness.fab import run_fab

    assert "--from-run=STRING" in run_fab("train", "--help", timeout=120).stdout
    refused = run_fab("train", "--from-run", "../escape", timeout=120)
    assert refused.returncode == 1
    assert "FROM_RUN from flag must be letters, digits, '.', '_' and '-'" in refused.stdout + refused.stderr
