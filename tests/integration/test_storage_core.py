"""The Storage facade against the real S3 server: verified, atomic transfers."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from deploy.errors import StorageError
from deploy.storage import Storage, file_sha256


def test_upload_file_records_size_and_sha256(storage: Storage, tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 1000)
    key = storage.key("checkpoints", "a.bin")
    storage.upload_file(path, key, metadata={"step": "7"})
    info = storage.head(key)
    assert info is not None
    assert (info.size, info.sha256, info.metadata["step"]) == (1000, file_sha256(path), "7")


def test_download_is_verified_and_atomic(storage: Storage, tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"payload" * 100)
    key = storage.key("checkpoints", "a.bin")
    storage.upload_file(path, key)
    dest = tmp_path / "out" / "a.bin"
    storage.download_file(key, dest)
    assert dest.read_bytes() == path.read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == ["a.bin"]


def test_corrupt_object_is_refused_and_leaves_no_file(storage: Storage, tmp_path: Path) -> None:
    key = storage.key("checkpoints", "bad.ckpt")
    storage.client.put_object(Bucket=storage.bucket, Key=key, Body=b"tampered",
                              Metadata={"sha256": "0" * 64, "size": "8"})
    dest = tmp_path / "bad.ckpt"
    with pytest.raises(StorageError, match="is corrupt"):
        storage.download_file(key, dest)
    assert list(tmp_path.iterdir()) == []


def test_upload_stream_of_unknown_length(storage: Storage) -> None:
    key = storage.key("docker-images", "stream.bin")
    result = storage.upload_stream(io.BufferedReader(io.BytesIO(b"z" * (20 * 1024 * 1024))), key)
    assert result.bytes == 20 * 1024 * 1024
    assert storage.head(key).size == 20 * 1024 * 1024


def test_keys_that_climb_out_are_refused(storage: Storage) -> None:
    with pytest.raises(StorageError, match="leaves its folder"):
        storage.key("datasets", "../secrets")
