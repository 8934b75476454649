"""Incremental transfers between local files and the bucket: compute a plan, then carry it out.

A plan is plain data: for every file, ``upload``/``download`` or ``skip`` and why. "Unchanged" means
same size and same content: the local sha256 against the object's ``sha256`` metadata, or, for
objects written by older scripts without metadata, the local md5 against the ETag (single-part
objects, and multipart ETags for the usual part sizes). Hashes are remembered between runs in a
:class:`~deploy.storage.cache.SyncCache`, so a run with nothing changed costs one listing and no heads.

Execution hands every file to one s3transfer ``TransferManager`` (concurrent files, multipart
parts, ranged GETs). Downloads land in a hidden ``.part`` file beside the destination, are checked
(size, then sha256 from the GET's own metadata, or md5 against a single-part ETag) and only then
renamed into place. Progress goes to a :class:`SyncObserver`.

Example::

    storage = Storage.from_settings(load_settings())
    cache = cache_for(storage, storage.key("logs"), "logs")
    plan = plan_upload(storage, "logs", storage.key("logs"), cache=cache)
    print(plan.headline())
    result = execute(storage, plan, cache=cache)
    print(result.summary())
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.manager import TransferManager
from s3transfer.subscribers import BaseSubscriber

from deploy.errors import DeployError, StorageError
from deploy.storage import MB, ObjectInfo, Storage, safe_relative
from deploy.storage.cache import LocalFacts, RemoteFacts, SyncCache, hash_file, multipart_etag

UPLOAD = "upload"
DOWNLOAD = "download"
SKIP = "skip"
UP = "up"
DOWN = "down"

HASH_WORKERS = max(2, min(4, os.cpu_count() or 2))
HEAD_WORKERS = 16
MAX_ROUNDS = 3
"""Upload rounds for files that change while they are being uploaded (a live log file)."""

# Part sizes older uploaders use (aws cli and boto3: 8 MB; this project: 16 MB; 5 MB minimum).
COMMON_PART_SIZES = (8 * MB, 16 * MB, 5 * MB, 64 * MB, 100 * MB)

_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART_ETAG = re.compile(r"^[0-9a-f]{32}-(\d+)$")
_TEMP_NAME = re.compile(r"^\..*\.gpu-deploy-[0-9a-f]{8}\.part(\.[A-Za-z0-9_]+)?$")


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class SyncItem:
    """One file of a plan: where it is, where it goes, and what will happen to it."""

    rel: str
    """Path relative to the local directory, which is also the key relative to the prefix."""
    key: str
    path: str
    size: int
    action: str
    reason: str
    sha256: str | None = None
    """Upload: the local file's sha256 (written as metadata). Download: the object's, when known."""
    etag: str = ""
    mtime_ns: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "key": self.key, "size": self.size, "action": self.action,
                "reason": self.reason, "sha256": self.sha256}


@dataclass(frozen=True)
class SyncPlan:
    """What a sync would do. Plain data: print it, test it, or hand it to :func:`execute`."""

    direction: str
    local: str
    remote: str
    items: tuple[SyncItem, ...]

    @property
    def transfers(self) -> tuple[SyncItem, ...]:
        return tuple(i for i in self.items if i.action != SKIP)

    @property
    def skipped(self) -> tuple[SyncItem, ...]:
        return tuple(i for i in self.items if i.action == SKIP)

    @property
    def bytes_to_move(self) -> int:
        return sum(i.size for i in self.transfers)

    @property
    def verb(self) -> str:
        return UPLOAD if self.direction == UP else DOWNLOAD

    def headline(self) -> str:
        """One line: what would move where, and what is already in place."""
        source, target = (self.local, self.remote) if self.direction == UP else (self.remote, self.local)
        moving, skipped = self.transfers, self.skipped
        if not moving:
            return (f"Nothing to {self.verb}: {_files(len(skipped))} ({human_bytes(sum(i.size for i in skipped))}) "
                    f"already in {target}.")
        return (f"{self.verb.capitalize()} {_files(len(moving))} ({human_bytes(self.bytes_to_move)}) "
                f"from {source} to {target}; {len(skipped)} unchanged.")

    def lines(self) -> list[str]:
        """One line per file that would move."""
        return [f"  {i.action:<8} {human_bytes(i.size):>10}  {i.rel}  ({i.reason})" for i in self.transfers]

    def to_dict(self) -> dict[str, Any]:
        return {"direction": self.direction, "local": self.local, "remote": self.remote,
                "files": len(self.items), "transfers": len(self.transfers), "skipped": len(self.skipped),
                "bytes_to_move": self.bytes_to_move, "items": [i.to_dict() for i in self.items]}


@dataclass(frozen=True)
class SyncResult:
    """What :func:`execute` did."""

    plan: SyncPlan
    moved: tuple[SyncItem, ...]
    bytes: int
    seconds: float

    def summary(self) -> str:
        skipped = len(self.plan.skipped)
        if not self.moved:
            return self.plan.headline().rstrip(".") + f"; checked in {self.seconds:.1f} s."
        verb = "Uploaded" if self.plan.direction == UP else "Downloaded"
        rate = self.bytes / self.seconds if self.seconds > 0 else 0.0
        return (f"{verb} {_files(len(self.moved))}, {human_bytes(self.bytes)} in {self.seconds:.1f} s "
                f"({human_bytes(rate)}/s); skipped {skipped} unchanged.")


def human_bytes(n: float) -> str:
    """Decimal units, as rich's progress bar shows them: ``human_bytes(3_000_000) == "3.0 MB"``."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


# --------------------------------------------------------------------------- comparing


def compare(local: LocalFacts, remote: RemoteFacts, path: str | None = None) -> tuple[bool, str]:
    """Whether a local file and an object hold the same bytes, and how that was decided.

    sha256 metadata decides when present; otherwise the md5 of the file against the ETag (a plain
    md5 for single-part objects, the md5 of part md5s for multipart ones, tried at the usual part
    sizes when ``path`` is given). Undecidable means "changed": transferring is the safe side.
    """
    if local.size != remote.size:
        return False, "size differs"
    if remote.sha256:
        return (local.sha256 == remote.sha256, "unchanged" if local.sha256 == remote.sha256 else "content differs")
    if remote.md5:
        return (local.md5 == remote.md5, "unchanged (md5)" if local.md5 == remote.md5 else "content differs")
    parts = _MULTIPART_ETAG.match(remote.etag)
    if parts and path is not None:
        count = int(parts.group(1))
        for part_size in COMMON_PART_SIZES:
            if math.ceil(local.size / part_size) == count and multipart_etag(path, part_size) == remote.etag:
                return True, "unchanged (multipart ETag)"
        return False, "content differs (no sha256 metadata, ETag does not match)"
    return False, "cannot compare (no sha256 metadata)"


def _remote_md5(etag: str) -> str | None:
    return etag if _MD5_ETAG.match(etag) else None


# --------------------------------------------------------------------------- scanning


@dataclass(frozen=True)
class _Local:
    rel: str
    path: str
    size: int
    mtime_ns: int


def scan_local(root: str | os.PathLike[str], must_exist: bool = True) -> dict[str, _Local]:
    """Every regular file under ``root`` by relative path (``/`` separators), our temp files left out."""
    root = Path(root)
    if not root.exists():
        if must_exist:
            raise StorageError(f"The local directory {root} does not exist; check the path.")
        return {}
    if not root.is_dir():
        raise StorageError(f"{root} is a file, not a directory; give the directory to sync.")
    found: dict[str, _Local] = {}
    stack = [(str(root), "")]
    while stack:
        directory, rel_dir = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                rel = f"{rel_dir}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, rel + "/"))
                elif entry.is_file() and not _TEMP_NAME.match(entry.name):
                    st = entry.stat()
                    found[rel] = _Local(rel, entry.path, st.st_size, st.st_mtime_ns)
    return found


def list_remote(storage: Storage, prefix: str) -> dict[str, ObjectInfo]:
    """Every object under the key ``prefix`` by relative key; refuses keys that climb out (``..``)."""
    base = prefix.rstrip("/") + "/" if prefix else ""
    found: dict[str, ObjectInfo] = {}
    for obj in storage.list(base):
        rel = obj.key[len(base):]
        if not rel or rel.endswith("/"):
            continue  # "folder" marker objects some tools create
        try:
            clean = safe_relative(rel)
        except StorageError:
            raise StorageError(f"The object {storage.url(obj.key)} has '..' or a leading '/' in its key and "
                               "would land outside the destination; rename or delete it.") from None
        found[clean] = obj
    return found


def _hash_locals(files: Iterable[_Local], cache: SyncCache, md5_for: set[str] | frozenset[str] = frozenset()
                 ) -> dict[str, LocalFacts]:
    """sha256 (and md5 for ``md5_for``) of each file: from the cache, else hashed in parallel."""
    started = time.time_ns()
    out: dict[str, LocalFacts] = {}
    todo: list[_Local] = []
    for f in files:
        facts = cache.local(f.rel, f.size, f.mtime_ns)
        if facts is not None and (f.rel not in md5_for or facts.md5):
            out[f.rel] = facts
        else:
            todo.append(f)

    def work(f: _Local) -> tuple[_Local, LocalFacts]:
        try:
            sha, md5 = hash_file(f.path, md5=f.rel in md5_for)
        except OSError as exc:
            raise StorageError(f"Cannot read the local file {f.path}: {exc.strerror or exc}.") from exc
        return f, LocalFacts(f.size, f.mtime_ns, sha, md5)

    if todo:
        with ThreadPoolExecutor(max_workers=HASH_WORKERS) as pool:
            for f, facts in pool.map(work, todo):
                cache.remember_local(f.rel, facts, hashed_at_ns=started)
                out[f.rel] = facts
    return out


def _remote_facts(storage: Storage, cache: SyncCache, objects: Mapping[str, ObjectInfo],
                  headed: bool = False) -> dict[str, RemoteFacts]:
    """The sha256 of each object: from the cache when its ETag is unchanged, else one head each
    (``headed``: the objects came from a head already, so their metadata is known)."""
    out: dict[str, RemoteFacts] = {}
    todo: list[tuple[str, ObjectInfo]] = []
    for rel, obj in objects.items():
        facts = cache.remote(rel, obj.etag, obj.size)
        if facts is not None:
            out[rel] = facts
        elif headed:
            out[rel] = RemoteFacts(obj.etag, obj.size, obj.sha256, _remote_md5(obj.etag))
        else:
            todo.append((rel, obj))
    if todo:
        # No more threads than the client's connection pool holds (it warns and reconnects otherwise).
        workers = min(HEAD_WORKERS, len(todo), getattr(storage.config, "max_request_concurrency", 10))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            infos = list(pool.map(lambda pair: storage.head(pair[1].key), todo))
        for (rel, obj), info in zip(todo, infos):
            info = info or obj
            facts = RemoteFacts(info.etag or obj.etag, info.size, info.sha256, _remote_md5(info.etag or obj.etag))
            if info.sha256:
                cache.remember_remote(rel, facts)
            out[rel] = facts
    return out


# --------------------------------------------------------------------------- planning


def _plan(direction: str, local_root: str, remote_url: str, locals_: Mapping[str, _Local],
          objects: Mapping[str, ObjectInfo], dest: Mapping[str, str], keys: Mapping[str, str],
          storage: Storage, cache: SyncCache, metadata: Mapping[str, str], headed: bool = False) -> SyncPlan:
    # Which pairs need their content compared: both sides present with the same size.
    same_size = {rel for rel, f in locals_.items() if rel in objects and objects[rel].size == f.size}
    remote = _remote_facts(storage, cache, {rel: objects[rel] for rel in same_size}, headed)
    md5_for = {rel for rel in same_size if not remote[rel].sha256 and remote[rel].md5}
    # Only pairs to compare are hashed now; a new file's sha256 (its upload metadata) is computed
    # while other files are already moving (see _run), so a first upload does not wait for it.
    hashes = _hash_locals([locals_[rel] for rel in same_size], cache, md5_for)

    def cached_sha(rel: str, local: _Local) -> str | None:
        facts = cache.local(rel, local.size, local.mtime_ns)
        return facts.sha256 if facts else None

    items: list[SyncItem] = []
    rels = locals_.keys() if direction == UP else objects.keys()
    for rel in sorted(rels):
        local, obj = locals_.get(rel), objects.get(rel)
        if direction == UP:
            assert local is not None
            action, reason = UPLOAD, "new"
            if obj is not None:
                action, reason = UPLOAD, "size differs"
                if rel in same_size:
                    same, reason = compare(hashes[rel], remote[rel], local.path)
                    action = SKIP if same else UPLOAD
                    if same:
                        cache.remember_remote(rel, replace(remote[rel], sha256=hashes[rel].sha256))
                    if same and headed and any(obj.metadata.get(k) != v for k, v in metadata.items()):
                        # Same bytes, but asked to record other facts (a checkpoint's step): write again.
                        action, reason = UPLOAD, "metadata differs"
            known = hashes[rel].sha256 if rel in hashes else cached_sha(rel, local)
            items.append(SyncItem(rel=rel, key=keys[rel], path=local.path, size=local.size, action=action,
                                  reason=reason, sha256=known, etag=obj.etag if obj else "",
                                  mtime_ns=local.mtime_ns, metadata=dict(metadata)))
        else:
            assert obj is not None
            action, reason, known = DOWNLOAD, "new", None
            if rel in same_size:
                same, reason = compare(hashes[rel], remote[rel], local.path if local else None)
                action = SKIP if same else DOWNLOAD
                known = remote[rel].sha256
            elif local is not None:
                reason = "size differs"
            else:
                cached = cache.remote(rel, obj.etag, obj.size)
                known = cached.sha256 if cached else obj.sha256
            items.append(SyncItem(rel=rel, key=obj.key, path=dest[rel], size=obj.size, action=action,
                                  reason=reason, sha256=known, etag=obj.etag))
    return SyncPlan(direction=direction, local=local_root, remote=remote_url, items=tuple(items))


def plan_upload(storage: Storage, local_dir: str | os.PathLike[str], prefix: str,
                cache: SyncCache | None = None, metadata: Mapping[str, str] | None = None) -> SyncPlan:
    """Plan uploading every file under ``local_dir`` to the key ``prefix`` (one listing, cached hashes)."""
    cache = cache if cache is not None else SyncCache()
    locals_ = scan_local(local_dir)
    objects = list_remote(storage, prefix)
    keys = {rel: f"{prefix.rstrip('/')}/{rel}" if prefix else rel for rel in locals_}
    return _plan(UP, str(local_dir), storage.url(prefix), locals_, objects, {}, keys, storage, cache,
                 metadata or {})


def plan_download(storage: Storage, prefix: str, local_dir: str | os.PathLike[str],
                  cache: SyncCache | None = None) -> SyncPlan:
    """Plan downloading every object under the key ``prefix`` into ``local_dir``."""
    cache = cache if cache is not None else SyncCache()
    objects = list_remote(storage, prefix)
    if not objects:
        raise StorageError(f"Nothing under {storage.url(prefix)} at {storage.endpoint}; check the name and S3_PREFIX.")
    root = Path(local_dir)
    locals_ = {rel: f for rel, f in scan_local(root, must_exist=False).items() if rel in objects}
    dest = {rel: str(root / rel) for rel in objects}
    return _plan(DOWN, str(local_dir), storage.url(prefix), locals_, objects, dest, {}, storage, cache, {})


def head(storage: Storage, key: str) -> ObjectInfo | None:
    """:meth:`Storage.head`, with the real reason when S3 answers a head with a bare 403.

    A head response has no body, so wrong credentials look like "access denied"; a one-key listing
    returns the error code (InvalidAccessKeyId, SignatureDoesNotMatch) that names what to fix.
    """
    try:
        return storage.head(key)
    except StorageError as exc:
        cause = exc.__cause__
        code = cause.response.get("Error", {}).get("Code") if isinstance(cause, ClientError) else None
        if code not in ("403", "AccessDenied", "Forbidden"):
            raise
        try:
            storage.client.list_objects_v2(Bucket=storage.bucket, Prefix=key, MaxKeys=1)
        except (ClientError, BotoCoreError) as probe:
            raise storage.explain(probe, key) from probe
        raise


def plan_upload_file(storage: Storage, path: str | os.PathLike[str], key: str,
                     metadata: Mapping[str, str] | None = None) -> SyncPlan:
    """Plan uploading one file to ``key``; skipped when the object already holds the same bytes."""
    path = Path(path)
    if not path.is_file():
        raise StorageError(f"The local file {path} does not exist; check the path.")
    st = path.stat()
    name = path.name
    local = {name: _Local(name, str(path), st.st_size, st.st_mtime_ns)}
    info = head(storage, key)
    objects = {name: info} if info is not None else {}
    return _plan(UP, str(path), storage.url(key), local, objects, {}, {name: key}, storage, SyncCache(),
                 metadata or {}, headed=True)


def plan_download_file(storage: Storage, key: str, dest: str | os.PathLike[str]) -> SyncPlan:
    """Plan downloading the object ``key`` to the file ``dest``; skipped when ``dest`` already matches."""
    info = head(storage, key)
    if info is None:
        raise StorageError(f"No object {storage.url(key)} at {storage.endpoint}; check the name.")
    dest = Path(dest)
    name = dest.name
    locals_ = {}
    if dest.is_file():
        st = dest.stat()
        locals_[name] = _Local(name, str(dest), st.st_size, st.st_mtime_ns)
    return _plan(DOWN, str(dest), storage.url(key), locals_, {name: info}, {name: str(dest)}, {}, storage,
                 SyncCache(), {}, headed=True)


def cache_for(storage: Storage, prefix: str, local_dir: str | os.PathLike[str]) -> SyncCache:
    """The persistent hash cache for syncing ``local_dir`` with ``prefix`` in this bucket."""
    return SyncCache.for_pair(storage.endpoint, storage.bucket, prefix, local_dir)


# --------------------------------------------------------------------------- doing


class SyncObserver:
    """Told what a sync does, from transfer threads; override what you need (the default is silent)."""

    def started(self, plan: SyncPlan) -> None:
        """Before the first byte moves."""

    def progress(self, nbytes: int) -> None:
        """``nbytes`` more bytes moved (s3transfer's ``on_progress``)."""

    def file_done(self, item: SyncItem) -> None:
        """One file is in place (uploaded, or downloaded, verified and renamed)."""


class _Responses:
    """Remembers the ETag and metadata S3 returned to the transfer manager's calls, per key.

    s3transfer does not hand responses back, and a head per object would double the requests of a
    download; botocore's event hooks see every response, so the GET's own metadata verifies it.
    """

    OPERATIONS = ("GetObject", "PutObject", "CompleteMultipartUpload")
    _CONTEXT_KEY = "gpu_deploy_key"

    def __init__(self, client: Any) -> None:
        self._events = client.meta.events
        self._id = f"gpu-deploy-sync-{uuid.uuid4().hex}"
        self._lock = threading.Lock()
        self.seen: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> "_Responses":
        for op in self.OPERATIONS:
            self._events.register(f"before-parameter-build.s3.{op}", self._remember_key, unique_id=f"{self._id}-p-{op}")
            self._events.register(f"after-call.s3.{op}", self._record, unique_id=f"{self._id}-r-{op}")
        return self

    def __exit__(self, *exc: object) -> None:
        for op in self.OPERATIONS:
            self._events.unregister(f"before-parameter-build.s3.{op}", unique_id=f"{self._id}-p-{op}")
            self._events.unregister(f"after-call.s3.{op}", unique_id=f"{self._id}-r-{op}")

    def _remember_key(self, params: Mapping[str, Any], context: dict[str, Any], **_: Any) -> None:
        context[self._CONTEXT_KEY] = params.get("Key")

    def _record(self, http_response: Any, parsed: Mapping[str, Any], context: Mapping[str, Any], **_: Any) -> None:
        key = context.get(self._CONTEXT_KEY)
        if key is None or getattr(http_response, "status_code", 500) >= 300:
            return
        with self._lock:
            self.seen[key] = {
                "etag": str(parsed.get("ETag", "")).strip('"'),
                "metadata": dict(parsed.get("Metadata") or {}),
                "encrypted": bool(parsed.get("SSECustomerAlgorithm")) or parsed.get("ServerSideEncryption") == "aws:kms",
            }

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self.seen.get(key)


class _Subscriber(BaseSubscriber):
    def __init__(self, observer: SyncObserver, size: int | None, done: Any) -> None:
        self._observer = observer
        self._size = size
        self._done = done

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        if self._size is not None:
            future.meta.provide_transfer_size(self._size)  # the listing knows it: no head per object

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        self._observer.progress(bytes_transferred)

    def on_done(self, future: Any, **kwargs: Any) -> None:
        self._done(future)


def _temp_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.gpu-deploy-{uuid.uuid4().hex[:8]}.part"


def execute(storage: Storage, plan: SyncPlan, observer: SyncObserver | None = None,
            cache: SyncCache | None = None) -> SyncResult:
    """Carry out ``plan``: every transfer in parallel through one TransferManager.

    Raises :class:`StorageError` naming the first failure after every transfer has finished or
    failed (files that made it stay made); anything else (an interrupt, an observer's exception)
    propagates after in-flight transfers are cancelled. No partial file is left at a destination.
    """
    observer = observer or SyncObserver()
    cache = cache if cache is not None else SyncCache()
    started = time.monotonic()
    observer.started(plan)
    todo = list(plan.transfers)
    moved: list[SyncItem] = []
    try:
        for round_ in range(MAX_ROUNDS):
            changed = _run(storage, plan.direction, todo, observer, cache, moved)
            if not changed:
                break
            if round_ == MAX_ROUNDS - 1:
                raise StorageError(f"{changed[0].path} kept changing while it was uploaded; stop its writer "
                                   "or run again.")
            todo = _replan_changed(changed, cache)
    finally:
        cache.save()
    return SyncResult(plan=plan, moved=tuple(moved), bytes=sum(i.size for i in moved),
                      seconds=time.monotonic() - started)


def _replan_changed(items: list[SyncItem], cache: SyncCache) -> list[SyncItem]:
    fresh = []
    for item in items:
        st = os.stat(item.path)
        local = _Local(item.rel, item.path, st.st_size, st.st_mtime_ns)
        facts = _hash_locals([local], cache)[item.rel]
        fresh.append(replace(item, size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=facts.sha256,
                             reason="changed while uploading"))
    return fresh


def _run(storage: Storage, direction: str, todo: list[SyncItem], observer: SyncObserver, cache: SyncCache,
         moved: list[SyncItem]) -> list[SyncItem]:
    """One pass over ``todo``; returns uploads whose file changed while it was read."""
    if not todo:
        return []
    errors: list[tuple[SyncItem, BaseException]] = []
    changed: list[SyncItem] = []
    temps: dict[str, Path] = {}
    lock = threading.Lock()
    finishing: list[Future[None]] = []

    with _Responses(storage.client) as responses, ThreadPoolExecutor(max_workers=HASH_WORKERS) as pool:

        def finish(item: SyncItem) -> None:
            try:
                if direction == UP:
                    if _finish_upload(item, responses, cache):
                        moved.append(item)
                        observer.file_done(item)
                    else:
                        changed.append(item)
                else:
                    _finish_download(storage, item, temps[item.key], responses, cache)
                    moved.append(item)
                    observer.file_done(item)
            except BaseException as exc:  # noqa: BLE001 - collected, reported after every file finished
                with lock:
                    errors.append((item, exc))

        def on_done(item: SyncItem, future: Any) -> None:
            # Runs on s3transfer's thread: hashing and renaming go to our pool so transfers keep flowing.
            try:
                future.result()
            except BaseException as exc:  # noqa: BLE001
                with lock:
                    errors.append((item, exc))
                return
            with lock:
                finishing.append(pool.submit(finish, item))

        hashed_at = time.time_ns()

        def with_sha256(item: SyncItem) -> SyncItem:
            if item.sha256:
                return item
            try:
                sha, _ = hash_file(item.path)
            except OSError as exc:
                raise StorageError(f"Cannot read the local file {item.path}: {exc.strerror or exc}.") from exc
            cache.remember_local(item.rel, LocalFacts(item.size, item.mtime_ns, sha), hashed_at_ns=hashed_at)
            return replace(item, sha256=sha)

        try:
            # Leaving this block by an exception (Ctrl-C) makes the manager cancel every transfer and
            # wait for them; s3transfer then removes its own temp files. (Its shutdown(cancel=True)
            # passes its arguments in the wrong order, so the context manager is the way to cancel.)
            with TransferManager(storage.client, storage.config) as manager:
                futures = []
                ready = pool.map(with_sha256, todo) if direction == UP else iter(todo)
                for item in ready:
                    done = (lambda it: (lambda fut: on_done(it, fut)))(item)
                    if direction == UP:
                        meta = {"size": str(item.size), "sha256": item.sha256 or "", **item.metadata}
                        futures.append(manager.upload(item.path, storage.bucket, item.key,
                                                      extra_args={"Metadata": meta},
                                                      subscribers=[_Subscriber(observer, None, done)]))
                    else:
                        dest = Path(item.path)
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        temps[item.key] = _temp_path(dest)
                        futures.append(manager.download(storage.bucket, item.key, str(temps[item.key]),
                                                        subscribers=[_Subscriber(observer, item.size, done)]))
                for fut in futures:
                    try:
                        fut.result()
                    except Exception:  # noqa: BLE001 - recorded by on_done
                        pass
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            _remove(temps.values())
            raise
        while True:  # finish() may still be running for the last files
            with lock:
                pending = [f for f in finishing if not f.done()]
            if not pending:
                break
            for f in pending:
                f.result()
    _remove(temps.values())
    if errors:
        _raise_first(storage, direction, errors, len(todo))
    return changed


def _finish_upload(item: SyncItem, responses: _Responses, cache: SyncCache) -> bool:
    """Remember what was uploaded; False when the file changed while it was read (upload again)."""
    st = os.stat(item.path)
    if (st.st_size, st.st_mtime_ns) != (item.size, item.mtime_ns):
        return False
    seen = responses.get(item.key)
    if seen is not None:
        cache.remember_remote(item.rel, RemoteFacts(seen["etag"], item.size, item.sha256))
    return True


def _finish_download(storage: Storage, item: SyncItem, tmp: Path, responses: _Responses, cache: SyncCache) -> None:
    """Verify the temp file against what S3 said about the object, then rename it into place."""
    url = storage.url(item.key)
    seen = responses.get(item.key) or {}
    etag = seen.get("etag") or item.etag
    if item.etag and etag != item.etag:
        raise StorageError(f"{url} changed while it was downloaded; run again.")
    size = tmp.stat().st_size
    if size != item.size:
        raise StorageError(f"{url} arrived truncated: {size} of {item.size} bytes.")
    expected = seen.get("metadata", {}).get("sha256") or item.sha256
    check_md5 = not expected and _remote_md5(etag) is not None and not seen.get("encrypted")
    sha, md5 = hash_file(tmp, md5=check_md5)
    if expected and sha != expected:
        raise StorageError(f"{url} is corrupt: sha256 {sha} does not match its metadata {expected}.")
    if check_md5 and md5 != etag:
        raise StorageError(f"{url} is corrupt: md5 {md5} does not match its ETag {etag}.")
    os.replace(tmp, item.path)
    st = os.stat(item.path)
    cache.remember_local(item.rel, LocalFacts(st.st_size, st.st_mtime_ns, sha, md5))
    cache.remember_remote(item.rel, RemoteFacts(etag, item.size, sha, md5))


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _raise_first(storage: Storage, direction: str, errors: list[tuple[SyncItem, BaseException]], total: int) -> None:
    for _, exc in errors:
        if not _is_storage_failure(exc):
            raise exc  # an interrupt, an observer's or a bug's exception: keep its type and traceback
    item, exc = errors[0]
    cause = _storage_cause(exc)
    first = cause if isinstance(cause, DeployError) else storage.explain(cause, item.key)
    if len(errors) == 1:
        raise first from exc
    verb = UPLOAD if direction == UP else DOWNLOAD
    raise StorageError(f"{len(errors)} of {total} files failed to {verb}; the first: {first}") from exc


def _storage_cause(exc: BaseException) -> BaseException:
    # boto3 wraps upload failures in S3UploadFailedError; the botocore error is its cause.
    seen = exc
    while not isinstance(seen, (ClientError, BotoCoreError, DeployError)) and seen.__cause__ is not None:
        seen = seen.__cause__
    return seen


def _is_storage_failure(exc: BaseException) -> bool:
    return isinstance(_storage_cause(exc), (ClientError, BotoCoreError, DeployError)) or isinstance(exc, OSError)
