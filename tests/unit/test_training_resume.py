"""Resume decisions and the entrypoint's command line: pure logic with a fake bucket."""

from __future__ import annotations

import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from deploy.storage.checkpoints import CheckpointInfo
from deploy.errors import StorageError, TrainingError
from deploy.settings import load_settings
from deploy.training.entrypoint import DEMO_COMMAND, SYNC_CALLBACKS, plan_launch
from deploy.training.resume import ResumePlan, resolve_checkpoint, resume_from_latest


class FakeStorage:
    """Objects by key; ``bad`` keys fail verification the way Storage.download_file says so."""

    bucket = "bucket"

    def __init__(self, objects: dict[str, bytes], bad: dict[str, str] | None = None) -> None:
        self.objects = objects
        self.bad = bad or {}
        self.fetched: list[str] = []

    def key(self, *parts: str) -> str:
        return "/".join(("p", *parts))

    def url(self, key: str = "") -> str:
        return f"s3://bucket/{key}"

    def download_file(self, key: str, dest: Path) -> None:
        self.fetched.append(key)
        if key in self.bad:
            raise StorageError(f"{self.url(key)} {self.bad[key]}")
        Path(dest).write_bytes(self.objects[key])

    def head(self, key: str):
        return object() if key in self.objects else None


def archive(tmp_path: Path, name: str) -> bytes:
    path = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data.pkl", name)
    return path.read_bytes()


def info(name: str, step: int | None) -> CheckpointInfo:
    return CheckpointInfo(name=name, key=f"p/checkpoints/{name}", size=1, step=step, epoch=0, val_loss=None,
                          step_source="metadata", uploaded=datetime(2026, 1, 1, tzinfo=timezone.utc))


def test_resume_takes_the_highest_step(tmp_path: Path) -> None:
    store = FakeStorage({"p/checkpoints/step=9.ckpt": archive(tmp_path, "9"),
                         "p/checkpoints/step=14.ckpt": archive(tmp_path, "14")})
    plan = resume_from_latest(store, tmp_path / "dl", [info("step=9.ckpt", 9), info("step=14.ckpt", 14)])
    assert plan.step == 14 and plan.path == str(tmp_path / "dl" / "step=14.ckpt")
    assert store.fetched == ["p/checkpoints/step=14.ckpt"]


def test_resume_keeps_only_the_checkpoint_it_downloads(tmp_path: Path) -> None:
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "older-run.ckpt").write_bytes(b"old")
    store = FakeStorage({"p/checkpoints/step=3.ckpt": archive(tmp_path, "3")})
    resume_from_latest(store, tmp_path / "dl", [info("step=3.ckpt", 3)])
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["step=3.ckpt"]


def test_resume_skips_corrupt_newest_checkpoint_and_says_so(tmp_path: Path) -> None:
    store = FakeStorage({"p/checkpoints/a.ckpt": archive(tmp_path, "a"), "p/checkpoints/b.ckpt": b"x"},
                        bad={"p/checkpoints/b.ckpt": "is corrupt: sha256 abc does not match"})
    plan = resume_from_latest(store, tmp_path, [info("a.ckpt", 10), info("b.ckpt", 20)])
    assert plan.step == 10 and plan.path.endswith("a.ckpt")
    assert "skipped 1 newer" in plan.message and "b.ckpt" in plan.message


def test_resume_skips_a_file_that_is_not_a_checkpoint_archive(tmp_path: Path) -> None:
    store = FakeStorage({"p/checkpoints/a.ckpt": archive(tmp_path, "a"), "p/checkpoints/b.ckpt": b"truncated"})
    plan = resume_from_latest(store, tmp_path / "dl", [info("a.ckpt", 1), info("b.ckpt", 2)])
    assert plan.step == 1
    assert not (tmp_path / "dl" / "b.ckpt").exists()


def test_resume_does_not_fall_back_when_the_bucket_is_unreachable(tmp_path: Path) -> None:
    store = FakeStorage({"p/checkpoints/a.ckpt": b""}, bad={"p/checkpoints/b.ckpt": "Cannot reach the endpoint"})
    with pytest.raises(TrainingError, match="Cannot fetch"):
        resume_from_latest(store, tmp_path, [info("a.ckpt", 1), info("b.ckpt", 2)])


def test_no_checkpoint_in_the_bucket_starts_fresh(tmp_path: Path) -> None:
    plan = resume_from_latest(FakeStorage({}), tmp_path, [])
    assert plan.path is None and "starting fresh" in plan.message


def test_every_checkpoint_corrupt_is_an_error_naming_them(tmp_path: Path) -> None:
    store = FakeStorage({}, bad={"p/checkpoints/a.ckpt": "arrived truncated: 1 of 2 bytes"})
    with pytest.raises(TrainingError, match="a.ckpt"):
        resume_from_latest(store, tmp_path, [info("a.ckpt", 1)])


def test_checkpoint_values_empty_local_and_missing(tmp_path: Path) -> None:
    def no_storage():
        raise AssertionError("S3 must not be touched")

    assert resolve_checkpoint("", no_storage, tmp_path).path is None
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"x")
    assert resolve_checkpoint(str(ckpt), no_storage, tmp_path).path == str(ckpt)
    with pytest.raises(TrainingError, match="not a file"):
        resolve_checkpoint(str(tmp_path / "missing.ckpt"), no_storage, tmp_path)


def test_s3_uri_in_another_bucket_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="S3_BUCKET"):
        resolve_checkpoint("s3://other/checkpoints/a.ckpt", lambda: FakeStorage({}), tmp_path)


def test_entrypoint_adds_ckpt_path_and_callbacks_to_a_lightning_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENABLE_S3_SYNC", "1")
    launch = plan_launch([], ResumePlan("s3", "/r/last.ckpt"), load_settings())
    assert launch.command[: len(DEMO_COMMAND)] == DEMO_COMMAND
    assert "--ckpt_path=/r/last.ckpt" in launch.command
    assert [a for a in launch.command if a.startswith("--trainer.callbacks+=")] == \
        [f"--trainer.callbacks+={c}" for c in SYNC_CALLBACKS]
    assert launch.env == {"RESUME_CHECKPOINT": "/r/last.ckpt"}


def test_entrypoint_leaves_other_commands_and_explicit_choices_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENABLE_S3_SYNC", "1")
    settings = load_settings()
    plain = plan_launch(["python", "train.py"], ResumePlan("s3", "/r/a.ckpt"), settings)
    assert plain.command == ("python", "train.py") and plain.env["RESUME_CHECKPOINT"] == "/r/a.ckpt"
    mine = ["python", "-m", "piper.train", "fit", "--ckpt_path=/mine.ckpt",
            "--trainer.callbacks+=deploy.training.callbacks.S3CheckpointSync"]
    launch = plan_launch(mine, ResumePlan("s3", "/r/a.ckpt"), settings)
    assert launch.command == (*mine, "--trainer.callbacks+=deploy.training.callbacks.S3LogSync")
    monkeypatch.setenv("ENABLE_S3_SYNC", "0")
    off = plan_launch(["python", "-m", "x", "fit"], ResumePlan("", None), load_settings())
    assert off.command == ("python", "-m", "x", "fit") and off.env == {}


def test_entrypoint_runs_train_command_when_no_command_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAIN_COMMAND", "python -m piper.train fit --data.dir '/data/my set'")
    launch = plan_launch([], ResumePlan("s3", "/r/a.ckpt"), load_settings())
    assert launch.command == ("python", "-m", "piper.train", "fit", "--data.dir", "/data/my set",
                              "--ckpt_path=/r/a.ckpt")
    assert plan_launch(["python", "x.py"], ResumePlan("", None), load_settings()).command == ("python", "x.py")


def test_demo_reads_lightning_style_flags_with_lightning_cli(capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch", reason="the demo model needs torch (the train extra)")
    import yaml

    from deploy.training.demo import main

    monkeypatch.setattr("sys.argv", ["demo"])  # the arguments come from main(), as from a command line

    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--trainer.max_epochs=3", "--data.batch_size", "8", "--checkpoint.monitor=null",
              "--trainer.callbacks+=deploy.training.callbacks.S3CheckpointSync",
              "--trainer.callbacks.max_retry_delay=1.5", "--ckpt_path=/x.ckpt", "--print_config"])
    assert stopped.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["trainer"]["max_epochs"] == 3 and config["data"]["batch_size"] == 8
    assert config["checkpoint"]["monitor"] is None and config["ckpt_path"] == "/x.ckpt"
    [callback] = config["trainer"]["callbacks"]
    assert callback["class_path"] == "deploy.training.callbacks.S3CheckpointSync"
    assert callback["init_args"]["max_retry_delay"] == 1.5
    with pytest.raises(SystemExit) as refused:
        main(["fit", "--nope=1"])
    assert refused.value.code != 0


def test_entrypoint_names_a_training_command_that_does_not_exist(capsys: pytest.CaptureFixture[str]) -> None:
    from deploy.training.entrypoint import main

    assert main(["--", "no-such-trainer-here", "fit"]) == 127
    assert "cannot run no-such-trainer-here" in capsys.readouterr().err


def sent(tmp_path: Path, name: str, data: bytes) -> tuple[Path, CheckpointInfo]:
    """A checkpoint the uploader sent from ``ckpts/`` (its staging folder is beside it) and its bucket row."""
    import hashlib

    folder = tmp_path / "run" / "lightning_logs" / "version_0" / "checkpoints"
    (folder / ".s3-sync").mkdir(parents=True)
    (folder / name).write_bytes(data)
    row = CheckpointInfo(name=name, key=f"p/checkpoints/{name}", size=len(data), step=40, epoch=0, val_loss=None,
                         step_source="metadata", uploaded=datetime(2026, 1, 1, tzinfo=timezone.utc),
                         sha256=hashlib.sha256(data).hexdigest())
    return folder, row


def test_a_redeploy_reads_the_chosen_checkpoint_from_this_machine_when_its_sha256_matches(tmp_path: Path) -> None:
    from deploy.training.journal import checkpoint_dirs

    data = archive(tmp_path, "40")
    folder, row = sent(tmp_path, "stop-step=40.ckpt", data)
    store = FakeStorage({row.key: data})
    near = checkpoint_dirs([str(tmp_path / "run")])
    assert near == [str(folder)]
    plan = resume_from_latest(store, tmp_path / "dl", [row], near=near)
    assert store.fetched == [] and plan.step == 40 and Path(plan.path).read_bytes() == data
    assert "read from this machine's copy (its sha256 matches)" in plan.message
    assert (folder / "stop-step=40.ckpt").read_bytes() == data  # the training's own file is untouched


@pytest.mark.parametrize("change", ["other bytes, same size", "shorter", "no sha256 in the bucket"])
def test_a_local_file_that_is_not_the_object_byte_for_byte_is_not_used(tmp_path: Path, change: str) -> None:
    import dataclasses

    from deploy.training.journal import checkpoint_dirs

    data = archive(tmp_path, "40")
    folder, row = sent(tmp_path, "last.ckpt", data)
    if change == "other bytes, same size":  # last.ckpt written again after the upload
        (folder / "last.ckpt").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif change == "shorter":
        (folder / "last.ckpt").write_bytes(data[:-10])
    else:
        row = dataclasses.replace(row, sha256=None)
    store = FakeStorage({row.key: data})
    plan = resume_from_latest(store, tmp_path / "dl", [row], near=checkpoint_dirs([str(tmp_path / "run")]))
    assert store.fetched == [row.key] and Path(plan.path).read_bytes() == data
    assert "this machine's copy" not in plan.message


class HeadedStorage(FakeStorage):
    """Objects with the metadata the uploader records (step, run, size, sha256); every listing is refused."""

    def __init__(self, objects: dict[str, bytes], metadata: dict[str, dict[str, str]]) -> None:
        super().__init__(objects)
        self.metadata = metadata

    def head(self, key: str):
        from deploy.storage import ObjectInfo

        if key not in self.objects:
            return None
        return ObjectInfo(key, len(self.objects[key]), metadata=self.metadata[key])

    def list(self, prefix: str):
        raise AssertionError("a reload's resume lists nothing")


def test_a_reload_resumes_from_its_stop_checkpoint_with_one_head_and_no_listing(tmp_path: Path) -> None:
    import hashlib

    from deploy.training.resume import StopRecord

    data = archive(tmp_path, "40")
    folder, row = sent(tmp_path, "stop-epoch=0-step=40.ckpt", data)
    meta = {"step": "40", "run": "r1", "sha256": hashlib.sha256(data).hexdigest(), "size": str(len(data))}
    record = tmp_path / "stopped.json"
    StopRecord(40, row.key, str(folder / row.name)).write(record)
    stopped = StopRecord.take(record)
    assert stopped == StopRecord(40, row.key, str(folder / row.name)) and not record.exists()  # used once
    store = HeadedStorage({row.key: data}, {row.key: meta})
    plan = resolve_checkpoint("s3", lambda: store, tmp_path / "dl", run_id="r1", stopped=stopped)
    assert plan.step == 40 and Path(plan.path).read_bytes() == data and store.fetched == []
    assert "which the stop before this reload saved; read from this machine's copy (its sha256 matches)" in plan.message

    for wrong in ({**meta, "step": "41"}, {**meta, "run": "r0"}, {**meta, "sha256": "0" * 64}):
        store = HeadedStorage({row.key: data}, {row.key: wrong})
        with pytest.raises(AssertionError, match="lists nothing"):  # not what the stop saved: the usual listing
            resolve_checkpoint("s3", lambda: store, tmp_path / "dl", run_id="r1", stopped=stopped)
    assert StopRecord.take(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{\"step\": \"x\"}")
    assert StopRecord.take(tmp_path / "bad.json") is None
