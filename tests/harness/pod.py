"""A RunPod-like host on this machine: an sshd whose PATH has no Docker, and the processes it runs."""

from __future__ import annotations

import os
from pathlib import Path

HIDDEN = ("docker", "containerd", "dockerd")


def pod_bin(folder: Path) -> Path:
    """Every command of this machine except Docker's: the PATH of a RunPod pod's shell."""
    folder.mkdir()
    for source in ("/usr/local/bin", "/usr/bin", "/bin"):
        if not os.path.isdir(source):
            continue
        for name in sorted(os.listdir(source)):
            if not name.startswith(HIDDEN) and not (folder / name).exists():
                (folder / name).symlink_to(os.path.join(source, name))
    return folder


def pids_in(remote_dir: str, marker: str) -> list[int]:
    """Processes of this machine working in ``remote_dir`` whose command line has ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd == remote_dir and marker in cmdline:
            found.append(int(entry))
    return found


def install_supervisor(meta: Path) -> None:
    """The supervisor's programs in ``REMOTE_DIR/.gpu-deploy`` as a native deploy installs them (without run.json)."""
    from deploy.hosts.remote import program_source
    from deploy.runtimes.native.layout import SUPERVISOR_FILES

    meta.mkdir(parents=True, exist_ok=True)
    for name in SUPERVISOR_FILES:
        if name != "run.json":
            (meta / name).write_text(program_source(name))
