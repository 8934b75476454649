"""Code to a native host: only files whose size or mtime differ move (rsync, else SFTP); stale ones go.

A manifest remembers what was shipped, so only files a previous deploy shipped and the tree no
longer has are removed: what training writes in REMOTE_DIR is never touched.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable
from typing import Any

from deploy.errors import HostError
from deploy.hosts.remote import run, where, write_atomic
from deploy.hosts.rsync import remote, rsync_command, run_rsync
from deploy.hosts.ssh import HostOptions, HostSpec
from deploy.runtimes.base import Log
from deploy.runtimes.native.layout import MANIFEST
from deploy.runtimes.native.plan import NativePlan


def _mkdirs(conn: Any, remote_dir: str, rels: Iterable[str]) -> None:
    dirs = sorted({posixpath.dirname(posixpath.join(remote_dir, rel)) for rel in rels})
    for i in range(0, len(dirs), 200):
        run(conn, ["mkdir", "-p", *dirs[i:i + 200]], "Creating folders")


def _rsync(spec: HostSpec, options: HostOptions, root: str, rels: list[str], dest: str) -> None:
    argv = rsync_command(spec, options, ["-tp", "--files-from=-"], root.rstrip("/") + "/",
                         remote(spec, dest.rstrip("/") + "/"))
    run_rsync(argv, spec, "rsync to", stdin="\n".join(rels) + "\n")


def _sftp(conn: Any, plan: NativePlan) -> None:
    d = plan.desired
    sftp = conn.sftp()
    for rel in plan.send:
        f = d.files[rel]
        try:
            with open(f.path, "rb") as handle:
                write_atomic(sftp, posixpath.join(d.remote_dir, rel), handle, mode=0o755 if f.executable else 0o644,
                             mtime=f.mtime)
        except OSError as exc:
            raise HostError(f"Reading {f.path} to send it failed ({exc.strerror or exc}).") from exc


def _remove(conn: Any, plan: NativePlan) -> None:
    sftp = conn.sftp()
    for rel in plan.delete:
        try:
            sftp.remove(posixpath.join(plan.desired.remote_dir, rel))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise HostError(f"Removing {rel} from {plan.desired.remote_dir} on {where(conn)} failed "
                            f"({exc.strerror or exc}).") from exc


def send_files(conn: Any, plan: NativePlan, options: HostOptions, log: Log = lambda s: None) -> None:
    """Copy the plan's changed files (rsync per local root, else SFTP), remove stale ones, record the manifest."""
    d = plan.desired
    if plan.send:
        _mkdirs(conn, d.remote_dir, plan.send)
    if plan.send and plan.method == "rsync":
        groups: dict[tuple[str, str], list[str]] = {}
        for rel in plan.send:
            f = d.files[rel]
            groups.setdefault((f.root, rel[: len(rel) - len(f.rel)]), []).append(f.rel)
        for (root, prefix), rels in groups.items():
            _rsync(plan.spec, options, root, rels, posixpath.join(d.remote_dir, prefix))
    elif plan.send:
        _sftp(conn, plan)
    _remove(conn, plan)
    write_atomic(conn, posixpath.join(d.remote_dir, MANIFEST), json.dumps(sorted(d.files)).encode(), mode=0o644)
    log(f"{plan.spec.host}: sent {len(plan.send)} files ({plan.send_bytes / 1e6:.1f} MB) by {plan.method}, "
        f"removed {len(plan.delete)}")
