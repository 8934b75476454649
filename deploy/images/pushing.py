"""Push an image from the local engine to the bucket: only the layers the bucket lacks, or one archive.

``push`` streams ``docker save`` from the engine, names each layer before reading it
(:mod:`deploy.images.archive`), skips the layers the bucket has, and streams the others through a
compressor into concurrent multipart uploads: nothing is staged on disk and memory stays bounded.
Each layer's record goes up as soon as the layer is complete, so an interrupted push keeps the
finished layers; the manifest goes last. A second push of the same image does nothing.

Example::

    plan = plan_push(docker_client(), storage, "team/train:v3")
    print("\\n".join(plan.describe()))
    print(push(client, storage, "team/train:v3", plan=plan).summary())
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from boto3.s3.transfer import TransferConfig
from rich.filesize import decimal

from deploy.errors import ImageError, StorageError
from deploy.images.archive import HashingReader, IterReader, LayerEntry, read_save
from deploy.images.engine import git_commit, inspect_local, save_stream
from deploy.images.ref import ImageProgress, ImageRef, PlanText, plan_row, short_id
from deploy.images.store import CompressingReader, ImageManifest, ImageStore, LayerRecord, codec
from deploy.storage.bucket import MB, Storage

FORMATS = ("layers", "archive")
PART_SIZE = 16 * MB
IN_MEMORY_PARTS = 10    # parts buffered by the transfer manager: PART_SIZE * this bounds upload memory


@dataclass
class PushPlan(PlanText):
    """What a push would do: which of the image's layers go up and which the bucket has."""

    ref: str
    image_id: str
    format: str
    codec: str
    key: str                              # the manifest or archive key
    layers: list[tuple[str, str]]         # (diff id, "upload" | "skip")
    noop: bool = False
    reason: str = ""

    @property
    def uploads(self) -> list[str]:
        return [d for d, action in self.layers if action == "upload"]

    def headline(self) -> str:
        if self.noop:
            return f"{self.ref}: nothing to do ({self.reason})."
        if self.format == "archive":
            return f"{self.ref}: upload the whole image as {self.key} ({self.codec})."
        return (f"{self.ref} ({short_id(self.image_id)}): {len(self.uploads)} of {len(self.layers)} layers to "
                f"upload ({self.codec}), then write {self.key}.")

    def rows(self) -> list[str]:
        if self.noop or self.format == "archive":
            return []
        return [plan_row(action, short_id(diff_id)) for diff_id, action in self.layers]


@dataclass
class PushResult:
    """What :func:`push` did: bytes read from the engine, sent (compressed) and their raw size."""

    plan: PushPlan
    read_bytes: int = 0
    raw_bytes: int = 0                    # uncompressed bytes of the layers uploaded
    sent_bytes: int = 0                   # compressed bytes uploaded
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.sent_bytes if self.sent_bytes else 0.0

    def summary(self) -> str:
        if self.plan.noop:
            return self.plan.headline()
        rate = self.read_bytes / self.seconds / MB if self.seconds else 0.0
        return (f"{self.plan.ref}: uploaded {len(self.uploaded)} layer(s), {decimal(self.sent_bytes)} "
                f"({decimal(self.raw_bytes)} before compression, ratio {self.ratio:.2f}), skipped "
                f"{len(self.skipped)}; read {decimal(self.read_bytes)} from the engine in {self.seconds:.1f} s "
                f"({rate:.0f} MB/s).")


# --------------------------------------------------------------------------- planning


def decide_layers(ref: str, image_id: str, diff_ids: Sequence[str], in_bucket: set[str], stored_image_id: str | None,
                  codec_name: str, key: str) -> PushPlan:
    """Pure: each distinct layer is uploaded unless ``in_bucket``; nothing to do when the bucket's
    manifest already names ``image_id`` (``stored_image_id``) and has every layer."""
    layers = [(d, "skip" if d in in_bucket else "upload") for d in dict.fromkeys(diff_ids)]
    noop = stored_image_id == image_id and all(action == "skip" for _, action in layers)
    return PushPlan(ref, image_id, "layers", codec_name, key, layers, noop=noop,
                    reason=f"the bucket already has {ref} = {short_id(image_id)} and all its layers")


def decide_archive(ref: str, image_id: str, diff_ids: Sequence[str], stored_image_id: str | None, codec_name: str,
                   key: str) -> PushPlan:
    """Pure: the whole image goes up as one object unless the bucket's archive is this image."""
    return PushPlan(ref, image_id, "archive", codec_name, key, [(d, "upload") for d in diff_ids],
                    noop=stored_image_id == image_id, reason=f"the bucket already has {short_id(image_id)} at {key}")


def plan_push(client: Any, storage: Storage, image: str, codec_name: str = "zstd", fmt: str = "layers",
              force: bool = False) -> PushPlan:
    """Decide what a push of ``image`` would upload (asks the engine and the bucket; uploads nothing)."""
    codec(codec_name)
    if fmt not in FORMATS:
        raise ImageError(f"Unknown format {fmt!r}; use layers or archive.")
    ref = ImageRef.parse(image)
    info = inspect_local(client, ref)
    image_id = info["Id"]
    diff_ids = list((info.get("RootFS") or {}).get("Layers") or [])
    store = ImageStore(storage)
    if fmt == "archive":
        key = store.archive_key(ref.name, ref.tag, codec_name)
        record = None if force else store.get_json(key + ".json")
        stored = record.get("image_id") if record and storage.head(key) is not None else None
        return decide_archive(str(ref), image_id, diff_ids, stored, codec_name, key)
    in_bucket = set() if force else {d for d in set(diff_ids) if store.find_layer(d, prefer=codec_name) is not None}
    manifest = None if force else store.read_manifest(ref.name, ref.tag)
    return decide_layers(str(ref), image_id, diff_ids, in_bucket, manifest.image_id if manifest else None,
                         codec_name, store.manifest_key(ref.name, ref.tag))


# --------------------------------------------------------------------------- pushing


def push(client: Any, storage: Storage, image: str, codec_name: str = "zstd", fmt: str = "layers",
         force: bool = False, progress: ImageProgress | None = None, plan: PushPlan | None = None,
         commit: str | None = None) -> PushResult:
    """Push ``image`` to the bucket in ``fmt`` (see the module doc). Idempotent: a second run does nothing."""
    progress = progress or ImageProgress()
    plan = plan or plan_push(client, storage, image, codec_name, fmt, force)
    result = PushResult(plan)
    if plan.noop:
        return result
    started = time.monotonic()
    ref = ImageRef.parse(plan.ref)
    store = ImageStore(storage)
    commit = commit if commit is not None else git_commit()
    info = inspect_local(client, ref)
    progress.begin(f"push {ref}", int(info.get("Size") or 0))
    stream = save_stream(client, ref, progress)
    uploader = _LayerUploader(storage, store, plan, progress, result)
    try:
        if plan.format == "archive":
            uploader.archive(stream, info, commit)
        else:
            _push_layers(store, plan, stream, uploader, info, commit)
    finally:
        stream.close()
        progress.end()
    result.read_bytes = stream.total
    result.seconds = time.monotonic() - started
    return result


def _push_layers(store: ImageStore, plan: PushPlan, stream: IterReader, uploader: "_LayerUploader",
                 info: dict[str, Any], commit: str | None) -> None:
    """Read the save stream, uploading layers as they pass, then write the manifest (last)."""
    ref = ImageRef.parse(plan.ref)
    saved = read_save(stream, on_layer=uploader, diff_ids=[d for d, _ in plan.layers])
    if saved.image_id != plan.image_id:
        raise ImageError(f"docker save of {ref} gave image {saved.image_id}, not {plan.image_id}; "
                         "was it retagged during the push? Push again.")
    records = []
    for diff_id, _size in zip(saved.diff_ids, saved.layer_sizes, strict=True):
        record = uploader.records.get(diff_id) or store.find_layer(diff_id, prefer=plan.codec)
        if record is None:
            raise ImageError(f"The layer {diff_id} of {ref} is neither in the bucket nor uploaded; push again.")
        records.append(record)
    config = saved.config_json
    store.write_manifest(ImageManifest(
        name=ref.name, tag=ref.tag, image_id=saved.image_id, repo_tags=list(info.get("RepoTags") or []),
        config=saved.config.decode(), layers=records, codec=plan.codec, created=_now(), commit=commit,
        os=config.get("os", "linux"), architecture=config.get("architecture", "amd64")))


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _transfer_config(storage: Storage) -> TransferConfig:
    config = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                            max_concurrency=max(2, min(8, storage.config.max_request_concurrency)),
                            max_io_queue=100, use_threads=True)
    config.max_in_memory_upload_chunks = IN_MEMORY_PARTS  # s3transfer's knob, not in boto3's signature
    return config


class _LayerUploader:
    """Per layer of the save stream: skip it, or compress and upload it, verified, atomically."""

    def __init__(self, storage: Storage, store: ImageStore, plan: PushPlan, progress: ImageProgress,
                 result: PushResult) -> None:
        self.storage, self.store, self.plan, self.progress, self.result = storage, store, plan, progress, result
        self.records: dict[str, LayerRecord] = {}
        self.todo = set(plan.uploads)
        self.config = _transfer_config(storage)
        self.started = datetime.now(timezone.utc) - timedelta(seconds=5)

    def __call__(self, entry: LayerEntry) -> None:
        diff_id = entry.predicted
        if diff_id is not None and diff_id not in self.todo:
            self.result.skipped.append(diff_id)
            self.progress.skipped(diff_id, entry.size)
            return
        key = self.store.layer_key(diff_id, self.plan.codec) if diff_id else self.store.tmp_key()
        record = self._upload(entry, key, diff_id)
        if diff_id is None:
            record = self._rename(record, entry.diff_id)
        # The record goes up as soon as its layer is complete: an interrupted push keeps it.
        self.store.write_layer_record(record)
        self.records[record.diff_id] = record
        self.todo.discard(record.diff_id)

    def _upload(self, entry: LayerEntry, key: str, expected: str | None) -> LayerRecord:
        source = entry.fileobj
        reader = CompressingReader(_Counting(source, self.progress.raw), self.plan.codec, expected_digest=expected,
                                   size=entry.size)
        sent_before = self.result.sent_bytes

        def sent(n: int) -> None:
            self.result.sent_bytes += n
            self.progress.sent(n)

        self._send(reader, key, {"diff-id": expected or "pending"}, sent)
        self.result.raw_bytes += entry.size
        self.result.sent_bytes = sent_before + reader.bytes  # exact, whatever the callbacks reported
        diff_id = expected or source.digest
        self.result.uploaded.append(diff_id)
        return LayerRecord(diff_id=diff_id, size=entry.size, key=key, codec=self.plan.codec,
                           stored_size=reader.bytes, sha256=reader.digest)

    def _send(self, reader: CompressingReader, key: str, metadata: dict[str, str],
              sent: Callable[[int], None]) -> None:
        """Upload ``reader`` to ``key``; on any failure abort what this push left open there."""
        try:
            self.storage.upload_stream(reader, key, metadata=metadata, progress=sent, config=self.config)
        except BaseException as exc:
            reader.close()
            self._abort_uploads(key, mine=True)
            if isinstance(exc, StorageError) and isinstance(exc.__cause__, ImageError):
                raise exc.__cause__ from None
            raise
        # The object is complete now. An upload on the same key that began before this push is what a
        # killed push (kill -9, a lost laptop) left open: nothing will finish it, and its parts bill.
        self._abort_uploads(key, mine=False)

    def _rename(self, record: LayerRecord, diff_id: str) -> LayerRecord:
        # The layer's name was not known while it streamed: move it under its digest now.
        final = self.store.layer_key(diff_id, self.plan.codec)
        try:
            if self.store.find_layer(diff_id, prefer=self.plan.codec) is None:
                self.storage.copy(record.key, final)
        finally:
            self.storage.delete(record.key)
        self.result.uploaded[-1] = diff_id
        return LayerRecord(diff_id=diff_id, size=record.size, key=final, codec=record.codec,
                           stored_size=record.stored_size, sha256=record.sha256)

    def archive(self, stream: IterReader, info: dict[str, Any], commit: str | None) -> None:
        """The whole save stream as one compressed object, and its ``.json`` record beside it."""
        plan, raw = self.plan, HashingReader(stream)
        reader = CompressingReader(_Counting(raw, self.progress.raw), plan.codec)
        self._send(reader, plan.key, {"image-id": plan.image_id, "codec": plan.codec}, self.progress.sent)
        self.result.raw_bytes, self.result.sent_bytes = raw.bytes, reader.bytes
        self.result.uploaded = [plan.key]
        self.store.put_json(plan.key + ".json", {
            "image_id": plan.image_id, "repo_tags": list(info.get("RepoTags") or []), "codec": plan.codec,
            "size": raw.bytes, "stored_size": reader.bytes, "sha256": reader.digest, "created": _now(),
            "commit": commit})

    def _abort_uploads(self, key: str, mine: bool) -> None:
        """Abort the multipart uploads on ``key`` this push started (``mine``: after a failure; s3transfer
        aborts too, belt and braces), or those started before it (a killed push's leftovers)."""
        try:
            for upload in self.storage.multipart_uploads(key):
                initiated = upload.get("initiated")
                ours = initiated is None or initiated >= self.started
                if upload["key"] == key and ours == mine:
                    self.storage.abort_multipart(key, upload["upload_id"])
        except StorageError:
            pass


class _Counting:
    """A reader that reports every read's length (the raw bytes fed to the compressor)."""

    def __init__(self, raw: Any, on_read: Callable[[int], None]) -> None:
        self.raw, self.on_read = raw, on_read

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.on_read(len(data))
        return data

    @property
    def digest(self) -> str:
        return self.raw.digest
