"""plan_stage: which dataset files a host must fetch or delete, from the bucket listing and its marker."""

from __future__ import annotations

from deploy.hosts.dataset import RemoteFile, plan_stage

FILES = [RemoteFile("config.json", "p/datasets/tiny/config.json", 10, "e1"),
         RemoteFile("wavs/a.wav", "p/datasets/tiny/wavs/a.wav", 5000, "e2")]


def marker(files: list[RemoteFile], dataset: str = "tiny") -> dict:
    return {"dataset": dataset, "files": {f.path: {"etag": f.etag, "size": f.size} for f in files}}


def test_a_fresh_host_fetches_everything() -> None:
    plan = plan_stage(FILES, {}, "tiny", "/data")
    assert plan.fetch == tuple(FILES) and plan.delete == () and plan.unchanged == 0
    assert plan.bytes == 5010 and "fetch 2 files" in plan.describe()


def test_a_current_host_fetches_nothing_and_says_so() -> None:
    plan = plan_stage(FILES, marker(FILES), "tiny", "/data")
    assert plan.noop and plan.describe() == "dataset tiny: 2 files already staged at /data"


def test_a_changed_file_is_fetched_and_a_removed_one_deleted() -> None:
    changed = [FILES[0], RemoteFile("wavs/a.wav", FILES[1].key, 5000, "e2-new")]
    old = marker([*FILES, RemoteFile("wavs/b.wav", "k", 1, "e3")])
    plan = plan_stage(changed, old, "tiny", "/data")
    assert [f.path for f in plan.fetch] == ["wavs/a.wav"] and plan.delete == ("wavs/b.wav",)
    assert plan.marker == marker(changed)


def test_another_dataset_in_the_folder_counts_as_nothing_staged() -> None:
    plan = plan_stage(FILES, marker(FILES, dataset="other"), "tiny", "/data")
    assert len(plan.fetch) == 2 and plan.delete == ()
