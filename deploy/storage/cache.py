"""What a directory sync remembers between runs, so a run with nothing changed costs one listing.

Deciding "unchanged" needs the sha256 of each local file and of each object. Hashing a gigabyte on
every run, or heading a thousand objects to read their ``sha256`` metadata, would make a no-change
sync take seconds. So a small JSON file per (bucket, prefix, local directory) remembers:

- for each local file: the ``(size, mtime_ns)`` it had when hashed, and its sha256 (and md5, when an
  old object had to be compared by ETag). A file whose size or mtime changed is hashed again.
- for each object: the ``ETag`` and size it had, and its sha256. S3 gives a new ETag to every new
  write, so an entry whose ETag still matches the listing is still true.

It is a cache, never the truth: a missing, stale or corrupt file only costs hashing and heads.
It lives under ``$GPU_DEPLOY_CACHE_DIR`` (default ``$XDG_CACHE_HOME/gpu-deploy``, i.e.
``~/.cache/gpu-deploy``), not in the synced directory, so it is never uploaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR_VARIABLE = "GPU_DEPLOY_CACHE_DIR"
_FORMAT = 1

RACY_NS = 1_000_000_000
"""A file modified less than this before its hash was taken may change again within the same
mtime tick (coarse file-system clocks); such hashes are not remembered (git's "racy clean")."""


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_DIR_VARIABLE):
        return Path(os.environ[CACHE_DIR_VARIABLE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gpu-deploy"


def multipart_etag(path: str | os.PathLike[str], part_size: int) -> str:
    """The ETag S3 gives a multipart upload of ``path`` in parts of ``part_size``: md5 of part md5s."""
    digests = []
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(part_size), b""):
            digests.append(hashlib.md5(chunk, usedforsecurity=False).digest())
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


@dataclass(frozen=True)
class LocalFacts:
    size: int
    mtime_ns: int
    sha256: str
    md5: str | None = None


@dataclass(frozen=True)
class RemoteFacts:
    etag: str
    size: int
    sha256: str | None = None
    md5: str | None = None


class SyncCache:
    """Remembered hashes for one sync pair; thread-safe; ``path=None`` keeps it in memory only."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._local: dict[str, LocalFacts] = {}
        self._remote: dict[str, RemoteFacts] = {}
        self._dirty = False
        if path is not None:
            self._load(path)

    @classmethod
    def for_pair(cls, endpoint: str, bucket: str, prefix: str, local_dir: str | os.PathLike[str],
                 cache_dir: Path | None = None) -> "SyncCache":
        """The cache file for syncing ``local_dir`` with ``s3://bucket/prefix`` at ``endpoint``."""
        ident = "\n".join([endpoint, bucket, prefix, os.path.abspath(local_dir)])
        name = hashlib.sha256(ident.encode()).hexdigest()[:24] + ".json"
        return cls((cache_dir or default_cache_dir()) / "sync" / name)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
            if data.get("format") != _FORMAT:
                return
            self._local = {k: LocalFacts(*v) for k, v in data["local"].items()}
            self._remote = {k: RemoteFacts(*v) for k, v in data["remote"].items()}
        except (OSError, ValueError, TypeError, KeyError):
            self._local, self._remote = {}, {}  # a cache that cannot be read is an empty cache

    # ----------------------------------------------------------------- local files

    def local(self, rel: str, size: int, mtime_ns: int) -> LocalFacts | None:
        facts = self._local.get(rel)
        if facts is not None and facts.size == size and facts.mtime_ns == mtime_ns:
            return facts
        return None

    def remember_local(self, rel: str, facts: LocalFacts, hashed_at_ns: int | None = None) -> None:
        """Remember a local hash; ``hashed_at_ns`` (when the hash was taken) guards racy mtimes."""
        if hashed_at_ns is not None and facts.mtime_ns > hashed_at_ns - RACY_NS:
            return
        with self._lock:
            if self._local.get(rel) != facts:
                self._local[rel] = facts
                self._dirty = True

    # ----------------------------------------------------------------- objects

    def remote(self, rel: str, etag: str, size: int) -> RemoteFacts | None:
        facts = self._remote.get(rel)
        if facts is not None and etag and facts.etag == etag and facts.size == size:
            return facts
        return None

    def remember_remote(self, rel: str, facts: RemoteFacts) -> None:
        if not facts.etag:
            return
        with self._lock:
            if self._remote.get(rel) != facts:
                self._remote[rel] = facts
                self._dirty = True

    # ----------------------------------------------------------------- persistence

    def save(self) -> None:
        """Write the cache atomically; a cache that cannot be written is simply not kept."""
        if self.path is None or not self._dirty:
            return
        with self._lock:
            data = {
                "format": _FORMAT,
                "saved": time.time(),
                "local": {k: [v.size, v.mtime_ns, v.sha256, v.md5] for k, v in self._local.items()},
                "remote": {k: [v.etag, v.size, v.sha256, v.md5] for k, v in self._remote.items()},
            }
            self._dirty = False
        tmp: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".sync-", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle, separators=(",", ":"))
            os.replace(tmp, self.path)
        except OSError:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
