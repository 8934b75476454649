"""Reading `docker save` tar streams as they arrive, in both layouts, without staging them on disk.

`docker save` writes one of two layouts:

- classic (Docker < 25, the engine here): ``<v1id>/VERSION``, ``<v1id>/json``, ``<v1id>/layer.tar``
  per layer, then ``<imageid>.json`` (the config), ``manifest.json`` and ``repositories``. The
  layer folders are named by legacy v1 ids, so a layer's diff id (the sha256 of its tar) is only
  known once it has been hashed, or predicted from its small ``json`` file (see :func:`v1_id`).
- OCI (Docker 25+): ``blobs/sha256/<digest>`` for layers, config and manifests, then ``index.json``,
  ``manifest.json`` and ``oci-layout``. An uncompressed layer blob's digest is its diff id.

:func:`read_save` walks the stream once. For each layer it calls ``on_layer`` with a
:class:`LayerEntry` whose ``fileobj`` is read from the live stream (and hashed on the way), so a
caller can compress and upload a layer while the engine is still exporting the next one.

Example::

    image = read_save(stream, on_layer=lambda entry: upload(entry.fileobj), diff_ids=known)
    print(image.image_id, image.diff_ids)
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import queue
import re
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO

from deploy.errors import ImageError

SMALL = 16 * 1024 * 1024
"""Non-layer members (configs, manifests) are kept in memory up to this size."""

TAR_BUFSIZE = 1024 * 1024

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CLASSIC_LAYER = re.compile(r"^([0-9a-f]{64})/layer\.tar$")
_CLASSIC_JSON = re.compile(r"^([0-9a-f]{64})/json$")
_OCI_BLOB = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")
_UNCOMPRESSED_LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
)


# --------------------------------------------------------------------------- readers


COALESCE = 1024 * 1024


def _coalesce(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Join small pieces into blocks of at least ``size`` (the engine's HTTP chunks are ~32 KiB;
    handing each one across threads costs more than reading it)."""
    pending: list[bytes] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += len(chunk)
        if held >= size:
            yield pending[0] if len(pending) == 1 else b"".join(pending)
            pending, held = [], 0
    if pending:
        yield b"".join(pending)


class IterReader:
    """A file-like ``read(n)`` over an iterator of byte chunks (the docker SDK's ``get_image``).

    With ``prefetch`` chunks, a thread keeps pulling from the iterator while the caller is busy
    (compressing, hashing), so the engine keeps exporting; memory stays at ``prefetch`` chunks.
    """

    def __init__(self, chunks: Iterable[bytes], prefetch: int = 0,
                 on_read: Callable[[int], None] | None = None) -> None:
        self._buf = memoryview(b"")
        self._on_read = on_read
        self.total = 0
        self._error: BaseException | None = None
        if prefetch > 0:
            self._queue: queue.Queue | None = queue.Queue(maxsize=prefetch)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._pump, args=(iter(chunks),), daemon=True,
                                            name="docker-save-prefetch")
            self._thread.start()
            self._iter: Iterator[bytes] = self._from_queue()
        else:
            self._queue = None
            self._iter = iter(chunks)

    def _pump(self, chunks: Iterator[bytes]) -> None:
        try:
            for chunk in _coalesce(chunks, COALESCE):
                while not self._stop.is_set():
                    try:
                        self._queue.put(chunk, timeout=0.2)  # type: ignore[union-attr]
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            self._error = exc
        finally:
            while not self._stop.is_set():
                try:
                    self._queue.put(None, timeout=0.2)  # type: ignore[union-attr]
                    break
                except queue.Full:
                    continue

    def _from_queue(self) -> Iterator[bytes]:
        while True:
            chunk = self._queue.get()  # type: ignore[union-attr]
            if chunk is None:
                if self._error is not None:
                    raise self._error
                return
            yield chunk

    def close(self) -> None:
        if self._queue is not None:
            self._stop.set()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        out = []
        wanted = n if n is not None and n >= 0 else float("inf")
        got = 0
        while got < wanted:
            if not self._buf:
                try:
                    chunk = next(self._iter)
                except StopIteration:
                    break
                self.total += len(chunk)
                if self._on_read:
                    self._on_read(len(chunk))
                self._buf = memoryview(chunk)
                continue
            take = self._buf[: int(min(len(self._buf), wanted - got))]
            self._buf = self._buf[len(take):]
            out.append(bytes(take))
            got += len(take)
        return b"".join(out)


class HashingReader:
    """Reads through ``raw`` and keeps the sha256 and count of what passed."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.bytes = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if data:
            self.sha.update(data)
            self.bytes += len(data)
        return data

    def readinto(self, buf) -> int:  # zstandard prefers read(); keep the protocol complete
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def drain(self, chunk: int = TAR_BUFSIZE) -> None:
        while self.read(chunk):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


# --------------------------------------------------------------------------- legacy ids


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The layer chain ids (what an engine stores a layer under) of an ordered list of diff ids."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


def _go_json(value: object) -> str:
    # Go's encoding/json: compact, UTF-8, and <, >, & and U+2028/9 escaped inside strings.
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text


def v1_id(v1_json: bytes, chain_id: str, drop_os: bool = False) -> str:
    """The legacy v1 id the classic `docker save` names a layer folder by (moby ``v1.CreateID``).

    The id is the sha256 of the layer's v1 json without its id, with ``layer_id`` (the chain id)
    and the parent as a digest, keys sorted. The engine adds ``os`` to the non-top layers' json
    after computing the id, hence ``drop_os``.
    """
    data = json.loads(v1_json)
    data.pop("id", None)
    if data.get("parent"):
        data["parent"] = "sha256:" + data["parent"]
    data["layer_id"] = chain_id
    if drop_os:
        data.pop("os", None)
    body = "{" + ",".join(f"{_go_json(k)}:{_go_json(data[k])}" for k in sorted(data)) + "}"
    return hashlib.sha256(body.encode()).hexdigest()


def predict_diff_id(folder: str, v1_json: bytes, diff_ids: Sequence[str]) -> str | None:
    """Which of ``diff_ids`` the classic layer folder ``folder`` holds, from its v1 json; None if unsure.

    This lets a push decide to skip or upload a layer *before* reading it. A wrong guess cannot
    corrupt the store: the layer is hashed as it streams and the upload is refused on a mismatch.
    """
    try:
        chains = chain_ids(diff_ids)
        for drop_os in (False, True):
            hits = [diff_ids[i] for i, chain in enumerate(chains) if v1_id(v1_json, chain, drop_os) == folder]
            if hits:
                return hits[0]
    except (ValueError, TypeError, AttributeError):
        pass
    return None


# --------------------------------------------------------------------------- the walk


@dataclass
class LayerEntry:
    """One layer tar as it streams by. Read ``fileobj`` (or not: the rest is drained and hashed)."""

    name: str
    size: int
    fileobj: HashingReader
    predicted: str | None = None
    """The diff id known before reading (OCI blob name, or the classic v1-id prediction)."""

    @property
    def diff_id(self) -> str:
        """The sha256 of what has been read; the diff id once the whole layer has passed."""
        return self.fileobj.digest


@dataclass
class SavedImage:
    """What a `docker save` stream held, resolved once the whole stream has passed."""

    layout: str
    config: bytes
    repo_tags: list[str]
    diff_ids: list[str]
    layer_sizes: list[int]
    files: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def image_id(self) -> str:
        return "sha256:" + hashlib.sha256(self.config).hexdigest()

    @property
    def config_json(self) -> dict:
        return json.loads(self.config)


def read_save(stream: IO[bytes], on_layer: Callable[[LayerEntry], None] | None = None,
              diff_ids: Sequence[str] = ()) -> SavedImage:
    """Walk a `docker save` tar stream once; call ``on_layer`` for each layer; resolve the image.

    ``diff_ids`` (the image's RootFS layers, from ``docker image inspect``) lets layers be named
    before they are read. Raises :class:`ImageError` when the stream is not a docker save tar or
    its layers do not hash to what its config says.
    """
    known = set(diff_ids)
    small: dict[str, bytes] = {}
    digests: dict[str, str] = {}   # member name -> sha256 of its content
    sizes: dict[str, int] = {}
    links: dict[str, str] = {}     # classic saves link a layer that appears twice to its first copy
    try:
        archive = tarfile.open(fileobj=stream, mode="r|", bufsize=TAR_BUFSIZE)
        for member in archive:
            name = posixpath.normpath(member.name)
            if member.issym() and _CLASSIC_LAYER.match(name):
                links[name] = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
                continue
            if not member.isfile():
                continue
            classic = _CLASSIC_LAYER.match(name)
            blob = _OCI_BLOB.match(name)
            is_layer = bool(classic) or bool(blob and ("sha256:" + blob.group(1) in known or member.size > SMALL))
            if not is_layer:
                if member.size > SMALL:
                    raise ImageError(f"The docker save stream holds an unexpected large file {name!r} "
                                     f"({member.size} bytes); is it really a docker save tar?")
                handle = archive.extractfile(member)
                small[name] = handle.read() if handle else b""
                continue
            predicted = _predicted_diff_id(blob, classic, small, diff_ids)
            digest, got = _read_layer(archive, member, name, predicted, on_layer)
            if got != member.size:
                raise ImageError(f"The layer {name} ended after {got} of {member.size} bytes.")
            digests[name] = digest
            sizes[name] = member.size
        archive.close()
        for name, target in links.items():
            if target in digests:
                digests[name], sizes[name] = digests[target], sizes[target]
    except tarfile.TarError as exc:
        raise ImageError(f"The docker save stream is not a valid tar ({exc}).") from exc
    return resolve(small, digests, sizes)


def _predicted_diff_id(blob: re.Match[str] | None, classic: re.Match[str] | None, small: dict[str, bytes],
                       diff_ids: Sequence[str]) -> str | None:
    """The layer's diff id before reading it: an OCI blob is named by it; a classic folder's v1 json
    commits to its chain id (read earlier in the stream)."""
    if blob:
        return "sha256:" + blob.group(1)
    if classic and diff_ids:
        v1 = small.get(f"{classic.group(1)}/json")
        if v1 is not None:
            return predict_diff_id(classic.group(1), v1, diff_ids)
    return None


def _read_layer(archive: tarfile.TarFile, member: tarfile.TarInfo, name: str, predicted: str | None,
                on_layer: Callable[[LayerEntry], None] | None) -> tuple[str, int]:
    """Hand one layer to ``on_layer``, then finish reading it: its digest and the bytes it held."""
    handle = archive.extractfile(member)
    reader = HashingReader(handle)
    if on_layer is not None:
        on_layer(LayerEntry(name=name, size=member.size, fileobj=reader, predicted=predicted))
    if reader.bytes == 0 and predicted is not None:
        # Untouched and already named by the engine (an OCI blob digest, or a v1 id that
        # commits to the layer's chain id): skip it without hashing; that is the floor.
        skipped = 0
        while True:
            chunk = handle.read(TAR_BUFSIZE)
            if not chunk:
                break
            skipped += len(chunk)
        return predicted, skipped
    reader.drain()
    return reader.digest, reader.bytes


def resolve(small: dict[str, bytes], digests: dict[str, str], sizes: dict[str, int]) -> SavedImage:
    """Tie the manifest, the config and the hashed layers of a walked save stream together."""
    if "index.json" in small and "manifest.json" not in small:
        return _resolve_oci(small, digests, sizes)
    if "manifest.json" not in small:
        raise ImageError("The docker save stream has no manifest.json or index.json; is it a docker save tar?")
    try:
        manifest = json.loads(small["manifest.json"])
        entry = manifest[0]
        config_name = posixpath.normpath(entry["Config"])
        layer_names = [posixpath.normpath(p) for p in entry["Layers"]]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ImageError(f"The docker save manifest.json is malformed ({exc}).") from exc
    if len(manifest) != 1:
        raise ImageError(f"The docker save stream holds {len(manifest)} images; save one image at a time.")
    layout = "oci" if "index.json" in small else "classic"
    return _finish(layout, small, config_name, layer_names, entry.get("RepoTags") or [], digests, sizes)


def _resolve_oci(small: dict[str, bytes], digests: dict[str, str], sizes: dict[str, int]) -> SavedImage:
    try:
        index = json.loads(small["index.json"])
        descriptor = index["manifests"][0]
        manifest = json.loads(small[_blob_name(descriptor["digest"])])
        if "manifests" in manifest:  # an index of one platform manifest
            manifest = json.loads(small[_blob_name(manifest["manifests"][0]["digest"])])
        config_name = _blob_name(manifest["config"]["digest"])
        layers = manifest["layers"]
        tag = descriptor.get("annotations", {}).get("io.containerd.image.name") or \
            descriptor.get("annotations", {}).get("org.opencontainers.image.ref.name")
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ImageError(f"The OCI index.json or manifest of the docker save stream is malformed ({exc}).") from exc
    for layer in layers:
        if layer.get("mediaType") not in _UNCOMPRESSED_LAYER_TYPES:
            raise ImageError(f"The OCI layer {layer.get('digest')} is {layer.get('mediaType')}; "
                             "only uncompressed layer blobs are supported.")
    repo_tags = [_short_ref(tag)] if tag else []
    return _finish("oci", small, config_name, [_blob_name(layer["digest"]) for layer in layers],
                   repo_tags, digests, sizes)


def _blob_name(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"blobs/{algo}/{hexpart}"


def _short_ref(ref: str) -> str:
    # containerd names images in full (docker.io/library/x:tag); docker shows them short.
    for prefix in ("docker.io/library/", "docker.io/"):
        if ref.startswith(prefix):
            return ref[len(prefix):]
    return ref


def _finish(layout: str, small: dict[str, bytes], config_name: str, layer_names: list[str],
            repo_tags: list[str], digests: dict[str, str], sizes: dict[str, int]) -> SavedImage:
    if config_name not in small:
        raise ImageError(f"The docker save stream lacks its config {config_name}.")
    config = small[config_name]
    try:
        expected = json.loads(config)["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ImageError(f"The image config {config_name} is malformed ({exc}).") from exc
    missing = [n for n in layer_names if n not in digests]
    if missing:
        raise ImageError(f"The docker save stream lacks the layer {missing[0]} its manifest names.")
    actual = [digests[n] for n in layer_names]
    if actual != list(expected):
        bad = next(i for i, (a, e) in enumerate(zip(actual, expected, strict=False)) if a != e) \
            if len(actual) == len(expected) else 0
        raise ImageError(f"Layer {bad} of the docker save stream hashes to "
                         f"{actual[bad] if actual else 'nothing'} but the config says "
                         f"{expected[bad] if expected else 'nothing'}.")
    return SavedImage(layout=layout, config=config, repo_tags=list(repo_tags), diff_ids=actual,
                      layer_sizes=[sizes[n] for n in layer_names], files=small)
