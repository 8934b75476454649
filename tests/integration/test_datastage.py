"""Staging a dataset from the real S3 server onto the real sshd host."""

from __future__ import annotations

import json
import shlex
import uuid
from pathlib import Path

import pytest

from deploy.hosts.dataset import MARKER, execute_stage, plan_for_host
from deploy.errors import HostError, StorageError
from deploy.storage import Storage


def test_dataset_is_staged_incrementally(storage: Storage, ssh_connection, tmp_path: Path) -> None:
    files = {"config.json": b'{"sr": 22050}', "metadata.csv": b"a|hello\nb|world\n",
             "wavs/a.wav": b"RIFF" + bytes(5000), "wavs/b.wav": b"RIFF" + bytes(7000)}
    for rel, data in files.items():
        (tmp_path / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / rel).write_bytes(data)
        storage.upload_file(tmp_path / "src" / rel, storage.key("datasets", "tiny", rel))
    dest = f"/tmp/gpu-deploy-data-{uuid.uuid4().hex[:8]}"
    try:
        plan = plan_for_host(ssh_connection, storage, "tiny", dest)
        assert len(plan.fetch) == 4 and not plan.noop
        execute_stage(ssh_connection, storage, plan)
        for rel, data in files.items():
            with ssh_connection.sftp().open(f"{dest}/{rel}") as handle:
                assert handle.read() == data
        assert plan_for_host(ssh_connection, storage, "tiny", dest).noop

        storage.client.put_object(Bucket=storage.bucket, Key=storage.key("datasets", "tiny", "metadata.csv"),
                                  Body=b"changed\n")
        storage.delete(storage.key("datasets", "tiny", "wavs/b.wav"))
        plan = plan_for_host(ssh_connection, storage, "tiny", dest)
        assert [f.path for f in plan.fetch] == ["metadata.csv"] and plan.delete == ("wavs/b.wav",)
        execute_stage(ssh_connection, storage, plan)
        listing = ssh_connection.run(f"cd {dest} && find . -type f | sort").stdout.split()
        assert listing == ["./.gpu-deploy-dataset.json", "./config.json", "./metadata.csv", "./wavs/a.wav"]
        marker = json.loads(ssh_connection.run(f"cat {dest}/{MARKER}").stdout)
        assert marker["dataset"] == "tiny" and "wavs/b.wav" not in marker["files"]
    finally:
        ssh_connection.run(f"rm -rf {dest}")


def test_missing_dataset_says_how_to_upload(storage: Storage, ssh_connection) -> None:
    with pytest.raises(StorageError, match="No dataset 'nope'"):
        plan_for_host(ssh_connection, storage, "nope", "/tmp/x")


@pytest.mark.parametrize("bad", ["../../escape-{tag}.txt", "/tmp/escape-{tag}.txt", "..\\..\\escape-{tag}.txt"])
def test_a_key_that_leaves_data_dir_is_refused_and_nothing_lands_outside(bad: str, storage: Storage, ssh_connection,
                                                                        tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    dest = f"/tmp/gpu-deploy-data-{tag}/inner"
    (tmp_path / "f").write_bytes(b"payload")
    storage.upload_file(tmp_path / "f", storage.key("datasets", "evil", "ok.txt"))
    # storage.key would clean the name; the bucket accepts any key, so put it raw ("tiny//tmp/x" too)
    storage.client.put_object(Bucket=storage.bucket, Key=storage.key("datasets", "evil") + "/" + bad.format(tag=tag),
                              Body=b"owned")
    try:
        with pytest.raises(StorageError, match="leaves its folder"):
            plan_for_host(ssh_connection, storage, "evil", dest)
        found = ssh_connection.run(f"find /tmp -maxdepth 3 -name 'escape-{tag}.txt'", warn=True).stdout
        assert found.strip() == ""
    finally:
        ssh_connection.run(f"rm -rf /tmp/gpu-deploy-data-{tag}")


def test_a_planted_marker_cannot_make_staging_delete_outside_data_dir(storage: Storage, ssh_connection,
                                                                     tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    root = f"/tmp/gpu-deploy-data-{tag}"
    dest = f"{root}/inner"
    (tmp_path / "f").write_bytes(b"payload")
    storage.upload_file(tmp_path / "f", storage.key("datasets", "tiny", "ok.txt"))
    marker = {"dataset": "tiny", "files": {"../victim.txt": {"etag": "x", "size": 1},
                                           f"{root}/victim.txt": {"etag": "x", "size": 1}}}
    ssh_connection.run(f"mkdir -p {dest} && echo keep > {root}/victim.txt && "
                       f"echo {shlex.quote(json.dumps(marker))} > {dest}/{MARKER}")
    try:
        plan = plan_for_host(ssh_connection, storage, "tiny", dest)
        assert plan.delete == ()
        execute_stage(ssh_connection, storage, plan)
        assert ssh_connection.run(f"cat {root}/victim.txt").stdout.strip() == "keep"
        assert ssh_connection.run(f"cat {dest}/ok.txt").stdout == "payload"
    finally:
        ssh_connection.run(f"rm -rf {root}")


def test_the_host_program_does_not_write_through_a_planted_link(storage: Storage, ssh_connection,
                                                               tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    root = f"/tmp/gpu-deploy-data-{tag}"
    (tmp_path / "f").write_bytes(b"payload")
    storage.upload_file(tmp_path / "f", storage.key("datasets", "tiny", "wavs/a.wav"))
    ssh_connection.run(f"mkdir -p {root}/inner {root}/outside && ln -s {root}/outside {root}/inner/wavs")
    try:
        plan = plan_for_host(ssh_connection, storage, "tiny", f"{root}/inner")
        with pytest.raises(HostError, match="resolves outside"):
            execute_stage(ssh_connection, storage, plan)
        assert ssh_connection.run(f"ls -A {root}/outside").stdout.strip() == ""
    finally:
        ssh_connection.run(f"rm -rf {root}")
