"""The run's virtualenv on a native host: made from NATIVE_PYTHON, seeing its packages; pip only on change.

``REMOTE_DIR/.venv`` is made with ``NATIVE_PYTHON -m venv --system-site-packages`` and sees every
package that interpreter sees (the image's torch), even when that interpreter is itself a
virtualenv. pip installs the ``train`` extra and the tree's ``requirements.txt`` there, only when
they (or the interpreter) changed, with torch pinned to the interpreter's own build, so a
requirement never swaps the image's CUDA torch for a download of several GB.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deploy.hosts.remote import command, run, run_line, write_atomic
from deploy.project import train_requirements  # noqa: F401 - the runtime reads the train extra through here
from deploy.runtimes.code.layout import META
from deploy.runtimes.native.layout import REQUIREMENTS, VENV_MARKER

if TYPE_CHECKING:
    from fabric import Connection


@dataclass(frozen=True)
class BaseInterpreter:
    """``NATIVE_PYTHON`` on the host: what the run's virtualenv is made from and sees."""

    executable: str
    version: str
    site: tuple[str, ...] = ()
    torch: str | None = None
    has_venv: bool = True
    has_pip: bool = True
    pip: str | None = None  # pip's version: --report needs 22.2
    platform: str = ""  # sysconfig.get_platform(): linux-x86_64
    libc: str = ""  # platform.libc_ver(): glibc 2.36

    @property
    def identity(self) -> str:
        return f"{self.executable} {self.version} torch {self.torch or 'none'}"

    @property
    def short_version(self) -> str:
        return ".".join(self.version.split(".")[:2])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def requirements_digest(base: BaseInterpreter | None, train: tuple[str, ...], user: str | None) -> str:
    """What the virtualenv's packages depend on: the interpreter, its torch, both requirement lists."""
    return sha256(json.dumps({"base": base.identity if base else None, "train": list(train), "user": user},
                             sort_keys=True).encode())


def venv_site(venv: str, base: BaseInterpreter) -> str:
    """The virtualenv's own site-packages: what pip installed there, not what the interpreter had."""
    return posixpath.join(venv, "lib", f"python{base.short_version}", "site-packages")


def create_venv(conn: Connection, python: str, venv: str, remote_dir: str, base: BaseInterpreter) -> None:
    """A virtualenv that sees what NATIVE_PYTHON sees: system site-packages, and a .pth for a venv interpreter."""
    # The interpreter's own pip serves the venv (it installs by the running interpreter's prefix); a
    # pip of the venv's own would also bring an old setuptools that shadows the image's.
    own_pip = ["--without-pip"] if base.has_pip else []
    run(conn, [python, "-m", "venv", "--clear", "--system-site-packages", *own_pip, venv], "Creating the virtualenv")
    site_dir = venv_site(venv, base)
    # --system-site-packages reaches the base installation only; when NATIVE_PYTHON is itself a
    # virtualenv (or has a user site), its own site-packages must be added, with their .pth files
    # (addsitedir). Folders already on sys.path are skipped.
    line = f"import site; list(map(site.addsitedir, {list(base.site)!r}))\n"
    write_atomic(conn, posixpath.join(site_dir, "gpu-deploy-base.pth"), line.encode(), mode=0o644)
    write_atomic(conn, posixpath.join(remote_dir, VENV_MARKER), json.dumps({"base": base.identity}).encode(),
                 mode=0o644)


def install_requirements(conn: Connection, venv: str, remote_dir: str, base: BaseInterpreter, train: tuple[str, ...],
                         user: str | None, source: str = REQUIREMENTS, *, find_links: str | None = None) -> None:
    """pip install the train extra and the project's requirements, torch held at the interpreter's build; the
    byte-compiling is left to :func:`compile_in_background`.

    ``requirements.txt`` is installed where it lies (its relative lines work as written); a
    pyproject.toml's dependencies (``source``) are written beside the train extra's list first.
    ``find_links``: only from that folder of wheels (the bucket's wheel store), never a package index.
    """
    meta = posixpath.join(remote_dir, META)
    write_atomic(conn, posixpath.join(meta, "requirements-train.txt"), ("\n".join(train) + "\n").encode(), mode=0o644)
    pins = f"torch=={base.torch}\n" if base.torch else ""
    write_atomic(conn, posixpath.join(meta, "constraints.txt"), pins.encode(), mode=0o644)
    args = ["-r", f"{META}/requirements-train.txt", "-c", f"{META}/constraints.txt"]
    if user is not None and source in ("", REQUIREMENTS):
        args += ["-r", REQUIREMENTS]
    elif user is not None:
        write_atomic(conn, posixpath.join(meta, "requirements-project.txt"), user.encode(), mode=0o644)
        args += ["-r", f"{META}/requirements-project.txt"]
    where_from = ["--no-index", "--find-links", find_links] if find_links else []
    run(conn, [posixpath.join(venv, "bin", "python"), "-m", "pip", "install", "--disable-pip-version-check",
               "--no-compile", *where_from, *args], "pip install", cwd=remote_dir,
        log_file=posixpath.join(meta, "pip.log"))
    marker = {"base": base.identity, "requirements": requirements_digest(base, train, user)}
    write_atomic(conn, posixpath.join(remote_dir, VENV_MARKER), json.dumps(marker).encode(), mode=0o644)
    compile_in_background(conn, venv, meta)


def compile_in_background(conn: Connection, venv: str, meta: str) -> None:
    """Byte-compile the virtualenv's packages on every core at the lowest priority, detached, while deploy goes on.

    pip compiles each module of each package one after another, which is most of an install (scipy, pandas and
    scikit-learn from wheels: 22-31 s with it, 7-8 s with ``--no-compile``, 2 cores). Left to the imports, the
    training's first start would compile instead, and every start where PYTHONDONTWRITEBYTECODE is set (as many
    images set it). ``compileall`` writes each file atomically and skips those already compiled; a training
    that imports a module first compiles it itself. Its output goes to ``.gpu-deploy/compile.log``.
    """
    argv = ["setsid", "nice", "-n", "19", posixpath.join(venv, "bin", "python"), "-m", "compileall", "-q",
            "-j", "0", posixpath.join(venv, "lib")]
    run_line(conn, f"{command(argv, log_file=posixpath.join(meta, 'compile.log'))} < /dev/null &",
             "byte-compiling the virtualenv", warn=True)
