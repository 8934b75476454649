"""One rsync command line for every transfer to or from a host, and its failure as one sentence.

Paths travel with ``--protect-args`` (``-s``): rsync hands them to the other side verbatim, so a
REMOTE_DIR with spaces works with rsync before and after 3.2.4 alike, and nothing is shell-quoted
by hand. ssh gets the same key, known_hosts and strictness as our own connections.

Example::

    argv = rsync_command(spec, options, ["-a"], f"{remote(spec, '/workspace/run')}/", "./run/")
    run_rsync(argv, spec, "rsync from the host")
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence

from deploy.errors import HostError
from deploy.hosts.remote import cause
from deploy.hosts.ssh import HostOptions, HostSpec, ssh_command


def remote(spec: HostSpec, path: str) -> str:
    """``user@host:path`` as rsync names a remote path (no quoting: ``-s`` protects it)."""
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    return f"{spec.user}@{host}:{path}"


def rsync_command(spec: HostSpec, options: HostOptions, args: Sequence[str], source: str, dest: str) -> list[str]:
    """``rsync -s ARGS -e '<our ssh>' SOURCE DEST``."""
    return ["rsync", "--protect-args", *args, "-e", shlex.join(ssh_command(spec, options)), source, dest]


def run_rsync(argv: Sequence[str], spec: HostSpec, what: str, stdin: str | None = None) -> str:
    """Run an rsync command line; return its stdout, or raise a HostError naming ssh's or rsync's cause."""
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                          stdin=None if stdin is not None else subprocess.DEVNULL)
    if proc.returncode != 0:
        raise HostError(f"{what} {spec.host}:{spec.port} failed (exit {proc.returncode}): "
                        f"{cause(proc.stderr) or 'no message'}")
    return proc.stdout
