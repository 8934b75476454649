"""Staging a dataset from the real S3 server onto the real sshd host."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from deploy.hosts.dataset import MARKER, execute_stage, plan_for_host
from deploy.errors import StorageError
from deploy.settings import load_settings
from deploy.storage import Storage


@pytest.fixture
def storage(s3_env) -> Storage:
    return Storage.from_settings(load_settings())


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
