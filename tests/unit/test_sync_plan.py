"""Sync plans: scanning, comparing (size + sha256 metadata, else the md5 or multipart ETag) and the
plan per file. Pure logic: a fake listing, or moto's in-process ``mock_aws``; no servers."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig

from deploy.errors import StorageError
from deploy.storage import ObjectInfo
from deploy.storage.cache import LocalFacts, RemoteFacts, SyncCache, multipart_etag
from deploy.storage.sync import DOWNLOAD, SKIP, UPLOAD, compare, plan_download, plan_upload, scan_local


# --------------------------------------------------------------------------- comparing


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_compare_prefers_sha256_then_md5_etag() -> None:
    local = LocalFacts(3, 1, sha(b"abc"), hashlib.md5(b"abc").hexdigest())
    assert compare(local, RemoteFacts("x", 3, sha(b"abc")))[0] is True
    assert compare(local, RemoteFacts("x", 3, sha(b"abd")))[0] is False
    assert compare(local, RemoteFacts("e", 3, None, hashlib.md5(b"abc").hexdigest())) == (True, "unchanged (md5)")
    assert compare(local, RemoteFacts("e", 4, sha(b"abc")))[0] is False
    assert compare(local, RemoteFacts("opaque", 3))[0] is False  # undecidable means transfer


def test_compare_recomputes_multipart_etags_of_older_uploads(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(5 * 1024 * 1024 + 10))
    etag = multipart_etag(path, 5 * 1024 * 1024)
    assert etag.endswith("-2")
    local = LocalFacts(path.stat().st_size, 0, "s")
    assert compare(local, RemoteFacts(etag, local.size), str(path))[0] is True
    assert compare(local, RemoteFacts("0" * 32 + "-2", local.size), str(path))[0] is False


# --------------------------------------------------------------------------- plans


class FakeStorage:
    """Just enough of Storage for planning: a listing and heads from a dict."""

    bucket = "bucket"
    endpoint = "http://s3.test"
    config = TransferConfig(max_concurrency=4)

    def __init__(self, objects: dict[str, tuple[bytes, dict[str, str]]]) -> None:
        self.objects = {k: ObjectInfo(key=k, size=len(b), etag=hashlib.md5(b).hexdigest(), metadata=m)
                        for k, (b, m) in objects.items()}
        self.heads = 0

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    def list(self, prefix: str):
        for key, obj in sorted(self.objects.items()):
            if key.startswith(prefix):
                yield ObjectInfo(key=key, size=obj.size, etag=obj.etag)

    def head(self, key: str):
        self.heads += 1
        return self.objects.get(key)


def write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        os.utime(root / rel, ns=(1_600_000_000_000_000_000,) * 2)  # old: not "racy"


def test_upload_plan_skips_unchanged_and_sends_new_and_changed(tmp_path: Path) -> None:
    write(tmp_path, {"version_9/events": b"same", "version_14/events": b"new!", "hparams.yaml": b"v2"})
    store = FakeStorage({"p/logs/version_9/events": (b"same", {"sha256": sha(b"same")}),
                         "p/logs/hparams.yaml": (b"v1", {"sha256": sha(b"v1")})})
    plan = plan_upload(store, tmp_path, "p/logs")  # type: ignore[arg-type]
    actions = {i.rel: (i.action, i.reason) for i in plan.items}
    assert actions == {"version_9/events": (SKIP, "unchanged"), "version_14/events": (UPLOAD, "new"),
                       "hparams.yaml": (UPLOAD, "content differs")}
    assert plan.bytes_to_move == 6
    assert plan.headline().startswith("Upload 2 files (6 bytes)")


def test_a_second_plan_with_a_warm_cache_heads_nothing(tmp_path: Path) -> None:
    write(tmp_path, {f"f{i}": b"x" * i for i in range(1, 30)})
    store = FakeStorage({f"p/d/f{i}": (b"x" * i, {"sha256": sha(b"x" * i)}) for i in range(1, 30)})
    cache = SyncCache(tmp_path.parent / "cache.json")
    assert not plan_upload(store, tmp_path, "p/d", cache=cache).transfers  # type: ignore[arg-type]
    cache.save()
    store.heads = 0
    plan = plan_upload(store, tmp_path, "p/d", cache=SyncCache(tmp_path.parent / "cache.json"))  # type: ignore[arg-type]
    assert (len(plan.skipped), plan.transfers, store.heads) == (29, (), 0)
    assert plan.headline().startswith("Nothing to upload: 29 files")
    assert plan.headline(checked_in=0.5).endswith("already in s3://bucket/p/d; checked in 0.5 s.")


def test_objects_without_metadata_compare_by_md5(tmp_path: Path) -> None:
    write(tmp_path, {"wavs/a.wav": b"RIFF-a", "wavs/b.wav": b"RIFF-b"})
    store = FakeStorage({"p/datasets/x/wavs/a.wav": (b"RIFF-a", {}), "p/datasets/x/wavs/b.wav": (b"RIFF-B", {})})
    plan = plan_download(store, "p/datasets/x", tmp_path)  # type: ignore[arg-type]
    assert {i.rel: i.action for i in plan.items} == {"wavs/a.wav": SKIP, "wavs/b.wav": "download"}


def test_download_plan_refuses_keys_that_climb_out(tmp_path: Path) -> None:
    store = FakeStorage({"p/datasets/x/../../etc/passwd": (b"x", {})})
    with pytest.raises(StorageError, match="would land outside"):
        plan_download(store, "p/datasets/x", tmp_path)  # type: ignore[arg-type]


def test_missing_local_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=f"The local directory {tmp_path / 'nope'} does not exist"):
        scan_local(tmp_path / "nope")


def test_cache_forgets_nothing_it_should_not_trust(tmp_path: Path) -> None:
    cache = SyncCache(tmp_path / "c.json")
    now = 10_000_000_000_000
    cache.remember_local("old", LocalFacts(1, now - 5_000_000_000, "a"), hashed_at_ns=now)
    cache.remember_local("racy", LocalFacts(1, now - 10_000_000, "b"), hashed_at_ns=now)  # same clock tick
    cache.remember_remote("obj", RemoteFacts("etag-1", 1, "c"))
    cache.save()
    again = SyncCache(tmp_path / "c.json")
    assert again.local("old", 1, now - 5_000_000_000) is not None
    assert again.local("old", 1, now - 4_000_000_000) is None  # touched since: hash again
    assert again.local("racy", 1, now - 10_000_000) is None
    assert again.remote("obj", "etag-1", 1).sha256 == "c"
    assert again.remote("obj", "etag-2", 1) is None  # rewritten: a new ETag
    (tmp_path / "c.json").write_text("{not json")
    assert SyncCache(tmp_path / "c.json").local("old", 1, now - 5_000_000_000) is None  # corrupt = empty


# --------------------------------------------------------------------------- more plans


def test_our_temp_files_are_never_part_of_a_plan(tmp_path: Path) -> None:
    write(tmp_path, {"a.bin": b"a", ".a.bin.gpu-deploy-0123abcd.part": b"half",
                     ".a.bin.gpu-deploy-0123abcd.part.5F3a9b": b"s3transfer's own", ".hidden": b"kept"})
    assert sorted(scan_local(tmp_path)) == [".hidden", "a.bin"]
    plan = plan_upload(FakeStorage({}), tmp_path, "p/d")  # type: ignore[arg-type]
    assert [i.rel for i in plan.transfers] == [".hidden", "a.bin"]


def test_download_plan_says_new_changed_and_unchanged(tmp_path: Path) -> None:
    write(tmp_path, {"same.txt": b"same", "grown.txt": b"old", "edited.txt": b"abcd"})
    store = FakeStorage({"p/x/same.txt": (b"same", {"sha256": sha(b"same")}),
                         "p/x/grown.txt": (b"longer", {"sha256": sha(b"longer")}),
                         "p/x/edited.txt": (b"abce", {"sha256": sha(b"abce")}),
                         "p/x/sub/new.txt": (b"new", {})})
    plan = plan_download(store, "p/x", tmp_path)  # type: ignore[arg-type]
    assert {i.rel: (i.action, i.reason) for i in plan.items} == {
        "same.txt": (SKIP, "unchanged"), "grown.txt": (DOWNLOAD, "size differs"),
        "edited.txt": (DOWNLOAD, "content differs"), "sub/new.txt": (DOWNLOAD, "new")}
    assert {i.rel: i.path for i in plan.transfers}["sub/new.txt"] == str(tmp_path / "sub" / "new.txt")
    assert plan.headline() == f"Download 3 files (13 bytes) from s3://bucket/p/x to {tmp_path}; 1 unchanged."
    assert plan.lines()[0] == "  download    4 bytes  edited.txt  (content differs)"


def test_an_empty_prefix_is_named_rather_than_planned(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="Nothing under s3://bucket/p/none at http://s3.test; check the name"):
        plan_download(FakeStorage({}), "p/none", tmp_path)  # type: ignore[arg-type]


def test_one_file_with_the_same_bytes_but_other_metadata_is_written_again(moto_storage, tmp_path: Path) -> None:
    from deploy.storage.sync import plan_upload_file

    path = tmp_path / "epoch=1-step=10.ckpt"
    path.write_bytes(b"weights")
    key = moto_storage.key("checkpoints", path.name)
    moto_storage.client.put_object(Bucket=moto_storage.bucket, Key=key, Body=b"weights",
                                   Metadata={"sha256": sha(b"weights"), "step": "10"})
    same = plan_upload_file(moto_storage, path, key, {"step": "10"})
    assert [(i.action, i.reason) for i in same.items] == [(SKIP, "unchanged")]
    other = plan_upload_file(moto_storage, path, key, {"step": "11"})
    assert [(i.action, i.reason) for i in other.items] == [(UPLOAD, "metadata differs")]
    assert other.items[0].sha256 == sha(b"weights")


def test_one_file_download_skips_a_matching_local_copy(moto_storage, tmp_path: Path) -> None:
    from deploy.storage.sync import plan_download_file

    key = moto_storage.key("checkpoints", "last.ckpt")
    moto_storage.client.put_object(Bucket=moto_storage.bucket, Key=key, Body=b"old script, no metadata")
    dest = tmp_path / "last.ckpt"
    assert [i.reason for i in plan_download_file(moto_storage, key, dest).items] == ["new"]
    dest.write_bytes(b"old script, no metadata")
    assert [(i.action, i.reason) for i in plan_download_file(moto_storage, key, dest).items] == [
        (SKIP, "unchanged (md5)")]
    with pytest.raises(StorageError, match="No object s3://unit-bucket/p/checkpoints/nope.ckpt"):
        plan_download_file(moto_storage, moto_storage.key("checkpoints", "nope.ckpt"), dest)
