"""The entrypoint claims the run's lease with the deploy's attempt, and hands the attempt to the training."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.settings import load_settings
from deploy.training.entrypoint import main, plan_launch, take_lease
from deploy.training.lease import ATTEMPT_FILE, attempt_document, claim, grant, read_lease
from deploy.training.resume import ResumePlan

RUN = "20261130-0602-a1b2"
HOST = "root@203.0.113.7:40022"


def settings(**extra: str):
    return load_settings(overrides={"S3_BUCKET": "my-bucket", "ENABLE_S3_SYNC": "1", **extra}, environ={})


def write_attempt(folder: Path, run_id: str, attempt: int) -> Path:
    path = folder / ATTEMPT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(attempt_document(run_id, attempt))
    return path


def test_the_deploy_s_attempt_is_claimed_and_given_to_the_training(moto_storage, tmp_path: Path) -> None:
    grant(moto_storage, RUN, to=HOST)
    lease = take_lease(settings(RUN_ID=RUN), lambda: moto_storage, write_attempt(tmp_path, RUN, 1), HOST)
    assert lease is not None and not lease.superseded and read_lease(moto_storage, RUN).claimed_by == HOST
    launch = plan_launch(["python", "train.py", "fit"], ResumePlan("s3", None), settings(RUN_ID=RUN), lease=lease)
    assert launch.env["RUN_ATTEMPT"] == "1" and launch.env["RUN_ID"] == RUN


def test_no_lease_without_a_run_an_attempt_file_or_s3_sync(moto_storage, tmp_path: Path, capsys) -> None:
    path = write_attempt(tmp_path, RUN, 1)
    assert take_lease(settings(), lambda: moto_storage, path, HOST) is None
    assert take_lease(settings(RUN_ID=RUN, ENABLE_S3_SYNC="0"), lambda: moto_storage, path, HOST) is None
    assert take_lease(settings(RUN_ID=RUN), lambda: moto_storage, tmp_path / "none.json", HOST) is None
    assert take_lease(settings(RUN_ID="another-run"), lambda: moto_storage, path, HOST) is None
    assert "is for run 20261130-0602-a1b2, not RUN_ID=another-run; no lease claimed" in capsys.readouterr().out
    assert read_lease(moto_storage, RUN) is None
    assert "RUN_ATTEMPT" not in plan_launch(["python", "t.py", "fit"], ResumePlan("s3", None), settings()).env


def test_a_superseded_training_starts_nothing_and_exits_zero(moto_storage, tmp_path: Path, monkeypatch,
                                                              capsys) -> None:
    import deploy.training.entrypoint as entrypoint

    claim(moto_storage, RUN, 2, "root@203.0.113.9:40022")
    monkeypatch.chdir(tmp_path)
    write_attempt(tmp_path, RUN, 1)
    for key, value in {"S3_BUCKET": "my-bucket", "ENABLE_S3_SYNC": "1", "RUN_ID": RUN, "CHECKPOINT": "s3",
                       "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(entrypoint.Storage, "from_settings", classmethod(lambda cls, s: moto_storage))
    ran: list[object] = []
    monkeypatch.setattr(entrypoint, "run", lambda *a: ran.append(a) or (0, False))
    assert main(["--", "python", "-c", "pass"]) == 0
    assert ran == []
    out = capsys.readouterr().out
    assert out == (f"entrypoint: run {RUN} is held by attempt 2 on root@203.0.113.9:40022; this training "
                   "(attempt 1) is superseded: it starts nothing and writes nothing\n")


@pytest.mark.parametrize("later", [False, True])
def test_after_the_training_a_newer_claim_turns_its_exit_into_zero(moto_storage, tmp_path: Path, monkeypatch,
                                                                   capsys, later: bool) -> None:
    import deploy.training.entrypoint as entrypoint

    monkeypatch.chdir(tmp_path)
    write_attempt(tmp_path, RUN, 1)
    for key, value in {"S3_BUCKET": "my-bucket", "ENABLE_S3_SYNC": "1", "RUN_ID": RUN, "CHECKPOINT": "",
                       "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(entrypoint.Storage, "from_settings", classmethod(lambda cls, s: moto_storage))
    monkeypatch.setattr(entrypoint, "TrainingLedger", type("NoLedger", (), {"from_settings": staticmethod(
        lambda s: None)}))

    def training(command, env, warm=None, reloads=None):
        assert env["RUN_ATTEMPT"] == "1"
        if later:  # the replacement claims the run while this one trains
            claim(moto_storage, RUN, 2, "root@203.0.113.9:40022")
        return 143, False

    monkeypatch.setattr(entrypoint, "run", training)
    code = main(["--", "python", "-c", "pass"])
    out = capsys.readouterr().out
    if later:
        assert code == 0 and ("entrypoint: superseded by attempt 2 on root@203.0.113.9:40022; this training "
                              "(attempt 1) stopped without writing to S3") in out
    else:
        assert code == 143 and "superseded" not in out
