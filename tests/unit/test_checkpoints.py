"""Checkpoint names, numeric ordering, and sync plans: pure logic, no servers."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig

from deploy.storage.checkpoints import (
    CheckpointInfo,
    checkpoint_metadata,
    natural_sorted,
    parse_checkpoint_name,
    sort_checkpoints,
)
from deploy.errors import StorageError
from deploy.storage import ObjectInfo
from deploy.storage.sync import SKIP, UPLOAD, compare, plan_download, plan_upload, scan_local
from deploy.storage.cache import LocalFacts, RemoteFacts, SyncCache, multipart_etag

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(("name", "epoch", "step", "val_loss"), [
    ("epoch=749-step=355500-val_loss=27.5963.ckpt", 749, 355500, 27.5963),
    ("epoch=3-step=120.ckpt", 3, 120, None),
    ("epoch=3-step=120-v1.ckpt", 3, 120, None),
    ("epoch=0-step=5-val_loss=-0.25.ckpt", 0, 5, -0.25),
    ("model-epoch=2-step=40-train_loss=1.5.ckpt", 2, 40, None),
    ("last.ckpt", None, None, None),
    ("last-v2.ckpt", None, None, None),
    ("step=abc.ckpt", None, None, None),
])
def test_checkpoint_names_are_parsed(name: str, epoch, step, val_loss) -> None:
    parsed = parse_checkpoint_name(name)
    assert (parsed.epoch, parsed.step, parsed.val_loss) == (epoch, step, val_loss)


def test_checkpoint_metadata_records_epoch_and_step() -> None:
    assert checkpoint_metadata(749, 355500) == {"epoch": "749", "step": "355500"}
    assert checkpoint_metadata(None, 7, 0.5) == {"step": "7", "val_loss": "0.5"}
    with pytest.raises(ValueError):
        checkpoint_metadata(1, -1)


def info(name: str, minutes: int = 0, metadata: dict[str, str] | None = None) -> CheckpointInfo:
    return CheckpointInfo.from_object(ObjectInfo(key=f"p/checkpoints/{name}", size=10,
                                                 last_modified=T0 + timedelta(minutes=minutes),
                                                 metadata=metadata or {}))


def test_latest_is_the_highest_step_not_the_last_string() -> None:
    # As strings, "epoch=9-..." sorts after "epoch=10-..." and "step=9" after "step=14".
    names = ["epoch=10-step=14000.ckpt", "epoch=9-step=9999.ckpt", "epoch=100-step=140000.ckpt",
             "epoch=99-step=99999.ckpt"]
    ordered = sort_checkpoints(info(n, minutes=i) for i, n in enumerate(reversed(names)))
    assert [c.step for c in ordered] == [9999, 14000, 99999, 140000]
    assert sorted(names)[-1] == "epoch=99-step=99999.ckpt"  # what a string sort would resume from


def test_metadata_step_beats_the_name_and_unknown_steps_rank_lowest() -> None:
    ordered = sort_checkpoints([
        info("epoch=5-step=500.ckpt", minutes=1),
        info("last.ckpt", minutes=9),  # an older script's upload: no step anywhere, newest mtime
        info("renamed.ckpt", minutes=0, metadata={"step": "900", "epoch": "9"}),
    ])
    assert [c.name for c in ordered] == ["last.ckpt", "epoch=5-step=500.ckpt", "renamed.ckpt"]
    assert (ordered[-1].step, ordered[-1].epoch, ordered[-1].step_source) == (900, 9, "metadata")


def test_without_any_step_the_newest_upload_wins() -> None:
    ordered = sort_checkpoints([info("b.ckpt", minutes=5), info("a.ckpt", minutes=1), info("c.ckpt", minutes=3)])
    assert ordered[-1].name == "b.ckpt"


def test_log_versions_sort_by_number() -> None:
    assert natural_sorted(["version_14", "version_9", "version_100", "version_2"]) == [
        "version_2", "version_9", "version_14", "version_100"]


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
    assert plan.headline().startswith("Upload 2 files (6 B)")


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
