"""The image store in the bucket: codecs, the key layout, layer records and image manifests.

Layout under ``<prefix>/docker-images/``::

    layers/<hex>.tar.zst          one compressed layer, named by its diff id (sha256 of the layer tar)
    layers/<hex>.tar.zst.json     its record: sizes and the sha256 of the stored object (written after it)
    manifests/<name>/<tag>.json   one image tag: image id, config, ordered layers, codec, date, commit
    <name>-<tag>.tar.gz|.tar.zst  the archive format: a whole `docker save`, as older scripts wrote it
    tmp/<uuid>                    a layer whose digest was unknown while it streamed (renamed after)

A layer object only ever appears complete (multipart uploads complete atomically, and the upload is
refused before completion when the layer does not hash to its name). A layer counts as present
when its record exists, and the record is written after the object.

Example::

    store = ImageStore(Storage.from_settings(settings))
    print([m.ref for m in store.manifests()])
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import threading
import uuid
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from botocore.exceptions import BotoCoreError, ClientError

from deploy.errors import ImageError, StorageError
from deploy.storage import IMAGES, MB, ObjectInfo, Storage

ZSTD_LEVEL = 1
ZSTD_THREADS = 2
GZIP_LEVEL = 1          # gzip is the compatibility codec: level 1 keeps it near zstd's speed
GZIP_BLOCK = 4 * MB     # gzip is compressed as independent members, block by block, in parallel


@dataclass(frozen=True)
class Codec:
    name: str
    ext: str          # after ".tar"


CODECS = {"zstd": Codec("zstd", ".zst"), "gzip": Codec("gzip", ".gz"), "none": Codec("none", "")}


def codec(name: str) -> Codec:
    if name not in CODECS:
        raise ImageError(f"Unknown codec {name!r}; use one of {', '.join(CODECS)}.")
    return CODECS[name]


# --------------------------------------------------------------------------- compressing reader


class _ParallelGzip:
    """gzip as a sequence of independent members compressed on a thread pool (zlib frees the GIL).

    Any gunzip (``gzip -d``, Python's gzip/zlib) reads a multi-member file as one stream.
    """

    def __init__(self, raw: IO[bytes], level: int = GZIP_LEVEL, workers: int = 2) -> None:
        self.raw = raw
        self.level = level
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gzip")
        self.pending: deque = deque()
        self.window = workers * 2
        self.eof = False

    def _compress(self, block: bytes) -> bytes:
        comp = zlib.compressobj(self.level, zlib.DEFLATED, 31)
        return comp.compress(block) + comp.flush()

    def next_chunk(self) -> bytes:
        while not self.eof and len(self.pending) < self.window:
            block = self.raw.read(GZIP_BLOCK)
            if not block:
                self.eof = True
                break
            self.pending.append(self.pool.submit(self._compress, block))
        if not self.pending:
            if self.eof and not getattr(self, "_emitted", False):
                self._emitted = True
                return self._compress(b"")  # an empty input is still a valid gzip file
            return b""
        self._emitted = True
        return self.pending.popleft().result()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class CompressingReader:
    """``read(n)`` gives the compressed form of ``raw``; counts and hashes what it gives.

    When ``expected_digest`` is set, reaching the end checks that ``raw`` (a HashingReader) hashed
    to it and raises otherwise: the upload reading from here then fails before S3 completes it.
    """

    def __init__(self, raw, codec_name: str, expected_digest: str | None = None, size: int = -1) -> None:
        self.raw = raw
        self.codec = codec(codec_name)
        self.expected = expected_digest
        self.sha = hashlib.sha256()
        self.bytes = 0
        self._buf = b""
        self._gzip: _ParallelGzip | None = None
        self._zstd = None
        if self.codec.name == "zstd":
            import zstandard

            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=ZSTD_THREADS, write_checksum=True)
            self._zstd = compressor.stream_reader(raw, size=size, read_size=MB)
        elif self.codec.name == "gzip":
            self._gzip = _ParallelGzip(raw)
        self._done = False

    def readable(self) -> bool:
        return True

    def _next(self, n: int) -> bytes:
        if self._zstd is not None:
            return self._zstd.read(n)
        if self._gzip is not None:
            if not self._buf:
                self._buf = self._gzip.next_chunk()
            out, self._buf = self._buf[:n], self._buf[n:]
            return out
        return self.raw.read(n)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(MB), b""))
        out = []
        got = 0
        while got < n and not self._done:
            data = self._next(n - got)
            if not data:
                self._finish()
                break
            out.append(data)
            got += len(data)
        data = b"".join(out)
        self.sha.update(data)
        self.bytes += len(data)
        return data

    def _finish(self) -> None:
        self._done = True
        if self._gzip is not None:
            self._gzip.close()
        if self.expected is not None and getattr(self.raw, "digest", None) != self.expected:
            raise ImageError(f"The layer streamed from the engine hashes to {getattr(self.raw, 'digest', '?')}, "
                             f"not {self.expected}; its upload was refused.")

    def close(self) -> None:
        if self._gzip is not None:
            self._gzip.close()

    @property
    def digest(self) -> str:
        return self.sha.hexdigest()


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class LayerRecord:
    """One stored layer: what it is (diff id, size) and what lies in the bucket (key, codec, checksum)."""

    diff_id: str
    size: int
    key: str
    codec: str
    stored_size: int
    sha256: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LayerRecord":
        return cls(**{k: data[k] for k in ("diff_id", "size", "key", "codec", "stored_size", "sha256")})


@dataclass(frozen=True)
class ImageManifest:
    """One image tag in the store: enough to rebuild a `docker save` tar from the layers."""

    name: str
    tag: str
    image_id: str
    repo_tags: list[str]
    config: str
    layers: list[LayerRecord]
    codec: str
    created: str
    commit: str | None = None
    os: str = "linux"
    architecture: str = "amd64"
    schema: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def stored_size(self) -> int:
        return sum(layer.stored_size for layer in self.layers)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "ImageManifest":
        raw = json.loads(data)
        raw["layers"] = [LayerRecord.from_dict(layer) for layer in raw["layers"]]
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in known})


# --------------------------------------------------------------------------- the store


class ImageStore:
    """Keys and small objects of the image store, over a :class:`Storage`."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.root = storage.key(IMAGES)
        self._lock = threading.Lock()

    # keys
    def layer_key(self, diff_id: str, codec_name: str) -> str:
        return f"{self.root}/layers/{_hex(diff_id)}.tar{codec(codec_name).ext}"

    @staticmethod
    def record_key(layer_key: str) -> str:
        return layer_key + ".json"

    def manifest_key(self, name: str, tag: str) -> str:
        return self.storage.key(IMAGES, "manifests", name, f"{tag}.json")

    def archive_key(self, name: str, tag: str, codec_name: str) -> str:
        return self.storage.key(IMAGES, f"{name.replace('/', '_')}-{tag}.tar{codec(codec_name).ext}")

    def tmp_key(self) -> str:
        return f"{self.root}/tmp/{uuid.uuid4().hex}"

    # small objects
    def get_json(self, key: str) -> Any | None:
        try:
            body = self.storage.client.get_object(Bucket=self.storage.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self.storage.explain(exc, key) from exc
        except BotoCoreError as exc:
            raise self.storage.explain(exc, key) from exc
        try:
            return json.loads(body)
        except ValueError as exc:
            raise StorageError(f"{self.storage.url(key)} is not valid JSON ({exc}); delete it and push again.") from exc

    def put_json(self, key: str, data: Any) -> None:
        body = data if isinstance(data, bytes) else json.dumps(data, indent=1).encode()
        try:
            self.storage.client.put_object(Bucket=self.storage.bucket, Key=key, Body=body,
                                           ContentType="application/json",
                                           Metadata={"sha256": hashlib.sha256(body).hexdigest(),
                                                     "size": str(len(body))})
        except (ClientError, BotoCoreError) as exc:
            raise self.storage.explain(exc, key) from exc

    def find_layer(self, diff_id: str, prefer: str = "zstd") -> LayerRecord | None:
        """The stored layer ``diff_id`` in any codec (``prefer`` first), when both object and record exist."""
        for name in [prefer, *[c for c in CODECS if c != prefer]]:
            record = self.get_json(self.record_key(self.layer_key(diff_id, name)))
            if record is not None and self.storage.head(record["key"]) is not None:
                return LayerRecord.from_dict(record)
        return None

    def write_layer_record(self, record: LayerRecord) -> None:
        self.put_json(self.record_key(record.key), asdict(record))

    def read_manifest(self, name: str, tag: str) -> ImageManifest | None:
        data = self.get_json(self.manifest_key(name, tag))
        return None if data is None else ImageManifest.from_json(json.dumps(data).encode())

    def write_manifest(self, manifest: ImageManifest) -> None:
        self.put_json(self.manifest_key(manifest.name, manifest.tag), manifest.to_json())

    def manifests(self) -> list[ImageManifest]:
        out = []
        for obj in self.storage.list(f"{self.root}/manifests/"):
            if obj.key.endswith(".json"):
                data = self.get_json(obj.key)
                if data is not None:
                    out.append(ImageManifest.from_json(json.dumps(data).encode()))
        return sorted(out, key=lambda m: (m.name, m.tag))

    def archives(self) -> list[tuple[ObjectInfo, dict | None]]:
        """Archive-format objects at the top of the store, with their records when we wrote them."""
        objects = {o.key: o for o in self.storage.list(self.root + "/") if posixpath.dirname(o.key) == self.root}
        out = []
        for key, obj in sorted(objects.items()):
            if archive_codec(key) is not None:
                record = self.get_json(key + ".json") if key + ".json" in objects else None
                out.append((obj, record))
        return out


def archive_codec(key: str) -> str | None:
    for suffix, name in ((".tar.zst", "zstd"), (".tar.gz", "gzip"), (".tgz", "gzip"), (".tar", "none")):
        if key.endswith(suffix):
            return name
    return None


def _hex(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64:
        raise ImageError(f"{digest!r} is not a sha256 digest.")
    return hexpart
