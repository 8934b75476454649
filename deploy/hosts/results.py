"""Bring results back from a host: a path under REMOTE_DIR to the operator's machine, incrementally.

rsync over the same SSH settings when both ends have it; otherwise SFTP comparing size and mtime.
Either way an interrupted file never lands at its final path (rsync's temp files and
``--partial-dir``; ``.part`` files renamed when complete for SFTP), and a second run with nothing
new moves nothing.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import ConfigError, HostError
from deploy.hosts.remote import run
from deploy.hosts.rsync import remote, rsync_command, run_rsync
from deploy.hosts.ssh import HostOptions, HostSpec, require_sftp

PARTIAL_DIR = ".rsync-partial"


@dataclass(frozen=True)
class PullResult:
    source: str
    dest: str
    method: str
    files: int
    bytes: int
    skipped: int
    seconds: float

    def summary(self) -> str:
        moved = f"{self.files} files, {self.bytes / 1e6:.1f} MB" if self.files else "nothing new"
        return f"{self.source} -> {self.dest}: {moved} ({self.skipped} unchanged) by {self.method} in {self.seconds:.1f} s"


def remote_path(remote_dir: str, path: str) -> str:
    """``path`` resolved inside ``remote_dir``; paths that leave it are refused."""
    if not path or path.strip() in (".", "/"):
        raise ConfigError("Give a path under REMOTE_DIR to sync, e.g. --path=lightning_logs.")
    joined = posixpath.normpath(posixpath.join(remote_dir, path))
    if joined != remote_dir and not joined.startswith(remote_dir.rstrip("/") + "/"):
        raise ConfigError(f"The path {path!r} leaves REMOTE_DIR ({remote_dir}); give a path inside it.")
    if joined == remote_dir:
        raise ConfigError(f"The path {path!r} is REMOTE_DIR itself; give a folder inside it, e.g. lightning_logs.")
    return joined


def _excluded(relative: str, exclude: Sequence[str]) -> bool:
    name = posixpath.basename(relative)
    return any(fnmatch.fnmatchcase(relative, p) or fnmatch.fnmatchcase(name, p) for p in exclude)


def pull(conn, spec: HostSpec, options: HostOptions, remote_dir: str, path: str, dest: str | os.PathLike[str],
         exclude: Sequence[str] = (), method: str = "auto",
         progress: Callable[[int], None] | None = None) -> PullResult:
    """Pull ``REMOTE_DIR/path`` into ``dest`` (a folder: ``dest/<basename of path>``)."""
    require_sftp(spec)
    source = remote_path(remote_dir, path)
    kind = run(conn, ["sh", "-c", 'if [ -d "$1" ]; then echo dir; elif [ -e "$1" ]; then echo file; '
                      'else echo none; fi', "sh", source], f"Looking at {source}").stdout.strip()
    if kind == "none":
        raise HostError(f"{source} does not exist on {spec.host}:{spec.port}; nothing to sync "
                        "(has training written it yet?).")
    target = Path(dest) / posixpath.basename(source)
    if method == "auto":
        remote_rsync = run(conn, ["sh", "-c", "command -v rsync"], "Looking for rsync", warn=True).ok
        method = "rsync" if remote_rsync and shutil.which("rsync") and shutil.which("ssh") else "sftp"
    if method == "rsync":
        return _rsync(spec, options, source, target, kind == "dir", exclude)
    return _sftp(conn, source, target, kind == "dir", exclude, progress or (lambda n: None))


_STAT = {"files": re.compile(r"Number of regular files transferred: ([\d,.]+)"),
         "bytes": re.compile(r"Total transferred file size: ([\d,.]+)"),
         "total": re.compile(r"Number of files: [\d,.]+ \(reg: ([\d,.]+)")}


def _stat(text: str, name: str) -> int:
    match = _STAT[name].search(text)
    return int(re.sub(r"[,.]", "", match.group(1))) if match else 0


def _rsync(spec: HostSpec, options: HostOptions, source: str, target: Path, is_dir: bool,
           exclude: Sequence[str]) -> PullResult:
    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    local = str(target) + ("/" if is_dir else "")
    args = ["-a", "--stats", f"--partial-dir={PARTIAL_DIR}", f"--exclude={PARTIAL_DIR}",
            *[f"--exclude={p}" for p in exclude]]
    out = run_rsync(rsync_command(spec, options, args, remote(spec, source) + ("/" if is_dir else ""), local), spec,
                    "rsync from")
    files = _stat(out, "files")
    total = _stat(out, "total")
    return PullResult(source=source, dest=str(target), method="rsync", files=files,
                      bytes=_stat(out, "bytes"), skipped=max(0, total - files),
                      seconds=time.monotonic() - started)


def _walk(sftp, root: str, relative: str = "") -> Iterator[tuple[str, object]]:
    for attrs in sftp.listdir_attr(posixpath.join(root, relative) if relative else root):
        rel = posixpath.join(relative, attrs.filename) if relative else attrs.filename
        if stat.S_ISDIR(attrs.st_mode):
            yield from _walk(sftp, root, rel)
        elif stat.S_ISREG(attrs.st_mode):
            yield rel, attrs


def _sftp(conn, source: str, target: Path, is_dir: bool, exclude: Sequence[str],
          progress: Callable[[int], None]) -> PullResult:
    started = time.monotonic()
    sftp = conn.sftp()
    if is_dir:
        entries = [(rel, a) for rel, a in _walk(sftp, source) if not _excluded(rel, exclude)]
    else:
        entries = [("", sftp.stat(source))]
    files = moved = skipped = 0
    for rel, attrs in entries:
        local = target / rel if rel else target
        if local.is_file():
            st = local.stat()
            if st.st_size == attrs.st_size and int(st.st_mtime) == int(attrs.st_mtime):
                skipped += 1
                continue
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(f".{local.name}.part")
        last = 0

        def callback(done: int, _total: int) -> None:
            nonlocal last
            progress(done - last)
            last = done

        try:
            sftp.get(posixpath.join(source, rel) if rel else source, str(part), callback=callback)
            os.utime(part, (attrs.st_atime, attrs.st_mtime))
            os.replace(part, local)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        files += 1
        moved += attrs.st_size
    return PullResult(source=source, dest=str(target), method="sftp", files=files, bytes=moved,
                      skipped=skipped, seconds=time.monotonic() - started)
