"""The `fab s3.*` tasks against the real S3 server: round trips, incremental re-syncs, old objects,
interrupted downloads, and every bad-input message. A few run through a real `fab` process."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from invoke import Context
from invoke.exceptions import Exit

from deploy.errors import StorageError
from deploy.storage import Storage
from deploy.storage.sync import SyncObserver, execute, plan_download, plan_upload
from tasks import s3 as s3tasks
from tests.harness.fab import FAB, REPO, run_fab
from tests.harness.servers import free_port
from tests.harness.waiting import wait_until


pytestmark = pytest.mark.usefixtures("own_cache")


def fab(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `fab` as an operator would, from the test's own directory, with the repo's fabfile."""
    return run_fab(*args, env=env, timeout=120)


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_task(task, capsys, **kwargs) -> str:
    task(Context(), **kwargs)
    return capsys.readouterr().out


# --------------------------------------------------------------------------- round trips


def test_logs_upload_is_incremental_through_fab(s3_env, storage: Storage, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    write_tree(logs, {"version_9/events.out.tfevents.1": b"a" * 5000, "version_14/hparams.yaml": b"lr: 1\n",
                      "version_14/events.out.tfevents.2": os.urandom(20_000)})
    first = fab("s3.upload-logs")
    assert first.returncode == 0, first.stderr
    assert "Uploaded 3 files" in first.stdout
    objects = {o.name: o for o in storage.list(storage.key("logs") + "/", with_metadata=True)}
    assert objects["hparams.yaml"].sha256 == hashlib.sha256(b"lr: 1\n").hexdigest()

    again = fab("s3.upload-logs")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("Nothing to upload: 3 files"), again.stdout

    (logs / "version_14" / "hparams.yaml").write_bytes(b"lr: 2\n")
    changed = fab("s3.upload-logs", "--dry-run")
    assert "upload" in changed.stdout and "version_14/hparams.yaml" in changed.stdout
    assert "Dry run: nothing was changed." in changed.stdout
    assert storage.head(storage.key("logs", "version_14/hparams.yaml")).sha256 == hashlib.sha256(b"lr: 1\n").hexdigest()
    assert "Uploaded 1 file," in fab("s3.upload-logs").stdout


def test_dataset_round_trip_and_resync_moves_nothing(s3_env, storage: Storage, tmp_path: Path, capsys) -> None:
    files = {"config.json": b"{}", "metadata.csv": b"a|b\n", **{f"wavs/{i}.wav": os.urandom(3000 + i) for i in range(12)}}
    write_tree(tmp_path / "ljs", files)
    out = run_task(s3tasks.upload_dataset, capsys, path=str(tmp_path / "ljs"))
    assert "Uploaded 14 files" in out
    dest = tmp_path / "copy"
    out = run_task(s3tasks.download_dataset, capsys, name="ljs", dest=str(dest))
    assert "Downloaded 14 files" in out
    assert read_tree(dest) == files
    out = run_task(s3tasks.download_dataset, capsys, name="ljs", dest=str(dest))
    assert out.startswith("Nothing to download: 14 files")
    assert not [p for p in dest.rglob("*.part*")]


def test_download_logs_of_the_latest_version_by_number(s3_env, storage: Storage, tmp_path: Path, capsys) -> None:
    for version in ("version_9", "version_14", "version_2"):
        storage.client.put_object(Bucket=storage.bucket, Key=storage.key("logs", version, "hparams.yaml"),
                                  Body=version.encode())
    out = run_task(s3tasks.download_logs, capsys, dest=str(tmp_path / "logs"), version="latest")
    assert "Latest log version: version_14." in out
    assert read_tree(tmp_path / "logs") == {"version_14/hparams.yaml": b"version_14"}


def test_checkpoints_list_and_latest_by_global_step(s3_env, storage: Storage, tmp_path: Path, capsys) -> None:
    names = ["epoch=9-step=9999-val_loss=3.5.ckpt", "epoch=10-step=14000-val_loss=2.5.ckpt",
             "epoch=99-step=99999.ckpt", "epoch=100-step=140000.ckpt"]
    for name in names:
        (tmp_path / name).write_bytes(name.encode())
        run_task(s3tasks.upload_checkpoint, capsys, path=str(tmp_path / name))
    # An older script's upload: no metadata, no step in the name.
    storage.client.put_object(Bucket=storage.bucket, Key=storage.key("checkpoints", "last.ckpt"), Body=b"old")

    listed = fab("s3.checkpoints", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["step"] for r in rows] == [None, 9999, 14000, 99999, 140000]
    assert rows[2]["val_loss"] == 2.5 and rows[2]["step_source"] == "metadata"
    table = run_task(s3tasks.checkpoints, capsys)
    assert "latest: epoch=100-step=140000.ckpt" in table
    assert table.index("epoch=9-step=9999") < table.index("epoch=10-step=14000") < table.index("epoch=100-step")

    out = run_task(s3tasks.download_checkpoint, capsys, latest=True, dest=str(tmp_path / "got"))
    assert "Latest checkpoint: epoch=100-step=140000.ckpt (step 140000)." in out
    assert (tmp_path / "got" / "epoch=100-step=140000.ckpt").read_bytes() == b"epoch=100-step=140000.ckpt"
    out = run_task(s3tasks.download_checkpoint, capsys, name="last.ckpt", dest=str(tmp_path / "got"))
    assert (tmp_path / "got" / "last.ckpt").read_bytes() == b"old"
    assert run_task(s3tasks.upload_checkpoint, capsys, path=str(tmp_path / names[0])).startswith("Nothing to upload")


def test_upload_checkpoint_with_an_explicit_step_becomes_the_latest(s3_env, storage, tmp_path: Path, capsys) -> None:
    (tmp_path / "epoch=5-step=500.ckpt").write_bytes(b"a")
    (tmp_path / "best.ckpt").write_bytes(b"b")
    run_task(s3tasks.upload_checkpoint, capsys, path=str(tmp_path / "epoch=5-step=500.ckpt"))
    run_task(s3tasks.upload_checkpoint, capsys, path=str(tmp_path / "best.ckpt"), epoch="7", step="700")
    head = storage.head(storage.key("checkpoints", "best.ckpt"))
    assert (head.metadata["step"], head.metadata["epoch"]) == ("700", "7")
    from deploy.storage.checkpoints import latest_checkpoint

    assert latest_checkpoint(storage).name == "best.ckpt"
    assert run_task(s3tasks.upload_checkpoint, capsys, path=str(tmp_path / "best.ckpt"), epoch="7",
                    step="700").startswith("Nothing to upload")
    out = run_task(s3tasks.upload_checkpoint, capsys, path=str(tmp_path / "best.ckpt"), epoch="8", step="800")
    assert "Uploaded 1 file," in out
    assert storage.head(storage.key("checkpoints", "best.ckpt")).metadata["step"] == "800"


# --------------------------------------------------------------------------- older objects, interruptions


def test_objects_written_without_metadata_download_verified_and_resync(storage: Storage, tmp_path: Path) -> None:
    from boto3.s3.transfer import TransferConfig

    small = b"RIFF" + os.urandom(1000)
    big = os.urandom(11 * 1024 * 1024)  # three 5 MB parts: a multipart ETag, no sha256 anywhere
    storage.client.put_object(Bucket=storage.bucket, Key=storage.key("datasets", "old", "a.wav"), Body=small)
    (tmp_path / "big.bin").write_bytes(big)
    storage.client.upload_file(str(tmp_path / "big.bin"), storage.bucket, storage.key("datasets", "old", "big.bin"),
                               Config=TransferConfig(multipart_threshold=5 * 1024 * 1024,
                                                     multipart_chunksize=5 * 1024 * 1024))
    prefix = storage.key("datasets", "old")
    dest = tmp_path / "old"
    result = execute(storage, plan_download(storage, prefix, dest))
    assert len(result.moved) == 2
    assert read_tree(dest) == {"a.wav": small, "big.bin": big}
    # No cache this time: the md5 ETag (single part) and the multipart ETag decide "unchanged".
    again = plan_download(storage, prefix, dest)
    assert [(i.rel, i.action, i.reason) for i in again.items] == [
        ("a.wav", "skip", "unchanged (md5)"), ("big.bin", "skip", "unchanged (multipart ETag)")]
    # Uploading the same files over the old objects moves nothing either.
    assert not plan_upload(storage, dest, prefix).transfers


class Interrupting(SyncObserver):
    def __init__(self) -> None:
        self.seen = 0

    def progress(self, nbytes: int) -> None:
        self.seen += nbytes
        if self.seen > 1024 * 1024:
            raise RuntimeError("operator stopped the transfer")


def test_interrupted_download_leaves_no_file(storage: Storage, tmp_path: Path) -> None:
    storage.client.put_object(Bucket=storage.bucket, Key=storage.key("datasets", "big", "data.bin"),
                              Body=os.urandom(6 * 1024 * 1024))
    dest = tmp_path / "big"
    with pytest.raises(RuntimeError, match="operator stopped"):
        execute(storage, plan_download(storage, storage.key("datasets", "big"), dest), observer=Interrupting())
    assert list(dest.rglob("*")) == []


def test_ctrl_c_during_a_download_leaves_only_whole_verified_files(storage: Storage, s3_env, tmp_path: Path) -> None:
    files = {f"wavs/{i:02d}.wav": os.urandom(3 * 1024 * 1024) for i in range(20)}
    write_tree(tmp_path / "ds", files)
    execute(storage, plan_upload(storage, tmp_path / "ds", storage.key("datasets", "ds")))
    dest = tmp_path / "got"
    proc = subprocess.Popen([FAB, "--search-root", str(REPO), "s3.download-dataset", "--name", "ds", "--dest", str(dest)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: list(dest.rglob("*.part*")) or proc.poll() is not None, 60,
               "the first download to be in flight", interval=0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode in (130, 0), out + err  # 0 only if it finished before the signal landed
    if proc.returncode == 130:
        assert "Interrupted; nothing half-written was left behind." in err
    landed = read_tree(dest) if dest.exists() else {}
    assert all(name.endswith(".wav") for name in landed), sorted(landed)
    assert all(files[name] == data for name, data in landed.items())


def test_corrupt_object_is_refused_and_leaves_no_file(storage: Storage, tmp_path: Path) -> None:
    storage.client.put_object(Bucket=storage.bucket, Key=storage.key("datasets", "bad", "x.bin"), Body=b"tampered",
                              Metadata={"sha256": "0" * 64})
    dest = tmp_path / "bad"
    with pytest.raises(StorageError, match=r"x.bin is corrupt: sha256 .* does not match its metadata"):
        execute(storage, plan_download(storage, storage.key("datasets", "bad"), dest))
    assert list(dest.rglob("*")) == []


# --------------------------------------------------------------------------- unfinished uploads


def open_uploads(storage: Storage) -> list[str]:
    return [u["key"] for u in storage.multipart_uploads(storage.key() + "/")]


def test_abort_uploads_covers_the_whole_prefix_and_dry_run_only_lists(s3_env, storage: Storage, capsys) -> None:
    # What a killed checkpoint upload leaves behind: an open multipart upload with a part in it.
    key = storage.key("checkpoints", "epoch=3-step=300.ckpt")
    upload = storage.client.create_multipart_upload(Bucket=storage.bucket, Key=key)
    storage.client.upload_part(Bucket=storage.bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1,
                               Body=b"x" * 1024)
    storage.client.create_multipart_upload(Bucket=storage.bucket, Key=storage.key("logs", "version_0", "events"))

    # (moto dates every upload 2010, so the grace period itself is pinned by the unit tests.)
    listed = fab("s3.abort-uploads", "--older-than", "0", "--dry-run")
    assert listed.returncode == 0, listed.stderr
    assert "2 unfinished upload(s) older than 0 s" in listed.stdout and key in listed.stdout
    assert "Dry run: nothing was changed." in listed.stdout
    assert len(open_uploads(storage)) == 2

    out = run_task(s3tasks.abort_uploads, capsys, older_than="0")
    assert "Aborted 2 upload(s)." in out
    assert open_uploads(storage) == []
    assert run_task(s3tasks.abort_uploads, capsys, older_than="0").startswith("No unfinished uploads")


# --------------------------------------------------------------------------- check and bad input


def test_check_passes_with_full_permissions_and_leaves_nothing(s3_env, storage: Storage) -> None:
    result = fab("s3.check")
    assert result.returncode == 0, result.stderr
    assert "All permissions the project needs are in place." in result.stdout
    assert "s3:AbortMultipartUpload" in result.stdout
    assert list(storage.list(storage.key(".gpu-deploy-check"))) == []
    uploads = storage.client.list_multipart_uploads(Bucket=storage.bucket, Prefix=storage.key(".gpu-deploy-check"))
    assert uploads.get("Uploads", []) == []


def test_missing_bucket_is_named(s3_env, tmp_path: Path) -> None:
    write_tree(tmp_path / "logs", {"version_0/hparams.yaml": b"x"})
    result = fab("s3.upload-logs", S3_BUCKET="no-such-bucket-4242")
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        f"Error: The bucket 'no-such-bucket-4242' does not exist at {s3_env['AWS_ENDPOINT_URL']}; check S3_BUCKET "
        "(from the environment).")


def test_unreachable_endpoint_is_named_at_once(s3_env, tmp_path: Path, capsys, monkeypatch) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # the default 10 attempts would take a minute
    started = time.monotonic()
    with pytest.raises(Exit) as err:
        s3tasks.checkpoints(Context())
    assert time.monotonic() - started < 5
    assert err.value.code == 1
    port = endpoint.rsplit(":", 1)[1]
    assert str(err.value.message) == (f"Error: Cannot reach the S3 endpoint {endpoint}: nothing listens on port {port} "
                                      "of 127.0.0.1; check AWS_ENDPOINT_URL (from the environment).")


@pytest.mark.parametrize(("task", "kwargs", "message"), [
    (s3tasks.upload_dataset, {"path": "no-such-dir"}, "The local directory no-such-dir does not exist; check the path."),
    (s3tasks.upload_checkpoint, {"path": "nope/epoch=1-step=2.ckpt"},
     "The local file nope/epoch=1-step=2.ckpt does not exist; check the path."),
    (s3tasks.download_dataset, {"name": ".."}, "The dataset name '..' must be one folder name, without '/' or '..'."),
    (s3tasks.download_dataset, {"name": "a/../../b"},
     "The dataset name 'a/../../b' must be one folder name, without '/' or '..'."),
    (s3tasks.download_dataset, {"name": "never-uploaded"}, "Nothing under s3://"),
    (s3tasks.download_checkpoint, {"name": "nope.ckpt"}, "No checkpoint 'nope.ckpt' under s3://"),
    (s3tasks.download_checkpoint, {}, "Give exactly one of --name NAME or --latest."),
])
def test_bad_input_exits_with_one_sentence(s3_env, task, kwargs, message: str, tmp_path: Path) -> None:
    with pytest.raises(Exit) as err:
        task(Context(), **kwargs)
    assert err.value.code == 1
    assert str(err.value.message).startswith("Error: " + message)
    assert "\n" not in str(err.value.message)
    assert list(tmp_path.glob("datasets/*")) == []


def test_remote_key_with_dotdot_is_refused_before_anything_is_written(s3_env, storage: Storage, tmp_path: Path) -> None:
    storage.client.put_object(Bucket=storage.bucket, Key=storage.key("datasets", "evil") + "/../../../escape.txt",
                              Body=b"x")
    storage.client.put_object(Bucket=storage.bucket, Key=storage.key("datasets", "evil", "fine.txt"), Body=b"y")
    result = fab("s3.download-dataset", "--name", "evil", "--dest", str(tmp_path / "evil"))
    assert result.returncode == 1
    assert "would land outside the destination" in result.stderr
    assert not (tmp_path / "evil").exists() and not (tmp_path / "escape.txt").exists()
