"""Carrying out a sync plan: every file through one s3transfer ``TransferManager``.

The manager gives concurrent files, multipart parts and ranged GETs. Downloads land in a hidden
``.part`` file beside the destination, are checked (size, then sha256 from the GET's own metadata,
or md5 against a single-part ETag) and only then renamed into place. An upload whose file changed
while it was read (a live log file) is hashed and sent again, up to :data:`MAX_ROUNDS` times.
Progress goes to a :class:`SyncObserver`, so the library never knows what is listening.

Example::

    result = execute(storage, plan, observer=RichTransferProgress(), cache=cache)
    print(result.summary())
"""

from __future__ import annotations

import functools
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from rich.filesize import decimal
from s3transfer.manager import TransferManager
from s3transfer.subscribers import BaseSubscriber

from deploy.errors import DeployError, StorageError
from deploy.storage.bucket import Storage, verify_download
from deploy.storage.cache import LocalFacts, RemoteFacts, SyncCache
from deploy.storage.plan import DOWNLOAD, UP, UPLOAD, SyncItem, SyncPlan, files
from deploy.storage.scan import HASH_WORKERS, LocalFile, hash_locals, remote_md5, sha256_of

MAX_ROUNDS = 3
"""Upload rounds for files that change while they are being uploaded (a live log file)."""


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
            return self.plan.headline(checked_in=self.seconds)
        verb = "Uploaded" if self.plan.direction == UP else "Downloaded"
        rate = int(self.bytes / self.seconds) if self.seconds > 0 else 0
        return (f"{verb} {files(len(self.moved))}, {decimal(self.bytes)} in {self.seconds:.1f} s "
                f"({decimal(rate)}/s); skipped {skipped} unchanged.")


class SyncObserver:
    """Told what a sync does, from transfer threads; override what you need (the default is silent)."""

    def started(self, plan: SyncPlan) -> None:
        """Before the first byte moves."""

    def progress(self, nbytes: int) -> None:
        """``nbytes`` more bytes moved (s3transfer's ``on_progress``)."""

    def file_done(self, item: SyncItem) -> None:
        """One file is in place (uploaded, or downloaded, verified and renamed)."""


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
            changed = _Round(storage, plan.direction, observer, cache).run(todo, moved)
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
    """The uploads to send again, with the size, mtime and sha256 their files have now."""
    fresh = []
    for item in items:
        local = LocalFile.stat(item.rel, item.path)
        facts = hash_locals([local], cache)[item.rel]
        fresh.append(replace(item, size=local.size, mtime_ns=local.mtime_ns, sha256=facts.sha256,
                             reason="changed while uploading"))
    return fresh


# --------------------------------------------------------------------------- one round


class _Round:
    """One pass over a list of transfers; returns uploads whose file changed while it was read.

    s3transfer calls back on its own threads when a file is done; hashing and renaming go to our
    pool (:meth:`_finish`) so transfers keep flowing. Failures are collected and the first is
    raised once every file has finished or failed.
    """

    def __init__(self, storage: Storage, direction: str, observer: SyncObserver, cache: SyncCache) -> None:
        self.storage, self.direction, self.observer, self.cache = storage, direction, observer, cache
        self.errors: list[tuple[SyncItem, BaseException]] = []
        self.changed: list[SyncItem] = []
        self.temps: dict[str, Path] = {}
        self.finishing: list[Future[None]] = []
        self.lock = threading.Lock()
        self.hashed_at = time.time_ns()
        self.moved: list[SyncItem] = []
        self.responses: _Responses | None = None
        self.pool: ThreadPoolExecutor | None = None

    def run(self, todo: list[SyncItem], moved: list[SyncItem]) -> list[SyncItem]:
        if not todo:
            return []
        self.moved = moved
        with _Responses(self.storage.transfer_client) as self.responses, \
                ThreadPoolExecutor(max_workers=HASH_WORKERS) as self.pool:
            try:
                self._transfer(todo)
            except BaseException:
                self.pool.shutdown(wait=True, cancel_futures=True)
                _remove(self.temps.values())
                raise
            self._wait_for_finishing()
        _remove(self.temps.values())
        if self.errors:
            _raise_first(self.storage, self.direction, self.errors, len(todo))
        return self.changed

    def _transfer(self, todo: list[SyncItem]) -> None:
        # Leaving this block by an exception (Ctrl-C) makes the manager cancel every transfer and
        # wait for them; s3transfer then removes its own temp files. (Its shutdown(cancel=True)
        # passes its arguments in the wrong order, so the context manager is the way to cancel.)
        with TransferManager(self.storage.transfer_client, self.storage.config) as manager:
            futures = [self._submit(manager, item) for item in self._ready(todo)]
            for fut in futures:
                try:
                    fut.result()
                except Exception:  # noqa: BLE001 - recorded by _on_done
                    pass

    def _ready(self, todo: list[SyncItem]) -> Iterator[SyncItem]:
        """Items in order; uploads get their sha256 (metadata) hashed on the pool while others move."""
        assert self.pool is not None
        return self.pool.map(self._with_sha256, todo) if self.direction == UP else iter(todo)

    def _submit(self, manager: TransferManager, item: SyncItem) -> Any:
        done = functools.partial(self._on_done, item)
        bucket = self.storage.bucket
        if self.direction == UP:
            meta = {"size": str(item.size), "sha256": item.sha256 or "", **item.metadata}
            return manager.upload(item.path, bucket, item.key, extra_args={"Metadata": meta},
                                  subscribers=[_Subscriber(self.observer, None, done)])
        dest = Path(item.path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.temps[item.key] = _temp_path(dest)
        return manager.download(bucket, item.key, str(self.temps[item.key]),
                                subscribers=[_Subscriber(self.observer, item.size, done)])

    def _with_sha256(self, item: SyncItem) -> SyncItem:
        if item.sha256:
            return item
        sha, _ = sha256_of(item.path)
        self.cache.remember_local(item.rel, LocalFacts(item.size, item.mtime_ns, sha), hashed_at_ns=self.hashed_at)
        return replace(item, sha256=sha)

    def _on_done(self, item: SyncItem, future: Any) -> None:
        try:
            future.result()
        except BaseException as exc:  # noqa: BLE001 - collected, reported after every file finished
            with self.lock:
                self.errors.append((item, exc))
            return
        assert self.pool is not None
        with self.lock:
            self.finishing.append(self.pool.submit(self._finish, item))

    def _finish(self, item: SyncItem) -> None:
        assert self.responses is not None
        try:
            if self.direction == UP and not _finish_upload(item, self.responses, self.cache):
                self.changed.append(item)
                return
            if self.direction != UP:
                _finish_download(self.storage, item, self.temps[item.key], self.responses, self.cache)
            self.moved.append(item)
            self.observer.file_done(item)
        except BaseException as exc:  # noqa: BLE001 - collected, reported after every file finished
            with self.lock:
                self.errors.append((item, exc))

    def _wait_for_finishing(self) -> None:
        while True:  # _finish may still be running for the last files
            with self.lock:
                pending = [f for f in self.finishing if not f.done()]
            if not pending:
                return
            for f in pending:
                f.result()


# --------------------------------------------------------------------------- after each file


def _finish_upload(item: SyncItem, responses: "_Responses", cache: SyncCache) -> bool:
    """Remember what was uploaded; False when the file changed while it was read (upload again)."""
    st = os.stat(item.path)
    if (st.st_size, st.st_mtime_ns) != (item.size, item.mtime_ns):
        return False
    seen = responses.get(item.key)
    if seen is not None:
        cache.remember_remote(item.rel, RemoteFacts(seen["etag"], item.size, item.sha256))
    return True


def _finish_download(storage: Storage, item: SyncItem, tmp: Path, responses: "_Responses", cache: SyncCache) -> None:
    """Verify the temp file against what S3 said about the object, then rename it into place."""
    url = storage.url(item.key)
    seen = responses.get(item.key) or {}
    etag = seen.get("etag") or item.etag
    if item.etag and etag != item.etag:
        raise StorageError(f"{url} changed while it was downloaded; run again.")
    expected = seen.get("metadata", {}).get("sha256") or item.sha256
    # Without sha256 metadata, a plain md5 ETag is the object's md5 (not for KMS/SSE-C objects).
    md5_etag = remote_md5(etag) if not expected and not seen.get("encrypted") else None
    sha, md5 = verify_download(url, tmp, item.size, expected, md5_etag, need_sha256=True)
    assert sha is not None
    os.replace(tmp, item.path)
    st = os.stat(item.path)
    cache.remember_local(item.rel, LocalFacts(st.st_size, st.st_mtime_ns, sha, md5))
    cache.remember_remote(item.rel, RemoteFacts(etag, item.size, sha, md5))


def _temp_path(dest: Path) -> Path:
    # Matches scan.TEMP_NAME, so a plan never lists a download in flight (or one a crash left).
    return dest.parent / f".{dest.name}.gpu-deploy-{uuid.uuid4().hex[:8]}.part"


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- failures


def _raise_first(storage: Storage, direction: str, errors: list[tuple[SyncItem, BaseException]], total: int) -> None:
    for _, exc in errors:
        if not _is_storage_failure(exc):
            raise exc  # an interrupt, an observer's or a bug's exception: keep its type and traceback
    item, exc = errors[0]
    cause = _storage_cause(exc)
    first = (cause if isinstance(cause, DeployError)
             else storage.explain(cause, item.key, transfer=True))  # type: ignore[arg-type]
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


# --------------------------------------------------------------------------- s3transfer plumbing


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
    """Hands s3transfer's progress to the observer and its completion to the round."""

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
