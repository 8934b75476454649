"""Parsing `docker save` streams in both layouts, from small synthetic tars (no engine needed)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from deploy.errors import ImageError
from deploy.images.archive import IterReader, chain_ids, predict_diff_id, read_save


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


LAYERS = [layer_tar({"bin/a": b"a" * 3000}), layer_tar({"app/train.py": b"print('hi')\n"})]
DIFF_IDS = [sha(layer) for layer in LAYERS]
CONFIG = json.dumps({"architecture": "amd64", "os": "linux",
                     "rootfs": {"type": "layers", "diff_ids": DIFF_IDS}}).encode()


def save_tar(members: list[tuple[str, bytes]], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def classic_save(layers=LAYERS, config=CONFIG) -> bytes:
    # Folders sort by v1 id, so the top layer may come first; the manifest comes last, as here.
    folders = ["f" * 64, "0" * 64]
    members = []
    for folder, layer in sorted(zip(folders, layers)):
        members += [(f"{folder}/VERSION", b"1.0"), (f"{folder}/json", b"{}"), (f"{folder}/layer.tar", layer)]
    config_name = sha(config)[7:] + ".json"
    manifest = [{"Config": config_name, "RepoTags": ["team/train:v1"],
                 "Layers": [f"{f}/layer.tar" for f in folders]}]
    members += [(config_name, config), ("manifest.json", json.dumps(manifest).encode()),
                ("repositories", b"{}")]
    return save_tar(members)


def oci_save(config=CONFIG) -> bytes:
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(layer),
                    "size": len(layer)} for layer in LAYERS],
    }).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest),
        "size": len(manifest),
        "annotations": {"io.containerd.image.name": "docker.io/team/train:v1"}}]}).encode()
    blobs = sorted([(f"blobs/sha256/{sha(b)[7:]}", b) for b in (*LAYERS, config, manifest)])
    return save_tar([*blobs, ("index.json", index), ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')])


def test_classic_layout_resolves_layers_in_manifest_order_not_stream_order() -> None:
    seen = []
    image = read_save(io.BytesIO(classic_save()), on_layer=lambda e: seen.append((e.name, e.fileobj.read())))
    assert image.layout == "classic"
    assert image.diff_ids == DIFF_IDS
    assert image.layer_sizes == [len(layer) for layer in LAYERS]
    assert image.repo_tags == ["team/train:v1"]
    assert image.image_id == sha(CONFIG)
    # The stream gave the top layer (folder 000...) first.
    assert [data for _, data in seen] == [LAYERS[1], LAYERS[0]]


def test_oci_layout_names_layers_before_they_are_read() -> None:
    predicted = []
    image = read_save(io.BytesIO(oci_save()), on_layer=lambda e: predicted.append(e.predicted),
                      diff_ids=DIFF_IDS)
    assert image.layout == "oci"
    assert image.diff_ids == DIFF_IDS
    assert image.repo_tags == ["team/train:v1"]
    assert image.image_id == sha(CONFIG)
    assert sorted(predicted) == sorted(DIFF_IDS)


def test_a_layer_the_consumer_does_not_read_is_still_hashed() -> None:
    image = read_save(io.BytesIO(classic_save()), on_layer=lambda e: e.fileobj.read(10))
    assert image.diff_ids == DIFF_IDS


def test_layer_that_does_not_match_the_config_is_refused() -> None:
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [DIFF_IDS[0], sha(b"other")]}}).encode()
    with pytest.raises(ImageError, match="Layer 1 of the docker save stream hashes to"):
        read_save(io.BytesIO(classic_save(config=config)))


def test_not_a_docker_save_tar_is_refused() -> None:
    with pytest.raises(ImageError, match="no manifest.json"):
        read_save(io.BytesIO(save_tar([("hello.txt", b"hi")])))
    with pytest.raises(ImageError, match="not a valid tar"):
        read_save(io.BytesIO(b"\x00garbage" * 200))


def test_symlinked_duplicate_layer_resolves_to_its_first_copy() -> None:
    layers = [LAYERS[0], LAYERS[0]]
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [DIFF_IDS[0]] * 2}}).encode()
    config_name = sha(config)[7:] + ".json"
    a, b = "a" * 64, "b" * 64
    manifest = [{"Config": config_name, "RepoTags": [], "Layers": [f"{a}/layer.tar", f"{b}/layer.tar"]}]
    data = save_tar([(f"{a}/layer.tar", layers[0]), (config_name, config),
                     ("manifest.json", json.dumps(manifest).encode())],
                    links={f"{b}/layer.tar": f"../{a}/layer.tar"})
    assert read_save(io.BytesIO(data)).diff_ids == [DIFF_IDS[0]] * 2


# Real v1 json files from `docker save` of the busybox test image on Docker 20.10, with their
# folder names and the image's diff ids: the prediction must reproduce the engine's ids exactly.
BUSYBOX_DIFF_IDS = ["sha256:3015cba2b8c322f00fbfbfbe0db515f15c2c36107ddba45f4b1998309d008787",
                    "sha256:f4cc33f07a9b5f1cb565e56763a4953a37cb0cb4c56957ac0400bc4e4d851c67"]
BOTTOM = ("aaebd946b3e92e358a7541e2329918f61a61a8e23a53c824f666f14cde6e29a6",
          b'{"id":"aaebd946b3e92e358a7541e2329918f61a61a8e23a53c824f666f14cde6e29a6","created":"1970-01-01T00:00:00Z",'
          b'"container_config":{"Hostname":"","Domainname":"","User":"","AttachStdin":false,"AttachStdout":false,'
          b'"AttachStderr":false,"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":null,"Cmd":null,"Image":"",'
          b'"Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":null},"os":"linux"}')
TOP = ("9d77da198ac57409f8e83999b9179263be2bb34ab6b6d3a66508b3a0bafe2513",
       b'{"id":"9d77da198ac57409f8e83999b9179263be2bb34ab6b6d3a66508b3a0bafe2513","parent":"aaebd946b3e92e358a7541e2'
       b'329918f61a61a8e23a53c824f666f14cde6e29a6","created":"2026-11-23T02:39:02.195997289Z","container":"2dfeeeedd61'
       b'b4522f0eb900501999c16b3fb86c4ab45391cffa61c2a2cf4dbd6","container_config":{"Hostname":"2dfeeeedd61b","Domainn'
       b'ame":"","User":"","AttachStdin":false,"AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,'
       b'"StdinOnce":false,"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh'
       b'","-c","#(nop) ","CMD [\\"sh\\"]"],"Image":"sha256:fa2d08772b4e0366b79b3b54cd78bcb2204405fa54c691c39e9bcb906c99'
       b'0277","Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":{}},"docker_version":"20.10.24'
       b'+dfsg1","config":{"Hostname":"","Domainname":"","User":"","AttachStdin":false,"AttachStdout":false,"AttachStde'
       b'rr":false,"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbi'
       b'n:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"Image":"sha256:fa2d08772b4e0366b79b3b54cd78bcb2204405fa54c691c39e9bcb90'
       b'6c990277","Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":null},"architecture":"amd6'
       b'4","os":"linux"}')


def test_classic_layer_folders_are_named_before_reading_from_their_v1_json() -> None:
    assert predict_diff_id(*BOTTOM, BUSYBOX_DIFF_IDS) == BUSYBOX_DIFF_IDS[0]
    assert predict_diff_id(*TOP, BUSYBOX_DIFF_IDS) == BUSYBOX_DIFF_IDS[1]
    assert predict_diff_id("0" * 64, BOTTOM[1], BUSYBOX_DIFF_IDS) is None
    assert predict_diff_id(BOTTOM[0], b"not json", BUSYBOX_DIFF_IDS) is None


def test_chain_ids_follow_the_engine_rule() -> None:
    a, b = BUSYBOX_DIFF_IDS
    assert chain_ids([a, b]) == [a, "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()]


def test_iter_reader_with_prefetch_returns_every_byte_in_order() -> None:
    chunks = [bytes([i]) * (i * 100 + 1) for i in range(50)]
    reader = IterReader(iter(chunks), prefetch=3)
    out = b"".join(iter(lambda: reader.read(777), b""))
    assert out == b"".join(chunks)
