"""Docker images through S3: push and pull only the layers that changed, or whole archives.

``push`` streams ``docker save`` from the engine (docker SDK), names each layer before reading it
(:mod:`deploy.images.archive`), skips the layers the bucket has, and streams the others through a
compressor into concurrent multipart uploads: nothing is staged on disk and memory stays bounded.
``pull`` asks the host what it has (any runner with ``.run()``: an invoke ``Context`` locally, a
Fabric ``Connection`` for a GPU host), plans the layers it lacks, and runs :mod:`deploy.remote.hostload`
there with short-lived presigned URLs. Plans are plain data; ``--dry-run`` stops after them.

Example::

    storage = Storage.from_settings(settings)
    result = push(docker.from_env(), storage, "team/train:v3")
    print(result.summary())
    pull(Context(), storage, "team/train:v3")            # into the local engine
    pull(connection, storage, "team/train:v3")           # onto a host over SSH
"""

from __future__ import annotations

import difflib
import io
import json
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from deploy.errors import ImageError, StorageError
from deploy.images.archive import HashingReader, IterReader, LayerEntry, read_save
from deploy.images.store import (CODECS, CompressingReader, ImageManifest, ImageStore, LayerRecord, archive_codec,
                               codec)
from deploy.storage import MB, Storage
from deploy.storage.sync import human_bytes

FORMATS = ("layers", "archive")
PRESIGN_SECONDS = 3600
SAVE_CHUNK = MB
PREFETCH_CHUNKS = 16
PART_SIZE = 16 * MB
IN_MEMORY_PARTS = 10    # parts buffered by the transfer manager: PART_SIZE * this bounds upload memory
GC_GRACE = timedelta(hours=1)


# --------------------------------------------------------------------------- references


@dataclass(frozen=True)
class ImageRef:
    """``name:tag`` of an image (the tag defaults to ``latest``)."""

    name: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> "ImageRef":
        text = (text or "").strip()
        if not text:
            raise ImageError("No image given; pass --image=name:tag or set IMAGE in .env.")
        if "@" in text:
            raise ImageError(f"{text!r} names an image by digest; use name:tag.")
        slash = text.rfind("/")
        colon = text.rfind(":")
        name, tag = (text[:colon], text[colon + 1:]) if colon > slash else (text, "latest")
        if not name or not tag or any(part in ("", ".", "..") for part in name.split("/")):
            raise ImageError(f"{text!r} is not an image name:tag.")
        return cls(name, tag)

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}"


# --------------------------------------------------------------------------- progress


class ImageProgress:
    """Observer of image transfers; the library calls it, a task decides how to show it."""

    def begin(self, what: str, total: int) -> None: ...
    def read(self, n: int) -> None: ...
    def sent(self, n: int) -> None: ...
    def raw(self, n: int) -> None: ...
    def skipped(self, diff_id: str, size: int) -> None: ...
    def downloaded(self, n: int) -> None: ...
    def end(self) -> None: ...


# --------------------------------------------------------------------------- the engine


def docker_client(timeout: int = 900):
    """The local engine, or an :class:`ImageError` saying it cannot be reached and how to check."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception as exc:  # noqa: BLE001 - the SDK raises several kinds for "not reachable"
        raise ImageError(
            f"Cannot reach the Docker engine ({exc.__class__.__name__}: {str(exc)[:160]}); check that it "
            "runs with `docker info` (and DOCKER_HOST if you use a remote engine).") from exc


def inspect_local(client, ref: ImageRef) -> dict:
    """``docker image inspect`` of ``ref``; a missing image names the closest local tags."""
    import docker.errors

    try:
        return client.api.inspect_image(str(ref))
    except docker.errors.ImageNotFound:
        tags = sorted({t for image in client.images.list() for t in image.tags})
        close = difflib.get_close_matches(str(ref), tags, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else \
            (f"; local images: {', '.join(tags[:5])}{' ...' if len(tags) > 5 else ''}." if tags else
             "; the engine has no tagged images.")
        raise ImageError(f"The image {ref} is not in the local Docker engine{hint}") from None
    except docker.errors.APIError as exc:
        raise ImageError(f"The Docker engine refused to inspect {ref}: {exc.explanation or exc}") from exc
    except Exception as exc:  # noqa: BLE001 - connection errors
        raise ImageError(f"Cannot reach the Docker engine ({exc.__class__.__name__}); check it with `docker info`.") \
            from exc


def save_stream(client, ref: ImageRef, progress: ImageProgress) -> IterReader:
    """``docker save`` of ``ref`` as a file object, prefetched so the engine keeps exporting."""
    try:
        chunks = client.api.get_image(str(ref), chunk_size=SAVE_CHUNK)
    except Exception as exc:  # noqa: BLE001
        raise ImageError(f"docker save {ref} failed: {exc}") from exc
    return IterReader(chunks, prefetch=PREFETCH_CHUNKS, on_read=progress.read)


def git_commit(cwd: str | Path = ".") -> str | None:
    """The working tree's commit (``+dirty`` when it has changes), or None outside a git tree."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=30)
        return head.stdout.strip()[:12] + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _transfer_config(storage: Storage) -> TransferConfig:
    config = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                            max_concurrency=max(2, min(8, storage.config.max_request_concurrency)),
                            max_io_queue=100, use_threads=True)
    config.max_in_memory_upload_chunks = IN_MEMORY_PARTS  # s3transfer's knob, not in boto3's signature
    return config


# --------------------------------------------------------------------------- push


@dataclass
class PushPlan:
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

    def describe(self) -> list[str]:
        if self.noop:
            return [f"{self.ref}: nothing to do ({self.reason})."]
        if self.format == "archive":
            return [f"{self.ref}: upload the whole image as {self.key} ({self.codec})."]
        lines = [f"{self.ref} ({self.image_id[7:19]}): {len(self.uploads)} of {len(self.layers)} layers to upload "
                 f"({self.codec}), then write {self.key}."]
        lines += [f"  {action:6}  {diff_id[7:19]}" for diff_id, action in self.layers]
        return lines


@dataclass
class PushResult:
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
            return self.plan.describe()[0]
        rate = self.read_bytes / self.seconds / MB if self.seconds else 0.0
        return (f"{self.plan.ref}: uploaded {len(self.uploaded)} layer(s), {human(self.sent_bytes)} "
                f"({human(self.raw_bytes)} before compression, ratio {self.ratio:.2f}), skipped "
                f"{len(self.skipped)}; read {human(self.read_bytes)} from the engine in {self.seconds:.1f} s "
                f"({rate:.0f} MB/s).")


def plan_push(client, storage: Storage, image: str, codec_name: str = "zstd", fmt: str = "layers",
              force: bool = False) -> PushPlan:
    """Decide what a push of ``image`` would upload (no uploads happen here)."""
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
        record = store.get_json(key + ".json")
        same = record is not None and record.get("image_id") == image_id and storage.head(key) is not None
        return PushPlan(str(ref), image_id, fmt, codec_name, key, [(d, "upload") for d in diff_ids],
                        noop=same and not force, reason=f"the bucket already has {image_id[7:19]} at {key}")
    key = store.manifest_key(ref.name, ref.tag)
    layers = []
    present = 0
    for diff_id in dict.fromkeys(diff_ids):
        have = not force and store.find_layer(diff_id, prefer=codec_name) is not None
        present += have
        layers.append((diff_id, "skip" if have else "upload"))
    manifest = None if force else store.read_manifest(ref.name, ref.tag)
    noop = manifest is not None and manifest.image_id == image_id and present == len(layers)
    return PushPlan(str(ref), image_id, fmt, codec_name, key, layers, noop=noop,
                    reason=f"the bucket already has {ref} = {image_id[7:19]} and all its layers")


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
        if record is not None:
            # The record goes up as soon as its layer is complete: an interrupted push keeps it.
            self.store.write_layer_record(record)
            self.records[record.diff_id] = record
            self.todo.discard(record.diff_id)

    def _upload(self, entry: LayerEntry, key: str, expected: str | None) -> LayerRecord:
        source = entry.fileobj
        counted = _Counting(source, self.progress.raw)
        reader = CompressingReader(counted, self.plan.codec, expected_digest=expected, size=entry.size)
        sent_before = self.result.sent_bytes

        def sent(n: int) -> None:
            self.result.sent_bytes += n
            self.progress.sent(n)

        try:
            self.storage.upload_stream(reader, key, metadata={"diff-id": expected or "pending"}, progress=sent,
                                       config=self.config)
        except BaseException as exc:
            reader.close()
            self.abort_uploads(key)
            if isinstance(exc, StorageError) and isinstance(exc.__cause__, ImageError):
                raise exc.__cause__ from None
            raise
        self.result.raw_bytes += entry.size
        self.result.sent_bytes = sent_before + reader.bytes  # exact, whatever the callbacks reported
        diff_id = expected or source.digest
        self.result.uploaded.append(diff_id)
        return LayerRecord(diff_id=diff_id, size=entry.size, key=key, codec=self.plan.codec,
                           stored_size=reader.bytes, sha256=reader.digest)

    def _rename(self, record: LayerRecord, diff_id: str) -> LayerRecord | None:
        # The layer's name was not known while it streamed: move it under its digest now.
        final = self.store.layer_key(diff_id, self.plan.codec)
        try:
            if self.store.find_layer(diff_id, prefer=self.plan.codec) is None:
                self.storage.copy(record.key, final)
        finally:
            self.storage.delete(record.key)
        fixed = LayerRecord(diff_id=diff_id, size=record.size, key=final, codec=record.codec,
                            stored_size=record.stored_size, sha256=record.sha256)
        self.result.uploaded[-1] = diff_id
        return fixed

    def abort_uploads(self, key: str) -> None:
        """Abort multipart uploads this push left on ``key`` (s3transfer aborts too: belt and braces)."""
        try:
            for upload in self.storage.multipart_uploads(key):
                initiated = upload.get("initiated")
                if upload["key"] == key and (initiated is None or initiated >= self.started):
                    self.storage.abort_multipart(key, upload["upload_id"])
        except StorageError:
            pass


class _Counting:
    def __init__(self, raw, on_read: Callable[[int], None]) -> None:
        self.raw, self.on_read = raw, on_read

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.on_read(len(data))
        return data

    @property
    def digest(self) -> str:
        return self.raw.digest


def push(client, storage: Storage, image: str, codec_name: str = "zstd", fmt: str = "layers", force: bool = False,
         progress: ImageProgress | None = None, plan: PushPlan | None = None,
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
    total = int(info.get("Size") or 0)
    progress.begin(f"push {ref}", total)
    stream = save_stream(client, ref, progress)
    try:
        if plan.format == "archive":
            _push_archive(storage, store, plan, stream, progress, result, info, commit)
        else:
            uploader = _LayerUploader(storage, store, plan, progress, result)
            saved = read_save(stream, on_layer=uploader, diff_ids=[d for d, _ in plan.layers])
            if saved.image_id != plan.image_id:
                raise ImageError(f"docker save of {ref} gave image {saved.image_id}, not {plan.image_id}; "
                                 "was it retagged during the push? Push again.")
            records = []
            for diff_id, size in zip(saved.diff_ids, saved.layer_sizes, strict=True):
                record = uploader.records.get(diff_id) or store.find_layer(diff_id, prefer=plan.codec)
                if record is None:
                    raise ImageError(f"The layer {diff_id} of {ref} is neither in the bucket nor uploaded; push again.")
                records.append(record)
            config = saved.config_json
            manifest = ImageManifest(
                name=ref.name, tag=ref.tag, image_id=saved.image_id, repo_tags=list(info.get("RepoTags") or []),
                config=saved.config.decode(), layers=records, codec=plan.codec, created=_now(), commit=commit,
                os=config.get("os", "linux"), architecture=config.get("architecture", "amd64"))
            store.write_manifest(manifest)
    finally:
        stream.close()
        progress.end()
    result.read_bytes = _read_bytes(stream)
    result.seconds = time.monotonic() - started
    return result


def _read_bytes(stream: IterReader) -> int:
    return stream.total


def _push_archive(storage: Storage, store: ImageStore, plan: PushPlan, stream: IterReader,
                  progress: ImageProgress, result: PushResult, info: dict, commit: str | None) -> None:
    raw = HashingReader(stream)
    reader = CompressingReader(_Counting(raw, progress.raw), plan.codec)

    def sent(n: int) -> None:
        progress.sent(n)

    uploader = _LayerUploader(storage, store, plan, progress, result)
    try:
        storage.upload_stream(reader, plan.key, metadata={"image-id": plan.image_id, "codec": plan.codec},
                              progress=sent, config=_transfer_config(storage))
    except BaseException:
        reader.close()
        uploader.abort_uploads(plan.key)
        raise
    result.raw_bytes, result.sent_bytes = raw.bytes, reader.bytes
    result.uploaded = [plan.key]
    store.put_json(plan.key + ".json", {
        "image_id": plan.image_id, "repo_tags": list(info.get("RepoTags") or []), "codec": plan.codec,
        "size": raw.bytes, "stored_size": reader.bytes, "sha256": reader.digest, "created": _now(),
        "commit": commit})


# --------------------------------------------------------------------------- running the host script


class _ChunkedInput:
    """An ``in_stream`` for invoke/Fabric that hands over 64 KiB per read (they ask for 1 byte)."""

    def __init__(self, data: bytes) -> None:
        self.buf = io.BytesIO(data)

    def read(self, _n: int = -1) -> bytes:
        return self.buf.read(64 * 1024)


class _ProgressSink:
    """``err_stream`` of the host script: turns its ``PROGRESS n`` lines into observer calls."""

    def __init__(self, progress: ImageProgress) -> None:
        self.progress = progress
        self.pending = ""
        self.other: list[str] = []

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.startswith("PROGRESS "):
                try:
                    self.progress.downloaded(int(line.split()[1]))
                except (ValueError, IndexError):
                    pass
            elif line.strip():
                self.other.append(line)
        return len(text)

    def flush(self) -> None:
        pass


BOOTSTRAP = ("python3 -c \"import sys,json; d=json.loads(sys.stdin.read()); g={'__name__':'hostload'}; "
             "exec(compile(d['script'],'hostload.py','exec'),g); g['main'](d['job'])\"")


def run_host_script(runner, job: dict, progress: ImageProgress | None = None, where: str = "the host") -> dict:
    """Run :mod:`deploy.remote.hostload` through ``runner`` (Context or Connection), job and URLs on stdin."""
    script = (Path(__file__).resolve().parents[1] / "remote" / "hostload.py").read_text()
    payload = json.dumps({"script": script, "job": job}).encode()
    sink = _ProgressSink(progress or ImageProgress())
    try:
        result = runner.run(BOOTSTRAP, in_stream=_ChunkedInput(payload), hide="out", err_stream=sink,
                            warn=True, pty=False)
    except Exception as exc:  # noqa: BLE001 - SSH and process failures
        raise ImageError(f"Could not run the image loader on {where}: {exc}") from exc
    lines = [line for line in (result.stdout or "").splitlines() if line.startswith("{")]
    if not lines:
        detail = " ".join(sink.other)[-400:] or f"exit {result.exited}"
        raise ImageError(f"The image loader on {where} failed ({detail}); does it have python3?")
    answer = json.loads(lines[-1])
    if not answer.get("ok"):
        raise ImageError(f"On {where}: {answer.get('error')}.")
    return answer


# --------------------------------------------------------------------------- pull


@dataclass
class PullPlan:
    """What a pull would do on one host: which objects to fetch, which layers the host has."""

    ref: str
    where: str
    format: str
    image_id: str | None
    key: str
    layers: list[tuple[LayerRecord, str]] = field(default_factory=list)   # (record, "fetch" | "skip")
    archive: dict | None = None
    action: str = "load"                  # "load" | "tag" | "noop"
    reason: str = ""

    @property
    def fetch_bytes(self) -> int:
        if self.action != "load":
            return 0
        if self.format == "archive":
            return int((self.archive or {}).get("stored_size") or 0)
        return sum(record.stored_size for record, action in self.layers if action == "fetch")

    def describe(self) -> list[str]:
        if self.action == "noop":
            return [f"{self.ref} on {self.where}: nothing to do ({self.reason})."]
        if self.action == "tag":
            return [f"{self.ref} on {self.where}: tag the image {self.image_id[7:19]} it already has."]
        if self.format == "archive":
            return [f"{self.ref} on {self.where}: load the archive {self.key} ({human(self.fetch_bytes)})."]
        fetch = [r for r, a in self.layers if a == "fetch"]
        lines = [f"{self.ref} on {self.where}: fetch {len(fetch)} of {len(self.layers)} layers "
                 f"({human(self.fetch_bytes)}) and docker load them."]
        lines += [f"  {action:5}  {record.diff_id[7:19]}  {human(record.stored_size)}" for record, action in self.layers]
        return lines


@dataclass
class PullResult:
    plan: PullPlan
    downloaded: int = 0
    seconds: float = 0.0
    image_id: str | None = None

    def summary(self) -> str:
        if self.plan.action != "load":
            return self.plan.describe()[0]
        return (f"{self.plan.ref} on {self.plan.where}: loaded {self.image_id[7:19] if self.image_id else '?'}, "
                f"downloaded {human(self.downloaded)} in {self.seconds:.1f} s.")


def host_facts(runner, where: str = "the host") -> dict:
    """The images and layer chains the host's engine has, and whether it has zstd."""
    return run_host_script(runner, {"mode": "facts"}, where=where)


def plan_pull(runner, storage: Storage, image: str, where: str = "this machine",
              facts: dict | None = None) -> PullPlan:
    """Decide what ``image`` needs on the host behind ``runner`` (asks the host, changes nothing)."""
    ref = ImageRef.parse(image)
    store = ImageStore(storage)
    manifest = store.read_manifest(ref.name, ref.tag)
    facts = facts if facts is not None else host_facts(runner, where)
    images: dict[str, list[str]] = facts.get("images", {})
    tags: dict[str, str] = facts.get("tags", {})
    if manifest is not None:
        plan = PullPlan(str(ref), where, "layers", manifest.image_id, store.manifest_key(ref.name, ref.tag))
        if manifest.image_id in images:
            plan.action = "noop" if tags.get(str(ref)) == manifest.image_id else "tag"
            plan.reason = f"the host already has {manifest.image_id[7:19]}"
            plan.layers = [(record, "skip") for record in manifest.layers]
            return plan
        # docker load reuses a layer only when the host has its whole chain (every layer below it).
        wanted = [record.diff_id for record in manifest.layers]
        have = max((_common_prefix(wanted, layers) for layers in images.values()), default=0)
        plan.layers = [(record, "skip" if i < have else "fetch") for i, record in enumerate(manifest.layers)]
        if any(r.codec == "zstd" for r, a in plan.layers if a == "fetch") and not facts.get("zstd"):
            raise ImageError(f"{where} has no zstd to unpack {ref}; install it (apt-get install zstd) "
                             "or push with --codec=gzip.")
        return plan
    for key, name in _archive_candidates(store, ref):
        info = storage.head(key)
        if info is None:
            continue
        record = store.get_json(key + ".json") or {}
        plan = PullPlan(str(ref), where, "archive", record.get("image_id"), key)
        plan.archive = {"key": key, "codec": name, "stored_size": info.size, "sha256": record.get("sha256")}
        if plan.image_id and plan.image_id in images:
            plan.action = "noop" if tags.get(str(ref)) == plan.image_id else "tag"
            plan.reason = f"the host already has {plan.image_id[7:19]}"
        if name == "zstd" and not facts.get("zstd") and plan.action == "load":
            raise ImageError(f"{where} has no zstd to unpack {key}; install it (apt-get install zstd).")
        return plan
    known = [m.ref for m in store.manifests()]
    close = difflib.get_close_matches(str(ref), known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else (
        f"; it has {', '.join(known[:5])}." if known else "; push it first with `fab image-to-s3`.")
    raise ImageError(f"The bucket has no image {ref} under {storage.url(store.root)}{hint}")


def _archive_candidates(store: ImageStore, ref: ImageRef) -> list[tuple[str, str]]:
    return [(store.archive_key(ref.name, ref.tag, name), name) for name in ("zstd", "gzip", "none")]


def _common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pull(runner, storage: Storage, image: str, where: str = "this machine", progress: ImageProgress | None = None,
         plan: PullPlan | None = None, parallel: int = 4, range_size: int = 64 * MB) -> PullResult:
    """Bring ``image`` from the bucket into the engine behind ``runner``; see the module doc."""
    progress = progress or ImageProgress()
    plan = plan or plan_pull(runner, storage, image, where)
    result = PullResult(plan, image_id=plan.image_id)
    started = time.monotonic()
    if plan.action == "noop":
        return result
    if plan.action == "tag":
        ref = ImageRef.parse(plan.ref)
        out = runner.run(f"docker tag {plan.image_id} {_shell_quote(str(ref))}", hide=True, warn=True, pty=False)
        if out.exited != 0:
            raise ImageError(f"docker tag on {where} failed: {out.stderr.strip()}")
        return result
    job: dict[str, Any] = {"mode": "load", "kind": plan.format, "tag": plan.ref, "image_id": plan.image_id,
                           "parallel": parallel, "range_size": range_size}
    if plan.format == "archive":
        job["archive"] = {**(plan.archive or {}), "url": storage.presigned_get(plan.key, PRESIGN_SECONDS)}
    else:
        store = ImageStore(storage)
        ref = ImageRef.parse(plan.ref)
        manifest = store.read_manifest(ref.name, ref.tag)
        if manifest is None or manifest.image_id != plan.image_id:
            raise ImageError(f"The manifest of {ref} changed since the plan; run the pull again.")
        config_name = f"{manifest.image_id[7:]}.json"
        names = [f"{record.diff_id[7:]}/layer.tar" for record in manifest.layers]
        job["manifest"] = [{"Config": config_name, "RepoTags": [plan.ref], "Layers": names}]
        job["config_name"], job["config"] = config_name, manifest.config
        job["layers"] = []
        seen: set[str] = set()
        for (record, action), name in zip(plan.layers, names):
            entry = {"name": name, "diff_id": record.diff_id, "size": record.size, "key": record.key,
                     "codec": record.codec, "stored_size": record.stored_size, "sha256": record.sha256,
                     "skip": action == "skip" or name in seen}
            seen.add(name)
            if not entry["skip"]:
                entry["url"] = storage.presigned_get(record.key, PRESIGN_SECONDS)
            job["layers"].append(entry)
    progress.begin(f"pull {plan.ref}", plan.fetch_bytes)
    try:
        answer = run_host_script(runner, job, progress, where)
    finally:
        progress.end()
    result.downloaded = int(answer.get("downloaded", 0))
    result.image_id = answer.get("image_id")
    result.seconds = time.monotonic() - started
    return result


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


# --------------------------------------------------------------------------- listing, delete, gc


@dataclass(frozen=True)
class StoredImage:
    name: str
    tag: str
    image_id: str | None
    layers: int | None
    stored_size: int
    codec: str
    date: str
    commit: str | None
    format: str
    key: str


def list_images(storage: Storage) -> list[StoredImage]:
    """Every image in the store: layer-store tags and archive objects (ours and older scripts')."""
    store = ImageStore(storage)
    out = [StoredImage(m.name, m.tag, m.image_id, len(m.layers), m.stored_size, m.codec, m.created, m.commit,
                       "layers", store.manifest_key(m.name, m.tag)) for m in store.manifests()]
    for obj, record in store.archives():
        stem = obj.name
        for suffix in (".tar.zst", ".tar.gz", ".tgz", ".tar"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        name, _, tag = stem.rpartition("-") if "-" in stem else (stem, "", "")
        record = record or {}
        tags = record.get("repo_tags") or []
        if tags:
            parsed = ImageRef.parse(tags[0])
            if store.archive_key(parsed.name, parsed.tag, archive_codec(obj.key) or "none") == obj.key:
                name, tag = parsed.name, parsed.tag
        date = record.get("created") or (obj.last_modified.strftime("%Y-%m-%dT%H:%M:%SZ") if obj.last_modified else "")
        out.append(StoredImage(name or stem, tag or "?", record.get("image_id"), None, obj.size,
                               archive_codec(obj.key) or "?", date, record.get("commit"), "archive", obj.key))
    return out


@dataclass
class DeletePlan:
    ref: str
    keys: list[str]

    def describe(self) -> list[str]:
        if not self.keys:
            return [f"{self.ref}: nothing to delete (not in the bucket)."]
        return [f"{self.ref}: delete {key}" for key in self.keys] + \
            ["Its layers stay until `fab images.gc` removes the ones no image uses."]


def plan_delete(storage: Storage, image: str) -> DeletePlan:
    ref = ImageRef.parse(image)
    store = ImageStore(storage)
    keys = []
    key = store.manifest_key(ref.name, ref.tag)
    if storage.head(key) is not None:
        keys.append(key)
    for archive, _ in _archive_candidates(store, ref):
        for candidate in (archive, archive + ".json"):
            if storage.head(candidate) is not None:
                keys.append(candidate)
    return DeletePlan(str(ref), keys)


@dataclass
class GcPlan:
    keep: int
    delete: list[tuple[str, int]]          # (key, size)
    young: int = 0

    def describe(self) -> list[str]:
        total = sum(size for _, size in self.delete)
        lines = [f"{len(self.delete)} object(s), {human(total)}, referenced by no image; {self.keep} layer(s) in use"
                 + (f"; {self.young} unreferenced but younger than {GC_GRACE} kept (a push may be running)"
                    if self.young else "") + "."]
        lines += [f"  delete  {key}  {human(size)}" for key, size in self.delete]
        return lines


def plan_gc(storage: Storage, now: datetime | None = None) -> GcPlan:
    """Layers (and temp objects) no manifest references, older than the grace period."""
    store = ImageStore(storage)
    now = now or datetime.now(timezone.utc)
    used = {record.key for m in store.manifests() for record in m.layers}
    delete: list[tuple[str, int]] = []
    young = 0
    for obj in [*storage.list(f"{store.root}/layers/"), *storage.list(f"{store.root}/tmp/")]:
        layer_key = obj.key[: -len(".json")] if obj.key.endswith(".json") else obj.key
        if layer_key in used:
            continue
        if obj.last_modified is not None and now - obj.last_modified < GC_GRACE:
            young += 1
            continue
        delete.append((obj.key, obj.size))
    return GcPlan(keep=len(used), delete=delete, young=young)


def execute_deletes(storage: Storage, keys: Sequence[str]) -> int:
    # Records first, then objects: a half-finished delete leaves a layer without a record (re-pushed).
    for key in sorted(keys, key=lambda k: not k.endswith(".json")):
        storage.delete(key)
    return len(keys)


@dataclass
class StaleUpload:
    key: str
    upload_id: str
    initiated: datetime | None


def stale_uploads(storage: Storage, older_than: timedelta = timedelta(hours=1),
                  now: datetime | None = None) -> list[StaleUpload]:
    """Unfinished multipart uploads under docker-images/ started more than ``older_than`` ago."""
    now = now or datetime.now(timezone.utc)
    store = ImageStore(storage)
    return [StaleUpload(u["key"], u["upload_id"], u["initiated"]) for u in storage.multipart_uploads(store.root + "/")
            if u["initiated"] is None or now - u["initiated"] >= older_than]


def abort_uploads(storage: Storage, uploads: Sequence[StaleUpload]) -> int:
    for upload in uploads:
        storage.abort_multipart(upload.key, upload.upload_id)
    return len(uploads)


def human(n: float) -> str:
    """Bytes as people read them, in the same decimal units as every other task: ``human(1500) == '1.5 kB'``."""
    return human_bytes(n)


__all__ = [
    "CODECS", "FORMATS", "ImageProgress", "ImageRef", "PullPlan", "PullResult", "PushPlan", "PushResult",
    "StoredImage", "abort_uploads", "docker_client", "execute_deletes", "host_facts", "human", "list_images",
    "plan_delete", "plan_gc", "plan_pull", "plan_push", "pull", "push", "run_host_script", "stale_uploads",
]
