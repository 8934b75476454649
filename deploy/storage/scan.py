"""The facts a sync plan is made from: local files, the objects under a prefix, and their hashes.

Read-only: scanning a directory, one listing of the bucket, sha256 (and md5) of the local files
whose content must be compared, and the sha256 metadata of the objects (from the
:class:`~deploy.storage.cache.SyncCache` when the ETag is unchanged, else one head each).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from deploy.errors import StorageError
from deploy.storage.bucket import ObjectInfo, Storage, hash_file, safe_relative
from deploy.storage.cache import LocalFacts, RemoteFacts, SyncCache

HASH_WORKERS = max(2, min(4, os.cpu_count() or 2))
HEAD_WORKERS = 16

_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
TEMP_NAME = re.compile(r"^\..*\.gpu-deploy-[0-9a-f]{8}\.part(\.[A-Za-z0-9_]+)?$")
"""Our own in-flight download files (and s3transfer's suffix on them): never part of a plan."""


@dataclass(frozen=True)
class LocalFile:
    """A regular file found under the local directory."""

    rel: str
    path: str
    size: int
    mtime_ns: int

    @classmethod
    def stat(cls, rel: str, path: str | os.PathLike[str]) -> "LocalFile":
        st = os.stat(path)
        return cls(rel, str(path), st.st_size, st.st_mtime_ns)


def remote_md5(etag: str) -> str | None:
    """The object's md5 when its ETag is one (single-part, unencrypted uploads), else None."""
    return etag if _MD5_ETAG.match(etag) else None


def scan_local(root: str | os.PathLike[str], must_exist: bool = True) -> dict[str, LocalFile]:
    """Every regular file under ``root`` by relative path (``/`` separators), our temp files left out."""
    root = Path(root)
    if not root.exists():
        if must_exist:
            raise StorageError(f"The local directory {root} does not exist; check the path.")
        return {}
    if not root.is_dir():
        raise StorageError(f"{root} is a file, not a directory; give the directory to sync.")
    found: dict[str, LocalFile] = {}
    stack = [(str(root), "")]
    while stack:
        directory, rel_dir = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                rel = f"{rel_dir}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, rel + "/"))
                elif entry.is_file() and not TEMP_NAME.match(entry.name):
                    st = entry.stat()
                    found[rel] = LocalFile(rel, entry.path, st.st_size, st.st_mtime_ns)
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


def sha256_of(path: str, md5: bool = False) -> tuple[str, str | None]:
    """:func:`hash_file`, with an unreadable file named in one sentence."""
    try:
        return hash_file(path, md5=md5)
    except OSError as exc:
        raise StorageError(f"Cannot read the local file {path}: {exc.strerror or exc}.") from exc


def hash_locals(files: Iterable[LocalFile], cache: SyncCache,
                md5_for: set[str] | frozenset[str] = frozenset()) -> dict[str, LocalFacts]:
    """sha256 (and md5 for ``md5_for``) of each file: from the cache, else hashed in parallel."""
    started = time.time_ns()
    out: dict[str, LocalFacts] = {}
    todo: list[LocalFile] = []
    for f in files:
        facts = cache.local(f.rel, f.size, f.mtime_ns)
        if facts is not None and (f.rel not in md5_for or facts.md5):
            out[f.rel] = facts
        else:
            todo.append(f)

    def work(f: LocalFile) -> tuple[LocalFile, LocalFacts]:
        sha, md5 = sha256_of(f.path, md5=f.rel in md5_for)
        return f, LocalFacts(f.size, f.mtime_ns, sha, md5)

    if todo:
        with ThreadPoolExecutor(max_workers=HASH_WORKERS) as pool:
            for f, facts in pool.map(work, todo):
                cache.remember_local(f.rel, facts, hashed_at_ns=started)
                out[f.rel] = facts
    return out


def remote_facts(storage: Storage, cache: SyncCache, objects: Mapping[str, ObjectInfo],
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
            out[rel] = RemoteFacts(obj.etag, obj.size, obj.sha256, remote_md5(obj.etag))
        else:
            todo.append((rel, obj))
    if todo:
        # No more threads than the client's connection pool holds (it warns and reconnects otherwise).
        workers = min(HEAD_WORKERS, len(todo), getattr(storage.config, "max_request_concurrency", 10))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            infos = list(pool.map(lambda pair: storage.head(pair[1].key), todo))
        for (rel, obj), info in zip(todo, infos):
            info = info or obj
            etag = info.etag or obj.etag
            facts = RemoteFacts(etag, info.size, info.sha256, remote_md5(etag))
            if info.sha256:
                cache.remember_remote(rel, facts)
            out[rel] = facts
    return out
