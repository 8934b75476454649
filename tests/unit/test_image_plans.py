"""Image plans without an engine or a server: which layers a push sends, which a pull fetches, what
gc deletes, and how every plan prints. The bucket-side ones run on moto's in-process ``mock_aws``."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest

from deploy import images
from deploy.errors import ImageError
from deploy.images.pulling import plan_from_archive, plan_from_manifest
from deploy.images.pushing import decide_archive, decide_layers
from deploy.images.ref import ImageRef, short_id
from deploy.images.store import ImageManifest, ImageStore, LayerRecord


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


A, B, C = digest("a"), digest("b"), digest("c")
IMAGE = digest("config")


def record(diff_id: str, codec: str = "zstd", stored: int = 1500) -> LayerRecord:
    return LayerRecord(diff_id=diff_id, size=4000, key=f"p/docker-images/layers/{diff_id[7:]}.tar.zst", codec=codec,
                       stored_size=stored, sha256=digest("stored" + diff_id))


def manifest(*diff_ids: str, codec: str = "zstd") -> ImageManifest:
    return ImageManifest(name="team/train", tag="v3", image_id=IMAGE, repo_tags=["team/train:v3"], config="{}",
                         layers=[record(d, codec) for d in diff_ids], codec=codec, created="2026-01-01T00:00:00Z")


REF = ImageRef.parse("team/train:v3")
KEY = "p/docker-images/manifests/team/train/v3.json"


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize(("text", "name", "tag"), [
    ("team/train:v3", "team/train", "v3"), ("train", "train", "latest"),
    ("localhost:5000/team/train", "localhost:5000/team/train", "latest"),
    ("localhost:5000/team/train:v1", "localhost:5000/team/train", "v1"),
])
def test_image_refs_parse_with_latest_as_the_default_tag(text: str, name: str, tag: str) -> None:
    assert ImageRef.parse(text) == ImageRef(name, tag)


@pytest.mark.parametrize(("text", "message"), [
    ("", "No image given"), ("team/train@sha256:abc", "by digest"), ("team/../x:v1", "is not an image name:tag"),
])
def test_bad_image_refs_are_refused_in_one_sentence(text: str, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        ImageRef.parse(text)


def test_short_ids_are_the_twelve_digits_people_see() -> None:
    assert short_id(A) == A[7:19]
    assert short_id(None) == ""


# --------------------------------------------------------------------------- push


def test_push_sends_only_the_layers_the_bucket_lacks_once_each() -> None:
    plan = decide_layers(str(REF), IMAGE, [A, B, A, C], in_bucket={A}, stored_image_id=None, codec_name="zstd",
                         key=KEY)
    assert plan.layers == [(A, "skip"), (B, "upload"), (C, "upload")]
    assert plan.uploads == [B, C] and not plan.noop
    assert plan.describe() == [
        f"team/train:v3 ({short_id(IMAGE)}): 2 of 3 layers to upload (zstd), then write {KEY}.",
        f"  skip    {short_id(A)}", f"  upload  {short_id(B)}", f"  upload  {short_id(C)}"]


def test_push_of_an_image_the_bucket_has_whole_is_a_noop() -> None:
    plan = decide_layers(str(REF), IMAGE, [A, B], in_bucket={A, B}, stored_image_id=IMAGE, codec_name="zstd", key=KEY)
    assert plan.noop
    assert plan.describe() == [f"team/train:v3: nothing to do (the bucket already has team/train:v3 = "
                               f"{short_id(IMAGE)} and all its layers)."]
    # The tag points at another image: write the manifest again even with every layer present.
    assert not decide_layers(str(REF), IMAGE, [A, B], {A, B}, digest("older"), "zstd", KEY).noop
    # A layer went missing (gc, a hand delete): upload it, whatever the manifest says.
    assert decide_layers(str(REF), IMAGE, [A, B], {A}, IMAGE, "zstd", KEY).uploads == [B]


def test_archive_push_is_skipped_only_for_the_same_image() -> None:
    key = "p/docker-images/team_train-v3.tar.zst"
    assert decide_archive(str(REF), IMAGE, [A], IMAGE, "zstd", key).noop
    plan = decide_archive(str(REF), IMAGE, [A], None, "zstd", key)
    assert plan.describe() == [f"team/train:v3: upload the whole image as {key} (zstd)."]


# --------------------------------------------------------------------------- pull


def facts(images: dict[str, list[str]] | None = None, tags: dict[str, str] | None = None, zstd: bool = True) -> dict:
    return {"images": images or {}, "tags": tags or {}, "zstd": zstd}


def test_pull_fetches_only_above_the_longest_chain_the_host_has() -> None:
    # The host has A then B (another image) and A, C: only the common prefix with A, B, C counts.
    plan = plan_from_manifest(REF, "gpu-1", manifest(A, B, C), KEY,
                              facts({digest("x"): [A, B], digest("y"): [A, C, B]}))
    assert [(r.diff_id, action) for r, action in plan.layers] == [(A, "skip"), (B, "skip"), (C, "fetch")]
    assert plan.action == "load" and plan.fetch_bytes == 1500
    assert plan.describe() == [
        "team/train:v3 on gpu-1: fetch 1 of 3 layers (1.5 kB) and docker load them.",
        f"  skip    {short_id(A)}  1.5 kB", f"  skip    {short_id(B)}  1.5 kB", f"  fetch   {short_id(C)}  1.5 kB"]


def test_pull_needs_the_whole_chain_below_a_layer_to_reuse_it() -> None:
    # B alone (without A below it) is no use to docker load: everything is fetched.
    plan = plan_from_manifest(REF, "gpu-1", manifest(A, B), KEY, facts({digest("x"): [B]}))
    assert [action for _, action in plan.layers] == ["fetch", "fetch"]


def test_pull_of_an_image_the_host_has_is_a_noop_or_a_tag() -> None:
    have = {IMAGE: [A, B]}
    noop = plan_from_manifest(REF, "gpu-1", manifest(A, B), KEY, facts(have, {"team/train:v3": IMAGE}))
    assert (noop.action, noop.fetch_bytes) == ("noop", 0)
    assert noop.describe() == [f"team/train:v3 on gpu-1: nothing to do (the host already has {short_id(IMAGE)})."]
    tag = plan_from_manifest(REF, "gpu-1", manifest(A, B), KEY, facts(have, {"team/train:v3": digest("old")}))
    assert tag.action == "tag"
    assert tag.describe() == [f"team/train:v3 on gpu-1: tag the image {short_id(IMAGE)} it already has."]


def test_pull_of_zstd_layers_onto_a_host_without_zstd_says_what_to_install() -> None:
    with pytest.raises(ImageError, match="gpu-1 has no zstd to unpack team/train:v3; install it"):
        plan_from_manifest(REF, "gpu-1", manifest(A), KEY, facts(zstd=False))
    plan = plan_from_manifest(REF, "gpu-1", manifest(A, codec="gzip"), KEY, facts(zstd=False))
    assert plan.action == "load"


def test_pull_of_an_archive() -> None:
    key = "p/docker-images/team_train-v3.tar.gz"
    plan = plan_from_archive(REF, "gpu-1", key, "gzip", 3_000_000, {"image_id": IMAGE, "sha256": "s"}, facts())
    assert (plan.format, plan.action, plan.fetch_bytes) == ("archive", "load", 3_000_000)
    assert plan.describe() == [f"team/train:v3 on gpu-1: load the archive {key} (3.0 MB)."]
    there = plan_from_archive(REF, "gpu-1", key, "gzip", 3_000_000, {"image_id": IMAGE}, facts({IMAGE: [A]}))
    assert there.action == "tag"
    # An older script's archive has no record: no image id to compare, so it is loaded.
    assert plan_from_archive(REF, "gpu-1", key, "gzip", 10, {}, facts({IMAGE: [A]})).action == "load"


# --------------------------------------------------------------------------- the catalog, on mock_aws


def test_gc_deletes_only_old_layers_no_manifest_uses(moto_storage) -> None:
    store = ImageStore(moto_storage)
    used, unused = record(A), record(B)
    for layer in (used, unused):
        moto_storage.client.put_object(Bucket=moto_storage.bucket, Key=layer.key, Body=b"layer")
        store.write_layer_record(layer)
    store.write_manifest(manifest(A))
    assert images.plan_gc(moto_storage).delete == []  # younger than the grace period
    later = datetime.now(timezone.utc) + timedelta(hours=2)
    plan = images.plan_gc(moto_storage, now=later)
    assert sorted(key for key, _ in plan.delete) == sorted([unused.key, unused.key + ".json"])
    assert plan.describe()[0].startswith("2 object(s), ") and "1 layer(s) in use." in plan.describe()[0]
    assert plan.describe()[1] == f"  delete  {unused.key}  5 bytes"
    images.execute_deletes(moto_storage, [key for key, _ in plan.delete])
    assert store.find_layer(A) is not None and store.find_layer(B) is None


def test_delete_plan_names_the_manifest_and_keeps_the_layers(moto_storage) -> None:
    store = ImageStore(moto_storage)
    store.write_manifest(manifest(A))
    plan = images.plan_delete(moto_storage, "team/train:v3")
    assert plan.keys == [KEY]
    assert plan.describe() == [
        "team/train:v3: delete 1 object(s); its layers stay until `fab images.gc` removes the ones no image uses.",
        f"  delete  {KEY}"]
    assert images.plan_delete(moto_storage, "team/other:v1").describe() == [
        "team/other:v1: nothing to delete (not in the bucket)."]
