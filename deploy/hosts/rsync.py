"""One rsync command line for every transfer to or from a host, and its failure as one sentence.

Paths travel with ``--protect-args`` (``-s``): rsync hands them to the other side verbatim, so a
REMOTE_DIR with spaces works with rsync before and after 3.2.4 alike, and nothing is shell-quoted
by hand. ssh gets the same key, known_hosts and strictness as our own connections.

What comes back from a host is taken as data, never as the host's say over this machine
(:data:`SAFE_RECEIVE`): ``-a`` would mean ``-rlptgoD``, and run as root ``-D`` creates the device
nodes and FIFOs the host lists and ``-o``/``-g``/``-p`` give files the host's owner, group and
setuid bits. Exit 24 (a file vanished between rsync's listing and its copy: a training that writes
and removes files while the sync runs) is a warning that names the files, not a failure
(:func:`rsync_run` with ``vanished_ok``).

Example::

    argv = rsync_command(spec, options, [*SAFE_RECEIVE], f"{remote(spec, '/workspace/run')}/", "./run/")
    run_rsync(argv, spec, "rsync from the host")
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from deploy.errors import HostError
from deploy.hosts.remote import cause
from deploy.hosts.ssh import HostOptions, HostSpec, ssh_command
from deploy.hosts.text import printable


SAFE_CHMOD = "ug-s,a-t,go-w,u+rw,Du+x"
"""Modes files and folders get here: the host's, without setuid, setgid and sticky bits and without write for
group and others; the owner (whoever runs fab) can always read and replace its copy."""
SAFE_RECEIVE = ("-rlt", "--perms", f"--chmod={SAFE_CHMOD}", "--safe-links", "--no-owner", "--no-group",
                "--no-devices", "--no-specials")
"""The flags for copying from a host: recurse, links as links (``--safe-links``: one that climbs out of the
tree is skipped), times; modes through :data:`SAFE_CHMOD` (``--perms`` applies them to files that only
changed mode too, whatever the umask); never owner or group (``-o``/``-g``), device nodes or special files
(FIFOs, sockets: ``-D``), which root would create as the host lists them. Callers put them last, so a
caller's ``-a`` among its own flags cannot turn them back on."""
VANISHED = 24
"""rsync's exit code when some source files vanished before they could be transferred."""
_VANISHED = re.compile(r'^file has vanished: "(.*)"$', re.M)


@dataclass(frozen=True)
class RsyncRun:
    """What one rsync run printed, and the files that vanished on the way (exit 24, when that was allowed)."""

    stdout: str
    vanished: tuple[str, ...] = ()


def remote(spec: HostSpec, path: str) -> str:
    """``user@host:path`` as rsync names a remote path (no quoting: ``-s`` protects it)."""
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    return f"{spec.user}@{host}:{path}"


def rsync_command(spec: HostSpec, options: HostOptions, args: Sequence[str], source: str, dest: str) -> list[str]:
    """``rsync -s ARGS -e '<our ssh>' SOURCE DEST``."""
    return ["rsync", "--protect-args", *args, "-e", shlex.join(ssh_command(spec, options)), source, dest]


def run_rsync(argv: Sequence[str], spec: HostSpec, what: str, stdin: str | None = None) -> str:
    """Run an rsync command line; return its stdout, or raise a HostError naming ssh's or rsync's cause."""
    return rsync_run(argv, spec, what, stdin).stdout


def rsync_run(argv: Sequence[str], spec: HostSpec, what: str, stdin: str | None = None,
              vanished_ok: bool = False) -> RsyncRun:
    """Run an rsync command line; a :class:`HostError` naming ssh's or rsync's cause when it fails.

    ``vanished_ok``: exit 24 (files vanished mid-transfer; everything else was copied) is no failure,
    and the vanished files come back in :attr:`RsyncRun.vanished`.
    """
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, errors="replace",
                          stdin=None if stdin is not None else subprocess.DEVNULL)
    if proc.returncode == VANISHED and vanished_ok:
        return RsyncRun(proc.stdout, tuple(_VANISHED.findall(proc.stderr)))
    if proc.returncode != 0:
        raise HostError(f"{what} {spec.host}:{spec.port} failed (exit {proc.returncode}): "
                        f"{printable(cause(proc.stderr)) or 'no message'}")  # the host's words, never its escapes
    return RsyncRun(proc.stdout)
