"""Checkpoint names and numeric ordering: pure logic, no servers. (Sync plans: test_sync_plan.py.)"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from deploy.storage.checkpoints import (
    CheckpointInfo,
    checkpoint_metadata,
    list_checkpoints,
    natural_sorted,
    parse_checkpoint_name,
    sort_checkpoints,
)
from deploy.storage import ObjectInfo

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


class ListedStorage:
    """A bucket's checkpoints as listed (with millisecond times, as S3 lists them) and headed (metadata)."""

    config = None

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, dict[str, str], datetime]] = {}
        self.headed: list[str] = []

    def key(self, *parts: str) -> str:
        return "/".join(("p", *parts))

    def put(self, name: str, data: bytes, step: int, when: datetime) -> None:
        self.objects[self.key("checkpoints", name)] = (data, {"step": str(step)}, when)

    def list(self, prefix: str):
        for key, (data, _meta, when) in sorted(self.objects.items()):
            yield ObjectInfo(key, len(data), when, etag=str(hash(data)))

    def head(self, key: str):
        self.headed.append(key)
        if key not in self.objects:
            return None
        data, meta, when = self.objects[key]
        return ObjectInfo(key, len(data), when.replace(microsecond=0), etag=str(hash(data)), metadata=dict(meta))


def test_a_listing_heads_only_the_checkpoints_it_has_not_headed_as_listed(tmp_path) -> None:
    from deploy.storage.checkpoints import HeadCache

    storage = ListedStorage()
    moment = datetime(2026, 12, 4, 22, 0, 0, 250000, tzinfo=timezone.utc)
    storage.put("a.ckpt", b"a", 10, moment)
    storage.put("b.ckpt", b"b", 20, moment)
    heads = HeadCache(tmp_path / "heads.json")
    assert [c.step for c in list_checkpoints(storage, heads=heads)] == [10, 20]
    assert len(storage.headed) == 2
    storage.headed.clear()
    storage.put("c.ckpt", b"c", 5, moment)                           # new: headed
    storage.put("b.ckpt", b"B", 30, moment + timedelta(seconds=1))  # written again: headed again
    found = list_checkpoints(storage, heads=heads)
    assert [(c.name, c.step) for c in found] == [("c.ckpt", 5), ("a.ckpt", 10), ("b.ckpt", 30)]
    assert sorted(storage.headed) == ["p/checkpoints/b.ckpt", "p/checkpoints/c.ckpt"]  # a.ckpt came from the cache
    del storage.objects["p/checkpoints/a.ckpt"]
    storage.headed.clear()
    assert [c.name for c in list_checkpoints(storage, heads=heads)] == ["c.ckpt", "b.ckpt"]
    assert storage.headed == [] and "a.ckpt" not in (tmp_path / "heads.json").read_text()  # gone: forgotten
    (tmp_path / "heads.json").write_text("[not, json")                  # damaged: everything is headed again
    assert [c.step for c in list_checkpoints(storage, heads=heads)] == [5, 30] and len(storage.headed) == 2


def test_a_listing_that_heads_nothing_new_leaves_the_kept_heads_as_they_are(tmp_path) -> None:
    from deploy.storage.checkpoints import HeadCache

    storage = ListedStorage()
    storage.put("a.ckpt", b"a", 10, datetime(2026, 12, 4, 22, 0, 0, 250000, tzinfo=timezone.utc))
    heads = HeadCache(tmp_path / "heads.json")
    list_checkpoints(storage, heads=heads)
    kept = tmp_path / "heads.json"
    before = kept.stat().st_mtime_ns
    inode = kept.stat().st_ino  # a write replaces the file: a new inode
    assert [c.step for c in list_checkpoints(storage, heads=HeadCache(kept))] == [10]
    assert kept.stat().st_ino == inode and kept.stat().st_mtime_ns == before
