"""Bring results back from a host: a path under REMOTE_DIR to the operator's machine, incrementally.

rsync over the same SSH settings when both ends have it; otherwise SFTP comparing size and mtime.
Either way an interrupted file never lands at its final path (rsync's temp files and
``--partial-dir``; ``.part`` files renamed when complete for SFTP), and a second run with nothing
new moves nothing.

The host is not trusted to stay inside REMOTE_DIR. Before anything moves, one command on the host
resolves the source (links followed) and every symlink under it: a source that resolves outside
REMOTE_DIR is refused, and links that lead outside it are skipped and named in the summary line.
rsync then runs with ``--safe-links`` (links stay links, and one that climbs out of the transferred
tree is ignored) and never ``--copy-links``/``--copy-unsafe-links``, which would copy what a link
points to, wherever that is. SFTP copies regular files, and a link only when it resolves to a
regular file inside REMOTE_DIR; every name the server lists goes through
:func:`deploy.hosts.paths.checked_relative`, so ``../x`` never lands outside ``--dest``.

Nothing but regular files, folders and those links lands here, and never with the host's say over
ownership or special bits, even when fab runs as root: rsync runs with
:data:`deploy.hosts.rsync.SAFE_RECEIVE` (no ``-a``, so no ``-o``/``-g``/``-D``; ``--no-devices
--no-specials``; modes through ``--chmod`` without setuid, setgid, sticky or group/other write),
and SFTP skips device nodes, FIFOs and sockets and gives each file the same mode
(:func:`safe_mode`). A source that is itself not a regular file or folder is refused.

The upload journal's staging folders (``.s3-sync/``) and the uploader's temporary copies
(``.s3-sync-*``) never travel (:data:`NEVER_TRAVEL`): they come and go while training uploads. A
file that vanishes between the listing and its copy anyway is named in the summary, not a failure.
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from deploy.errors import ConfigError, HostError, StorageError
from deploy.hosts.paths import checked_relative
from deploy.hosts.remote import run
from deploy.hosts.rsync import SAFE_RECEIVE, remote, rsync_command, rsync_run
from deploy.hosts.ssh import HostOptions, HostSpec, require_sftp
from deploy.hosts.text import printable
from deploy.training.journal import STAGING_DIR

if TYPE_CHECKING:
    from fabric import Connection

PARTIAL_DIR = ".rsync-partial"
NEVER_TRAVEL = (f"{STAGING_DIR}/", f"{STAGING_DIR}-*")
"""rsync exclude patterns for what the training side's uploads create and remove while training runs: the
journal's staging folders (``.s3-sync/``: hard links and their entries) and the uploader's temporary copies,
which it names ``.s3-sync-XXXX`` beside the checkpoint (deploy.training.uploader; tests/unit/test_hostsync_rules.py
checks that the two agree)."""


def never_travels(name: str, is_dir: bool) -> bool:
    """``name`` (one path segment) is staging or a temporary copy of the uploads: SFTP's :data:`NEVER_TRAVEL`."""
    return (is_dir and name == STAGING_DIR) or (not is_dir and fnmatch.fnmatchcase(name, NEVER_TRAVEL[1]))


def safe_mode(mode: int) -> int:
    """The mode a copied file gets: the host's permission bits without setuid, setgid, sticky and group/other
    write, readable and writable by its owner (rsync's ``--chmod`` of :data:`deploy.hosts.rsync.SAFE_CHMOD`)."""
    return (mode & 0o755) | 0o600


@dataclass(frozen=True)
class PullResult:
    source: str
    dest: str
    method: str
    files: int
    bytes: int
    skipped: int
    seconds: float
    outside_links: tuple[str, ...] = ()
    """Links under the source that lead outside REMOTE_DIR (``rel -> target``): never followed."""
    vanished: tuple[str, ...] = ()
    """Files the host listed and removed before they could be copied (a training at work): not copied."""

    def summary(self) -> str:
        """One line; every name the host gave goes through :func:`printable`."""
        moved = f"{self.files} files, {self.bytes / 1e6:.1f} MB" if self.files else "nothing new"
        line = (f"{self.source} -> {self.dest}: {moved} ({self.skipped} unchanged) by {self.method} "
                f"in {self.seconds:.1f} s")
        if self.outside_links:
            n = len(self.outside_links)
            line += (f"; skipped {n} link{'s' if n > 1 else ''} leading outside REMOTE_DIR: "
                     + ", ".join(self.outside_links[:5]) + (" ..." if n > 5 else ""))
        if self.vanished:
            n = len(self.vanished)
            they = "they" if n > 1 else "it"
            line += (f"; warning: {n} file{'s' if n > 1 else ''} vanished on the host before {they} could be copied"
                     " (written and removed while training runs; the next sync brings what"
                     " stays): " + ", ".join(self.vanished[:5]) + (" ..." if n > 5 else ""))
        return printable(line)


def remote_path(remote_dir: str, path: str) -> str:
    """``path`` resolved inside ``remote_dir``; paths that leave it are refused (local check, no host needed)."""
    if not path or path.strip() in (".", "/"):
        raise ConfigError("Give a path under REMOTE_DIR to sync, e.g. --path=lightning_logs.")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise ConfigError(f"The path {path!r} holds a control character; give a plain path under REMOTE_DIR.")
    remote_dir = posixpath.normpath(remote_dir)
    joined = posixpath.normpath(posixpath.join(remote_dir, path))
    if joined != remote_dir and not joined.startswith(remote_dir.rstrip("/") + "/"):
        raise ConfigError(f"The path {path!r} leaves REMOTE_DIR ({remote_dir}); give a path inside it.")
    if joined == remote_dir:
        raise ConfigError(f"The path {path!r} is REMOTE_DIR itself; give a folder inside it, e.g. lightning_logs.")
    return joined


def _excluded(relative: str, exclude: Sequence[str]) -> bool:
    name = posixpath.basename(relative)
    return any(fnmatch.fnmatchcase(relative, p) or fnmatch.fnmatchcase(name, p) for p in exclude)


# Host side, POSIX sh: $1 REMOTE_DIR, $2 the source. Prints "root\0src\0kind\0", then "link\0target\0"
# for every symlink under the source (target "" when it does not resolve); NUL-separated, so any name survives.
_RESOLVE = r"""
root=$(readlink -f -- "$1") || root=""
src=$(readlink -f -- "$2") || src=""
if [ -z "$src" ] || [ ! -e "$src" ]; then kind=none
elif [ -d "$src" ]; then kind=dir
elif [ -f "$src" ]; then kind=file
else kind=special; fi
printf '%s\0%s\0%s\0' "$root" "$src" "$kind"
[ "$kind" = dir ] && find "$src" -type l -exec sh -c \
  'for l; do printf "%s\0%s\0" "$l" "$(readlink -f -- "$l")"; done' sh {} +
exit 0
"""


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True)
class Resolved:
    """The source as the host resolved it: its real path, file or dir, and links that lead out of REMOTE_DIR."""

    source: str
    kind: str
    outside: tuple[tuple[str, str], ...]  # (path relative to source, where it leads)


def resolve_on_host(conn: Connection, spec: HostSpec, remote_dir: str, source: str) -> Resolved:
    """Resolve ``source`` and the links under it on the host; refuse a source that leads out of REMOTE_DIR."""
    out = run(conn, ["sh", "-c", _RESOLVE, "resolve", remote_dir, source], f"Looking at {source}").stdout
    fields = out.split("\0")
    if len(fields) < 3:
        raise HostError(f"Resolving {source} on {spec.host}:{spec.port} gave no answer; is it a POSIX host?")
    root, real, kind = fields[:3]
    if kind == "none":
        raise HostError(f"{source} does not exist on {spec.host}:{spec.port}; nothing to sync "
                        "(has training written it yet?).")
    if not root or not _inside(root, real) or real == root:
        raise HostError(f"{source} on {spec.host}:{spec.port} is a link to {printable(real)}, outside REMOTE_DIR "
                        f"({remote_dir}); refusing to copy it.")
    if kind == "special":
        raise HostError(f"{source} on {spec.host}:{spec.port} is not a regular file or a folder (a device, FIFO "
                        "or socket); refusing to copy it.")
    links = fields[3:-1] if len(fields) % 2 == 0 else fields[3:]
    outside = tuple((posixpath.relpath(link, real), target) for link, target in zip(links[::2], links[1::2])
                    if not target or not _inside(root, target))
    return Resolved(real, kind, outside)


@dataclass(frozen=True)
class PullPlan:
    """What a pull would do, asked of the host without changing anything (``--dry-run`` prints it)."""

    spec: HostSpec
    source: str
    resolved: Resolved
    target: Path
    method: str

    @property
    def outside_links(self) -> tuple[str, ...]:
        return tuple(f"{rel} -> {where or '(does not resolve)'}" for rel, where in self.resolved.outside)

    def lines(self) -> list[str]:
        lines = [f"would bring {self.source} ({'a folder' if self.resolved.kind == 'dir' else 'a file'}) from "
                 f"{self.spec} into {self.target} with {self.method} (only what changed moves)"]
        return lines + [printable(f"skip      {link}: a link that leads outside REMOTE_DIR")
                        for link in self.outside_links]


def plan_pull(conn: Connection, spec: HostSpec, remote_dir: str, path: str, dest: str | os.PathLike[str],
              method: str = "auto") -> PullPlan:
    """Resolve ``REMOTE_DIR/path`` on the host (refusing one outside REMOTE_DIR) and choose rsync or SFTP."""
    require_sftp(spec)
    source = remote_path(remote_dir, path)
    resolved = resolve_on_host(conn, spec, remote_dir, source)
    if method == "auto":
        remote_rsync = run(conn, ["sh", "-c", "command -v rsync"], "Looking for rsync", warn=True).ok
        method = "rsync" if remote_rsync and shutil.which("rsync") and shutil.which("ssh") else "sftp"
    return PullPlan(spec, source, resolved, Path(dest) / posixpath.basename(source), method)


def pull(conn: Connection, spec: HostSpec, options: HostOptions, remote_dir: str, path: str, dest: str | os.PathLike[str],
         exclude: Sequence[str] = (), method: str = "auto",
         progress: Callable[[int], None] | None = None, plan: PullPlan | None = None) -> PullResult:
    """Pull ``REMOTE_DIR/path`` into ``dest`` (a folder: ``dest/<basename of path>``), as ``plan`` says."""
    plan = plan or plan_pull(conn, spec, remote_dir, path, dest, method)
    resolved, target = plan.resolved, plan.target
    skip = [rel for rel, _ in resolved.outside]
    if plan.method == "rsync":
        result = _rsync(spec, options, resolved.source, target, resolved.kind == "dir", exclude)
    else:
        result = _sftp(conn, resolved.source, target, resolved.kind == "dir", exclude, skip,
                       progress or (lambda n: None))
    return replace(result, source=plan.source, outside_links=plan.outside_links)


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
    args = ["--stats", f"--partial-dir={PARTIAL_DIR}", f"--exclude={PARTIAL_DIR}",
            *[f"--exclude={p}" for p in (*NEVER_TRAVEL, *exclude)], *SAFE_RECEIVE]
    done = rsync_run(rsync_command(spec, options, args, remote(spec, source) + ("/" if is_dir else ""), local), spec,
                     "rsync from", vanished_ok=True)
    files = _stat(done.stdout, "files")
    total = _stat(done.stdout, "total")
    return PullResult(source=source, dest=str(target), method="rsync", files=files,
                      bytes=_stat(done.stdout, "bytes"), skipped=max(0, total - files),
                      seconds=time.monotonic() - started, vanished=done.vanished)


def _walk(sftp, root: str, skip: set[str], relative: str = "") -> Iterator[tuple[str, object]]:
    """Regular files under ``root`` (and links that resolve to one inside REMOTE_DIR), by checked relative path.

    Device nodes, FIFOs and sockets are never yielded; nor what :func:`never_travels`."""
    folder = posixpath.join(root, relative) if relative else root
    for attrs in sftp.listdir_attr(folder):
        name = attrs.filename
        try:
            plain = checked_relative(name, "The file name") == name and "/" not in name
        except StorageError:
            plain = False
        if not plain:  # a server that sends "../x" or "a/b" as a name is not copied from
            raise HostError(f"The host listed the name {name!r} in {folder}, which is not a plain file name; "
                            "refusing to copy from it.")
        rel = posixpath.join(relative, name) if relative else name
        if rel in skip:
            continue
        link = stat.S_ISLNK(attrs.st_mode)
        if link:
            try:
                attrs = sftp.stat(posixpath.join(root, rel))  # the host resolved it inside REMOTE_DIR
            except OSError:
                continue  # a dangling link
        if never_travels(name, stat.S_ISDIR(attrs.st_mode)):
            continue
        if stat.S_ISDIR(attrs.st_mode) and not link:  # a link to a folder is not walked: no cycles
            yield from _walk(sftp, root, skip, rel)
        elif stat.S_ISREG(attrs.st_mode):
            yield rel, attrs


def _sftp(conn: Connection, source: str, target: Path, is_dir: bool, exclude: Sequence[str],
          skip: Sequence[str], progress: Callable[[int], None]) -> PullResult:
    started = time.monotonic()
    sftp = conn.sftp()
    if is_dir:  # in name order, as rsync goes
        entries = sorted((rel, a) for rel, a in _walk(sftp, source, set(skip)) if not _excluded(rel, exclude))
    else:
        entries = [("", sftp.stat(source))]
        if not stat.S_ISREG(entries[0][1].st_mode):  # it changed since the host resolved it
            raise HostError(f"{source} is no longer a regular file on the host; refusing to copy it.")
    files = moved = skipped = 0
    vanished: list[str] = []
    for rel, attrs in entries:
        local = target / rel if rel else target
        if local.is_file():
            st = local.stat()
            if st.st_size == attrs.st_size and int(st.st_mtime) == int(attrs.st_mtime):
                skipped += 1
                continue
        _make_dirs(local.parent)
        part = local.with_name(f".{local.name}.part")
        last = 0

        def callback(done: int, _total: int) -> None:
            nonlocal last
            progress(done - last)
            last = done

        remote_file = posixpath.join(source, rel) if rel else source
        try:
            sftp.get(remote_file, str(part), callback=callback)
            os.chmod(part, safe_mode(attrs.st_mode))
            os.utime(part, (attrs.st_atime, attrs.st_mtime))
            os.replace(part, local)
        except FileNotFoundError as exc:
            part.unlink(missing_ok=True)
            if exc.filename is not None:  # a local path: paramiko names no file for the host's ENOENT
                raise
            vanished.append(remote_file)  # listed, then removed on the host before its copy: rsync's exit 24
            continue
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        files += 1
        moved += attrs.st_size
    return PullResult(source=source, dest=str(target), method="sftp", files=files, bytes=moved,
                      skipped=skipped, seconds=time.monotonic() - started, vanished=tuple(vanished))


def _make_dirs(folder: Path) -> None:
    """``mkdir -p`` with 0755 for each folder it makes: never group- or world-writable, whatever the umask."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        os.mkdir(path, 0o755)
