"""The training project's code to a host, for every runtime: only files whose size or mtime differ move
(rsync for more than a few files, else SFTP); stale ones go.

A manifest remembers what was shipped, so only files a previous deploy shipped and the tree no
longer has are removed: what training writes in REMOTE_DIR is never touched. The native runtime
and the compose runtime (which bind-mounts REMOTE_DIR as the container's /workspace) both plan
with :func:`plan_sync` (a :class:`~deploy.runtimes.base.CodeSync` in their plan) and carry out with
:func:`send_files`.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, TYPE_CHECKING

from deploy.errors import HostError, StorageError
from deploy.hosts.paths import checked_relative
from deploy.hosts.remote import make_dirs, run, where, write_atomic
from deploy.hosts.rsync import remote, rsync_command, run_rsync
from deploy.hosts.ssh import HostOptions, HostSpec
from deploy.runtimes.base import CodeSync, Log
from deploy.runtimes.code.layout import MANIFEST
from deploy.runtimes.code.tree import LocalFile

if TYPE_CHECKING:
    from fabric import Connection


class CodeTarget(Protocol):
    """Where the code goes and what it is: ``remote_dir`` and ``files`` (a runtime's desired state)."""

    remote_dir: str
    files: Mapping[str, LocalFile]


class CodePlan(Protocol):
    """What :func:`send_files` needs of a runtime's plan (NativePlan, ComposePlan)."""

    spec: HostSpec
    desired: Any  # a CodeTarget
    sync: CodeSync


def diff_files(files: Mapping[str, LocalFile], remote: Mapping[str, tuple[int, int]],
               manifest: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What to send (new, or size/mtime differ) and what to remove (shipped before, gone from the tree); pure.

    The manifest comes from the host, so only its entries that are safe paths inside REMOTE_DIR
    (:func:`deploy.hosts.paths.checked_relative`, in normal form) can be removed.
    """
    send = tuple(sorted(rel for rel, f in files.items() if remote.get(rel) != (f.size, f.mtime)))
    delete = tuple(sorted(rel for rel in set(manifest) - set(files) if _safe(rel)))
    return send, delete


def _safe(rel: object) -> bool:
    try:
        return isinstance(rel, str) and checked_relative(rel) == rel
    except StorageError:
        return False


SFTP_UP_TO = (4, 1 << 20)
"""A change of at most this many files and bytes goes by SFTP even where rsync could take it: over the deploy's
open connection it needs a few round trips per file, while rsync starts its own ssh (a handshake and an
authentication, about a second on loopback); a one-line code change is the common redeploy."""


def sync_method(local_rsync: bool, host_tools: Iterable[str], files: int, size: int) -> str:
    """rsync when both ends have it and the change (``files`` files, ``size`` bytes) is more than
    :data:`SFTP_UP_TO`, else SFTP."""
    small = files <= SFTP_UP_TO[0] and size <= SFTP_UP_TO[1]
    return "rsync" if local_rsync and "rsync" in host_tools and not small else "sftp"


def plan_sync(files: Mapping[str, LocalFile], remote: Mapping[str, tuple[int, int]], manifest: Iterable[str],
              local_rsync: bool, host_tools: Iterable[str]) -> CodeSync:
    """The code-sync part of a plan: what to send and remove (:func:`diff_files`) and by which method; pure."""
    send, delete = diff_files(files, remote, manifest)
    size = sum(files[rel].size for rel in send)
    return CodeSync(send=send, delete=delete, method=sync_method(local_rsync, host_tools, len(send), size),
                    send_bytes=size, unchanged=len(files) - len(send))


def _mkdirs(conn: Connection, remote_dir: str, rels: Iterable[str]) -> None:
    dirs = sorted({posixpath.dirname(posixpath.join(remote_dir, rel)) for rel in rels})
    if len(dirs) <= SFTP_UP_TO[0]:  # a few: over SFTP, no command (and no login shell) started
        for folder in dirs:
            make_dirs(conn, folder)
        return
    for i in range(0, len(dirs), 200):
        run(conn, ["mkdir", "-p", *dirs[i:i + 200]], "Creating folders")


def _rsync(spec: HostSpec, options: HostOptions, root: str, rels: list[str], dest: str) -> None:
    argv = rsync_command(spec, options, ["-tp", "--files-from=-"], root.rstrip("/") + "/",
                         remote(spec, dest.rstrip("/") + "/"))
    run_rsync(argv, spec, "rsync to", stdin="\n".join(rels) + "\n")


def _sftp(conn: Connection, plan: CodePlan) -> None:
    d = plan.desired
    sftp = conn.sftp()
    for rel in plan.sync.send:
        f = d.files[rel]
        try:
            with open(f.path, "rb") as handle:
                write_atomic(sftp, posixpath.join(d.remote_dir, rel), handle, mode=f.mode,
                             mtime=f.mtime)
        except OSError as exc:
            raise HostError(f"Reading {f.path} to send it failed ({exc.strerror or exc}).") from exc


def _remove(conn: Connection, plan: CodePlan) -> None:
    sftp = conn.sftp()
    for rel in plan.sync.delete:
        try:
            sftp.remove(posixpath.join(plan.desired.remote_dir, rel))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise HostError(f"Removing {rel} from {plan.desired.remote_dir} on {where(conn)} failed "
                            f"({exc.strerror or exc}).") from exc


def send_files(conn: Connection, plan: CodePlan, options: HostOptions, log: Log = lambda s: None) -> None:
    """Copy the plan's changed files (rsync per local root, else SFTP), remove stale ones, record the manifest."""
    d, sync = plan.desired, plan.sync
    if sync.send:
        _mkdirs(conn, d.remote_dir, sync.send)
    if sync.send and sync.method == "rsync":
        groups: dict[tuple[str, str], list[str]] = {}
        for rel in sync.send:
            f = d.files[rel]
            groups.setdefault((f.root, rel[: len(rel) - len(f.rel)]), []).append(f.rel)
        for (root, prefix), rels in groups.items():
            _rsync(plan.spec, options, root, rels, posixpath.join(d.remote_dir, prefix))
    elif sync.send:
        _sftp(conn, plan)
    _remove(conn, plan)
    write_atomic(conn, posixpath.join(d.remote_dir, MANIFEST), json.dumps(sorted(d.files)).encode(), mode=0o644)
    log(f"{plan.spec.host}: sent {len(sync.send)} files ({sync.send_bytes / 1e6:.1f} MB) by {sync.method}, "
        f"removed {len(sync.delete)}")
