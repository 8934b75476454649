"""The host-side image loader's pure parts, run here as the host runs them: gzip members, the
object check, and the save tar it writes for `docker load` (with a fake loader instead of docker)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest

from deploy.remote import hostload


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_gunzip_reads_every_member_of_a_block_wise_gzip() -> None:
    blocks = [b"a" * 5000, b"b" * 7000, b"c"]
    stream = b"".join(gzip.compress(block) for block in blocks)
    chunks = [stream[i:i + 333] for i in range(0, len(stream), 333)]
    assert b"".join(hostload.gunzip(chunks)) == b"".join(blocks)


def test_an_object_is_checked_for_size_then_sha256_naming_its_key() -> None:
    good = hostload.Verified([b"ab", b"c"], "k/layer", sha(b"abc"), 3)
    assert b"".join(good) == b"abc"
    good.check()
    short = hostload.Verified([b"ab"], "k/layer", sha(b"abc"), 3)
    short.drain()
    with pytest.raises(hostload.LoadError, match="k/layer is truncated: 2 of 3 bytes"):
        short.check()
    wrong = hostload.Verified([b"abd"], "k/layer", sha(b"abc"), 3)
    wrong.drain()
    with pytest.raises(hostload.LoadError, match=f"k/layer is corrupt: sha256 {sha(b'abd')}, expected {sha(b'abc')}"):
        wrong.check()


def test_chunk_reader_returns_exactly_what_is_asked() -> None:
    reader = hostload.ChunkReader([b"abc", b"", b"defg", b"h"])
    assert [reader.read(2), reader.read(4), reader.read(-1), reader.read(1)] == [b"ab", b"cdef", b"gh", b""]
    assert reader.count == 8 and reader.sha.hexdigest() == sha(b"abcdefgh")


class FakeLoader:
    """Collects what would go into `docker load`'s stdin."""

    def __init__(self) -> None:
        self.data = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.data.write(data)


def layers_job(layer: bytes, stored: bytes, diff_id: str) -> dict:
    return {
        "manifest": [{"Config": "cfg.json", "RepoTags": ["t/x:v1"], "Layers": ["l1/layer.tar"]}],
        "config_name": "cfg.json", "config": "{}", "range_size": 1 << 20, "parallel": 2,
        "layers": [{"name": "l1/layer.tar", "diff_id": diff_id, "size": len(layer), "key": "p/layers/l1.tar.gz",
                    "codec": "gzip", "stored_size": len(stored), "sha256": sha(stored), "url": "http://unused"}],
    }


def serve(monkeypatch: pytest.MonkeyPatch, stored: bytes) -> None:
    monkeypatch.setattr(hostload, "fetch", lambda url, total, range_size, parallel, counter: iter([stored]))


def test_load_layers_writes_a_save_tar_docker_load_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = b"layer tar bytes " * 100
    stored = gzip.compress(layer)
    serve(monkeypatch, stored)
    loader = FakeLoader()
    hostload.load_layers(layers_job(layer, stored, "sha256:" + sha(layer)), loader, lambda n: None)
    with tarfile.open(fileobj=io.BytesIO(loader.data.getvalue())) as tar:
        assert tar.getnames() == ["manifest.json", "cfg.json", "l1/layer.tar"]
        assert json.loads(tar.extractfile("manifest.json").read())[0]["RepoTags"] == ["t/x:v1"]
        assert tar.extractfile("l1/layer.tar").read() == layer


def test_a_layer_that_does_not_hash_to_its_diff_id_never_completes_the_tar(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = b"what the bucket holds"
    stored = gzip.compress(layer)
    serve(monkeypatch, stored)
    loader = FakeLoader()
    with pytest.raises(hostload.LoadError, match="p/layers/l1.tar.gz does not decompress to its layer"):
        hostload.load_layers(layers_job(layer, stored, "sha256:" + sha(b"what the manifest says")), loader,
                             lambda n: None)
    assert not loader.data.getvalue().endswith(b"\0" * 1024)  # no end-of-archive: docker load loads nothing
